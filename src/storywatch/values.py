"""Pure value types shared by the config, auth and the sessions: no I/O, no behaviour
beyond what a value needs to answer about itself.

- :class:`Limits` — every per-connection and server-wide bound (SPEC §6, §13);
- :class:`TokenEntry` — one configured token, as stored (only its SHA-256);
- :class:`Principal` — who a connection or request acts as: a token's name, its
  permissions (``scopes``) and the epics it may see (``epics``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final

from storywatch.filters import Scope

SCOPES: Final = ("read", "publish", "admin")


@dataclass(frozen=True, slots=True)
class Limits:
    rate_per_s: float = 200
    burst: int = 1000
    max_pending: int = 10_000
    inbound_per_s: float = 20
    inbound_burst: int = 50
    max_message_bytes: int = 65_536
    max_subscriptions: int = 64
    max_connections: int = 10_000
    max_connections_per_token: int = 200
    write_timeout_s: float = 30
    max_queued_bytes: int = 8 * 1024 * 1024  # everything queued for one connection


@dataclass(frozen=True, slots=True)
class TokenEntry:
    name: str
    sha256: str
    scopes: frozenset[str]
    epics: frozenset[str] | None  # None: every epic


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is connected: the token's name, its permissions and the epics it may see."""

    name: str
    scopes: frozenset[str]
    epics: Scope = field(default_factory=Scope)

    def can(self, permission: str) -> bool:
        # Permissions are independent: `admin` does not imply read or publish.
        return permission in self.scopes

    @classmethod
    def of(cls, entry: TokenEntry) -> Principal:
        return cls(name=entry.name, scopes=entry.scopes, epics=Scope(entry.epics))
