"""Memory: RSS per idle connection (1 000 connections) and RSS with 10 000 stories indexed.

Connections: each round starts a fresh server, reads its RSS (VmRSS from /proc) at rest,
opens `--connections` clients (Node `ws`, one process) that subscribe with `{}` and then
stay idle, waits `--settle` seconds and reads RSS again; per connection = ΔRSS / N.
Rounds alternate between the daemon (compression is off in its server: not configurable),
the bare `websockets` reference server with compression off, and the reference with
permessage-deflate on (the client offers it), to show what compression would cost.

Stories: the daemon's RSS once ready on `--stories` generated stories (fixtures with varied
ids) vs on the 50 fixtures, beside a baseline process that holds the same files parsed with
CSafeLoader (`python bench/_common.py rawhold DIR`) vs that process on the fixtures.

Target (issue 9): ≤ 20 kB RSS per idle connection. Prints one JSON line; `--quick` < 60 s.
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


def connection_round(
    kind: str,
    args: argparse.Namespace,
    tmp: Path,
    repo: Path,
    config: Path,
    readers: list[str],
    drv: C.Driver,
) -> dict[str, Any]:
    if kind == "storywatch":
        server = C.daemon(repo, config, tmp)
    else:
        server = C.refserver(tmp, compression=kind == "reference_deflate", name=kind)
    with C.Stopper() as stopper:
        stopper.add(server).start()
        if kind == "storywatch":
            server.wait_healthy()
        time.sleep(args.settle)
        before = server.rss_kb()
        t0 = time.perf_counter()
        drv.subscribe_clients(
            server.url(), readers, args.connections, deflate=kind == "reference_deflate"
        )
        connect_s = time.perf_counter() - t0
        time.sleep(args.settle)
        after = server.rss_kb()
        drv.call("close")
    return {
        "rss_before_kb": before,
        "rss_after_kb": after,
        "kb_per_connection": (after - before) / args.connections,
        "connect_s": connect_s,
    }


def rawhold_rss(folder: Path) -> int:
    proc = subprocess.Popen(
        [sys.executable, str(C.BENCH / "_common.py"), "rawhold", str(folder)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        proc.stdout.readline()  # the timing line
        proc.stdout.readline()  # "holding"
        return C.rss_kb(proc.pid)
    finally:
        proc.terminate()
        proc.wait(10)


def stories_rss(args: argparse.Namespace, tmp: Path, config: Path) -> dict[str, Any]:
    corpus = tmp / "corpus"
    C.generate_corpus(corpus, args.stories)
    small = tmp / "fixtures"
    C.copy_fixtures(small)
    out: dict[str, Any] = {"stories": args.stories}
    for name, folder in (("fixtures", small), ("corpus", corpus)):
        rows = []
        for _ in range(args.rounds):
            with C.Stopper() as stopper:
                sw = stopper.add(C.daemon(folder, config, tmp, name=f"stories-{name}")).start(
                    timeout=300
                )
                health = sw.wait_healthy(300)
                time.sleep(args.settle)
                rows.append(sw.rss_kb())
            out[f"indexed_{name}"] = health["stories"]
        out[f"daemon_rss_kb_{name}"] = C.median(rows)
        out[f"raw_rss_kb_{name}"] = C.median(rawhold_rss(folder) for _ in range(args.rounds))
    n = out["indexed_corpus"] - out["indexed_fixtures"]
    out["daemon_kb_per_story"] = (out["daemon_rss_kb_corpus"] - out["daemon_rss_kb_fixtures"]) / n
    out["raw_kb_per_story"] = (out["raw_rss_kb_corpus"] - out["raw_rss_kb_fixtures"]) / n
    out["ratio_per_story"] = out["daemon_kb_per_story"] / out["raw_kb_per_story"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--connections", type=int, default=1000)
    parser.add_argument("--stories", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--settle", type=float, default=2.0, help="seconds before reading RSS")
    parser.add_argument("--quick", action="store_true", help="small sizes, < 60 s")
    parser.add_argument("--keep", action="store_true", help="keep the temp folder")
    args = parser.parse_args()
    if args.quick:
        args.connections, args.stories, args.rounds, args.settle = 300, 2000, 1, 1.0
    tmp = C.temp_root("memory")
    repo = C.copy_fixtures(tmp / "repo")
    readers = C.reader_tokens(args.connections)
    config = C.write_config(tmp / "config.yaml", readers)
    result: dict[str, Any] = {
        "bench": "memory",
        "connections": args.connections,
        "rounds": args.rounds,
        "machine": C.machine(),
    }
    kinds = ["storywatch", "reference", "reference_deflate"]
    rows: dict[str, list[dict[str, Any]]] = {k: [] for k in kinds}
    with C.Stopper() as stopper:
        drv = stopper.add(C.Driver("memory", tmp))
        for r in range(args.rounds):
            for kind in kinds if r % 2 == 0 else list(reversed(kinds)):
                row = connection_round(kind, args, tmp, repo, config, readers, drv)
                rows[kind].append(row)
                C.progress(f"round {r + 1} {kind}: {C.rnd(row)}")
    for kind in kinds:
        result[kind] = {
            "kb_per_connection": C.median(r["kb_per_connection"] for r in rows[kind]),
            "rss_before_kb": C.median(r["rss_before_kb"] for r in rows[kind]),
            "rss_after_kb": C.median(r["rss_after_kb"] for r in rows[kind]),
            "rounds": rows[kind],
        }
    sw_kb = result["storywatch"]["kb_per_connection"]
    result["ratio_vs_reference"] = sw_kb / result["reference"]["kb_per_connection"]
    result["stories_rss"] = stories_rss(args, tmp, config)
    result["targets"] = {"le_20kB_per_idle_connection": sw_kb <= 20}
    C.finish(result, tmp, keep=args.keep)


if __name__ == "__main__":
    main()
