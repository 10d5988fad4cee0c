#!/usr/bin/env python3
"""Soak: N WebSocket clients follow every event while story files change at a steady rate.

    python bench/soak.py [--clients 1000] [--rate 20] [--minutes 10] [--procs 2]
                         [--backend sqlite] [--stories 500] [--interval 10] [--out FILE]
                         [--buffer-size 10000]

Starts ``storywatch run`` on a generated repo of ``--stories`` stories (the real daemon, as a
subprocess, so its RSS and CPU are its own), connects ``--clients`` clients (spread over
``--procs`` client processes) that each subscribe to everything, then rewrites one story
file ``--rate`` times a second for ``--minutes`` minutes, round-robin, so every write is
one ``story.updated``. Each write carries ``soak_k`` (its number) and ``soak_t`` (the wall
clock of the write, ms) in its front-matter; clients find them in the frame without parsing
JSON and check that seqs arrive contiguous and once.

Prints JSON lines on stdout (and to ``--out``): one sample every ``--interval`` seconds —
``{"t", "daemon_rss_mb", "daemon_cpu", "clients_rss_mb", "events", "deliveries",
"deliveries_per_s", "connected", "errors", "latency_ms": {"p50", "p99", "max"}}`` — then
one ``{"summary": …}`` with the totals, loss (expected deliveries − received), gaps,
duplicates, disconnects, RSS first/last/max and its slope over the second half of the run.
Exit status 0 when nothing was lost and no client saw an error, 1 otherwise.

Standard library only (the clients speak just enough RFC 6455 to stay cheap). Linux
(reads /proc).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hashlib
import json
import multiprocessing as mp
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
from bisect import bisect_left
from pathlib import Path
from typing import Any

CLK_TCK = os.sysconf("SC_CLK_TCK")
TOKEN = "soak-token"
# Latency histogram bucket edges, ms.
EDGES = [1, 2, 5, 10, 20, 30, 50, 75, 100, 150, 200, 300, 500, 750, 1000, 2000, 5000, 10000, 30000]
_LISTEN = re.compile(r"https?://[^:/]+:(\d+)")


# -- the daemon --------------------------------------------------------------------------------


def make_repo(root: Path, stories: int) -> list[Path]:
    epics = ["integration", "ui", "api", "data", "infra", "security", "docs"]
    statuses = ["draft", "ready", "in-progress", "review", "done"]
    paths = []
    for n in range(stories):
        folder = root / epics[n % len(epics)]
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"SOAK-{n:05d}.md"
        path.write_text(story_text(n, epics[n % len(epics)], statuses[n % len(statuses)], 0, 0))
        paths.append(path)
    return paths


def story_text(n: int, epic: str, status: str, k: int, t_ms: int) -> str:
    return (
        f"---\nid: SOAK-{n:05d}\ntitle: Soak story {n}\nepic: {epic}\nstatus: {status}\n"
        f"owner: team-{n % 9}\nlabels: [soak, load]\nsoak_k: {k}\nsoak_t: {t_ms}\n---\n"
        f"# SOAK-{n:05d}\n\n" + "Some body text for the soak test. " * 8 + "\n"
    )


class Daemon:
    def __init__(
        self, repo: Path, workdir: Path, clients: int, backend: str, buffer_size: int
    ) -> None:
        config = workdir / "soak-config.yaml"
        digest = hashlib.sha256(TOKEN.encode()).hexdigest()
        config.write_text(
            "auth:\n  tokens:\n"
            f"    - {{name: soak, sha256: {digest}, scopes: [read]}}\n"
            f"limits:\n  max_connections_per_token: {clients + 50}\n"
            f"  max_connections: {clients + 100}\n"
            f"backend:\n  buffer_size: {buffer_size}\n"
        )
        args = [
            sys.executable,
            "-m",
            "storywatch",
            "run",
            str(repo),
            "--port",
            "0",
            "--backend",
            backend,
            "--config",
            str(config),
            "-q",
        ]
        self.proc = subprocess.Popen(
            args,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        self.stderr: list[str] = []
        threading.Thread(target=self._pump, args=(self.proc.stderr,), daemon=True).start()
        assert self.proc.stdout is not None
        self.port = 0
        for line in self.proc.stdout:
            match = _LISTEN.search(line)
            if match:
                self.port = int(match.group(1))
                break
        if not self.port:
            raise SystemExit("daemon did not start:\n" + "".join(self.stderr[-30:]))
        threading.Thread(target=self._pump, args=(self.proc.stdout,), daemon=True).start()

    def _pump(self, stream: Any) -> None:
        for line in stream:
            self.stderr.append(line)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def healthz(self) -> dict[str, Any]:
        import urllib.request

        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/healthz", timeout=10) as r:
            body: dict[str, Any] = json.loads(r.read())
            return body

    def wait_healthy(self, timeout: float = 60) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            try:
                return self.healthz()
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def loadavg() -> float:
    """The machine's 1-minute load average: other work on the box skews latency."""
    with open("/proc/loadavg") as handle:
        return float(handle.read().split()[0])


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


