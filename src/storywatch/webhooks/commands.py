"""``storywatch hooks status`` and ``storywatch hooks test NAME`` (SPEC §7, §10).

Both ask a running server's ``/api/hooks`` (a token with scope admin). Exit codes: 0 ok,
1 failure (server unreachable, token refused, unknown hook, or — for ``test`` — the
receiver did not answer 2xx), 2 usage (no token).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any, Final
from urllib.parse import quote, urlsplit

from storywatch.events import Json

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2
DEFAULT_TIMEOUT_S: Final = 60.0


def add_hooks_command(sub: Any, client_options: Callable[[argparse.ArgumentParser], None]) -> None:
    hooks = sub.add_parser("hooks", help="outbound webhooks: their state, a test delivery")
    actions = hooks.add_subparsers(dest="hooks_command", required=True, metavar="ACTION")
    status = actions.add_parser("status", help="each hook's cursor, lag, errors, dead letters")
    test = actions.add_parser("test", help="send a storywatch.test delivery to one hook")
    test.add_argument("name", metavar="NAME", help="the hook's name")
    for parser in (status, test):
        client_options(parser)
        parser.add_argument("--json", action="store_true", help="print the server's answer")
        parser.add_argument(
            "--timeout", type=float, default=DEFAULT_TIMEOUT_S, help="seconds to wait (60)"
        )


def cmd_hooks(args: argparse.Namespace) -> int:
    from storywatch.client import DEFAULT_URL, ClientError

    token = args.token or os.environ.get("STORYWATCH_TOKEN") or None
    if token is None:
        _err("no token: pass --token or set STORYWATCH_TOKEN (a token with scope admin)")
        return EXIT_USAGE
    try:
        base = http_base(args.url or os.environ.get("STORYWATCH_URL") or DEFAULT_URL)
    except ClientError as exc:
        _err(str(exc))
        return EXIT_USAGE
    if args.hooks_command == "status":
        answer = _call("GET", base + "/api/hooks", token, args.timeout)
        if answer is None:
            return EXIT_FAIL
        print(json.dumps(answer, ensure_ascii=False) if args.json else format_status(answer))
        return EXIT_OK
    path = f"/api/hooks/{quote(args.name, safe='')}/test"
    answer = _call("POST", base + path, token, args.timeout, missing=f"no hook named {args.name!r}")
    if answer is None:
        return EXIT_FAIL
    status = answer.get("status")
    if args.json:
        print(json.dumps(answer, ensure_ascii=False))
    elif status is None:
        print(f"{args.name}: no answer: {answer.get('error')}")
    else:
        print(f"{args.name}: HTTP {status}")
    return EXIT_OK if isinstance(status, int) and 200 <= status < 300 else EXIT_FAIL


def http_base(url: str) -> str:
    """``ws://host:port/ws`` (or an ``http(s)://`` base) → ``http://host:port``."""
    from storywatch.client import ws_url

    parts = urlsplit(ws_url(url))
    return f"{'https' if parts.scheme == 'wss' else 'http'}://{parts.netloc}"


def format_status(answer: Json) -> str:
    hooks = answer.get("hooks") or []
    if not hooks:
        return "no webhooks configured"
    header = ("NAME", "CURSOR", "LAG", "DELIVERED", "FAILED", "DEAD", "NEXT ATTEMPT")
    rows = [header]
    for hook in hooks:
        rows.append(
            (
                str(hook.get("name")),
                str(hook.get("cursor")),
                str(hook.get("lag")),
                str(hook.get("delivered")),
                str(hook.get("failed")),
                str(hook.get("dead_letters")),
                str(hook.get("next_attempt") or "-"),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = [
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]
    for hook in hooks:
        error = hook.get("last_error")
        if error:
            lines.append(
                f"{hook.get('name')}: last error at {error.get('time')}: {error.get('message')}"
            )
    return "\n".join(lines)


def _call(
    method: str, url: str, token: str, timeout: float, *, missing: str = "not found"
) -> Json | None:
    request = urllib.request.Request(
        url, method=method, headers={"Authorization": f"Bearer {token}"}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            answer = json.loads(response.read())
    except urllib.error.HTTPError as exc:
        exc.close()
        reasons = {
            401: "the token was refused",
            403: "this token lacks scope admin",
            404: missing,
        }
        _err(reasons.get(exc.code, f"the server answered HTTP {exc.code}"))
        return None
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        _err(f"cannot reach the server at {urlsplit(url).netloc}: {reason}")
        return None
    if not isinstance(answer, dict):
        _err("unexpected answer from the server")
        return None
    return answer


def _err(message: str) -> None:
    print(f"storywatch: {message}", file=sys.stderr, flush=True)
