"""Save → receive latency: a story file saved on disk → its event at every one of N clients.

For each settle time (default: the shipped 50 ms, and 10 ms) the daemon runs on a copy of
the fixtures with `watch.settle_ms` set, N clients (default 1 000, Node `ws`, one process)
subscribe with `{}`, and the script saves `ui/UI-005-dark-mode.md` (plain write, status and
a `bench_k` counter changed) `--saves` times, spaced apart. Beside it, in the same run, a bare
`watchfiles.awatch` loop (`python bench/_common.py awatch`, the same `step` and `debounce`
as the daemon's watcher) watches its own copy of the fixtures, and the same save is made
there; its save → yield time is the floor. A third system shows what the fan-out alone
costs on this machine: the bare `websockets.broadcast` server of `fanout.py` with its own
`awatch` loop (`refserver --watch`, same step and debounce; it reads and parses the saved
file and broadcasts it, nothing else) and its own N clients. Saves rotate between the three
(one each, in turn), so all see the same machine.

Times: the save time is `time.time()` right after the file is closed; the client's receive
time is the Node driver's wall clock, corrected by its measured offset to this process's
clock (median of the fastest round trips; typically well under 0.1 ms of error).

Target (issue 9): per-delivery p99 ≤ the floor's p99 + 25 ms with 1 000 clients. The
reference's own p99 − floor says how much of that is the machine's cost of 1 000 sends.
Prints one JSON line. `--quick` runs in well under a minute.
"""

from __future__ import annotations

import argparse
import json
import queue
import random
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C

STORY = "ui/UI-005-dark-mode.md"
MAX_BATCH_MS = 500  # storywatch.watcher.MAX_BATCH_MS: the daemon's awatch debounce floor


class AwatchBaseline:
    def __init__(self, folder: Path, step: int, debounce: int, logdir: Path) -> None:
        self._log = open(logdir / f"awatch-{step}.log", "w")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [
                sys.executable,
                str(C.BENCH / "_common.py"),
                "awatch",
                str(folder),
                "--step",
                str(step),
                "--debounce",
                str(debounce),
            ],
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        assert self.proc.stdout is not None
        first = self.proc.stdout.readline()
        if first.strip() != "ready":
            raise RuntimeError(f"awatch baseline did not start: {first!r}")
        threading.Thread(target=self._pump, daemon=True).start()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line)

    def drain(self) -> None:
        while not self.lines.empty():
            self.lines.get_nowait()

    def next_yield(self, timeout: float) -> float | None:
        try:
            return float(self.lines.get(timeout=timeout).split()[0])
        except queue.Empty:
            return None

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


def save(path: Path, original: str, k: int) -> float:
    text = C.set_front_matter(original, status=("in-progress", "review")[k % 2], bench_k=k)
    with open(path, "w") as handle:
        handle.write(text)
    return time.time()


