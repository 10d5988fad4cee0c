"""storywatch.webhooks.config: the ``webhooks:`` list, validated like every other key."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from storywatch.config import load_settings
from storywatch.errors import ConfigError
from storywatch.filters import Filter, Scope
from storywatch.webhooks.config import HookConfig, origin_of, parse_webhooks

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
URL = "https://hooks.example.com:8443/services/T000/B000/XXXXSECRETPATH?key=hush"


def hook(**entry: Any) -> dict[str, Any]:
    return {"name": "review-alerts", "url": URL, **entry}


def parse(*entries: dict[str, Any], env: dict[str, str] | None = None) -> tuple[HookConfig, ...]:
    return parse_webhooks(list(entries), env or {})


def error(*entries: Any, env: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        parse_webhooks(list(entries), env or {})
    message = str(info.value)
    assert "\n" not in message
    assert "SECRETPATH" not in message and "hush" not in message
    assert "MfKQ9r8" not in message
    return message


def test_defaults() -> None:
    (parsed,) = parse(hook())
    assert parsed.name == "review-alerts"
    assert parsed.url == URL
    assert parsed.origin == "https://hooks.example.com:8443"
    assert parsed.format == "standard"
    assert parsed.secret is None
    assert parsed.filter == Filter()
    assert parsed.scope == Scope(None)
    assert (parsed.timeout_s, parsed.max_attempts, parsed.max_age_s) == (10, 10, 86_400)


def test_every_key() -> None:
    (parsed,) = parse(
        hook(
            format="slack",
            secret=SECRET,
            filter={"events": ["story.transitioned"], "statuses": ["review", "done"]},
            epics=["integration"],
            timeout_s=2.5,
            max_attempts=3,
            max_age_s=60,
        )
    )
    assert parsed.format == "slack"
    assert parsed.secret is not None and len(parsed.secret) == 24
    assert parsed.filter.events == frozenset({"story.transitioned"})
    assert parsed.filter.statuses == frozenset({"review", "done"})
    assert parsed.scope == Scope(frozenset({"integration"}))
    assert (parsed.timeout_s, parsed.max_attempts, parsed.max_age_s) == (2.5, 3, 60)


def test_repr_shows_neither_url_path_nor_secret() -> None:
    (parsed,) = parse(hook(secret=SECRET))
    text = repr(parsed)
    assert "SECRETPATH" not in text and "MfKQ9r8" not in text
    assert "hooks.example.com" in text


def test_secret_from_the_environment() -> None:
    (parsed,) = parse(hook(secret_env="HOOK_SECRET"), env={"HOOK_SECRET": SECRET + "\n"})
    (direct,) = parse(hook(secret=SECRET))
    assert parsed.secret == direct.secret


def test_empty_epics_mean_every_epic() -> None:
    (parsed,) = parse(hook(epics=[]))
    assert parsed.scope.epics is None


def test_origin() -> None:
    assert origin_of("http://example.com/x") == "http://example.com:80"
    assert origin_of("https://u:p@example.com/x?y") == "https://example.com:443"
    assert origin_of("http://[::1]:9/p") == "http://[::1]:9"


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        (hook(secrte=SECRET), "webhooks[0].secrte: unknown key (did you mean 'secret'?)"),
        (hook(timeout=3), "webhooks[0].timeout: unknown key (did you mean 'timeout_s'?)"),
        ({"url": URL}, "webhooks[0].name: expected a name"),
        (hook(name="Review Alerts"), "webhooks[0].name: expected a name"),
        ({"name": "a"}, "webhooks[0].url: expected an http:// or https:// URL"),
        (hook(url="ftp://example.com/x"), "webhooks[0].url: expected an http:// or https://"),
        (hook(url="https:///SECRETPATH"), "webhooks[0].url: the URL has no host"),
        (hook(url="http://example.com:99999/SECRETPATH"), "webhooks[0].url: not a valid URL"),
        (hook(format="teams"), "webhooks[0].format: expected one of standard, slack"),
        (hook(secret="MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"), "webhooks[0].secret: expected whsec_"),
        (hook(secret="whsec_not base64!"), "webhooks[0].secret: expected whsec_"),
        (hook(secret="whsec_"), "webhooks[0].secret: expected whsec_"),
        (hook(secret=123), "webhooks[0].secret: expected whsec_"),
        (
            hook(secret=SECRET, secret_env="HOOK_SECRET"),
            "webhooks[0].secret_env: set either secret or secret_env, not both",
        ),
        (
            hook(secret_env="UNSET_HOOK_SECRET"),
            "webhooks[0].secret_env: the environment variable UNSET_HOOK_SECRET is not set",
        ),
        (hook(filter={"event": ["story.created"]}), "(did you mean 'events'?)"),
        (hook(filter={"events": ["story.nope"]}), "webhooks[0].filter: unknown event type"),
        (hook(filter={"epics": "ui"}), "webhooks[0].filter: filter key 'epics' must be a list"),
        (hook(filter=["ui"]), "webhooks[0].filter: expected a mapping"),
        (hook(epics="ui"), "webhooks[0].epics: expected a list of strings"),
        (hook(timeout_s=0), "webhooks[0].timeout_s: expected a positive number, got 0"),
        (hook(timeout_s="10"), "webhooks[0].timeout_s: expected a positive number"),
        (hook(max_attempts=2.5), "webhooks[0].max_attempts: expected a positive integer"),
        (hook(max_attempts=True), "webhooks[0].max_attempts: expected a positive integer"),
        (hook(max_age_s=-1), "webhooks[0].max_age_s: expected a positive number"),
        ("review-alerts", "webhooks[0]: expected a mapping"),
    ],
)
def test_bad_entries_name_the_key(entry: Any, expected: str) -> None:
    assert expected in error(entry)


def test_a_secret_env_that_holds_no_secret() -> None:
    message = error(hook(secret_env="HOOK_SECRET"), env={"HOOK_SECRET": "hunter2"})
    assert message.startswith("webhooks[0].secret_env: the environment variable HOOK_SECRET")
    assert "hunter2" not in message


def test_names_are_unique() -> None:
    message = error(hook(), hook(url="http://other.example/"))
    assert message == "webhooks[1].name: duplicate webhook name 'review-alerts'"


def test_the_list_itself() -> None:
    with pytest.raises(ConfigError, match="webhooks: expected a list"):
        parse_webhooks({"name": "x"}, {})
    assert parse_webhooks(None, {}) == ()


def test_load_settings_reads_webhooks_with_the_environment(tmp_path: Path) -> None:
    path = tmp_path / "storywatch.yaml"
    path.write_text(yaml.safe_dump({"webhooks": [hook(secret_env="S")]}))
    settings = load_settings(path, env={"S": SECRET})
    assert [h.name for h in settings.webhooks] == ["review-alerts"]
    assert load_settings(env={}).webhooks == ()
    with pytest.raises(ConfigError, match=r"webhooks\[0\]\.secret_env"):
        load_settings(path, env={})


def test_load_settings_refuses_a_bad_list(tmp_path: Path) -> None:
    path = tmp_path / "storywatch.yaml"
    path.write_text("webhooks: {name: x}\n")
    with pytest.raises(ConfigError, match="webhooks: expected a list"):
        load_settings(path, env={})
    path.write_text("webhook: []\n")
    with pytest.raises(ConfigError, match="did you mean 'webhooks'"):
        load_settings(path, env={})


def test_the_example_config_loads() -> None:
    example = Path(__file__).resolve().parents[1] / "config.example.yaml"
    assert load_settings(example, env={}).webhooks == ()
