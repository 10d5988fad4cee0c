"""``storywatch`` command line: ``main(argv) -> int``, the only place that exits."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Sequence
from typing import Any

from storywatch import __version__
from storywatch.config import Settings, load_settings, reload_tokens
from storywatch.errors import ConfigError, StateError, StorywatchError
from storywatch.gcpace import GcPacer, freeze_startup
from storywatch.logsetup import setup_logging

logger = logging.getLogger("storywatch.cli")

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="YAML config file (env STORYWATCH_CONFIG)")
    parser.add_argument("--host", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port to bind (default 8765)")
    parser.add_argument("--backend", choices=["sqlite", "memory", "redis"])
    parser.add_argument("--redis-url", help="Redis URL (env STORYWATCH_REDIS_URL)")
    parser.add_argument("--log-format", choices=["text", "json"])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="storywatch",
        description="Watch a repo of markdown stories and stream every change over WebSocket.",
    )
    parser.add_argument("--version", action="version", version=f"storywatch {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="watch + serve (the main job)")
    run.add_argument("repo", nargs="?", help="the story repo (default: config `repo` or .)")
    _common(run)
    serve = sub.add_parser("serve", help="serve only (events come from publish or Redis)")
    _common(serve)
    watch = sub.add_parser("watch", help="watch only, writing events to the backend")
    watch.add_argument("repo", nargs="?")
    _common(watch)

    from storywatch import toolbelt

    toolbelt.add_commands(sub, _common)
    return parser


def settings_from(args: argparse.Namespace) -> Settings:
    overrides: dict[str, Any] = {
        "repo": getattr(args, "repo", None),
        "server.host": getattr(args, "host", None),
        "server.port": getattr(args, "port", None),
        "backend.kind": getattr(args, "backend", None),
        "backend.redis_url": getattr(args, "redis_url", None),
        "log.format": getattr(args, "log_format", None),
    }
    if getattr(args, "verbose", False):
        overrides["log.level"] = "debug"
    elif getattr(args, "quiet", False):
        overrides["log.level"] = "warning"
    return load_settings(getattr(args, "config", None), overrides=overrides)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command in ("run", "serve", "watch"):
            settings = settings_from(args)
            setup_logging(settings.log_format, settings.log_level)
            return asyncio.run(_daemon(settings, args.command))
        from storywatch import toolbelt

        return toolbelt.dispatch(args)
    except ConfigError as exc:
        print(f"storywatch: config error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except StateError as exc:
        print(f"storywatch: state error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except StorywatchError as exc:
        print(f"storywatch: {exc}", file=sys.stderr)
        return EXIT_FAIL
    except KeyboardInterrupt:
        return EXIT_OK


async def _daemon(settings: Settings, command: str) -> int:
    from storywatch.app import App, local_token

    tokens = settings.tokens
    generated = None
    serve = command in ("run", "serve")
    if serve and not tokens:
        generated = local_token(settings.repo)
        tokens = (generated.entry,)
    app = App(settings, watch=command in ("run", "watch"), serve=serve, tokens=tokens)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    interrupts = 0

    def on_stop() -> None:
        nonlocal interrupts
        interrupts += 1
        if interrupts > 1:  # a second Ctrl-C: don't wait for anything
            os._exit(130)
        stop.set()

    def on_hup() -> None:
        if settings.config_file is None:
            logger.warning("SIGHUP: no config file to re-read tokens from")
            return
        try:
            entries = reload_tokens(settings.config_file)
        except ConfigError as exc:
            logger.error("SIGHUP: keeping the current tokens: %s", exc)
            return
        closed = app.reload_tokens(entries)
        logger.info("SIGHUP: %d tokens loaded, %d connections closed", len(entries), closed)

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_stop)
    loop.add_signal_handler(signal.SIGHUP, on_hup)

    try:
        await app.start()
    except BaseException:
        with contextlib.suppress(Exception):
            await app.stop()
        raise
    if app.server is not None:
        host = settings.server.host
        shown = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
        scheme = "https" if settings.server.tls_cert else "http"
        base = f"{scheme}://{shown}:{app.server.port}"
        if generated is not None:
            print(f"storywatch: board at {base}/#token={generated.token}", flush=True)
        else:
            print(f"storywatch: listening on {base} (ws at /ws)", flush=True)
    # The process is the daemon's alone (not a test's): garbage collection is paced here.
    freeze_startup()
    server = app.server
    busy = (lambda: server.last_activity) if server else (lambda: app.hub.last_publish)
    pacer = asyncio.create_task(GcPacer(busy).run())
    await stop.wait()
    logger.info("shutting down")
    pacer.cancel()
    await app.stop()
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
