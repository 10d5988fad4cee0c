"""The toolbelt in-process: scan, diff, token, publish planning, and the client's pure parts."""

from __future__ import annotations

import hashlib
import io
import json
import random
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from storywatch import toolbelt as tools
from storywatch.cli import main
from storywatch.client import Backoff, ClientError, Cursor, batches, ws_url
from storywatch.gitdiff import diff_revisions
from tests.conftest import committed_fixtures, scaled
from tests.test_gitdiff import ZERO, GitRepo, branch_fixture, story_text

FIXTURES = committed_fixtures()


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


# -- scan ------------------------------------------------------------------------------


def test_scan_fixtures_is_clean(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "scan", str(FIXTURES), "--json")
    assert code == 0
    report = json.loads(out)  # exactly one object
    assert set(report) == {"stories", "by_status", "by_epic", "problems"}
    assert report["stories"] == 50 and report["problems"] == []
    assert sum(report["by_status"].values()) == sum(report["by_epic"].values()) == 50
    assert report["by_status"]["done"] == 12

    code, out, _ = run(capsys, "scan", str(FIXTURES))
    assert code == 0
    assert "50 stories, 0 problems" in out and "by epic: api 9" in out


def problem_repo(root: Path) -> Path:
    root.mkdir()
    (root / "ok.md").write_text(story_text("A"))
    (root / "dupe.md").write_text(story_text("A"))  # sorts first: keeps the id
    (root / "z-dupe.md").write_text(story_text("A"))
    (root / "bad.md").write_text("---\nid: B\ntitle: a: b\n---\n")
    (root / "template.md").write_text("---\ntitle: front-matter but no id\n---\n")
    (root / "README.md").write_text("# no front-matter at all\n")
    (root / "latin1.md").write_bytes(b"---\nid: C\ntitle: caf\xe9\n---\n")
    (root / "huge.md").write_text(story_text("D", body="x" * 5000))
    return root


def test_scan_reports_every_problem_with_path_and_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    repo = problem_repo(tmp_path / "repo")
    config = tmp_path / "config.yaml"
    config.write_text("watch:\n  max_file_bytes: 4096\n")
    code, out, _ = run(capsys, "scan", str(repo), "--json", "--config", str(config))
    assert code == 1
    report = json.loads(out)
    problems = {(p["path"], p["reason"], p["line"]) for p in report["problems"]}
    assert problems == {
        ("bad.md", "yaml", 3),
        ("huge.md", "too_large", None),
        ("latin1.md", "unreadable", 3),
        ("ok.md", "duplicate_id", 2),  # dupe.md sorts first and keeps the id
        ("z-dupe.md", "duplicate_id", 2),
    }
    assert report["stories"] == 1  # template.md and README.md are not stories

    code, out, _ = run(capsys, "scan", str(repo), "--config", str(config))
    assert code == 1
    assert "bad.md:3: yaml: invalid YAML: mapping values are not allowed" in out
    assert "huge.md: too_large: file is" in out
    assert "ok.md:2: duplicate_id: id 'A' is already used by dupe.md" in out


