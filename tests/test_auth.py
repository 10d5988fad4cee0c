"""Tokens, scopes and browser origins — the pure decisions of auth.py (SPEC §4)."""

from __future__ import annotations

import hashlib

import pytest

from storywatch.auth import Authenticator, hash_token, new_token, origin_allowed, token_from
from storywatch.filters import Scope
from storywatch.values import Principal, TokenEntry


def entry(name: str, token: str, *scopes: str, epics: frozenset[str] | None = None) -> TokenEntry:
    return TokenEntry(name, hash_token(token), frozenset(scopes), epics)


def test_tokens_are_stored_as_sha256_hex() -> None:
    assert hash_token("sw_x") == hashlib.sha256(b"sw_x").hexdigest()
    token = new_token()
    assert token.startswith("sw_") and len(token) > 30 and new_token() != token


def test_lookup_finds_the_entry_of_a_presented_token_only() -> None:
    auth = Authenticator([entry("a", "tok-a", "read"), entry("b", "tok-b", "publish")])
    found = auth.lookup("tok-b")
    assert found is not None and found.name == "b"
    assert auth.lookup("tok-c") is None
    assert auth.lookup("") is None
    assert auth.lookup(None) is None
    assert auth.lookup(hash_token("tok-a")) is None  # the digest itself is not a token


def test_a_principal_carries_permissions_and_epics() -> None:
    principal = Principal.of(entry("ui", "t", "read", epics=frozenset({"ui"})))
    assert principal.can("read") and not principal.can("publish")
    assert not Principal.of(entry("x", "t", "admin")).can("read")  # admin implies nothing
    assert principal.epics == Scope(frozenset({"ui"}))
    assert principal.epics.sees({"epic": "ui"}) and not principal.epics.sees({"epic": "api"})


@pytest.mark.parametrize(
    ("path", "authorization", "token"),
    [
        ("/ws", "Bearer tok", "tok"),
        ("/ws", "bearer   tok  ", "tok"),
        ("/ws?token=q", "Bearer h", "h"),  # the header wins
        ("/ws?token=q", None, "q"),
        ("/ws?token=q", "Basic abc", "q"),
        ("/ws?token=q", "Bearer ", "q"),
        ("/ws", None, None),
        ("/ws?other=1", "Token x", None),
    ],
)
def test_the_token_comes_from_the_header_then_the_query(
    path: str, authorization: str | None, token: str | None
) -> None:
    assert token_from(path, authorization) == token


@pytest.mark.parametrize(
    ("origin", "host", "tls", "allowed", "ok"),
    [
        (None, "127.0.0.1:8765", False, (), True),  # not a browser
        ("http://127.0.0.1:8765", "127.0.0.1:8765", False, (), True),  # its own origin
        ("HTTP://127.0.0.1:8765", "127.0.0.1:8765", False, (), True),
        ("https://127.0.0.1:8765", "127.0.0.1:8765", False, (), False),  # another scheme
        ("https://board.example", "board.example", True, (), True),
        ("https://board.example:443", "board.example", True, (), True),  # default port
        ("http://evil.example", "127.0.0.1:8765", False, (), False),
        ("http://evil.example", "127.0.0.1:8765", False, ("http://evil.example",), True),
        ("http://any.example", "127.0.0.1:8765", False, ("*",), True),
        ("http://[::1]:8765", "[::1]:8765", False, (), True),
        ("http://127.0.0.1:99999", "127.0.0.1:99999", False, (), False),  # not a URL
        ("http://127.0.0.1:8765", None, False, (), False),
        ("null", "127.0.0.1:8765", False, (), False),
    ],
)
def test_browsers_only_from_the_server_s_own_origin_or_listed_ones(
    origin: str | None, host: str | None, tls: bool, allowed: tuple[str, ...], ok: bool
) -> None:
    assert origin_allowed(origin, host, tls, allowed) is ok
