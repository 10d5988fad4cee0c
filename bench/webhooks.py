"""Webhooks: events/s one hook sustains against a local receiver that answers at once.

For each backend: the real daemon (`python -m storywatch run EMPTY_REPO --backend B`) with
one `standard` hook (signed) pointing at a receiver in this process (a minimal asyncio
HTTP/1.1 server answering 200 with keep-alive). N stories are published over WebSocket in
messages of 500 items, as fast as the daemon takes them; the hook starts behind and
delivers them one at a time, in order. `events_per_s` = N / (first publish sent → N-th
request received): the hook is the bottleneck, so this is the rate it sustains. Also: the
daemon's CPU seconds over the run, and whether every seq arrived once, in order.

    python bench/webhooks.py [--events 5000] [--backend sqlite|memory|both] [--keep]

Prints one JSON line; the default run takes ~15 s. No timing is asserted anywhere.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C
import websockets

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
ITEMS_PER_PUBLISH = 500  # each message stays under the 64 KiB limit


class Receiver:
    """Counts requests; answers each at once (200, keep-alive)."""

    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.seqs: list[int] = []
        self.first = 0.0
        self.last = 0.0
        self.done = asyncio.Event()
        self.server: asyncio.Server | None = None

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                body = await reader.readexactly(length)
                now = time.perf_counter()
                self.first = self.first or now
                self.last = now
                self.seqs.append(int(json.loads(body)["seq"]))
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
                if len(self.seqs) >= self.expected:
                    self.done.set()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        except asyncio.CancelledError:
            pass
        finally:
            writer.close()

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()


async def publish(port: int, count: int) -> tuple[float, float]:
    """Publish ``count`` new stories; (when the first message was sent, when the last was
    acknowledged), on perf_counter."""
    url = f"ws://127.0.0.1:{port}/ws"
    headers = {"Authorization": f"Bearer {C.PUBLISH_TOKEN}"}
    async with websockets.connect(url, additional_headers=headers, max_size=None) as ws:
        await ws.recv()  # welcome
        started = time.perf_counter()
        for first in range(0, count, ITEMS_PER_PUBLISH):
            items = [
                {"op": "upsert", "story": {"id": f"B-{n}", "title": f"bench {n}", "status": "todo"}}
                for n in range(first, min(count, first + ITEMS_PER_PUBLISH))
            ]
            await ws.send(json.dumps({"type": "publish", "ref": str(first), "items": items}))
            while True:
                reply = json.loads(await ws.recv())
                if reply.get("type") in ("published", "error"):
                    if reply["type"] == "error":
                        raise RuntimeError(f"publish refused: {reply}")
                    break
        return started, time.perf_counter()


async def one_run(backend: str, events: int, tmp: Path) -> dict[str, Any]:
    folder = tmp / backend
    repo = folder / "repo"
    repo.mkdir(parents=True)
    receiver = Receiver(events)
    port = await receiver.start()
    hook = {"name": "bench", "url": f"http://127.0.0.1:{port}/hook", "secret": SECRET}
    config = C.write_config(
        folder / "config.yaml",
        [],
        limits=C.UNCAPPED_LIMITS,
        webhooks=[hook],  # type: ignore[arg-type]
        log={"level": "warning"},
    )
    daemon = C.daemon(repo, config, folder, backend=backend, name=f"storywatch-{backend}")
    await asyncio.to_thread(daemon.start)
    try:
        await asyncio.to_thread(daemon.wait_healthy)
        cpu0 = daemon.cpu()
        started, published = await publish(daemon.port, events)
        await asyncio.wait_for(receiver.done.wait(), timeout=120)
        cpu = daemon.cpu() - cpu0
    finally:
        await asyncio.to_thread(daemon.stop)
        await receiver.close()
    elapsed = receiver.last - started
    return {
        "backend": backend,
        "events": events,
        "events_per_s": events / elapsed,
        "elapsed_s": elapsed,
        "publish_s": published - started,
        "daemon_cpu_s": cpu,
        "in_order_once": receiver.seqs == list(range(1, events + 1)),
    }


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    tmp = C.temp_root("webhooks")
    backends = ["sqlite", "memory"] if args.backend == "both" else [args.backend]
    runs = []
    for backend in backends:
        C.progress(f"{backend}: {args.events} events through one hook")
        runs.append(await one_run(backend, args.events, tmp))
        C.progress(f"{backend}: {runs[-1]['events_per_s']:.0f} events/s")
    result: dict[str, Any] = {
        "bench": "webhooks",
        "machine": C.machine(),
        "code": C.code_state(),
        "runs": runs,
    }
    C.finish(result, tmp, keep=args.keep)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=5000)
    parser.add_argument("--backend", choices=["sqlite", "memory", "both"], default="both")
    parser.add_argument("--keep", action="store_true", help="keep the temp folder")
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