# -- clients (one asyncio loop per client process) -----------------------------------------------


class Counters:
    def __init__(self) -> None:
        self.deliveries = 0
        self.gaps = 0
        self.duplicates = 0
        self.errors = 0  # error / resync frames, bad frames
        self.disconnects = 0
        self.connected = 0
        self.hist = [0] * (len(EDGES) + 1)
        self.max_latency = 0.0
        self.error_samples: list[str] = []

    def error(self, text: str) -> None:
        self.errors += 1
        if len(self.error_samples) < 5:
            self.error_samples.append(text[:300])

    def take(self) -> dict[str, Any]:
        """Counters since the last take (the histogram and max reset too)."""
        out = {
            "deliveries": self.deliveries,
            "gaps": self.gaps,
            "duplicates": self.duplicates,
            "errors": self.errors,
            "disconnects": self.disconnects,
            "connected": self.connected,
            "hist": self.hist,
            "max_latency": self.max_latency,
            "error_samples": self.error_samples,
        }
        self.hist = [0] * (len(EDGES) + 1)
        self.max_latency = 0.0
        self.error_samples = []
        return out


def _int_after(frame: bytes, key: bytes) -> int | None:
    at = frame.find(key)
    if at < 0:
        return None
    at += len(key)
    end = at
    while end < len(frame) and 48 <= frame[end] <= 57:
        end += 1
    return int(frame[at:end]) if end > at else None


class FollowProtocol(asyncio.Protocol):
    """A minimal WebSocket client (RFC 6455) that follows every event.

    The load generator must cost far less than the server it loads: with websockets, two
    client processes following 20 000 deliveries/s need both cores of a 2-core machine, and
    the soak would measure them. Frames from the server are unmasked and never fragmented
    here, so reading one is a header and a ``bytes.find`` for ``"seq":`` and ``"soak_t":``;
    JSON is parsed only for ``welcome`` and ``subscribed``. Pings are answered.
    """

    def __init__(self, client: Follower) -> None:
        self.client = client
        self.buffer = bytearray()
        self.open = False
        self.transport: asyncio.Transport | None = None
        self.closed = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        key = base64.b64encode(os.urandom(16)).decode()
        request = (
            f"GET {self.client.path} HTTP/1.1\r\nHost: {self.client.host}\r\n"
            "Upgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
            "Sec-WebSocket-Protocol: storywatch.v1\r\n\r\n"
        )
        transport.write(request.encode())  # type: ignore[attr-defined]

    def send_text(self, text: str) -> None:
        payload = text.encode()
        self._send(0x1, payload)

    def _send(self, opcode: int, payload: bytes) -> None:
        mask = os.urandom(4)
        length = len(payload)
        if length < 126:
            header = struct.pack("!BB", 0x80 | opcode, 0x80 | length)
        elif length < 65536:
            header = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, length)
        else:
            header = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, length)
        masked = bytes(b ^ mask[n % 4] for n, b in enumerate(payload))
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(header + mask + masked)

    def data_received(self, data: bytes) -> None:
        buf = self.buffer
        buf += data
        if not self.open:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            status = bytes(buf[:end]).split(b" ", 2)
            if len(status) < 2 or status[1] != b"101":
                self.client.counters.error(f"handshake: {bytes(buf[:120])!r}")
                assert self.transport is not None
                self.transport.close()
                return
            del buf[: end + 4]
            self.open = True
        pos = 0
        size = len(buf)
        while size - pos >= 2:
            first, second = buf[pos], buf[pos + 1]
            length = second & 0x7F
            head = 2
            if length == 126:
                if size - pos < 4:
                    break
                length = int.from_bytes(buf[pos + 2 : pos + 4], "big")
                head = 4
            elif length == 127:
                if size - pos < 10:
                    break
                length = int.from_bytes(buf[pos + 2 : pos + 10], "big")
                head = 10
            if size - pos < head + length:
                break
            payload = bytes(buf[pos + head : pos + head + length])
            pos += head + length
            opcode = first & 0x0F
            if opcode == 0x1:
                self.client.on_frame(payload, self)
            elif opcode == 0x9:
                self._send(0xA, payload)
            elif opcode == 0x8:
                code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else None
                self.client.close_code = code
                self._send(0x8, payload[:2])
                assert self.transport is not None
                self.transport.close()
            elif opcode != 0xA:
                self.client.counters.error(f"unexpected opcode {opcode}")
        del buf[:pos]

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)