def run_settle(settle: int, args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    work = tmp / f"settle-{settle}"
    work.mkdir()
    repo = C.copy_fixtures(work / "repo")
    floor_dir = C.copy_fixtures(work / "floor")
    readers = C.reader_tokens(args.clients)
    config = C.write_config(work / "config.yaml", readers, watch={"settle_ms": settle})
    original = (repo / STORY).read_text()
    ref_dir = C.copy_fixtures(work / "reference")
    sw_file, floor_file, ref_file = repo / STORY, floor_dir / STORY, ref_dir / STORY
    debounce = max(MAX_BATCH_MS, settle * 2)
    save_times: dict[int, float] = {}
    ref_times: dict[int, float] = {}
    floor_lat: list[float] = []
    missing = {"storywatch": 0, "awatch": 0, "reference": 0}
    profile = None
    with C.Stopper() as stopper:
        sw = stopper.add(C.daemon(repo, config, work)).start()
        sw.wait_healthy()
        floor = stopper.add(AwatchBaseline(floor_dir, settle, debounce, work))
        ref = stopper.add(C.refserver(work, watch=ref_dir, step=settle, debounce=debounce)).start()
        drivers = {}
        for system, server in (("storywatch", sw), ("reference", ref)):
            drv = stopper.add(C.Driver(f"latency-{settle}-{system}", work))
            made = drv.subscribe_clients(server.url(), readers, args.clients)
            C.progress(f"settle {settle}: {args.clients} {system} clients in {made['ms']:.0f} ms")
            drv.call("record", on=True)
            drivers[system] = drv
        drv = drivers["storywatch"]
        offset = drv.clock_offset_ms()
        ref_offset = drivers["reference"].clock_offset_ms()
        C.progress(f"driver clock offsets {offset:.3f} / {ref_offset:.3f} ms")
        time.sleep(0.5)
        meter = C.CpuMeter(
            server=sw.pid,
            client=drv.pid,
            floor=floor.pid,
            ref=ref.pid,
            ref_client=drivers["reference"].pid,
        ).start()
        prof = C.Profiler(sw.pid, work / "latency-storywatch.collapsed") if args.profile else None
        for i in range(args.saves):
            k = 1_000_000 * settle + i
            order = ("storywatch", "awatch", "reference")
            for system in order[i % 3 :] + order[: i % 3]:
                start = time.perf_counter()
                if system in drivers:
                    target, file = (
                        drivers[system],
                        (sw_file if system == "storywatch" else ref_file),
                    )
                    target.call("target", k_from=k, k_to=k)
                    times = save_times if system == "storywatch" else ref_times
                    times[k] = save(file, original, k)
                    got = target.call("wait", timeout_s=5)
                    if not got["complete"]:
                        missing[system] += 1
                else:
                    floor.drain()
                    t_save = save(floor_file, original, k)
                    t_yield = floor.next_yield(5)
                    if t_yield is None:
                        missing["awatch"] += 1
                    else:
                        floor_lat.append(1000 * (t_yield - t_save))
                rest = args.spacing + random.uniform(0, 0.05) - (time.perf_counter() - start)
                if rest > 0:
                    time.sleep(rest)
            if (i + 1) % max(1, args.saves // 5) == 0:
                C.progress(f"settle {settle}: {i + 1}/{args.saves} saves")
        used = meter.stop()
        if prof is not None:
            profile = prof.stop()
        dumps = {}
        for system, target in drivers.items():
            dumps[system] = work / f"records-{system}.json"
            target.call("dump", file=str(dumps[system]))
        rss = sw.rss_kb()

    def latencies(
        system: str, saved: dict[int, float], clock_offset: float
    ) -> tuple[list[float], list[float], list[float], int]:
        records = {int(k): v for k, v in json.loads(dumps[system].read_text()).items()}
        per_delivery: list[float] = []
        last: list[float] = []
        first: list[float] = []
        short = 0
        for k, t_save in saved.items():
            times = [t - clock_offset - 1000 * t_save for t in records.get(k, [])]
            if len(times) < args.clients:
                short += 1
            if not times:
                continue
            per_delivery.extend(times)
            last.append(max(times))
            first.append(min(times))
        return per_delivery, first, last, short

    per_delivery, first, last, short = latencies("storywatch", save_times, offset)
    ref_delivery, ref_first, ref_last, ref_short = latencies("reference", ref_times, ref_offset)

    def stats(values: list[float]) -> dict[str, Any]:
        return {
            "p50_ms": C.percentile(values, 50),
            "p99_ms": C.percentile(values, 99),
            "max_ms": max(values) if values else None,
            "n": len(values),
        }

    sw_stats = stats(per_delivery)
    floor_stats = stats(floor_lat)
    out: dict[str, Any] = {
        "settle_ms": settle,
        "awatch_step_ms": settle,
        "awatch_debounce_ms": debounce,
        "storywatch_per_delivery": sw_stats,
        "storywatch_last_client": stats(last),
        "storywatch_first_client": stats(first),
        "floor_awatch": floor_stats,
        "reference_per_delivery": stats(ref_delivery),
        "reference_last_client": stats(ref_last),
        "reference_first_client": stats(ref_first),
        "saves_short_of_all_clients": short,
        "reference_saves_short_of_all_clients": ref_short,
        "missing": missing,
        "clock_offset_ms": offset,
        "server_cpu_ms_per_save": 1000 * used["server_cpu_s"] / max(1, args.saves),
        "client_cpu_share": used["client_cpu_s"] / used["wall_s"],
        "others_cpu_share": used["others_cpu_s"] / used["wall_s"],
        "server_rss_kb": rss,
    }
    if sw_stats["p99_ms"] is not None and floor_stats["p99_ms"] is not None:
        out["p99_minus_floor_ms"] = sw_stats["p99_ms"] - floor_stats["p99_ms"]
        out["target_p99_le_floor_plus_25ms"] = out["p99_minus_floor_ms"] <= 25
        ref_p99 = out["reference_per_delivery"]["p99_ms"]
        if ref_p99 is not None:
            out["reference_p99_minus_floor_ms"] = ref_p99 - floor_stats["p99_ms"]
            out["p99_minus_reference_ms"] = sw_stats["p99_ms"] - ref_p99
    if profile is not None:
        out["profile"] = profile
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--saves", type=int, default=200, help="saves per system and settle")
    parser.add_argument("--settle", default="50,10", help="settle_ms values, comma-separated")
    parser.add_argument("--spacing", type=float, default=0.3, help="seconds between saves")
    parser.add_argument("--profile", action="store_true", help="py-spy on the daemon")
    parser.add_argument("--quick", action="store_true", help="small sizes, < 60 s")
    parser.add_argument("--keep", action="store_true", help="keep the temp folder")
    args = parser.parse_args()
    if args.quick:
        args.clients, args.saves = 100, 20
    settles = [int(s) for s in args.settle.split(",") if s.strip()]
    tmp = C.temp_root("latency")
    result: dict[str, Any] = {
        "bench": "latency",
        "clients": args.clients,
        "saves": args.saves,
        "spacing_s": args.spacing,
        "machine": C.machine(),
        "runs": [],
    }
    for settle in settles:
        run = run_settle(settle, args, tmp)
        C.progress(f"settle {settle}: {C.rnd(run)}")
        result["runs"].append(run)
    result["targets"] = {
        f"settle_{r['settle_ms']}_p99_le_floor_plus_25ms": r.get("target_p99_le_floor_plus_25ms")
        for r in result["runs"]
    }
    C.finish(result, tmp, keep=args.keep or args.profile)


if __name__ == "__main__":
    main()