def test_scan_of_ten_thousand_files_is_fast(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "big"
    for n in range(10_000):
        folder = root / f"epic-{n % 25}"
        if n < 25:
            folder.mkdir(parents=True)
        (folder / f"S-{n}.md").write_text(
            f"---\nid: S-{n}\nstatus: {('draft', 'done')[n % 2]}\nepic: e{n % 25}\n---\nBody\n"
        )
    started = time.monotonic()
    code, out, _ = run(capsys, "scan", str(root), "--json")
    elapsed = time.monotonic() - started
    assert code == 0
    report = json.loads(out)
    assert report["stories"] == 10_000 and report["by_status"] == {"done": 5000, "draft": 5000}
    assert elapsed < scaled(15), f"scan took {elapsed:.1f} s"


def test_progress_only_on_a_terminal_after_a_second() -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    quiet = io.StringIO()
    progress = tools.Progress(quiet, 10, "scanning", after_s=0)
    progress.update(5)
    progress.finish()
    assert quiet.getvalue() == ""

    tty = Tty()
    progress = tools.Progress(tty, 10, "scanning", after_s=0)
    progress.update(5)
    progress.finish()
    assert "scanning: 5/10 files" in tty.getvalue()

    slow = Tty()
    progress = tools.Progress(slow, 10, "scanning", after_s=60)
    progress.update(5)
    assert slow.getvalue() == ""


def test_config_errors_exit_2_naming_the_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("watch:\n  setle_ms: 10\n")
    code, _, err = run(capsys, "scan", str(FIXTURES), "--config", str(bad))
    assert code == 2
    assert "watch.setle_ms: unknown key (did you mean 'settle_ms'?)" in err
    code, _, err = run(capsys, "scan", str(FIXTURES), "--config", str(tmp_path / "nope.yaml"))
    assert code == 2 and "config file not found" in err


# -- diff ------------------------------------------------------------------------------


def test_diff_human_and_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    repo, base, head = branch_fixture(tmp_path / "repo")
    code, out, err = run(capsys, "diff", base, head, "--repo", str(repo.root))
    assert code == 0
    lines = out.splitlines()
    assert len(lines) == 5
    assert any(line.startswith("story.transitioned  S-1  draft → ready") for line in lines)
    assert any("S-4  stories/S-4.md → stories/done/S-4.md" in line for line in lines)
    assert "5 events" in err

    code, out, _ = run(capsys, "diff", base, head, "--repo", str(repo.root), "--json")
    events = [json.loads(line) for line in out.splitlines()]
    assert sorted(e["type"].removeprefix("story.") for e in events) == [
        "created",
        "deleted",
        "moved",
        "transitioned",
        "updated",
    ]
    for event in events:
        assert not {"seq", "epoch", "subs"} & set(event)
        assert event["source"]["kind"] == "git" and event["source"]["to"] == head


def test_diff_git_errors_exit_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    repo, _base, _head = branch_fixture(tmp_path / "repo")
    code, _, err = run(capsys, "diff", "no-such-rev", "--repo", str(repo.root))
    assert code == 1 and "unknown revision 'no-such-rev'" in err


# -- publish planning ------------------------------------------------------------------


def test_publish_plan_moves_are_delete_then_upsert(tmp_path: Path) -> None:
    repo, base, head = branch_fixture(tmp_path / "repo")
    plan = tools.publish_plan(diff_revisions(repo.root, base, head))
    ops = [[(i["op"], i.get("id") or i["story"]["id"]) for i in unit] for unit in plan.units]
    assert sorted(ops) == [
        [("delete", "S-3")],
        [("delete", "S-4"), ("upsert", "S-4")],
        [("upsert", "S-1")],
        [("upsert", "S-2")],
        [("upsert", "S-6")],
    ]
    upsert = next(u[0] for u in plan.units if u[0].get("story", {}).get("id") == "S-1")
    assert upsert["story"]["status"] == "ready" and upsert["story"]["body"] == "\nSome body.\n"
    assert upsert["story"]["path"] == "stories/S-1.md"
    assert (plan.upserts, plan.deletes, plan.skipped) == (4, 1, [])


def test_publish_plan_skips_stories_invalid_at_the_target(tmp_path: Path) -> None:
    repo = GitRepo(tmp_path / "repo")
    repo.story("a.md", "A")
    base = repo.commit()
    repo.write("a.md", "---\nid: A\ntitle: [\n---\n")
    head = repo.commit()
    plan = tools.publish_plan(diff_revisions(repo.root, base, head))
    assert plan.units == [] and plan.skipped == ["A"]


def test_batches_respect_item_and_byte_limits() -> None:
    source = {"kind": "git", "from": ZERO, "to": "b" * 40, "author": "A <a@b>"}
    units = [[{"op": "delete", "id": f"S-{n}"}] for n in range(2500)]
    sizes = [len(b) for b in batches(units, source, 10**9)]
    assert sizes == [1000, 1000, 500]
    story = {"op": "upsert", "story": {"id": "X", "body": "x" * 1000}}
    small = batches([[story]] * 10, source, 4000)
    assert all(
        len(json.dumps({"type": "publish", "ref": "publish-1", "items": b, "source": source}))
        <= 4000
        for b in small
    )
    assert sum(len(b) for b in small) == 10 and len(small) > 1
    pair = [{"op": "delete", "id": "M"}, {"op": "upsert", "story": {"id": "M"}}]
    assert all(len(b) == 2 for b in batches([pair] * 5, source, 300))  # never split
    with pytest.raises(ClientError, match="'X' needs a"):
        batches([[story]], source, 500)


def test_publish_needs_a_token_and_a_redis_backend(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    repo, base, head = branch_fixture(tmp_path / "repo")
    monkeypatch.delenv("STORYWATCH_TOKEN", raising=False)
    code, _, err = run(capsys, "publish", "--from", base, "--to", head, "--repo", str(repo.root))
    assert code == 2 and "no token" in err
    monkeypatch.setitem(sys.modules, "storywatch.log.redis", None)  # import fails
    code, _, err = run(
        capsys,
        "publish",
        "--from",
        base,
        "--to",
        head,
        "--repo",
        str(repo.root),
        "--redis-url",
        "redis://127.0.0.1:1/0",
    )
    assert code == 2 and "redis backend not available" in err


def test_publish_to_nothing_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    repo, base, head = branch_fixture(tmp_path / "repo")
    code, _, err = run(
        capsys,
        "publish",
        "--from",
        base,
        "--to",
        head,
        "--repo",
        str(repo.root),
        "--url",
        "http://127.0.0.1:9",
        "--token",
        "t",
    )
    assert code == 1 and "cannot connect to ws://127.0.0.1:9/ws" in err
    assert len(err.strip().splitlines()) == 1


def test_publish_of_an_empty_range_sends_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    repo, _base, head = branch_fixture(tmp_path / "repo")
    code, out, _ = run(
        capsys,
        "publish",
        "--from",
        head,
        "--to",
        head,
        "--repo",
        str(repo.root),
        "--url",
        "http://127.0.0.1:9",
        "--token",
        "t",
    )
    assert code == 0 and "nothing to publish" in out


# -- tail and token --------------------------------------------------------------------


def test_tail_needs_a_token(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("STORYWATCH_TOKEN", raising=False)
    code, _, err = run(capsys, "tail")
    assert code == 2 and "no token" in err
    with pytest.raises(SystemExit):
        main(["tail", "--event", "renamed", "--token", "t"])
    assert "unknown event type 'renamed'" in capsys.readouterr().err


def test_token_new_prints_the_token_and_its_entry(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(
        capsys, "token", "new", "ci", "--scope", "publish", "--scope", "read", "--epic", "api"
    )
    assert code == 0
    token = out.splitlines()[0].removeprefix("token: ")
    (entry,) = _entries(out)
    assert entry == {
        "name": "ci",
        "sha256": hashlib.sha256(token.encode()).hexdigest(),
        "scopes": ["publish", "read"],
        "epics": ["api"],
    }
    code, out, _ = run(capsys, "token", "new", "viewer")
    (entry,) = _entries(out)
    assert entry["scopes"] == ["read"] and "epics" not in entry
    assert out.count("sw_") == 1  # shown once


def _entries(out: str) -> list[dict[str, Any]]:
    listing = "\n".join(line for line in out.splitlines() if line.startswith(("-", " ")))
    entries: list[dict[str, Any]] = yaml.safe_load(listing)
    return entries


def test_describe_event() -> None:
    moved = {
        "type": "story.moved",
        "story_id": "A",
        "path": "b.md",
        "old_path": "a.md",
        "story": {"title": "T"},
    }
    assert tools.describe_event(moved) == "story.moved         A  a.md → b.md  T"
    updated = {
        "type": "story.updated",
        "story_id": "A",
        "changes": {"title": {}},
        "body_changed": True,
        "story": {},
    }
    assert tools.describe_event(updated).endswith("A  (title, body)")
    invalid = {
        "type": "story.invalid",
        "story_id": "A",
        "path": "a.md",
        "story": {},
        "error": {"reason": "yaml", "message": "bad", "line": 3},
    }
    assert "a.md:3: yaml: bad" in tools.describe_event(invalid)


# -- client: pure parts ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("http://example.com:8765", "ws://example.com:8765/ws"),
        ("https://example.com", "wss://example.com/ws"),
        ("http://example.com:8765/", "ws://example.com:8765/ws"),
        ("ws://127.0.0.1:8765/ws", "ws://127.0.0.1:8765/ws"),
        ("wss://board.example.com/storywatch/ws", "wss://board.example.com/storywatch/ws"),
        ("127.0.0.1:8765", "ws://127.0.0.1:8765/ws"),
    ],
)
def test_ws_url(given: str, expected: str) -> None:
    assert ws_url(given) == expected


def test_ws_url_refuses_other_schemes() -> None:
    with pytest.raises(ClientError):
        ws_url("ftp://example.com")


def test_backoff_doubles_with_jitter_up_to_the_cap() -> None:
    backoff = Backoff(base=1, cap=8, rng=random.Random(7))
    delays = [backoff.next_delay() for _ in range(6)]
    for delay, nominal in zip(delays, [1, 2, 4, 8, 8, 8], strict=True):
        assert nominal / 2 <= delay <= nominal
    backoff.reset()
    assert backoff.next_delay() <= 1


def test_cursor() -> None:
    cursor = Cursor()
    assert cursor.since() is None
    cursor.move("e1", 5)
    assert cursor.since() == {"epoch": "e1", "seq": 5}
    assert cursor.seen("e1", 5) and not cursor.seen("e1", 6) and not cursor.seen("e2", 1)


def test_tail_describes_a_catch_up_story_by_story() -> None:
    chunk = {
        "type": "catchup",
        "stories": [{"id": "UI-5", "title": "Dark mode", "status": "review"}],
        "invalid": [{"story_id": "API-3", "path": "api/API-3.md", "error": {"reason": "yaml"}}],
        "removed": ["INT-7"],
        "done": True,
    }
    assert tools.describe_catchup(chunk) == [
        "UI-5 Dark mode — now review",
        "API-3 — invalid now (yaml)",
        "INT-7 — removed (deleted, or no longer in this filter)",
    ]
