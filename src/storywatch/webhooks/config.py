"""The ``webhooks:`` list of the config file (SPEC §10) — pure.

Validated like every other key: an unknown key, a wrong type, a bad name or secret raises
:class:`ConfigError` with one line naming the key (``webhooks[2].secret``). A URL's path and
a secret never appear in a message or a ``repr``: only the URL's scheme, host and port
(:attr:`HookConfig.origin`) are ever shown.
"""

from __future__ import annotations

import base64
import binascii
import difflib
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import urlsplit

from storywatch.errors import ConfigError
from storywatch.filters import FILTER_KEYS, Filter, FilterError, Scope

HOOK_KEYS: Final = (
    "name",
    "url",
    "format",
    "secret",
    "secret_env",
    "filter",
    "epics",
    "timeout_s",
    "max_attempts",
    "max_age_s",
)
FORMATS: Final = ("standard", "slack")
SECRET_PREFIX: Final = "whsec_"
DEFAULT_TIMEOUT_S: Final = 10.0
DEFAULT_MAX_ATTEMPTS: Final = 10
DEFAULT_MAX_AGE_S: Final = 86_400.0
_NAME = re.compile(r"^[a-z0-9_-]+$")
MAX_NAME_CHARS: Final = 64


@dataclass(frozen=True, slots=True)
class HookConfig:
    """One configured webhook. ``url`` and ``secret`` are kept out of ``repr``."""

    name: str
    url: str = field(repr=False)
    origin: str  # scheme://host:port: the only part of the URL ever shown
    format: str = "standard"
    secret: bytes | None = field(default=None, repr=False)  # base64-decoded
    filter: Filter = field(default_factory=Filter)
    scope: Scope = field(default_factory=Scope)
    timeout_s: float = DEFAULT_TIMEOUT_S
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    max_age_s: float = DEFAULT_MAX_AGE_S


def parse_webhooks(raw: Any, env: Mapping[str, str]) -> tuple[HookConfig, ...]:
    """Every hook of the ``webhooks:`` list; ``env`` resolves ``secret_env``."""
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise ConfigError(f"webhooks: expected a list of webhooks, got {type(raw).__name__}")
    hooks: list[HookConfig] = []
    names: set[str] = set()
    for i, item in enumerate(raw):
        hook = _parse_hook(f"webhooks[{i}]", item, env)
        if hook.name in names:
            raise ConfigError(f"webhooks[{i}].name: duplicate webhook name {hook.name!r}")
        names.add(hook.name)
        hooks.append(hook)
    return tuple(hooks)


