"""Startup: 10 000 stories on disk → daemon ready (`/healthz` 200), vs raw read + C-YAML parse.

The corpus is generated from `fixtures/stories` by varying the ids (`UI-005-g00042`, …),
250 files per folder. The page cache is warmed once before measuring. Rounds alternate:

- baseline: a fresh `python bench/_common.py rawparse DIR` — os.walk, read, decode, split
  the front-matter, `yaml.load(…, CSafeLoader)` for every file, on one core. `raw_parse_s`
  is the loop alone (timed inside); `raw_process_s` is spawn → exit of that process
  (interpreter start and `import yaml` included).
- daemon: `python -m storywatch run DIR --backend memory --port P` spawned; `/healthz` is
  polled every 5 ms from the spawn; `ready_s` = spawn → first 200. Also: `import_s` — spawn
  → exit of `python -c "import storywatch.cli, storywatch.app"` — the fixed cost before
  any file is read.

Target (issue 9): ready_s ≤ 1.5 × raw_parse_s. Prints one JSON line; `--quick` < 60 s.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C


def time_process(args: list[str]) -> tuple[float, str]:
    t0 = time.perf_counter()
    out = subprocess.run(args, capture_output=True, text=True, check=True, cwd=C.ROOT)
    return time.perf_counter() - t0, out.stdout


def raw_round(corpus: Path) -> dict[str, Any]:
    wall, stdout = time_process(
        [sys.executable, str(C.BENCH / "_common.py"), "rawparse", str(corpus)]
    )
    data = json.loads(stdout.strip().splitlines()[-1])
    return {
        "raw_parse_s": data["parse_s"],
        "raw_parse_cpu_s": data["parse_cpu_s"],
        "raw_process_s": wall,
        "files": data["files"],
    }


def daemon_round(
    corpus: Path, config: Path, tmp: Path, backend: str, profile_to: Path | None = None
) -> dict[str, Any]:
    port = C.free_port()
    args = [
        sys.executable,
        "-m",
        "storywatch",
        "run",
        str(corpus),
        "--backend",
        backend,
        "--port",
        str(port),
        "--config",
        str(config),
    ]
    if profile_to is not None:
        spy = str(Path(sys.executable).parent / "py-spy")
        args = [
            spy,
            "record",
            "--format",
            "raw",
            "-o",
            str(profile_to),
            "--rate",
            "500",
            "--subprocesses",
            "--",
            *args,
        ]
    log = open(tmp / "startup-daemon.log", "w")  # noqa: SIM115
    t0 = time.perf_counter()
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=log, cwd=C.ROOT)
    ready = None
    first_answer = None
    stories = None
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and proc.poll() is None:
            with contextlib.suppress(OSError):
                import http.client

                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
                try:
                    conn.request("GET", "/healthz")
                    resp = conn.getresponse()
                    body = resp.read()
                    if first_answer is None:
                        first_answer = time.perf_counter() - t0
                    if resp.status == 200:
                        ready = time.perf_counter() - t0
                        stories = json.loads(body)["stories"]
                        break
                finally:
                    conn.close()
            time.sleep(0.005)
        target = proc.pid
        if profile_to is not None:  # signal the daemon, not py-spy; py-spy exits after it
            kids = _children(proc.pid)
            target = kids[0] if kids else proc.pid
        cpu = C.cpu_seconds(target)
        rss = C.rss_kb(target)
    finally:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                import os
                import signal

                os.kill(target if "target" in locals() else proc.pid, signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        log.close()
    if ready is None:
        raise RuntimeError(
            "daemon never became ready:\n" + (tmp / "startup-daemon.log").read_text()[-2000:]
        )
    return {
        "ready_s": ready,
        "listening_s": first_answer,
        "stories": stories,
        "daemon_cpu_s_at_ready": cpu,
        "rss_kb_at_ready": rss,
    }


def _children(pid: int) -> list[int]:
    """Child PIDs from /proc (no psutil in the dev venv)."""
    kids: list[int] = []
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            kids += [int(k) for k in (task / "children").read_text().split()]
    return kids


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--stories", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=5, help="rounds per side (alternating)")
    parser.add_argument("--backend", default="memory", choices=["memory", "sqlite"])
    parser.add_argument("--profile", action="store_true", help="one extra run under py-spy")
    parser.add_argument("--quick", action="store_true", help="small sizes, < 60 s")
    parser.add_argument("--keep", action="store_true", help="keep the temp folder")
    args = parser.parse_args()
    if args.quick:
        args.stories, args.rounds = 2000, 2
    tmp = C.temp_root("startup")
    corpus = tmp / "corpus"
    C.generate_corpus(corpus, args.stories)
    config = C.write_config(tmp / "config.yaml", ["reader-0"])
    C.raw_parse(corpus)  # warm the page cache
    result: dict[str, Any] = {
        "bench": "startup",
        "stories": args.stories,
        "rounds": args.rounds,
        "backend": args.backend,
        "machine": C.machine(),
    }
    imports = [
        time_process([sys.executable, "-c", "import storywatch.cli, storywatch.app"])[0]
        for _ in range(3)
    ]
    bare = [time_process([sys.executable, "-c", "pass"])[0] for _ in range(3)]
    raw_rows: list[dict[str, Any]] = []
    sw_rows: list[dict[str, Any]] = []
    for r in range(args.rounds):
        for side in ("raw", "daemon") if r % 2 == 0 else ("daemon", "raw"):
            if args.backend == "sqlite":
                import shutil

                shutil.rmtree(corpus / ".storywatch", ignore_errors=True)
            meter = C.CpuMeter().start()
            row = (
                raw_round(corpus)
                if side == "raw"
                else daemon_round(corpus, config, tmp, args.backend)
            )
            row["others_cpu_s"] = meter.stop()["others_cpu_s"]
            (raw_rows if side == "raw" else sw_rows).append(row)
            C.progress(f"round {r + 1} {side}: {C.rnd(row)}")
    ready = C.median(r["ready_s"] for r in sw_rows)
    raw = C.median(r["raw_parse_s"] for r in raw_rows)
    raw_proc = C.median(r["raw_process_s"] for r in raw_rows)
    result.update(
        {
            "ready_s": ready,
            "daemon_cpu_s_at_ready": C.median(r["daemon_cpu_s_at_ready"] for r in sw_rows),
            "rss_kb_at_ready": C.median(r["rss_kb_at_ready"] for r in sw_rows),
            "stories_indexed": sw_rows[-1]["stories"],
            "raw_parse_s": raw,
            "raw_parse_cpu_s": C.median(r["raw_parse_cpu_s"] for r in raw_rows),
            "raw_process_s": raw_proc,
            "import_s": C.median(imports),
            "python_start_s": C.median(bare),
            "ratio_ready_vs_raw_parse": ready / raw if ready and raw else None,
            "ratio_ready_vs_raw_process": ready / raw_proc if ready and raw_proc else None,
            "daemon_rounds": sw_rows,
            "raw_rounds": raw_rows,
        }
    )
    result["targets"] = {"ready_le_1.5x_raw_parse": result["ratio_ready_vs_raw_parse"] <= 1.5}
    if args.profile:
        out = tmp / "startup-storywatch.collapsed"
        row = daemon_round(corpus, config, tmp, args.backend, profile_to=out)
        time.sleep(0.5)
        result["profile"] = {**C.summarize_collapsed(out), "round": C.rnd(row)}
    C.finish(result, tmp, keep=args.keep or args.profile)


if __name__ == "__main__":
    main()