class Follower:
    """One soak client: subscribes to everything, checks seqs, resumes after a drop."""

    def __init__(
        self, host: str, port: int, path: str, counters: Counters, state: dict[str, int]
    ) -> None:
        self.host, self.port, self.path = host, port, path
        self.counters = counters
        self.state = state
        self.last_seq: int | None = None
        self.epoch: str | None = None
        self.phase = "welcome"
        self.close_code: int | None = None
        self.ready = asyncio.Event()

    def on_frame(self, frame: bytes, protocol: FollowProtocol) -> None:
        counters = self.counters
        if frame.startswith(b'{"type":"story.'):
            seq = _int_after(frame, b'"seq":')
            last = self.last_seq
            if seq is None or last is None:
                counters.error(f"event before subscribed: {frame[:200]!r}")
                return
            if seq <= last:
                counters.duplicates += 1
                return
            if seq != last + 1:
                counters.gaps += seq - last - 1
            self.last_seq = seq
            self.state["last"] = seq
            counters.deliveries += 1
            written = _int_after(frame, b'"soak_t":')
            if written:
                latency = time.time() * 1000 - written
                counters.hist[bisect_left(EDGES, latency)] += 1
                if latency > counters.max_latency:
                    counters.max_latency = latency
        elif frame.startswith(b'{"type":"heartbeat"'):
            return
        elif self.phase == "welcome":
            welcome = json.loads(frame)
            subscribe: dict[str, Any] = {"type": "subscribe", "sub": "s", "filter": {}}
            if self.last_seq is not None and self.epoch == welcome.get("epoch"):
                subscribe["since"] = {"epoch": self.epoch, "seq": self.last_seq}
            self.epoch = welcome.get("epoch")
            self.phase = "subscribed"
            protocol.send_text(json.dumps(subscribe))
        elif self.phase == "subscribed":
            subscribed = json.loads(frame)
            if subscribed.get("type") != "subscribed" or subscribed.get("recovered") is False:
                counters.error(f"subscribe: {subscribed}")
            if self.last_seq is None:
                self.last_seq = subscribed["seq"]
                self.state["start"] = subscribed["seq"]
            self.phase = "live"
            counters.connected += 1
            self.ready.set()
        else:
            counters.error(frame.decode(errors="replace"))

    async def run(self, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        delay = 0.2
        while not stop.is_set():
            self.phase = "welcome"
            try:
                _, protocol = await loop.create_connection(
                    lambda: FollowProtocol(self), self.host, self.port
                )
            except OSError as exc:
                self.counters.disconnects += 1
                self.counters.error(f"connect: {exc!r}")
                self.ready.set()
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5)
                continue
            try:
                await protocol.closed
            finally:
                if self.phase == "live":
                    self.counters.connected -= 1
            if stop.is_set():
                return
            self.counters.disconnects += 1
            self.counters.error(f"disconnected (close code {self.close_code})")
            self.ready.set()
            await asyncio.sleep(delay)


