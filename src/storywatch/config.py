"""One frozen settings object: defaults < config file < environment < flags.

Validated once at load: an unknown key, a wrong type or a missing file raises
:class:`ConfigError` with a message naming the key (and the closest valid one).
"""

from __future__ import annotations

import copy
import difflib
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import yaml

from storywatch.errors import ConfigError
from storywatch.values import SCOPES, Limits, TokenEntry
from storywatch.webhooks.config import HookConfig, parse_webhooks

DEFAULTS: Final[dict[str, Any]] = {
    "repo": ".",
    "watch": {
        "include": ["**/*.md"],
        "exclude": [],
        "settle_ms": 50,
        "delete_grace_ms": 300,
        "force_polling": False,
        "max_file_bytes": 1_048_576,
    },
    "server": {
        "host": "127.0.0.1",
        "port": 8765,
        "heartbeat_s": 15,
        "origins": [],
        "metrics_public": True,
        "tls": {"cert": None, "key": None},
    },
    "auth": {"tokens": []},
    "backend": {
        "kind": "sqlite",
        "path": None,
        "redis_url": "redis://127.0.0.1:6379/0",
        "stream": "storywatch",
        "buffer_size": 10_000,
    },
    "limits": {
        "rate_per_s": 200,
        "burst": 1000,
        "max_pending": 10_000,
        "inbound_per_s": 20,
        "inbound_burst": 50,
        "max_message_bytes": 65_536,
        "max_subscriptions": 64,
        "max_connections": 10_000,
        "max_connections_per_token": 200,
        "write_timeout_s": 30,
        "max_queued_bytes": 8 * 1024 * 1024,
    },
    "board": {"statuses": []},
    "catchup": {"keep_days": 90},  # SPEC §9: how long tombstones are kept (fractions allowed)
    "webhooks": [],  # SPEC §10; validated by storywatch.webhooks.config
    "log": {"format": "text", "level": "info"},
}

# Keys whose value may be null besides their default's type.
NULLABLE: Final = {"backend.path", "server.tls.cert", "server.tls.key"}
CHOICES: Final[dict[str, tuple[str, ...]]] = {
    "backend.kind": ("sqlite", "memory", "redis"),
    "log.format": ("text", "json"),
    "log.level": ("debug", "info", "warning", "error"),
}
POSITIVE: Final = {
    "watch.max_file_bytes",
    "server.heartbeat_s",
    "backend.buffer_size",
    "limits.rate_per_s",
    "limits.burst",
    "limits.max_pending",
    "limits.inbound_per_s",
    "limits.inbound_burst",
    "limits.max_message_bytes",
    "limits.max_subscriptions",
    "limits.max_connections",
    "limits.max_connections_per_token",
    "limits.write_timeout_s",
    "limits.max_queued_bytes",
    "catchup.keep_days",
}
FRACTIONAL: Final = {
    "server.heartbeat_s",
    "limits.rate_per_s",
    "limits.inbound_per_s",
    "limits.write_timeout_s",
    "catchup.keep_days",
}
TOKEN_KEYS: Final = ("name", "sha256", "scopes", "epics")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True, slots=True)
class WatchSettings:
    include: tuple[str, ...]
    exclude: tuple[str, ...]
    settle_ms: int
    delete_grace_ms: int
    force_polling: bool
    max_file_bytes: int


@dataclass(frozen=True, slots=True)
class ServerSettings:
    host: str
    port: int
    heartbeat_s: float
    origins: tuple[str, ...]
    metrics_public: bool
    tls_cert: str | None
    tls_key: str | None


@dataclass(frozen=True, slots=True)
class BackendSettings:
    kind: str
    path: str | None
    redis_url: str
    stream: str
    buffer_size: int


