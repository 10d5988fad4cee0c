"""Fan-out: N subscribed clients, events injected with `publish`, vs a bare broadcast server.

Both servers run as subprocesses at the same time: the daemon (`storywatch run --backend
memory`, config with uncapped per-connection limits, see below) and a minimal
`websockets.broadcast` server (`python bench/_common.py refserver`, same frames, no auth,
no filters, no log). Each has its own Node load client (bench/node/driver.mjs) holding N
clients subscribed with `{}` and one publisher. Rounds alternate between the two servers;
the results are medians.

- throughput round: `--events` upserts (each a status change of a distinct story, so no
  event is coalesced) sent in `publish` messages of `--batch` items without waiting; the
  round ends when every client has every event. deliveries/s = N × events / elapsed;
  server CPU µs per delivery = Δ(utime+stime of the server) / deliveries.
- rate round: one upsert per `publish` at `--rate` events/s; per-delivery latency =
  receive time − publish send time (one clock: the load client's).

The daemon's outbound budget (200 events/s, burst 1000 per connection) would cap 1 000
clients at 200 000 deliveries/s and coalesce the backlog; the inbound budget (20 msgs/s)
would refuse a 50/s publisher. `limits` are therefore raised in the bench config
(`--default-limits` keeps the shipped ones). Compression is off in both servers.

Prints one JSON line. `--quick` runs in well under a minute.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--events", type=int, default=1000, help="events per throughput round")
    parser.add_argument("--batch", type=int, default=100, help="items per publish message")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per server (alternating)")
    parser.add_argument(
        "--rate", default="10,50", help="events/s of the latency rounds, comma-separated"
    )
    parser.add_argument(
        "--rate-seconds", type=float, default=10, help="length of one latency round"
    )
    parser.add_argument(
        "--rate-rounds",
        type=int,
        default=2,
        help="latency rounds per server and rate (alternating)",
    )
    parser.add_argument(
        "--default-limits", action="store_true", help="keep the shipped per-connection limits"
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="one extra throughput round on the daemon under py-spy",
    )
    parser.add_argument("--quick", action="store_true", help="small sizes, < 60 s")
    parser.add_argument("--keep", action="store_true", help="keep the temp folder")
    args = parser.parse_args()
    if args.quick:
        args.clients, args.events, args.rounds = 200, 500, 2
        args.rate, args.rate_seconds, args.rate_rounds = "50", 4, 1
    rates_list = [float(r) for r in str(args.rate).split(",") if r.strip()]
    rate_events = max(int(r * args.rate_seconds) for r in rates_list)

    tmp = C.temp_root("fanout")
    repo = C.copy_fixtures(tmp / "repo")
    readers = C.reader_tokens(args.clients)
    limits = None if args.default_limits else C.UNCAPPED_LIMITS
    config = C.write_config(tmp / "config.yaml", readers, limits=limits)
    template = C.story_template()
    ids = [f"bench-{i:05d}" for i in range(max(args.events, rate_events))]
    result: dict[str, Any] = {
        "bench": "fanout",
        "clients": args.clients,
        "events_per_round": args.events,
        "batch": args.batch,
        "rounds": args.rounds,
        "rates": rates_list,
        "rate_seconds": args.rate_seconds,
        "limits": "shipped" if args.default_limits else "uncapped (bench config)",
        "machine": C.machine(),
    }
    with C.Stopper() as stopper:
        sw = stopper.add(C.daemon(repo, config, tmp)).start()
        sw.wait_healthy()
        ref = stopper.add(C.refserver(tmp)).start()
        servers = {"storywatch": sw, "reference": ref}
        drivers: dict[str, C.Driver] = {}
        for name, server in servers.items():
            drv = stopper.add(C.Driver(name, tmp))
            drivers[name] = drv
            drv.call("template", story=template)
            drv.call("publisher", url=server.url(), token=C.PUBLISH_TOKEN, protocol="storywatch.v1")
            # Create the stories before the clients connect (story.created, not measured).
            drv.call("inject", ids=ids, statuses=["draft"], batch=args.batch, k0=0, timeout_s=60)
            made = drv.subscribe_clients(server.url(), readers, args.clients)
            C.progress(f"{name}: {args.clients} clients connected in {made['ms']:.0f} ms")
        k = len(ids)
        # Warm-up round (not measured): a tenth of a round, to both servers.
        warm = ids[: max(1, args.events // 10)]
        for drv in drivers.values():
            drv.call("inject", ids=warm, statuses=["ready"], batch=args.batch, k0=k, timeout_s=300)
        k += len(warm)
        statuses = ["in-progress", "review"]
        rounds: dict[str, list[dict[str, Any]]] = {n: [] for n in servers}
        for r in range(args.rounds):
            order = list(servers) if r % 2 == 0 else list(reversed(servers))
            status = statuses[r % 2]
            for name in order:
                drv, server = drivers[name], servers[name]
                meter = C.CpuMeter(server=server.pid, client=drv.pid).start()
                out = drv.call(
                    "inject",
                    ids=ids[: args.events],
                    statuses=[status],
                    batch=args.batch,
                    k0=k,
                    timeout_s=600,
                )
                used = meter.stop()
                row = _throughput_row(out, used, args.clients * args.events)
                rounds[name].append(row)
                C.progress(f"round {r + 1} {name}: {C.rnd(row)}")
            k += args.events
        rates: dict[float, dict[str, list[dict[str, Any]]]] = {
            rate: {n: [] for n in servers} for rate in rates_list
        }
        for rate in rates_list:
            count = int(rate * args.rate_seconds)
            for r in range(args.rate_rounds):
                order = list(servers) if r % 2 == 0 else list(reversed(servers))
                status = statuses[(args.rounds + r) % 2]
                for name in order:
                    drv, server = drivers[name], servers[name]
                    meter = C.CpuMeter(server=server.pid, client=drv.pid).start()
                    out = drv.call(
                        "rate", ids=ids[:count], statuses=[status], rate=rate, k0=k, timeout_s=300
                    )
                    used = meter.stop()
                    lat = out["latency"]
                    row = {
                        "complete": out["complete"],
                        "deliveries": out["deliveries"],
                        "p50_ms": lat["p50_ms"],
                        "p99_ms": lat["p99_ms"],
                        "max_ms": lat["max_ms"],
                        "server_cpu_us_per_delivery": 1e6
                        * used["server_cpu_s"]
                        / max(1, out["deliveries"]),
                        "server_cpu_share": used["server_cpu_s"] / used["wall_s"],
                        "client_cpu_share": used["client_cpu_s"] / used["wall_s"],
                        "others_cpu_share": used["others_cpu_s"] / used["wall_s"],
                    }
                    rates[rate][name].append(row)
                    C.progress(f"rate {rate:g}/s round {r + 1} {name}: {C.rnd(row)}")
                k += count
        profile = None
        if args.profile:
            prof = C.Profiler(sw.pid, tmp / "fanout-storywatch.collapsed")
            out = drivers["storywatch"].call(
                "inject",
                ids=ids[: args.events],
                statuses=[statuses[args.rounds % 2]],
                batch=args.batch,
                k0=k,
                timeout_s=600,
            )
            profile = prof.stop()
            profile["round"] = C.rnd(out)
            k += args.events
        result["rss_kb_after"] = {name: s.rss_kb() for name, s in servers.items()}

    for name in servers:
        rows = rounds[name]
        cpu_us = C.median(r["server_cpu_us_per_delivery"] for r in rows)
        result[name] = {
            "deliveries_per_s": C.median(r["deliveries_per_s"] for r in rows),
            "cpu_us_per_delivery": cpu_us,
            # What one core would deliver at that cost (the machine is shared: see others).
            "one_core_deliveries_per_s": 1e6 / cpu_us if cpu_us else None,
            "client_cpu_us_per_delivery": C.median(r["client_cpu_us_per_delivery"] for r in rows),
            "server_cpu_share": C.median(r["server_cpu_share"] for r in rows),
            "client_cpu_share": C.median(r["client_cpu_share"] for r in rows),
            "others_cpu_share": C.median(r["others_cpu_share"] for r in rows),
            "avg_frame_bytes": C.median(r["avg_frame_bytes"] for r in rows),
            "complete": all(r["complete"] for r in rows),
            "rounds": rows,
            "rates": {},
        }
        for rate, by_server in rates.items():
            rrows = by_server[name]
            result[name]["rates"][f"{rate:g}"] = {
                "p50_ms": C.median(r["p50_ms"] for r in rrows),
                "p99_ms": C.median(r["p99_ms"] for r in rrows),
                "max_ms": max((r["max_ms"] or 0) for r in rrows),
                "cpu_us_per_delivery": C.median(r["server_cpu_us_per_delivery"] for r in rrows),
                "server_cpu_share": C.median(r["server_cpu_share"] for r in rrows),
                "others_cpu_share": C.median(r["others_cpu_share"] for r in rrows),
                "complete": all(r["complete"] for r in rrows),
                "rounds": rrows,
            }
    sw_r, ref_r = result["storywatch"], result["reference"]
    tput = sw_r["deliveries_per_s"] / ref_r["deliveries_per_s"]
    cpu = sw_r["cpu_us_per_delivery"] / ref_r["cpu_us_per_delivery"]
    result["ratios"] = {
        "deliveries_per_s": tput,
        "cpu_per_delivery": cpu,
        "one_core_deliveries_per_s": sw_r["one_core_deliveries_per_s"]
        / ref_r["one_core_deliveries_per_s"],
        "rate_p99_ms_delta": {
            rate: sw_r["rates"][rate]["p99_ms"] - ref_r["rates"][rate]["p99_ms"]
            for rate in sw_r["rates"]
        },
    }
    result["targets"] = {
        "deliveries_per_s_ge_0.8x": tput >= 0.8,
        "cpu_per_delivery_le_1.3x": cpu <= 1.3,
    }
    if profile is not None:
        result["profile"] = profile
    C.finish(result, tmp, keep=args.keep or args.profile)


def _throughput_row(out: dict[str, Any], used: dict[str, float], expected: int) -> dict[str, Any]:
    deliveries = out["deliveries"]
    elapsed = out["elapsed_s"]
    return {
        "complete": out["complete"] and deliveries >= expected,
        "deliveries": deliveries,
        "elapsed_s": elapsed,
        "deliveries_per_s": deliveries / elapsed if elapsed > 0 else 0.0,
        "server_cpu_us_per_delivery": 1e6 * used["server_cpu_s"] / max(1, deliveries),
        "server_cpu_share": used["server_cpu_s"] / used["wall_s"],
        "client_cpu_share": used["client_cpu_s"] / used["wall_s"],
        "client_cpu_us_per_delivery": 1e6 * used["client_cpu_s"] / max(1, deliveries),
        "others_cpu_share": used["others_cpu_s"] / used["wall_s"],
        "avg_frame_bytes": out["avg_frame_bytes"],
    }


if __name__ == "__main__":
    main()