def client_process(
    port: int, path: str, count: int, report: Any, commands: Any, index: int
) -> None:
    """A client process: ``count`` followers; reports its counters when asked."""

    async def main() -> None:
        counters = Counters()
        stop = asyncio.Event()
        followers = [Follower("127.0.0.1", port, path, counters, {}) for _ in range(count)]
        tasks: list[asyncio.Task[None]] = []
        gate = asyncio.Semaphore(50)

        async def start(follower: Follower) -> None:
            async with gate:  # at most 50 handshakes at a time
                tasks.append(asyncio.create_task(follower.run(stop)))
                await follower.ready.wait()

        await asyncio.gather(*(start(f) for f in followers))
        loop = asyncio.get_running_loop()
        while True:
            command = await loop.run_in_executor(None, commands.get)
            if command == "sample":
                sample = counters.take()
                sample["rss_kb"] = rss_kb(os.getpid())
                sample["cpu_s"] = cpu_s(os.getpid())
                report.put((index, sample))
            elif command == "final":
                report.put(
                    (
                        index,
                        {
                            "last_seqs": [f.state.get("last") for f in followers],
                            "start_seqs": [f.state.get("start") for f in followers],
                        },
                    )
                )
            elif command == "stop":
                stop.set()
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                report.put((index, "stopped"))
                return

    asyncio.run(main())


# -- the changer and the run ------------------------------------------------------------------


