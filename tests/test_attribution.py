"""attribution: parsing git's log (pure), and the per-path answers checked against
``git log -1 REV -- PATH`` itself on real repositories with branches and merges."""

from __future__ import annotations

import asyncio
import logging
import random
import subprocess
from pathlib import Path

import pytest

from storywatch import attribution
from storywatch.attribution import (
    Block,
    Commit,
    LogParser,
    Resolver,
    blob_id,
    commits_at,
    fit_source,
    iso_time,
    matches_worktree,
    split_by_commit,
    subject_of,
)
from storywatch.events import Draft, number, with_commit
from tests.gitrepo import GitRepo

# -- pure parsing -----------------------------------------------------------------------

SHA_A, SHA_B, SHA_C = "a" * 40, "b" * 40, "c" * 40
OID_1, OID_2 = "1" * 40, "2" * 40


def raw_commit(sha: str, parents: list[str], message: str, *, from_parent: str = "") -> bytes:
    first = " ".join([sha, *parents]) + (f" (from {from_parent})" if from_parent else "")
    body = "\n".join("    " + line if line else "    " for line in message.split("\n"))
    return (
        f"commit {first}\ntree {'0' * 40}\n"
        + "".join(f"parent {p}\n" for p in parents)
        + "author Bea Baker <bea@example.com> 1700000000 +0130\n"
        + "committer Bea Baker <bea@example.com> 1700000000 +0130\n\n"
        + body
        + "\n"
    ).encode()


def raw_change(status: str, path: str, old: str = OID_1, new: str = OID_2) -> bytes:
    modes = ("000000" if status == "A" else "100644", "000000" if status == "D" else "100644")
    new = "0" * 40 if status == "D" else new
    return f":{modes[0]} {modes[1]} {old} {new} {status}".encode() + b"\0" + path.encode() + b"\0"


def log_stream(*records: tuple[bytes, list[bytes]]) -> bytes:
    out = []
    for header, changes in records:
        text = header + (b"\n" + b"".join(changes) if changes else b"")
        out.append(text)
    return b"\0".join(out)


def test_parser_reads_commits_changes_and_merge_parents() -> None:
    stream = log_stream(
        (
            raw_commit(SHA_A, [SHA_B, SHA_C], "Merge it", from_parent=SHA_B),
            [raw_change("M", "x.md")],
        ),
        (
            raw_commit(SHA_B, [SHA_C], "Edit x and y\n\nwith a body"),
            [
                raw_change("M", "x.md"),
                raw_change("D", "y.md"),
            ],
        ),
        (raw_commit(SHA_C, [], "Root"), [raw_change("A", "dir/z w.md", "0" * 40)]),
    )
    # Fed in awkward pieces: tokens may split anywhere.
    parser = LogParser()
    blocks: list[Block] = []
    for start in range(0, len(stream), 7):
        blocks.extend(parser.feed(stream[start : start + 7]))
    blocks.extend(parser.close())
    assert [b.commit.sha for b in blocks] == [SHA_A, SHA_B, SHA_C]
    merge, edit, root = blocks
    assert merge.parents == [SHA_B, SHA_C] and merge.from_parent == SHA_B
    assert merge.changes == {"x.md": ("100644", OID_2)}
    assert edit.changes == {"x.md": ("100644", OID_2), "y.md": None}
    assert edit.commit.subject == "Edit x and y"
    assert edit.commit == Commit(
        SHA_B, "Bea Baker", "bea@example.com", "2023-11-14T23:43:20+01:30", "Edit x and y"
    )
    assert root.parents == [] and root.changes == {"dir/z w.md": ("100644", OID_2)}


def test_subject_and_time() -> None:
    assert subject_of(["", "First line", "continued", "", "body"]) == "First line continued"
    assert subject_of([]) == ""
    assert iso_time("1700000000 -0500") == "2023-11-14T17:13:20-05:00"
    assert iso_time("1700000000 +0000") == "2023-11-14T22:13:20+00:00"
    assert iso_time("garbage") == ""


def block(
    sha: str, parents: list[str], changes: dict[str, str | None], from_parent: str | None = None
) -> Block:
    commit = Commit(sha, "A", "a@x", "", sha)
    entries = {p: (None if oid is None else ("100644", oid)) for p, oid in changes.items()}
    return Block(commit, parents, from_parent, entries)


def test_resolver_follows_the_treesame_parent_of_a_merge() -> None:
    # M merges B (changed x) into C (changed y); x came from B, y from C.
    resolver = Resolver(["x.md", "y.md", "never.md"])
    for b in (
        block("M", ["C", "B"], {"x.md": OID_1}, from_parent="C"),
        block("M", ["C", "B"], {"y.md": OID_2}, from_parent="B"),
        block("C", ["R"], {"y.md": OID_2}),
        block("B", ["R"], {"x.md": OID_1}),
        block("R", [], {"x.md": "0" * 40}),
    ):
        resolver.add(b)
    resolver.finish()
    commits = resolver.commits()
    assert commits["x.md"][0].sha == "B"
    assert commits["y.md"][0].sha == "C"
    assert "never.md" not in commits and resolver.done


