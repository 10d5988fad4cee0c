"""Run the real daemon as a subprocess and talk to it over real sockets."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import websockets
import yaml

from tests.conftest import committed_fixtures, scaled

# Tokens every test config carries: name → (token, scopes, epics).
TOKENS: dict[str, tuple[str, list[str], list[str] | None]] = {
    "reader": ("tok-reader", ["read"], None),
    "admin": ("tok-admin", ["read", "publish", "admin"], None),
    "publisher": ("tok-publisher", ["publish"], None),
    "integration": ("tok-integration", ["read"], ["integration"]),
    "ui-publisher": ("tok-ui-publisher", ["publish"], ["ui"]),
}


def token_config() -> list[dict[str, Any]]:
    return [
        {
            "name": name,
            "sha256": hashlib.sha256(token.encode()).hexdigest(),
            "scopes": scopes,
            **({"epics": epics} if epics is not None else {}),
        }
        for name, (token, scopes, epics) in TOKENS.items()
    ]


def copy_fixtures(dest: Path) -> Path:
    """A private copy of the example stories as committed (see ``committed_fixtures``)."""
    shutil.copytree(committed_fixtures(), dest)
    return dest


_LISTEN = re.compile(r"https?://[^:/]+:(\d+)")


class Daemon:
    """``storywatch run`` on a repo, bound to port 0; ``port`` is read from its stdout."""

    def __init__(
        self,
        repo: Path,
        workdir: Path,
        *,
        command: str = "run",
        backend: str = "memory",
        config: dict[str, Any] | None = None,
        tokens: bool = True,
        extra_args: list[str] | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.repo = repo
        self.workdir = workdir
        self.command = command
        self.backend = backend
        self.config: dict[str, Any] = {"watch": {"settle_ms": 20}, **(config or {})}
        if tokens:
            self.config.setdefault("auth", {"tokens": token_config()})
        self.extra_args = extra_args or []
        self.env = env or {}
        self.proc: subprocess.Popen[str] | None = None
        self.port = 0
        self.stderr_lines: list[str] = []
        self.stdout_lines: list[str] = []
        self.config_path = workdir / f"config-{id(self)}.yaml"

    def write_config(self) -> None:
        self.config_path.write_text(yaml.safe_dump(self.config))

    def start(self, timeout: float = 20) -> Daemon:
        self.write_config()
        args = [sys.executable, "-m", "storywatch", self.command]
        if self.command in ("run", "watch"):
            args.append(str(self.repo))
        args += ["--port", "0", "--backend", self.backend, "--config", str(self.config_path)]
        args += self.extra_args
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **self.env}
        self.proc = subprocess.Popen(
            args,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        self._threads: list[threading.Thread] = []
        self._spawn_pump(self.proc.stderr, self.stderr_lines)
        deadline = time.monotonic() + scaled(timeout)
        assert self.proc.stdout is not None
        if self.command == "watch":
            self._spawn_pump(self.proc.stdout, self.stdout_lines)
            return self
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                break
            self.stdout_lines.append(line)
            match = _LISTEN.search(line)
            if match:
                self.port = int(match.group(1))
                self._spawn_pump(self.proc.stdout, self.stdout_lines)
                return self
        self.stop()
        raise RuntimeError("daemon did not start:\n" + "".join(self.stderr_lines[-40:]))

    def _spawn_pump(self, stream: Any, sink: list[str]) -> None:
        thread = threading.Thread(target=self._pump, args=(stream, sink), daemon=True)
        thread.start()
        self._threads.append(thread)

    def _reap(self) -> None:
        assert self.proc is not None
        for thread in self._threads:
            thread.join(timeout=5)
        self._threads = []
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None and not stream.closed:
                stream.close()

    @staticmethod
    def _pump(stream: Any, sink: list[str]) -> None:
        for line in stream:
            sink.append(line)

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def ws_url(self, token: str | None = "tok-reader") -> str:
        suffix = f"?token={token}" if token else ""
        return f"ws://127.0.0.1:{self.port}/ws{suffix}"

    def signal(self, sig: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)

    def stop(self, timeout: float = 15) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(scaled(timeout))
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._reap()
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if self.proc is not None:
            self._reap()

    def wait_unhealthy(self, timeout: float = 20) -> dict[str, Any]:
        """Wait until /healthz answers 503; return its body."""
        import urllib.error
        import urllib.request

        deadline = time.monotonic() + scaled(timeout)
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(self.http + "/healthz", timeout=2):
                    pass
            except urllib.error.HTTPError as exc:
                body: dict[str, Any] = json.loads(exc.read())
                exc.close()
                return body
            except OSError:
                pass
            time.sleep(0.05)
        raise TimeoutError("daemon stayed healthy")

    def wait_healthy(self, timeout: float = 20) -> dict[str, Any]:
        import urllib.error
        import urllib.request

        deadline = time.monotonic() + scaled(timeout)
        last: Any = None
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(self.http + "/healthz", timeout=2) as resp:
                    body: dict[str, Any] = json.loads(resp.read())
                    return body
            except urllib.error.HTTPError as exc:
                last = exc.read()
            except OSError as exc:
                last = exc
            time.sleep(0.05)
        raise TimeoutError(f"daemon not healthy: {last!r}")


class Client:
    """A WebSocket client with helpers that wait for messages, never sleep."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.welcome: dict[str, Any] = {}

    @classmethod
    async def connect(cls, url: str, **kwargs: Any) -> Client:
        ws = await websockets.connect(url, subprotocols=["storywatch.v1"], max_size=None, **kwargs)
        client = cls(ws)
        client.welcome = await client.recv()
        assert client.welcome["type"] == "welcome", client.welcome
        return client

    async def send(self, message: dict[str, Any]) -> None:
        await self.ws.send(json.dumps(message))

    async def recv(self, timeout: float = 10) -> dict[str, Any]:
        raw = await asyncio.wait_for(self.ws.recv(), scaled(timeout))
        message: dict[str, Any] = json.loads(raw)
        return message

    async def recv_until(
        self,
        predicate: Callable[[dict[str, Any]], bool],
        timeout: float = 10,
        *,
        skip_heartbeats: bool = True,
    ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """The first message matching ``predicate`` and every message before it."""
        seen: list[dict[str, Any]] = []
        deadline = asyncio.get_running_loop().time() + scaled(timeout)
        while True:
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                raise TimeoutError(f"no matching message; got {seen!r}"[:4000])
            raw = await asyncio.wait_for(self.ws.recv(), remaining)
            message = json.loads(raw)
            if skip_heartbeats and message.get("type") == "heartbeat":
                continue
            if predicate(message):
                return message, seen
            seen.append(message)

    async def subscribe(
        self, sub: str = "s1", filter: dict[str, Any] | None = None, **extra: Any
    ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """Subscribe; returns ``subscribed`` and the snapshot stories (if asked)."""
        await self.send({"type": "subscribe", "sub": sub, "filter": filter or {}, **extra})
        subscribed, _ = await self.recv_until(lambda m: m.get("type") in ("subscribed", "error"))
        stories: list[dict[str, Any]] = []
        if subscribed["type"] == "subscribed" and extra.get("snapshot"):
            while True:
                chunk, _ = await self.recv_until(lambda m: m.get("type") == "snapshot")
                stories.extend(chunk["stories"])
                if chunk["done"]:
                    break
        return subscribed, stories

    async def events(self, count: int, timeout: float = 10) -> list[dict[str, Any]]:
        out = []
        for _ in range(count):
            message, _ = await self.recv_until(
                lambda m: str(m.get("type", "")).startswith("story."), timeout
            )
            out.append(message)
        return out

    async def no_event(self, within: float = 0.6) -> None:
        """Assert that no story event arrives within ``within`` seconds."""
        try:
            message, _ = await self.recv_until(
                lambda m: str(m.get("type", "")).startswith("story."), within
            )
        except TimeoutError:
            return
        raise AssertionError(f"unexpected event: {message}")

    async def close(self) -> None:
        await self.ws.close()
