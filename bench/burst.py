"""Burst: a `git checkout` that changes 5 000 stories, with 100 clients connected.

A git repo of `--stories` generated stories (fixtures with varied ids) is committed on
`main`; branch `other` changes the `status` of every one of them. The daemon runs on the
checkout with `server.heartbeat_s` 0.5; `--clients` clients (Node `ws`) subscribe with `{}`
and `snapshot: true` and keep the state of every story from the snapshot and the events
(re-subscribing with a snapshot on `resync`). Each round runs `git checkout` to the other
branch and measures:

- `consistent_after_checkout_s`: from the end of `git checkout` until every client holds
  exactly the final state of all stories (target ≤ 3 s);
- `max_heartbeat_gap_s`: the longest time between two heartbeats at any client, from just
  before the checkout until 1.5 s after all are consistent (target ≤ 2 s, heartbeat 0.5 s).

Rounds alternate main → other → main …; medians, and the worst gap. Run once with the
shipped limits (200 events/s per connection, burst 1000) and once with the outbound budget
uncapped (`--limits shipped,uncapped`, the default), to separate the rate limit from the
daemon's own speed. Prints one JSON line; `--quick` runs in < 60 s.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C

GIT = [
    "git",
    "-c",
    "user.name=bench",
    "-c",
    "user.email=bench@example.invalid",
    "-c",
    "commit.gpgsign=false",
    "-c",
    "init.defaultBranch=main",
]
FLIP = {"done": "in-progress"}


def git(repo: Path, *args: str) -> str:
    return subprocess.run(
        [*GIT, *args], cwd=repo, check=True, capture_output=True, text=True
    ).stdout


def make_repo(repo: Path, count: int) -> dict[str, dict[str, str]]:
    main_states = C.generate_corpus(repo, count)
    git(repo, "init", "-q")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "stories")
    git(repo, "checkout", "-q", "-b", "other")
    other_states: dict[str, str] = {}
    for path in repo.rglob("*.md"):
        text = path.read_text()
        match = C._ID_LINE.search(text)
        assert match is not None
        story_id = match.group(1).strip("'\"")
        new = FLIP.get(main_states[story_id], "done")
        other_states[story_id] = new
        path.write_text(C.set_front_matter(text, status=new))
    git(repo, "commit", "-q", "-am", "every status changed")
    git(repo, "checkout", "-q", "main")
    return {"main": main_states, "other": other_states}


def run_variant(
    limits_name: str,
    args: argparse.Namespace,
    tmp: Path,
    repo: Path,
    states: dict[str, dict[str, str]],
) -> dict[str, Any]:
    work = tmp / limits_name
    work.mkdir()
    readers = C.reader_tokens(args.clients)
    limits = C.UNCAPPED_LIMITS if limits_name == "uncapped" else None
    config = C.write_config(
        work / "config.yaml", readers, server={"heartbeat_s": args.heartbeat}, limits=limits
    )
    branch = git(repo, "rev-parse", "--abbrev-ref", "HEAD").strip()
    rows: list[dict[str, Any]] = []
    profile = None
    with C.Stopper() as stopper:
        sw = stopper.add(C.daemon(repo, config, work)).start(timeout=300)
        health = sw.wait_healthy(300)
        C.progress(f"{limits_name}: daemon ready with {health['stories']} stories")
        drv = stopper.add(C.Driver(f"burst-{limits_name}", work))
        drv.call("expect", states=states[branch])
        t0 = time.perf_counter()
        drv.subscribe_clients(
            sw.url(), readers, args.clients, concurrency=20, snapshot=True, track=True
        )
        C.progress(
            f"{limits_name}: {args.clients} clients with snapshots in "
            f"{time.perf_counter() - t0:.1f} s"
        )
        offset = drv.clock_offset_ms()
        ok = drv.call("consistent", timeout_s=60)
        if not ok["complete"]:
            raise RuntimeError(f"clients not consistent before the burst: {ok}")
        for r in range(args.rounds + (1 if args.profile else 0)):
            profiling = r == args.rounds
            target = "other" if branch == "main" else "main"
            drv.call("expect", states=states[target])
            time.sleep(1.2)  # a couple of heartbeats at rest
            drv.call("hb", reset=True)
            seq0 = sw.wait_healthy()["seq"]
            meter = C.CpuMeter(server=sw.pid, client=drv.pid).start()
            prof = C.Profiler(sw.pid, work / "burst-storywatch.collapsed") if profiling else None
            t_start = time.time()
            git(repo, "checkout", "-q", target)
            t_end = time.time()
            got = drv.call("consistent", timeout_s=args.timeout)
            used = meter.stop()
            time.sleep(1.5)  # let a heartbeat stuck behind the burst arrive and count
            hb = drv.call("hb", reset=True)
            if prof is not None:
                profile = prof.stop()
            seq1 = sw.wait_healthy()["seq"]
            consistent_at = (got["t"] - offset) / 1000
            row = {
                "to": target,
                "complete": got["complete"],
                "checkout_s": t_end - t_start,
                "consistent_after_checkout_s": consistent_at - t_end if got["complete"] else None,
                "consistent_after_start_s": consistent_at - t_start if got["complete"] else None,
                "max_heartbeat_gap_s": hb["max_gap_ms"] / 1000,
                "min_heartbeats_seen": hb["min_heartbeats"],
                "events": seq1 - seq0,
                "resyncs": got["resyncs"],
                "min_matching_stories": got["min_matches"],
                "server_cpu_s": used["server_cpu_s"],
                "client_cpu_s": used["client_cpu_s"],
                "others_cpu_s": used["others_cpu_s"],
                "wall_s": used["wall_s"],
            }
            C.progress(
                f"{limits_name} round {r + 1}{' (profiled)' if profiling else ''}: {C.rnd(row)}"
            )
            if not profiling:
                rows.append(row)
            branch = target
            if not got["complete"]:  # wait for the stragglers before the next round
                drv.call("consistent", timeout_s=args.timeout)
        rss = sw.rss_kb()
    done = [r for r in rows if r["complete"]]
    out: dict[str, Any] = {
        "limits": limits_name,
        "consistent_after_checkout_s": C.median(r["consistent_after_checkout_s"] for r in done),
        "worst_consistent_after_checkout_s": max(
            (r["consistent_after_checkout_s"] for r in done), default=None
        ),
        "max_heartbeat_gap_s": max(r["max_heartbeat_gap_s"] for r in rows),
        "median_heartbeat_gap_s": C.median(r["max_heartbeat_gap_s"] for r in rows),
        "checkout_s": C.median(r["checkout_s"] for r in rows),
        "server_cpu_s": C.median(r["server_cpu_s"] for r in rows),
        "client_cpu_s": C.median(r["client_cpu_s"] for r in rows),
        "all_complete": len(done) == len(rows),
        "server_rss_kb": rss,
        "rounds": rows,
    }
    out["targets"] = {
        "consistent_le_3s": (out["worst_consistent_after_checkout_s"] or 1e9) <= 3.0
        and out["all_complete"],
        "heartbeat_gap_le_2s": out["max_heartbeat_gap_s"] <= 2.0,
    }
    if profile is not None:
        out["profile"] = profile
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--stories", type=int, default=5000)
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--heartbeat", type=float, default=0.5, help="server.heartbeat_s")
    parser.add_argument(
        "--limits",
        default="shipped,uncapped",
        help="variants: shipped (default limits), uncapped (bench limits)",
    )
    parser.add_argument("--timeout", type=float, default=120, help="seconds to wait per round")
    parser.add_argument("--profile", action="store_true", help="one extra round under py-spy")
    parser.add_argument("--quick", action="store_true", help="small sizes, < 60 s")
    parser.add_argument("--keep", action="store_true", help="keep the temp folder")
    args = parser.parse_args()
    if args.quick:
        args.stories, args.clients, args.rounds, args.limits = 1000, 20, 2, "uncapped"
    tmp = C.temp_root("burst")
    repo = tmp / "repo"
    states = make_repo(repo, args.stories)
    result: dict[str, Any] = {
        "bench": "burst",
        "stories": args.stories,
        "clients": args.clients,
        "rounds": args.rounds,
        "heartbeat_s": args.heartbeat,
        "machine": C.machine(),
        "variants": [],
    }
    for name in [v.strip() for v in args.limits.split(",") if v.strip()]:
        result["variants"].append(run_variant(name, args, tmp, repo, states))
    result["targets"] = {v["limits"]: v["targets"] for v in result["variants"]}
    C.finish(result, tmp, keep=args.keep or args.profile)


if __name__ == "__main__":
    main()