def origin_of(url: str) -> str:
    """``scheme://host:port`` of a URL (the default port spelled out)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    port = parts.port or {"http": 80, "https": 443}.get(parts.scheme, 0)
    return f"{parts.scheme}://{host}:{port}"


def decode_secret(text: str) -> bytes | None:
    """The key of a ``whsec_<base64>`` secret, or None when it is not one."""
    if not text.startswith(SECRET_PREFIX):
        return None
    try:
        key = base64.b64decode(text[len(SECRET_PREFIX) :], validate=True)
    except (binascii.Error, ValueError):
        return None
    return key or None


# -- internals --------------------------------------------------------------------------


def _parse_hook(key: str, item: Any, env: Mapping[str, str]) -> HookConfig:
    if not isinstance(item, dict):
        raise ConfigError(f"{key}: expected a mapping with name and url")
    for name in item:
        if name not in HOOK_KEYS:
            raise ConfigError(f"{key}.{name}: unknown key{_hint(str(name), HOOK_KEYS)}")
    name = item.get("name")
    if not isinstance(name, str) or not _NAME.match(name) or len(name) > MAX_NAME_CHARS:
        raise ConfigError(
            f"{key}.name: expected a name of lowercase letters, digits, _ and - "
            f"(at most {MAX_NAME_CHARS}), got {_describe(name)}"
        )
    url = _url(f"{key}.url", item.get("url"))
    fmt = item.get("format", "standard")
    if fmt not in FORMATS:
        raise ConfigError(f"{key}.format: expected one of {', '.join(FORMATS)}, got {fmt!r}"[:200])
    return HookConfig(
        name=name,
        url=url,
        origin=origin_of(url),
        format=fmt,
        secret=_secret(key, item, env),
        filter=_filter(f"{key}.filter", item.get("filter")),
        scope=_scope(f"{key}.epics", item.get("epics")),
        timeout_s=_positive(f"{key}.timeout_s", item.get("timeout_s"), DEFAULT_TIMEOUT_S),
        max_attempts=int(
            _positive(
                f"{key}.max_attempts",
                item.get("max_attempts"),
                DEFAULT_MAX_ATTEMPTS,
                integer=True,
            )
        ),
        max_age_s=_positive(f"{key}.max_age_s", item.get("max_age_s"), DEFAULT_MAX_AGE_S),
    )


def _url(key: str, value: Any) -> str:
    # The value is never quoted back: its path may be a credential (Slack's are).
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{key}: expected an http:// or https:// URL")
    url: str = value.strip()
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        raise ConfigError(f"{key}: not a valid URL (bad host or port)") from None
    if parts.scheme not in ("http", "https"):
        raise ConfigError(f"{key}: expected an http:// or https:// URL")
    if not parts.hostname:
        raise ConfigError(f"{key}: the URL has no host")
    if any(ch.isspace() for ch in url):
        raise ConfigError(f"{key}: the URL contains whitespace")
    return url


def _secret(key: str, item: Mapping[str, Any], env: Mapping[str, str]) -> bytes | None:
    secret, secret_env = item.get("secret"), item.get("secret_env")
    if secret is not None and secret_env is not None:
        raise ConfigError(f"{key}.secret_env: set either secret or secret_env, not both")
    if secret_env is not None:
        if not isinstance(secret_env, str) or not secret_env:
            raise ConfigError(f"{key}.secret_env: expected the name of an environment variable")
        value = env.get(secret_env)
        if value is None or not value.strip():
            raise ConfigError(f"{key}.secret_env: the environment variable {secret_env} is not set")
        decoded = decode_secret(value.strip())
        if decoded is None:
            raise ConfigError(
                f"{key}.secret_env: the environment variable {secret_env} does not hold "
                f"a secret of the form {SECRET_PREFIX}<base64>"
            )
        return decoded
    if secret is None:
        return None
    decoded = decode_secret(secret) if isinstance(secret, str) else None
    if decoded is None:
        raise ConfigError(
            f"{key}.secret: expected {SECRET_PREFIX}<base64> (a Standard Webhooks secret)"
        )
    return decoded


def _filter(key: str, value: Any) -> Filter:
    if value is None:
        return Filter()
    if not isinstance(value, dict):
        raise ConfigError(f"{key}: expected a mapping (the filter of SPEC §4)")
    for name in value:
        if name not in FILTER_KEYS:
            raise ConfigError(f"{key}.{name}: unknown key{_hint(str(name), FILTER_KEYS)}")
    try:
        return Filter.parse(value)
    except FilterError as exc:
        raise ConfigError(f"{key}: {exc}") from exc


def _scope(key: str, value: Any) -> Scope:
    if value is None:
        return Scope()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{key}: expected a list of strings, got {_describe(value)}")
    # The default `[]` means "no restriction": a hook that may see nothing is never useful.
    return Scope(frozenset(value) if value else None)


def _positive(key: str, value: Any, default: float, *, integer: bool = False) -> float:
    if value is None:
        return default
    expected = "a positive integer" if integer else "a positive number"
    is_number = isinstance(value, int | float) and not isinstance(value, bool)
    if not is_number or (integer and not isinstance(value, int)):
        raise ConfigError(f"{key}: expected {expected}, got {_describe(value)}")
    number = float(value)
    if not math.isfinite(number) or number <= 0:
        raise ConfigError(f"{key}: expected {expected}, got {value}")
    return number


def _hint(key: str, valid: Any) -> str:
    close = difflib.get_close_matches(key, [str(v) for v in valid], n=1, cutoff=0.5)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _describe(value: Any) -> str:
    return f"{type(value).__name__} {value!r}"[:80]