@dataclass(frozen=True, slots=True)
class Settings:
    repo: Path
    watch: WatchSettings
    server: ServerSettings
    tokens: tuple[TokenEntry, ...]
    backend: BackendSettings
    limits: Limits
    board_statuses: tuple[str, ...]
    log_format: str
    log_level: str
    config_file: Path | None = None
    catchup_keep_days: float = 90.0  # SPEC §9
    webhooks: tuple[HookConfig, ...] = ()

    @property
    def state_path(self) -> Path:
        if self.backend.path:
            return Path(self.backend.path)
        return self.repo / ".storywatch" / "state.db"


def load_settings(
    config_file: str | os.PathLike[str] | None = None,
    *,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """Build the settings. ``overrides`` are dotted keys from flags (``server.port``…)."""
    env = os.environ if env is None else env
    raw = copy.deepcopy(DEFAULTS)
    path_text = config_file if config_file is not None else env.get("STORYWATCH_CONFIG")
    path = Path(path_text) if path_text else None
    if path is not None:
        from_file = _read_file(path)
        _merge(raw, from_file, "")
        if "repo" in from_file and not Path(raw["repo"]).is_absolute():
            raw["repo"] = str(path.parent / raw["repo"])  # relative to the config file
    if env.get("STORYWATCH_REDIS_URL"):
        raw["backend"]["redis_url"] = env["STORYWATCH_REDIS_URL"]
    for dotted, value in (overrides or {}).items():
        if value is not None:
            _set_dotted(raw, dotted, value)
    return _build(raw, path, env)


def token_entries(raw_tokens: Any) -> tuple[TokenEntry, ...]:
    if not isinstance(raw_tokens, list):
        raise ConfigError("auth.tokens: expected a list of token entries")
    entries = []
    names: set[str] = set()
    for i, item in enumerate(raw_tokens):
        key = f"auth.tokens[{i}]"
        if not isinstance(item, dict):
            raise ConfigError(f"{key}: expected a mapping with name, sha256, scopes")
        for name in item:
            if name not in TOKEN_KEYS:
                raise ConfigError(f"{key}.{name}: unknown key{_hint(str(name), TOKEN_KEYS)}")
        name = item.get("name")
        digest = item.get("sha256")
        scopes = item.get("scopes", ["read"])
        epics = item.get("epics")
        if not isinstance(name, str) or not name:
            raise ConfigError(f"{key}.name: expected a non-empty string")
        if name in names:
            raise ConfigError(f"{key}.name: duplicate token name {name!r}")
        names.add(name)
        if not isinstance(digest, str) or not _SHA256.match(digest.lower()):
            raise ConfigError(f"{key}.sha256: expected 64 hex digits (the token's SHA-256)")
        if not _is_str_list(scopes) or not scopes or set(scopes) - set(SCOPES):
            raise ConfigError(f"{key}.scopes: expected a list of {', '.join(SCOPES)}")
        if epics is not None and not _is_str_list(epics):
            raise ConfigError(f"{key}.epics: expected a list of strings")
        entries.append(
            TokenEntry(
                name=name,
                sha256=digest.lower(),
                scopes=frozenset(scopes),
                epics=frozenset(epics) if epics is not None else None,
            )
        )
    return tuple(entries)


def reload_tokens(config_file: Path) -> tuple[TokenEntry, ...]:
    """Re-read only ``auth.tokens`` (for SIGHUP); the rest of the file is validated too."""
    raw = copy.deepcopy(DEFAULTS)
    _merge(raw, _read_file(config_file), "")
    return token_entries(raw["auth"]["tokens"])


# -- internals --------------------------------------------------------------------------


def _read_file(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except OSError as exc:
        raise ConfigError(f"config file unreadable: {path}: {exc.strerror}") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"config file {path}{where}: invalid YAML") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path}: expected a mapping at the top level")
    return data


def _merge(target: dict[str, Any], source: Mapping[str, Any], prefix: str) -> None:
    for key, value in source.items():
        dotted = f"{prefix}{key}"
        if key not in target:
            raise ConfigError(f"{dotted}: unknown key{_hint(str(key), target)}")
        default = DEFAULTS_FLAT.get(dotted, target[key])
        if isinstance(target[key], dict) and dotted != "auth.tokens":
            if value is None:  # an empty section: every key keeps its default
                continue
            if not isinstance(value, dict):
                raise ConfigError(f"{dotted}: expected a mapping")
            _merge(target[key], value, dotted + ".")
        else:
            target[key] = _check_type(dotted, value, default)


