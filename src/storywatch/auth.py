"""Tokens, scopes and browser origins — pure.

Tokens are stored only as SHA-256 hex digests; a presented token is hashed and compared
with every entry in constant time. Tokens never appear in logs or messages.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Iterable
from urllib.parse import parse_qs, urlsplit

from storywatch.values import TokenEntry


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def new_token() -> str:
    return "sw_" + secrets.token_urlsafe(24)


class Authenticator:
    def __init__(self, entries: Iterable[TokenEntry]) -> None:
        self.entries = tuple(entries)

    def lookup(self, token: str | None) -> TokenEntry | None:
        if not token:
            return None
        digest = hash_token(token)
        found = None
        for entry in self.entries:  # no early exit: the time taken says nothing
            if hmac.compare_digest(digest, entry.sha256):
                found = entry
        return found


def token_from(path: str, authorization: str | None) -> str | None:
    """The token of a request: ``Authorization: Bearer …`` first, else ``?token=``."""
    if authorization:
        scheme, _, value = authorization.strip().partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    values = parse_qs(urlsplit(path).query).get("token")
    return values[0] if values else None


def origin_allowed(origin: str | None, host: str | None, tls: bool, allowed: Iterable[str]) -> bool:
    """Browsers send Origin: allow the server's own origin and the configured ones."""
    if origin is None:
        return True  # not a browser
    allowed = tuple(allowed)
    if "*" in allowed or origin in allowed:
        return True
    if host is None:
        return False
    scheme = "https" if tls else "http"
    own = _normalize(f"{scheme}://{host}")
    return own != _INVALID and _normalize(origin) == own


_INVALID = "\x00invalid"


def _normalize(origin: str) -> str:
    try:
        parts = urlsplit(origin.lower())
        port = parts.port
    except ValueError:  # not a URL (bad port, brackets): matches nothing
        return _INVALID
    default = {"http": 80, "https": 443}.get(parts.scheme)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    return f"{parts.scheme}://{host}" + (f":{port}" if port and port != default else "")
