"""What 20 webhooks cost the fan-out to 1 000 WebSocket clients: a same-run ratio.

Two daemons run at the same time (`storywatch run --backend memory`, the bench config of
bench/fanout.py: uncapped per-connection limits), identical but for `webhooks:` — "plain"
has none, "hooks" has `--hooks` signed `standard` hooks, each pointing at a receiver that
answers 200 at once (one asyncio HTTP/1.1 server in a thread of this process, keep-alive,
one path per hook). Each daemon has its own Node load client (bench/node/driver.mjs) holding
`--clients` clients subscribed with `{}` and one publisher. Rounds alternate between them;
results are medians.

- throughput round: `--events` upserts (distinct stories, status changes) in `publish`
  messages of `--batch` items without waiting; the round ends when every client has every
  event. Reported per daemon: deliveries/s and the daemon's CPU µs per delivery over that
  time (with hooks: the hooks deliver at the same time, in the same process). The hooks
  fall behind the clients (each POST is a round trip): after the clients' round, the bench
  waits until every hook has every event, and reports the hooks' extra time and the
  daemon's CPU per POST over the whole round (clients' deliveries subtracted at the plain
  daemon's cost). The next round starts only when the hooks are done.
- rate round: one upsert per `publish` at `--rate` events/s; per-delivery latency to the
  clients (p50/p99), with and without hooks.

Prints one JSON line. The default run takes ~1.5 min; `--quick` < 1 min.

    python bench/webhooks_fanout.py [--clients 1000] [--hooks 20] [--events 500] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


class Receivers:
    """One HTTP/1.1 server (keep-alive, 200 at once) in a thread of its own; counts the
    requests per path (one path per hook)."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._server: asyncio.Server | None = None

    def start(self) -> Receivers:
        self._thread.start()
        self._ready.wait(10)
        return self

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._server = self._loop.run_until_complete(
            asyncio.start_server(self._serve, "127.0.0.1", 0)
        )
        self.port = int(self._server.sockets[0].getsockname()[1])
        self._ready.set()
        self._loop.run_forever()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.split(b"\r\n")
                path = lines[0].split(b" ")[1].decode()
                length = 0
                for line in lines[1:]:
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                await reader.readexactly(length)
                self.counts[path] = self.counts.get(path, 0) + 1
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    def total(self) -> int:
        return sum(self.counts.values())

    def wait_total(self, total: int, timeout: float = 300) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.total() >= total:
                return True
            time.sleep(0.01)
        return False

    def stop(self) -> None:
        def close() -> None:
            if self._server is not None:
                self._server.close()
            self._loop.stop()

        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(close)
        self._thread.join(5)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--hooks", type=int, default=20)
    parser.add_argument("--events", type=int, default=500, help="events per throughput round")
    parser.add_argument("--batch", type=int, default=100, help="items per publish message")
    parser.add_argument("--rounds", type=int, default=2, help="rounds per daemon (alternating)")
    parser.add_argument("--rate", type=float, default=10, help="events/s of the latency rounds")
    parser.add_argument("--rate-seconds", type=float, default=8)
    parser.add_argument("--quick", action="store_true", help="small sizes, < 60 s")
    parser.add_argument("--keep", action="store_true", help="keep the temp folder")
    args = parser.parse_args()
    if args.quick:
        args.clients, args.events, args.rounds, args.rate_seconds = 300, 200, 1, 4

    tmp = C.temp_root("webhooks-fanout")
    repo = C.copy_fixtures(tmp / "repo")
    readers = C.reader_tokens(args.clients)
    rate_events = int(args.rate * args.rate_seconds)
    ids = [f"bench-{i:05d}" for i in range(max(args.events, rate_events))]
    template = C.story_template()
    result: dict[str, Any] = {
        "bench": "webhooks_fanout",
        "clients": args.clients,
        "hook_count": args.hooks,
        "events_per_round": args.events,
        "batch": args.batch,
        "rounds": args.rounds,
        "rate": args.rate,
        "machine": C.machine(),
    }
    with C.Stopper() as stopper:
        receivers = stopper.add(Receivers().start())
        base = f"http://127.0.0.1:{receivers.port}"
        hooks = [
            {"name": f"hook-{n:02d}", "url": f"{base}/h{n:02d}", "secret": SECRET}
            for n in range(args.hooks)
        ]
        log = {"level": "warning"}
        configs = {
            "plain": C.write_config(tmp / "plain.yaml", readers, limits=C.UNCAPPED_LIMITS, log=log),
            "hooks": C.write_config(
                tmp / "hooks.yaml",
                readers,
                limits=C.UNCAPPED_LIMITS,
                log=log,
                webhooks=hooks,  # type: ignore[arg-type]
            ),
        }
        servers: dict[str, C.Server] = {}
        drivers: dict[str, C.Driver] = {}
        for name, config in configs.items():
            server = stopper.add(C.daemon(repo, config, tmp, name=f"storywatch-{name}")).start()
            server.wait_healthy()
            servers[name] = server
            drv = stopper.add(C.Driver(name, tmp))
            drivers[name] = drv
            drv.call("template", story=template)
            drv.call("publisher", url=server.url(), token=C.PUBLISH_TOKEN, protocol="storywatch.v1")
            drv.call("inject", ids=ids, statuses=["draft"], batch=args.batch, k0=0, timeout_s=60)
            made = drv.subscribe_clients(server.url(), readers, args.clients)
            C.progress(f"{name}: {args.clients} clients connected in {made['ms']:.0f} ms")
        posted = len(ids) * args.hooks  # the creates, delivered to every hook
        receivers.wait_total(posted)
        k = len(ids)
        rounds: dict[str, list[dict[str, Any]]] = {name: [] for name in servers}
        statuses = ["in-progress", "review"]
        for r in range(args.rounds + 1):  # round 0 warms up (not counted)
            order = list(servers) if r % 2 == 0 else list(reversed(servers))
            for name in order:
                drv, server = drivers[name], servers[name]
                meter = C.CpuMeter(server=server.pid, client=drv.pid).start()
                out = drv.call(
                    "inject",
                    ids=ids[: args.events],
                    statuses=[statuses[r % 2]],
                    batch=args.batch,
                    k0=k,
                    timeout_s=600,
                )
                used = meter.stop()
                row = fanout_row(out, used, args.clients * args.events)
                if name == "hooks":
                    posted += args.events * args.hooks
                    done = receivers.wait_total(posted)
                    whole = meter.stop()
                    row["hooks_done"] = done
                    row["hooks_extra_s"] = whole["wall_s"] - used["wall_s"]
                    row["round_cpu_s"] = whole["server_cpu_s"]
                    row["posts"] = args.events * args.hooks
                    row["posts_per_s"] = row["posts"] / whole["wall_s"]
                if r:
                    rounds[name].append(row)
                C.progress(f"round {r} {name}: {C.rnd(row)}")
            k += args.events
        latency: dict[str, dict[str, Any]] = {}
        count = int(args.rate * args.rate_seconds)
        for name in servers:
            drv, server = drivers[name], servers[name]
            meter = C.CpuMeter(server=server.pid).start()
            out = drv.call(
                "rate", ids=ids[:count], statuses=["done"], rate=args.rate, k0=k, timeout_s=300
            )
            used = meter.stop()
            if name == "hooks":
                posted += count * args.hooks
                receivers.wait_total(posted)
            latency[name] = {
                "complete": out["complete"],
                "p50_ms": out["latency"]["p50_ms"],
                "p99_ms": out["latency"]["p99_ms"],
                "max_ms": out["latency"]["max_ms"],
                "server_cpu_share": used["server_cpu_s"] / used["wall_s"],
            }
            C.progress(f"rate {args.rate:g}/s {name}: {C.rnd(latency[name])}")
        k += count
        result["rss_kb_after"] = {name: s.rss_kb() for name, s in servers.items()}
        result["posts_received"] = receivers.total()
        result["posts_expected"] = posted

    summary: dict[str, Any] = {}
    for name, rows in rounds.items():
        summary[name] = {
            "deliveries_per_s": C.median(r["deliveries_per_s"] for r in rows),
            "cpu_us_per_delivery": C.median(r["server_cpu_us_per_delivery"] for r in rows),
            "complete": all(r["complete"] for r in rows),
            "rounds": rows,
        }
    plain, hooked = summary["plain"], summary["hooks"]
    hook_rows = hooked["rounds"]
    # The daemon's CPU per POST: the whole round's CPU, less the clients' deliveries at the
    # plain daemon's cost per delivery.
    clients_cpu_s = plain["cpu_us_per_delivery"] * args.clients * args.events / 1e6
    hooked["cpu_ms_per_post"] = C.median(
        1e3 * (r["round_cpu_s"] - clients_cpu_s) / r["posts"] for r in hook_rows
    )
    hooked["posts_per_s"] = C.median(r["posts_per_s"] for r in hook_rows)
    hooked["hooks_extra_s"] = C.median(r["hooks_extra_s"] for r in hook_rows)
    result["without_hooks"], result["with_hooks"] = plain, hooked
    result["latency"] = latency
    result["ratios"] = {
        "deliveries_per_s": hooked["deliveries_per_s"] / plain["deliveries_per_s"],
        "cpu_per_delivery": hooked["cpu_us_per_delivery"] / plain["cpu_us_per_delivery"],
        "rate_p99_ms_delta": latency["hooks"]["p99_ms"] - latency["plain"]["p99_ms"],
    }
    result["every_post_arrived"] = result["posts_received"] >= result["posts_expected"]
    C.finish(result, tmp, keep=args.keep)


def fanout_row(out: dict[str, Any], used: dict[str, float], expected: int) -> dict[str, Any]:
    deliveries, elapsed = out["deliveries"], out["elapsed_s"]
    return {
        "complete": out["complete"] and deliveries >= expected,
        "deliveries": deliveries,
        "elapsed_s": elapsed,
        "deliveries_per_s": deliveries / elapsed if elapsed > 0 else 0.0,
        "server_cpu_us_per_delivery": 1e6 * used["server_cpu_s"] / max(1, deliveries),
        "server_cpu_share": used["server_cpu_s"] / used["wall_s"],
        "others_cpu_share": used["others_cpu_s"] / used["wall_s"],
    }


if __name__ == "__main__":
    main()