def _set_dotted(raw: dict[str, Any], dotted: str, value: Any) -> None:
    if dotted not in DEFAULTS_FLAT:
        raise ConfigError(f"{dotted}: unknown key{_hint(dotted, DEFAULTS_FLAT)}")
    *parents, leaf = dotted.split(".")
    node = raw
    for part in parents:
        node = node[part]
    node[leaf] = _check_type(dotted, value, node[leaf])


def _check_type(dotted: str, value: Any, default: Any) -> Any:
    if value is None and dotted in NULLABLE:
        return None
    if dotted == "auth.tokens":
        token_entries(value)
        return value
    if dotted == "webhooks":  # a list of mappings: checked whole by _build (it needs env)
        return value
    if isinstance(default, bool):
        ok, expected_name = isinstance(value, bool), "true or false"
    elif isinstance(default, int):
        number_types = (int, float) if dotted in FRACTIONAL else (int,)
        ok = (
            isinstance(value, number_types) and not isinstance(value, bool) and math.isfinite(value)
        )
        expected_name = "an integer"
        if ok and (value < 0 or (dotted in POSITIVE and value == 0)):
            raise ConfigError(f"{dotted}: expected a positive integer, got {value}")
        if dotted == "server.port" and ok and value > 65535:
            raise ConfigError(f"{dotted}: expected a port number (0-65535), got {value}")
    elif isinstance(default, list):
        ok, expected_name = _is_str_list(value), "a list of strings"
    else:
        ok, expected_name = isinstance(value, str), "a string"
    if not ok:
        raise ConfigError(f"{dotted}: expected {expected_name}, got {_describe(value)}")
    choices = CHOICES.get(dotted)
    if choices is not None and value not in choices:
        raise ConfigError(f"{dotted}: expected one of {', '.join(choices)}, got {value!r}")
    return value


def _build(raw: dict[str, Any], config_path: Path | None, env: Mapping[str, str]) -> Settings:
    repo = Path(raw["repo"])
    w, s, b, lim = raw["watch"], raw["server"], raw["backend"], raw["limits"]
    return Settings(
        repo=repo,
        watch=WatchSettings(
            include=tuple(w["include"]),
            exclude=tuple(w["exclude"]),
            settle_ms=w["settle_ms"],
            delete_grace_ms=w["delete_grace_ms"],
            force_polling=w["force_polling"],
            max_file_bytes=w["max_file_bytes"],
        ),
        server=ServerSettings(
            host=s["host"],
            port=s["port"],
            heartbeat_s=s["heartbeat_s"],
            origins=tuple(s["origins"]),
            metrics_public=s["metrics_public"],
            tls_cert=s["tls"]["cert"],
            tls_key=s["tls"]["key"],
        ),
        tokens=token_entries(raw["auth"]["tokens"]),
        backend=BackendSettings(
            kind=b["kind"],
            path=b["path"],
            redis_url=b["redis_url"],
            stream=b["stream"],
            buffer_size=b["buffer_size"],
        ),
        limits=Limits(**lim),
        board_statuses=tuple(raw["board"]["statuses"]),
        log_format=raw["log"]["format"],
        log_level=raw["log"]["level"],
        config_file=config_path,
        catchup_keep_days=float(raw["catchup"]["keep_days"]),
        webhooks=parse_webhooks(raw["webhooks"], env),
    )


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        out[dotted] = value
        if isinstance(value, dict):
            out.update(_flatten(value, dotted + "."))
    return out


DEFAULTS_FLAT: Final = _flatten(DEFAULTS)


def _hint(key: str, valid: Any) -> str:
    close = difflib.get_close_matches(key, [str(v) for v in valid], n=1, cutoff=0.5)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _is_str_list(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def _describe(value: Any) -> str:
    return f"{type(value).__name__} {value!r}"[:80]
