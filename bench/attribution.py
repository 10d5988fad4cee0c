"""Attribution cost: the latency SPEC §11 adds to a batch whose HEAD moved.

A checkout of a real story history (``shared/data/backlog-md-history.bundle``: 580 commits,
~700 stories; or, without it, a generated one) is moved from commit to commit with
``git checkout``, as a pull would. For each move, the batch is processed as the watcher does
— read the changed files, diff them into the index and number the events (``Ingest.apply``
on the memory log) — and the one ``git log`` that attributes the batch is run on the same
paths (``attribution.attribute``, the watcher's call, time limit included). Both are timed
in the same run on the same batch, so the ratio does not depend on the machine's speed.

Moves: ``--steps`` consecutive commits (a pull of one commit), and as many jumps of
``--jump`` commits (a pull of many). Prints one JSON line: per kind of move, the median and
p95 of the batch's processing time without attribution, of the time attribution adds, and
of their ratio ``(processing + attribution) / processing``.

    .venv/bin/python bench/attribution.py --steps 25 --jump 25
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C

from storywatch import attribution
from storywatch.gitdiff import index_of
from storywatch.ingest import Ingest
from storywatch.log.memory import MemoryLog
from storywatch.paths import PathRules
from storywatch.repo import Repo, parse_tree

BUNDLE = Path(__file__).resolve().parents[2] / "shared" / "data" / "backlog-md-history.bundle"
if not BUNDLE.is_file():
    BUNDLE = Path(__file__).resolve().parents[3] / "shared" / "data" / BUNDLE.name
GIT = ["git", "-c", "user.name=bench", "-c", "user.email=bench@example.invalid", "-c",
       "advice.detachedHead=false"]


def git(root: Path, *args: str) -> str:
    return subprocess.run([*GIT, "-C", str(root), *args], check=True, capture_output=True,
                          text=True).stdout


def make_history(root: Path, commits: int = 300, stories: int = 400) -> None:
    """A generated history when the bundle is absent: each commit moves a few stories."""
    root.mkdir(parents=True)
    git(root, "init", "-q", "-b", "main")
    statuses = ["todo", "doing", "review", "done"]
    for n in range(stories):
        (root / f"s{n:04d}.md").write_text(f"---\nid: S-{n}\nstatus: todo\n---\nbody\n")
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "start")
    for c in range(commits):
        for k in range(3):
            n = (c * 7 + k * 131) % stories
            (root / f"s{n:04d}.md").write_text(
                f"---\nid: S-{n}\nstatus: {statuses[(c + k) % 4]}\n---\nbody {c}\n")
        git(root, "commit", "-q", "-am", f"move {c}")


def checkout_of(tmp: Path) -> tuple[Path, str]:
    root = tmp / "repo"
    if BUNDLE.is_file():
        subprocess.run(["git", "clone", "-q", "-b", "backlog-only", str(BUNDLE), str(root)],
                       check=True, capture_output=True)
        return root, BUNDLE.name
    make_history(root)
    return root, "generated"


async def measure(
    root: Path, revs: list[str], pairs: list[tuple[int, int]]
) -> list[dict[str, float]]:
    rules = PathRules()
    repo = Repo(root, rules)
    rows: list[dict[str, float]] = []
    for old, new in pairs:
        git(root, "checkout", "-q", "--force", revs[old])
        index = index_of(parse_tree(repo, repo.walk()))
        ingest = Ingest(index, MemoryLog(), None, persist_index=False)
        git(root, "checkout", "-q", "--force", revs[new])
        changed = git(root, "diff", "--name-only", "--no-renames", revs[old], revs[new])
        paths = [p for p in changed.splitlines() if rules.wanted(p)]
        if not paths:
            continue
        source = {"kind": "fs", "batch": f"b-{new}", "git": {"head": revs[new], "branch": None}}
        start = time.perf_counter()
        results = await asyncio.to_thread(repo.read_many, sorted(paths))
        events = await ingest.apply(results, source)
        processing = time.perf_counter() - start
        start = time.perf_counter()
        commits = await attribution.attribute(root, revs[new], paths)
        added = time.perf_counter() - start
        rows.append({
            "paths": len(paths), "events": len(events), "attributed": len(commits),
            "processing_ms": processing * 1000, "added_ms": added * 1000,
            "ratio": (processing + added) / processing,
        })
        C.progress(f"{old}->{new}: {len(paths)} paths, +{added * 1000:.1f} ms "
                   f"on {processing * 1000:.1f} ms")
    return rows


def summary(rows: list[dict[str, float]]) -> dict[str, Any]:
    def stat(key: str) -> dict[str, Any]:
        values = sorted(r[key] for r in rows)
        return {"median": C.rnd(C.median(values), 2), "p95": C.rnd(C.percentile(values, 95), 2)}

    return {
        "batches": len(rows),
        "paths_median": C.median([r["paths"] for r in rows]),
        "attributed_share": C.rnd(sum(r["attributed"] for r in rows)
                                  / max(1, sum(r["paths"] for r in rows)), 3),
        "processing_ms": stat("processing_ms"),
        "added_ms": stat("added_ms"),
        "ratio": stat("ratio"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=25, help="one-commit moves (25)")
    parser.add_argument("--jump", type=int, default=25, help="commits per long move (25)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="sw-attr-") as tmp:
        root, history = checkout_of(Path(tmp))
        revs = git(root, "rev-list", "--reverse", "--first-parent", "HEAD").split()
        step = max(1, (len(revs) - 1) // max(1, args.steps))
        singles = [(i, i + 1) for i in range(0, len(revs) - 1, step)][: args.steps]
        jumps = [(i, i + args.jump) for i in range(0, len(revs) - args.jump, step)][: args.steps]
        result = {
            "bench": "attribution",
            "history": history,
            "commits": len(revs),
            "timeout_s": attribution.TIMEOUT_S,
            "one_commit": summary(asyncio.run(measure(root, revs, singles))),
            f"{args.jump}_commits": summary(asyncio.run(measure(root, revs, jumps))),
            "machine": C.machine(),
        }
    C.emit(result)


if __name__ == "__main__":
    main()