def test_resolver_takes_the_merge_when_no_parent_matches() -> None:
    resolver = Resolver(["x.md"])
    resolver.add(block("M", ["C", "B"], {"x.md": OID_1}, from_parent="C"))
    resolver.add(block("M", ["C", "B"], {"x.md": OID_1}, from_parent="B"))
    assert resolver.done  # answered before the log goes on: git can be stopped here
    assert resolver.commits()["x.md"] == (block("M", [], {}).commit, ("100644", OID_1))


def test_resolver_handles_a_parent_listed_before_its_child() -> None:
    # Clock skew: git may list a parent before a child reached through another path.
    resolver = Resolver(["x.md"])
    resolver.add(block("M", ["C", "B"], {"x.md": OID_1}, from_parent="C"))
    resolver.add(block("B", ["R"], {"x.md": OID_1}))
    resolver.add(block("C", ["R"], {}))
    assert not resolver.done or "x.md" in resolver.found
    resolver.finish()
    assert resolver.commits()["x.md"][0].sha == "B"


def test_delete_entry_is_none() -> None:
    resolver = Resolver(["gone.md"])
    resolver.add(block("D", ["P"], {"gone.md": None}))
    resolver.finish()
    assert resolver.commits()["gone.md"] == (block("D", [], {}).commit, None)