def percentile(hist: list[int], p: float) -> float | None:
    total = sum(hist)
    if not total:
        return None
    seen = 0
    for n, count in enumerate(hist):
        seen += count
        if seen >= total * p:
            return float(EDGES[n]) if n < len(EDGES) else float("inf")
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=20.0, help="file changes per second")
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--procs", type=int, default=2, help="client processes")
    parser.add_argument("--backend", default="sqlite", choices=["sqlite", "memory"])
    parser.add_argument("--stories", type=int, default=500)
    parser.add_argument("--interval", type=float, default=10.0, help="seconds per sample")
    parser.add_argument(
        "--buffer-size",
        type=int,
        default=10_000,
        help="backend.buffer_size: the replay buffer fills after this many "
        "events, then memory should stay flat",
    )
    parser.add_argument("--out", type=Path, help="also write the JSON lines here")
    args = parser.parse_args(argv)

    out = args.out.open("w") if args.out else None

    def emit(record: dict[str, Any]) -> None:
        line = json.dumps(record, separators=(",", ":"))
        print(line, flush=True)
        if out:
            out.write(line + "\n")
            out.flush()

    workdir = Path(tempfile.mkdtemp(prefix="storywatch-soak-"))
    repo = workdir / "repo"
    paths = make_repo(repo, args.stories)
    daemon = Daemon(repo, workdir, args.clients, args.backend, args.buffer_size)
    ctx = mp.get_context("spawn")
    workers: list[tuple[Any, Any]] = []
    report = ctx.Queue()
    try:
        daemon.wait_healthy()
        path = f"/ws?token={TOKEN}"
        shares = [
            args.clients // args.procs + (1 if n < args.clients % args.procs else 0)
            for n in range(args.procs)
        ]
        started = time.monotonic()
        for index, share in enumerate(shares):
            commands = ctx.Queue()
            proc = ctx.Process(
                target=client_process,
                args=(daemon.port, path, share, report, commands, index),
                daemon=True,
            )
            proc.start()
            workers.append((proc, commands))

        def ask(command: str) -> list[Any]:
            for _, commands in workers:
                commands.put(command)
            answers: list[Any] = [None] * len(workers)
            for _ in workers:
                index, answer = report.get(timeout=120)
                answers[index] = answer
            return answers

        while True:  # every client connected and subscribed
            samples = ask("sample")
            connected = sum(s["connected"] for s in samples)
            if connected >= args.clients:
                break
            if time.monotonic() - started > 300:
                raise SystemExit(f"only {connected} of {args.clients} clients connected")
            time.sleep(0.5)
        health = daemon.wait_healthy()
        start_seq = health["seq"]
        emit(
            {
                "start": {
                    "clients": args.clients,
                    "rate": args.rate,
                    "minutes": args.minutes,
                    "procs": args.procs,
                    "backend": args.backend,
                    "stories": args.stories,
                    "buffer_size": args.buffer_size,
                    "connect_s": round(time.monotonic() - started, 1),
                    "daemon_rss_mb": round(rss_kb(daemon.pid) / 1024, 1),
                    "cpus": os.cpu_count(),
                    "seq": start_seq,
                }
            }
        )

        # The changer runs in a thread: a steady rate whatever the sampling costs.
        written = [0]
        stop_changes = threading.Event()

        def changer() -> None:
            epics = ["integration", "ui", "api", "data", "infra", "security", "docs"]
            statuses = ["draft", "ready", "in-progress", "review", "done"]
            period = 1.0 / args.rate
            next_at = time.monotonic()
            k = 0
            while not stop_changes.is_set():
                n = k % len(paths)
                k += 1
                text = story_text(
                    n,
                    epics[n % len(epics)],
                    statuses[n % len(statuses)],
                    k,
                    int(time.time() * 1000),
                )
                tmp = paths[n].with_name(paths[n].name + ".soak~")
                tmp.write_text(text)
                os.replace(tmp, paths[n])  # atomic, like an editor's save
                written[0] = k
                next_at += period
                delay = next_at - time.monotonic()
                if delay > 0:
                    stop_changes.wait(delay)

        thread = threading.Thread(target=changer, daemon=True)
        run_start = time.monotonic()
        cpu_prev, t_prev = cpu_s(daemon.pid), run_start
        thread.start()
        rss_series: list[tuple[float, float]] = []
        totals = {"deliveries": 0, "gaps": 0, "duplicates": 0, "errors": 0, "disconnects": 0}
        hist_total = [0] * (len(EDGES) + 1)
        max_latency = 0.0
        error_samples: list[str] = []
        end_at = run_start + args.minutes * 60

        def sample(final: bool = False) -> None:
            nonlocal cpu_prev, t_prev, max_latency
            samples = ask("sample")
            now = time.monotonic()
            hist = [sum(s["hist"][n] for s in samples) for n in range(len(EDGES) + 1)]
            for n, count in enumerate(hist):
                hist_total[n] += count
            deliveries = sum(s["deliveries"] for s in samples)
            window = {key: sum(s[key] for s in samples) for key in totals}
            delta = {key: window[key] - totals[key] for key in totals}
            totals.update(window)
            latest = max(s["max_latency"] for s in samples)
            max_latency = max(max_latency, latest)
            for s in samples:
                error_samples.extend(s["error_samples"])
            cpu_now = cpu_s(daemon.pid)
            rss = rss_kb(daemon.pid) / 1024
            rss_series.append((now - run_start, rss))
            health = daemon.healthz()
            emit(
                {
                    "t": round(now - run_start, 1),
                    "daemon_rss_mb": round(rss, 1),
                    "daemon_cpu": round((cpu_now - cpu_prev) / max(now - t_prev, 1e-9), 2),
                    "clients_rss_mb": round(sum(s["rss_kb"] for s in samples) / 1024, 1),
                    "clients_cpu": round(
                        (sum(s["cpu_s"] for s in samples) - clients_cpu[0])
                        / max(now - t_prev, 1e-9),
                        2,
                    ),
                    "written": written[0],
                    "events": health["seq"] - start_seq,
                    "deliveries": deliveries,
                    "deliveries_per_s": round(delta["deliveries"] / max(now - t_prev, 1e-9)),
                    "connected": sum(s["connected"] for s in samples),
                    "errors": delta["errors"] + delta["gaps"] + delta["duplicates"],
                    "disconnects": delta["disconnects"],
                    "latency_ms": {
                        "p50": percentile(hist, 0.5),
                        "p99": percentile(hist, 0.99),
                        "max": round(latest, 1),
                    },
                    "loadavg_1m": loadavg(),
                    **({"final": True} if final else {}),
                }
            )
            cpu_prev, t_prev = cpu_now, now
            clients_cpu[0] = sum(s["cpu_s"] for s in samples)

        clients_cpu = [sum(s["cpu_s"] for s in ask("sample"))]
        next_sample = run_start + args.interval
        while time.monotonic() < end_at:
            time.sleep(max(0.0, min(next_sample, end_at) - time.monotonic()))
            if time.monotonic() >= next_sample:
                sample()
                next_sample += args.interval
        stop_changes.set()
        thread.join()
        duration = time.monotonic() - run_start

        # Settle: the daemon has emitted an event for every write (or its seq stopped
        # moving for 5 s), then every client reaches that seq (or 60 s pass).
        final_seq, moved = daemon.healthz()["seq"], time.monotonic()
        while final_seq - start_seq < written[0] and time.monotonic() - moved < 5:
            time.sleep(0.2)
            seq = daemon.healthz()["seq"]
            if seq != final_seq:
                final_seq, moved = seq, time.monotonic()
        deadline = time.monotonic() + 60
        while True:
            finals = ask("final")
            lasts = [seq for answer in finals for seq in answer["last_seqs"]]
            if all(seq == final_seq for seq in lasts) or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        sample(final=True)
        starts = [seq for answer in finals for seq in answer["start_seqs"]]
        expected = sum(final_seq - s for s in starts if s is not None)
        behind = sum(1 for seq in lasts if seq != final_seq)
        half = [rss for t, rss in rss_series if t >= duration / 2]
        slope = None
        if len(half) >= 2:
            times = [t for t, _ in rss_series if t >= duration / 2]
            mean_t, mean_r = sum(times) / len(times), sum(half) / len(half)
            var = sum((t - mean_t) ** 2 for t in times)
            if var:
                slope = (
                    sum((t - mean_t) * (r - mean_r) for t, r in zip(times, half, strict=True)) / var
                )
        summary = {
            "clients": args.clients,
            "rate": args.rate,
            "seconds": round(duration, 1),
            "backend": args.backend,
            "written": written[0],
            "events": final_seq - start_seq,
            "deliveries": totals["deliveries"],
            "expected_deliveries": expected,
            "lost": expected - totals["deliveries"],
            "gaps": totals["gaps"],
            "duplicates": totals["duplicates"],
            "errors": totals["errors"],
            "disconnects": totals["disconnects"],
            "clients_behind_at_end": behind,
            "latency_ms": {
                "p50": percentile(hist_total, 0.5),
                "p90": percentile(hist_total, 0.9),
                "p99": percentile(hist_total, 0.99),
                "p999": percentile(hist_total, 0.999),
                "max": round(max_latency, 1),
            },
            "daemon_rss_mb": {
                "first": rss_series[0][1] if rss_series else None,
                "last": rss_series[-1][1] if rss_series else None,
                "max": max(r for _, r in rss_series) if rss_series else None,
                "slope_mb_per_min_second_half": round(slope * 60, 3) if slope is not None else None,
            },
            "daemon_cpu_s": round(cpu_s(daemon.pid), 1),
            "error_samples": error_samples[:5],
        }
        emit({"summary": summary})
        ok = (
            summary["lost"] == 0
            and not totals["errors"]
            and not totals["gaps"]
            and not totals["duplicates"]
            and not totals["disconnects"]
            and behind == 0
        )
        return 0 if ok else 1
    finally:
        with contextlib.suppress(Exception):
            for _, commands in workers:
                commands.put("stop")
            for proc, _ in workers:
                proc.join(10)
                if proc.is_alive():
                    proc.kill()
        code = daemon.stop()
        if code not in (0, None):
            print(f"daemon exited with {code}:\n" + "".join(daemon.stderr[-30:]), file=sys.stderr)
        shutil.rmtree(workdir, ignore_errors=True)
        if out:
            out.close()


if __name__ == "__main__":
    sys.exit(main())
