"""Unit tests for storywatch.config: load_settings, token entries (SPEC §7 config file)."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest

from storywatch.config import Settings, TokenEntry, load_settings, reload_tokens, token_entries
from storywatch.errors import ConfigError, StorywatchError

DIGEST = hashlib.sha256(b"secret-token").hexdigest()


def load(text: str | None = None, tmp_path: Path | None = None, **kwargs: Any) -> Settings:
    kwargs.setdefault("env", {})
    if text is None:
        return load_settings(**kwargs)
    assert tmp_path is not None
    path = tmp_path / "storywatch.yaml"
    path.write_text(text, encoding="utf-8")
    return load_settings(path, **kwargs)


def config_error(text: str, tmp_path: Path, **kwargs: Any) -> str:
    with pytest.raises(ConfigError) as info:
        load(text, tmp_path, **kwargs)
    return str(info.value)


# -- defaults ------------------------------------------------------------------------------


def test_defaults() -> None:
    s = load()
    assert s.repo == Path(".")
    assert s.config_file is None
    assert s.watch.include == ("**/*.md",)
    assert s.watch.exclude == ()
    assert s.watch.settle_ms == 50
    assert s.watch.delete_grace_ms == 300
    assert s.watch.force_polling is False
    assert s.watch.max_file_bytes == 1_048_576
    assert s.server.host == "127.0.0.1"
    assert s.server.port == 8765
    assert s.server.heartbeat_s == 15
    assert s.server.origins == ()
    assert s.server.metrics_public is True
    assert s.server.tls_cert is None
    assert s.server.tls_key is None
    assert s.tokens == ()
    assert s.backend.kind == "sqlite"
    assert s.backend.path is None
    assert s.backend.redis_url == "redis://127.0.0.1:6379/0"
    assert s.backend.stream == "storywatch"
    assert s.backend.buffer_size == 10_000
    lim = s.limits
    assert (lim.rate_per_s, lim.burst, lim.max_pending) == (200, 1000, 10_000)
    assert (lim.inbound_per_s, lim.inbound_burst) == (20, 50)
    assert lim.max_message_bytes == 65_536
    assert lim.max_subscriptions == 64
    assert lim.max_connections == 10_000
    assert lim.max_connections_per_token == 200
    assert lim.write_timeout_s == 30
    assert s.board_statuses == ()
    assert s.log_format == "text"
    assert s.log_level == "info"
    assert s.state_path == Path(".storywatch/state.db")


def test_empty_file_is_defaults(tmp_path: Path) -> None:
    s = load("", tmp_path)
    assert s.server.port == 8765
    assert s.config_file == tmp_path / "storywatch.yaml"


def test_settings_are_frozen() -> None:
    s = load()
    with pytest.raises(AttributeError):
        s.server.port = 1  # type: ignore[misc]


# -- file overrides ----------------------------------------------------------------------


def test_file_overrides(tmp_path: Path) -> None:
    s = load(
        "watch:\n  settle_ms: 10\n  exclude: ['drafts/**']\n  force_polling: true\n"
        "server:\n  port: 9000\n  heartbeat_s: 2.5\n  origins: ['https://board.example']\n"
        "  tls: {cert: c.pem, key: k.pem}\n"
        "backend:\n  kind: memory\n  path: /tmp/x.db\n"
        "limits:\n  rate_per_s: 0.5\n  write_timeout_s: 2.5\n"
        "board:\n  statuses: [draft, done]\n"
        "log:\n  format: json\n  level: debug\n",
        tmp_path,
    )
    assert s.watch.settle_ms == 10
    assert s.watch.exclude == ("drafts/**",)
    assert s.watch.delete_grace_ms == 300  # untouched sibling keeps its default
    assert s.watch.force_polling is True
    assert s.server.port == 9000
    assert s.server.host == "127.0.0.1"
    assert s.server.heartbeat_s == 2.5
    assert s.server.origins == ("https://board.example",)
    assert (s.server.tls_cert, s.server.tls_key) == ("c.pem", "k.pem")
    assert s.backend.kind == "memory"
    assert s.state_path == Path("/tmp/x.db")
    assert s.limits.rate_per_s == 0.5
    assert s.limits.write_timeout_s == 2.5
    assert s.board_statuses == ("draft", "done")
    assert (s.log_format, s.log_level) == ("json", "debug")


def test_repo_is_relative_to_the_config_file(tmp_path: Path) -> None:
    s = load("repo: stories\n", tmp_path)
    assert s.repo == tmp_path / "stories"
    assert s.state_path == tmp_path / "stories" / ".storywatch" / "state.db"
    absolute = load(f"repo: {tmp_path}\n", tmp_path)
    assert absolute.repo == tmp_path


def test_nullable_keys(tmp_path: Path) -> None:
    s = load("backend:\n  path: null\nserver:\n  tls: {cert: null, key: null}\n", tmp_path)
    assert s.backend.path is None
    assert s.server.tls_cert is None


# -- errors --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "key", "hint"),
    [
        ("server:\n  prot: 1\n", "server.prot", "port"),
        ("sever:\n  port: 1\n", "sever", "server"),
        ("watch:\n  settle: 5\n", "watch.settle", "settle_ms"),
        ("limits:\n  max_subscription: 5\n", "limits.max_subscription", "max_subscriptions"),
    ],
)
def test_unknown_key_names_the_key_and_a_hint(
    text: str, key: str, hint: str, tmp_path: Path
) -> None:
    message = config_error(text, tmp_path)
    assert message.startswith(f"{key}: unknown key")
    assert f"did you mean {hint!r}" in message


def test_unknown_key_without_close_match(tmp_path: Path) -> None:
    message = config_error("zzzzqqq: 1\n", tmp_path)
    assert message.startswith("zzzzqqq: unknown key")
    assert "did you mean" not in message


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("server:\n  port: '8080'\n", "server.port"),
        ("server:\n  port: 70000\n", "server.port"),
        ("server:\n  port: -1\n", "server.port"),
        ("server:\n  port: true\n", "server.port"),
        ("server:\n  metrics_public: 'yes'\n", "server.metrics_public"),
        ("server:\n  host: 127\n", "server.host"),
        ("server:\n  tls: cert.pem\n", "server.tls"),
        ("server: 8080\n", "server"),
        ("watch:\n  settle_ms: 1.5\n", "watch.settle_ms"),
        ("watch:\n  include: '**/*.md'\n", "watch.include"),
        ("watch:\n  exclude: [1, 2]\n", "watch.exclude"),
        ("watch:\n  max_file_bytes: 0\n", "watch.max_file_bytes"),
        ("backend:\n  kind: postgres\n", "backend.kind"),
        ("backend:\n  buffer_size: null\n", "backend.buffer_size"),
        ("limits:\n  burst: 0\n", "limits.burst"),
        ("limits:\n  write_timeout_s: 0\n", "limits.write_timeout_s"),
        ("log:\n  format: xml\n", "log.format"),
        ("log:\n  level: loud\n", "log.level"),
        ("repo: [a]\n", "repo"),
        ("auth:\n  tokens: {name: x}\n", "auth.tokens"),
    ],
)
def test_wrong_type_names_the_key(text: str, key: str, tmp_path: Path) -> None:
    message = config_error(text, tmp_path)
    assert message.startswith(f"{key}:"), message


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_settings(tmp_path / "nope.yaml", env={})


def test_invalid_yaml_file(tmp_path: Path) -> None:
    message = config_error("server:\n  port: [1\n", tmp_path)
    assert "invalid YAML" in message


def test_top_level_not_a_mapping(tmp_path: Path) -> None:
    assert "mapping" in config_error("- a\n- b\n", tmp_path)


def test_config_error_is_a_storywatch_error() -> None:
    assert issubclass(ConfigError, StorywatchError)


# -- environment and overrides -----------------------------------------------------------


def test_env_storywatch_config(tmp_path: Path) -> None:
    path = tmp_path / "env.yaml"
    path.write_text("server:\n  port: 9100\n", encoding="utf-8")
    s = load_settings(env={"STORYWATCH_CONFIG": str(path)})
    assert s.server.port == 9100
    assert s.config_file == path


def test_explicit_config_beats_env_config(tmp_path: Path) -> None:
    env_file = tmp_path / "env.yaml"
    env_file.write_text("server:\n  port: 9100\n", encoding="utf-8")
    s = load("server:\n  port: 9200\n", tmp_path, env={"STORYWATCH_CONFIG": str(env_file)})
    assert s.server.port == 9200


def test_env_config_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_settings(env={"STORYWATCH_CONFIG": str(tmp_path / "missing.yaml")})


def test_env_redis_url_beats_file(tmp_path: Path) -> None:
    text = "backend:\n  redis_url: redis://file:6379/1\n"
    assert load(text, tmp_path).backend.redis_url == "redis://file:6379/1"
    s = load(text, tmp_path, env={"STORYWATCH_REDIS_URL": "redis://env:6379/2"})
    assert s.backend.redis_url == "redis://env:6379/2"
    assert load(env={"STORYWATCH_REDIS_URL": "redis://env/3"}).backend.redis_url == "redis://env/3"


def test_overrides_beat_env_and_file(tmp_path: Path) -> None:
    s = load(
        "server:\n  port: 9000\n  host: 0.0.0.0\nbackend:\n  kind: memory\n",
        tmp_path,
        env={"STORYWATCH_REDIS_URL": "redis://env/0"},
        overrides={
            "server.port": 9001,
            "server.host": None,  # a flag not given
            "backend.redis_url": "redis://flag/0",
            "backend.kind": "redis",
            "log.format": "json",
        },
    )
    assert s.server.port == 9001
    assert s.server.host == "0.0.0.0"
    assert s.backend.redis_url == "redis://flag/0"
    assert s.backend.kind == "redis"
    assert s.log_format == "json"


def test_overrides_are_validated() -> None:
    with pytest.raises(ConfigError, match=r"^server\.port:"):
        load(overrides={"server.port": "http"})
    with pytest.raises(ConfigError, match=r"^backend\.kind:"):
        load(overrides={"backend.kind": "mongo"})


def test_repo_override() -> None:
    assert load(overrides={"repo": "/srv/stories"}).repo == Path("/srv/stories")


# -- tokens --------------------------------------------------------------------------------


def test_token_entries(tmp_path: Path) -> None:
    s = load(
        "auth:\n  tokens:\n"
        f"    - {{name: ci, sha256: {DIGEST.upper()}, scopes: [publish]}}\n"
        f"    - {{name: board, sha256: {DIGEST}, scopes: [read, admin], epics: [ui, api]}}\n"
        f"    - {{name: default, sha256: {DIGEST}}}\n",
        tmp_path,
    )
    assert s.tokens == (
        TokenEntry("ci", DIGEST, frozenset({"publish"}), None),
        TokenEntry("board", DIGEST, frozenset({"read", "admin"}), frozenset({"ui", "api"})),
        TokenEntry("default", DIGEST, frozenset({"read"}), None),
    )


@pytest.mark.parametrize(
    ("entry", "key"),
    [
        ({"name": "a", "sha256": "abc"}, "auth.tokens[0].sha256"),
        ({"name": "a", "sha256": "z" * 64}, "auth.tokens[0].sha256"),
        ({"name": "a", "sha256": DIGEST + "0"}, "auth.tokens[0].sha256"),
        ({"name": "a"}, "auth.tokens[0].sha256"),
        ({"name": "a", "sha256": DIGEST, "scopes": ["write"]}, "auth.tokens[0].scopes"),
        ({"name": "a", "sha256": DIGEST, "scopes": []}, "auth.tokens[0].scopes"),
        ({"name": "a", "sha256": DIGEST, "scopes": "read"}, "auth.tokens[0].scopes"),
        ({"name": "a", "sha256": DIGEST, "epics": "ui"}, "auth.tokens[0].epics"),
        ({"name": "", "sha256": DIGEST}, "auth.tokens[0].name"),
        ({"sha256": DIGEST}, "auth.tokens[0].name"),
        ({"name": "a", "sha256": DIGEST, "scope": ["read"]}, "auth.tokens[0].scope"),
        ("just-a-token", "auth.tokens[0]"),
    ],
)
def test_bad_token_entries(entry: Any, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        token_entries([entry])
    assert str(info.value).startswith(f"{key}:"), str(info.value)


def test_unknown_token_key_has_a_hint() -> None:
    with pytest.raises(ConfigError, match="did you mean 'scopes'"):
        token_entries([{"name": "a", "sha256": DIGEST, "scope": ["read"]}])


def test_duplicate_token_names() -> None:
    with pytest.raises(ConfigError, match=r"auth\.tokens\[1\]\.name"):
        token_entries([{"name": "a", "sha256": DIGEST}, {"name": "a", "sha256": DIGEST}])


def test_bad_token_in_file_fails_load(tmp_path: Path) -> None:
    message = config_error(
        "auth:\n  tokens:\n    - {name: x, sha256: nothex, scopes: [read]}\n", tmp_path
    )
    assert message.startswith("auth.tokens[0].sha256:")


def test_reload_tokens(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(
        f"server:\n  port: 1234\nauth:\n  tokens:\n    - {{name: a, sha256: {DIGEST}}}\n",
        encoding="utf-8",
    )
    assert [t.name for t in reload_tokens(path)] == ["a"]
    path.write_text("server:\n  prot: 1\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"server\.prot"):
        reload_tokens(path)


# -- catchup (SPEC §9) ------------------------------------------------------------------


def test_catchup_keep_days_defaults_to_90_and_takes_fractions(tmp_path: Path) -> None:
    assert load_settings(env={}).catchup_keep_days == 90.0
    config = tmp_path / "c.yaml"
    config.write_text("catchup:\n  keep_days: 0.5\n")
    assert load_settings(config, env={}).catchup_keep_days == 0.5


@pytest.mark.parametrize("value", ["0", "-1", "'soon'", "true"])
def test_bad_catchup_keep_days_names_the_key(value: str, tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(f"catchup:\n  keep_days: {value}\n")
    with pytest.raises(ConfigError, match=r"catchup\.keep_days"):
        load_settings(config, env={})


def test_the_example_config_documents_every_key_with_its_default() -> None:
    import yaml

    from storywatch.config import DEFAULTS_FLAT

    example = Path(__file__).resolve().parents[1] / "config.example.yaml"
    raw = yaml.safe_load(example.read_text())

    def flat(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in tree.items():
            out[prefix + key] = value
            if isinstance(value, dict):
                out.update(flat(value, prefix + key + "."))
        return out

    documented = flat(raw)
    assert set(documented) == set(DEFAULTS_FLAT)
    for key, default in DEFAULTS_FLAT.items():
        if key != "repo":
            assert documented[key] == default, key