def test_blob_id_is_gits(tmp_path: Path) -> None:
    data = b"---\nid: X\n---\nhello\n"
    (tmp_path / "f").write_bytes(data)
    expected = subprocess.run(
        ["git", "hash-object", str(tmp_path / "f")], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert blob_id(data) == expected
    assert len(blob_id(data, 64)) == 64


def test_matches_worktree(tmp_path: Path) -> None:
    (tmp_path / "a.md").write_bytes(b"x\n")
    (tmp_path / "crlf.md").write_bytes(b"x\r\n")
    entry = ("100644", blob_id(b"x\n"))
    assert matches_worktree(tmp_path, "a.md", entry)
    assert matches_worktree(tmp_path, "crlf.md", entry)
    assert not matches_worktree(tmp_path, "a.md", ("100644", blob_id(b"y\n")))
    assert not matches_worktree(tmp_path, "a.md", None)  # present here, absent in NEW
    assert matches_worktree(tmp_path, "gone.md", None)  # absent in both
    assert not matches_worktree(tmp_path, "gone.md", entry)
    assert not matches_worktree(tmp_path, "a.md", ("120000", entry[1]))  # a link in git


def test_with_commit_copies_the_source() -> None:
    source = {"kind": "fs", "batch": "b-1", "git": {"head": "h", "branch": "main"}}
    out = with_commit(source, {"sha": "s"})
    assert out == {
        "kind": "fs",
        "batch": "b-1",
        "git": {"head": "h", "branch": "main", "commit": {"sha": "s"}},
    }
    assert "commit" not in source["git"]
    assert with_commit(source, None) is source
    draft = Draft("story.updated", "X", "x.md", {"id": "X"}, {}, commit={"sha": "s"})
    event = number(draft, 1, "e", "t", source)
    assert event.data["source"]["git"]["commit"] == {"sha": "s"}
    plain = number(Draft("story.updated", "Y", "y.md", {"id": "Y"}, {}), 2, "e", "t", source)
    assert "commit" not in plain.data["source"]["git"]


def test_fit_source_cuts_a_long_subject() -> None:
    commit = {"sha": "s" * 40, "author": "A", "email": "a@x", "time": "t", "subject": "é" * 2000}
    source = with_commit({"kind": "git", "from": "a", "to": "b", "author": "A"}, commit)
    import json

    fitted = fit_source(source)
    assert len(json.dumps(fitted, ensure_ascii=False, separators=(",", ":")).encode()) <= 1024
    assert fitted["git"]["commit"]["subject"].endswith("…")
    small = with_commit({"kind": "git"}, {**commit, "subject": "short"})
    assert fit_source(small) is small


def test_split_by_commit_keeps_units_whole_and_in_order() -> None:
    units = [
        [{"op": "upsert", "story": {"id": "A", "path": "a.md"}}],
        [{"op": "delete", "id": "B"}],
        [{"op": "delete", "id": "C"}, {"op": "upsert", "story": {"id": "C", "path": "c2.md"}}],
        [{"op": "upsert", "story": {"id": "D", "path": "d.md"}}],
    ]
    paths = {"A": "a.md", "B": "b.md", "C": "c2.md", "D": "d.md"}
    commits = {"a.md": {"sha": "1"}, "b.md": {"sha": "2"}, "c2.md": {"sha": "1"}}
    groups = split_by_commit(units, paths, commits)
    assert [
        (c and c["sha"], [u[-1].get("id") or u[-1]["story"]["id"] for u in us]) for c, us in groups
    ] == [("1", ["A", "C"]), ("2", ["B"]), (None, ["D"])]


# -- against git itself ------------------------------------------------------------------

PATHS = ["a.md", "b.md", "c.md", "d/e.md", "f.md"]


def random_history(repo: GitRepo, rng: random.Random, steps: int) -> None:
    """Commits by several authors on several branches, merges (clean, conflicting, with both
    sides making the same change), deletes and re-creations: few distinct contents, so that
    files are often the same on both sides of a merge."""
    authors = ["Ada", "Bo Li", "Cy"]
    repo.write("a.md", "0\n")
    repo.commit("root")
    branches = ["main"]
    for step in range(steps):
        action = rng.random()
        if action < 0.15 and len(branches) < 4:
            name = f"b{step}"
            repo.git("checkout", "-q", "-b", name)
            branches.append(name)
        elif action < 0.3:
            repo.git("checkout", "-q", rng.choice(branches))
        elif action < 0.45 and len(branches) > 1:
            current = repo.git("rev-parse", "--abbrev-ref", "HEAD")
            other = rng.choice([b for b in branches if b != current])
            repo.git("merge", "-q", "--no-ff", "--no-commit", other, check=False)
            for path in repo.git("diff", "--name-only", "--diff-filter=U").split():
                if rng.random() < 0.5:
                    repo.write(path, f"{rng.randint(0, 3)}\n")
                else:
                    (repo.root / path).unlink(missing_ok=True)
            repo.commit(f"merge {other} {step}", author=rng.choice(authors))
        else:
            for path in rng.sample(PATHS, rng.randint(1, 3)):
                if rng.random() < 0.2:
                    (repo.root / path).unlink(missing_ok=True)
                else:
                    repo.write(path, f"{rng.randint(0, 3)}\n")
            repo.commit(f"edit {step}", author=rng.choice(authors))


@pytest.mark.parametrize("seed", range(6))
def test_every_answer_is_git_log_1(tmp_path: Path, seed: int) -> None:
    repo = GitRepo.init(tmp_path / "r")
    random_history(repo, random.Random(seed), 40)
    revs = repo.git("rev-list", "--all").split()
    for rev in random.Random(seed).sample(revs, min(6, len(revs))):
        found = commits_at(repo.root, rev, [*PATHS, "never.md"])
        for path in [*PATHS, "never.md"]:
            expected = repo.last(rev, path)
            assert found.get(path, {}).get("sha", "") == expected, (rev, path)


# -- the async runner (the watcher's) ------------------------------------------------------


async def test_attribute_only_paths_matching_new(tmp_path: Path) -> None:
    repo = GitRepo.init(tmp_path / "r")
    repo.story("a.md", "A", "draft")
    repo.story("b.md", "B", "draft")
    repo.story("gone.md", "G", "draft")
    repo.commit("start", author="Ada")
    repo.story("a.md", "A", "done")
    (repo.root / "gone.md").unlink()
    new = repo.commit("finish A, drop G", author="Bo Li", zone="+0200")
    repo.story("b.md", "B", "edited but not committed")
    repo.story("new.md", "N", "untracked")
    found = await attribution.attribute(repo.root, new, ["a.md", "b.md", "gone.md", "new.md"])
    assert set(found) == {"a.md", "gone.md"}
    assert found["a.md"] == {
        "sha": new,
        "author": "Bo Li",
        "email": "bo@example.com",
        "time": found["a.md"]["time"],
        "subject": "finish A, drop G",
    }
    assert found["a.md"]["time"].endswith("+02:00")
    assert found["gone.md"]["sha"] == new


async def test_attribute_time_limit_gives_nothing_and_one_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    repo = GitRepo.init(tmp_path / "r")
    repo.story("a.md", "A", "draft")
    new = repo.commit("start")
    caplog.set_level(logging.WARNING, "storywatch.attribution")
    found = await attribution.attribute(repo.root, new, ["a.md"], timeout=0)
    assert found == {}
    assert len([r for r in caplog.records if "did not answer" in r.getMessage()]) == 1
    # No git left behind: the loop's child watcher reaped it (nothing pending).
    await asyncio.sleep(0)


async def test_attribute_outside_git_is_empty(tmp_path: Path) -> None:
    (tmp_path / "a.md").write_text("x\n")
    assert await attribution.attribute(tmp_path, "0" * 40, ["a.md"]) == {}
    assert commits_at(tmp_path, "HEAD", ["a.md"]) == {}
