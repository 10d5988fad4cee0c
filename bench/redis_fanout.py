"""Fan-out on Redis: the same clients and events through 1 vs 2 ``serve`` processes.

One redis-server (no persistence), two streams on it: topology A is one ``storywatch serve
--backend redis``, topology B two of them. The same number of Node clients is spread over
the servers of each topology; events are injected with ``publish`` into the first server of
each (it diffs against the shared index and appends to the stream; every server follows the
stream and fans out to its own clients). Rounds alternate between the topologies; medians.

    python bench/redis_fanout.py [--clients 1000] [--events 500] [--quick]

Prints one JSON line: deliveries/s and server CPU per delivery for each topology, and the
ratio B/A. On a 2-core machine the second server competes with the first for the same
cores (and with Redis and the load client), so the ratio shows what a second process costs
and gains here, not on a real multi-host deployment.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C


class Redis:
    def __init__(self, workdir: Path) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise SystemExit("redis_fanout needs redis-server (apt-get install redis-server)")
        self.port = C.free_port()
        self.proc = subprocess.Popen(
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(workdir),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(0.3)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


def serve(redis: Redis, config: Path, logdir: Path, name: str) -> C.Server:
    args = [
        sys.executable,
        "-m",
        "storywatch",
        "serve",
        "--backend",
        "redis",
        "--redis-url",
        redis.url,
        "--port",
        "0",
        "--config",
        str(config),
    ]
    return C.Server(name, args, logdir)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--events", type=int, default=500)
    parser.add_argument("--batch", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.clients, args.events, args.rounds = 200, 200, 2

    tmp = C.temp_root("redis-fanout")
    readers = C.reader_tokens(args.clients)
    template = C.story_template()
    ids = [f"bench-{i:05d}" for i in range(args.events)]
    result: dict[str, Any] = {
        "bench": "redis_fanout",
        "clients": args.clients,
        "events_per_round": args.events,
        "batch": args.batch,
        "rounds": args.rounds,
        "machine": C.machine(),
    }
    topologies = {"one_server": 1, "two_servers": 2}
    with C.Stopper() as stopper:
        redis = stopper.add(Redis(tmp))
        setups: dict[str, tuple[list[C.Server], C.Driver]] = {}
        for name, count in topologies.items():
            config = C.write_config(
                tmp / f"{name}.yaml",
                readers,
                limits=C.UNCAPPED_LIMITS,
                backend={"stream": name},
            )
            servers = [
                stopper.add(serve(redis, config, tmp, f"{name}-{i}")).start() for i in range(count)
            ]
            for server in servers:
                server.wait_healthy()
            drv = stopper.add(C.Driver(name, tmp))
            drv.call("template", story=template)
            drv.call(
                "publisher", url=servers[0].url(), token=C.PUBLISH_TOKEN, protocol="storywatch.v1"
            )
            drv.call("inject", ids=ids, statuses=["draft"], batch=args.batch, k0=0, timeout_s=120)
            for i, server in enumerate(servers):
                share = args.clients // count + (1 if i < args.clients % count else 0)
                drv.subscribe_clients(server.url(), readers, share)
            setups[name] = (servers, drv)
            C.progress(f"{name}: {count} server(s), {args.clients} clients")
        k = len(ids)
        rows: dict[str, list[dict[str, Any]]] = {name: [] for name in topologies}
        statuses = ["ready", "in-progress", "review", "done"]
        for r in range(args.rounds):
            order = list(topologies) if r % 2 == 0 else list(reversed(topologies))
            for name in order:
                servers, drv = setups[name]
                pids = {f"server{i}": s.pid for i, s in enumerate(servers)}
                meter = C.CpuMeter(client=drv.pid, redis=redis.proc.pid, **pids).start()
                out = drv.call(
                    "inject",
                    ids=ids,
                    statuses=[statuses[r % len(statuses)]],
                    batch=args.batch,
                    k0=k,
                    timeout_s=600,
                )
                used = meter.stop()
                server_cpu = sum(v for key, v in used.items() if key.startswith("server"))
                deliveries = out["deliveries"]
                row = {
                    "complete": out["complete"] and deliveries >= args.clients * args.events,
                    "deliveries_per_s": deliveries / out["elapsed_s"],
                    "server_cpu_us_per_delivery": 1e6 * server_cpu / max(1, deliveries),
                    "server_cpu_share": server_cpu / used["wall_s"],
                    "redis_cpu_share": used["redis_cpu_s"] / used["wall_s"],
                    "client_cpu_share": used["client_cpu_s"] / used["wall_s"],
                    "others_cpu_share": used["others_cpu_s"] / used["wall_s"],
                }
                rows[name].append(row)
                C.progress(f"round {r + 1} {name}: {C.rnd(row)}")
            k += len(ids)
    for name in topologies:
        result[name] = {
            key: C.median(row[key] for row in rows[name])
            for key in rows[name][0]
            if key != "complete"
        }
        result[name]["complete"] = all(row["complete"] for row in rows[name])
    one, two = result["one_server"], result["two_servers"]
    result["ratio_two_vs_one"] = {
        "deliveries_per_s": two["deliveries_per_s"] / one["deliveries_per_s"],
        "server_cpu_us_per_delivery": two["server_cpu_us_per_delivery"]
        / one["server_cpu_us_per_delivery"],
    }
    C.finish(result, tmp, keep=False)


if __name__ == "__main__":
    main()
