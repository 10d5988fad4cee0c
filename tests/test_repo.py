"""Repo.read's safety rules and parse_tree, on a small tree (no daemon)."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from storywatch import repo as repo_module
from storywatch.paths import PathRules
from storywatch.repo import Repo, parse_tree
from storywatch.story import ParseError, Story, parse_story


def story_text(story_id: str, body: str = "body\n") -> str:
    return f"---\nid: {story_id}\ntitle: t {story_id}\n---\n{body}"


@pytest.fixture
def tree(tmp_path: Path) -> tuple[Path, Path]:
    """(repo, outside): a repo with a story in a folder, and a folder beside it."""
    root = tmp_path / "repo"
    (root / "epic").mkdir(parents=True)
    (root / "epic" / "a.md").write_text(story_text("A"))
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.md").write_text(story_text("SECRET"))
    (outside / "stories").mkdir()
    (outside / "stories" / "s.md").write_text(story_text("SECRET-2"))
    return root, outside


def read(root: Path, rel: str, **kwargs: int) -> object:
    return Repo(root, PathRules(), **kwargs).read(rel)


def test_a_plain_file_is_parsed_as_its_bytes_say(tree: tuple[Path, Path]) -> None:
    root, _ = tree
    result = read(root, "epic/a.md")
    assert result == parse_story("epic/a.md", (root / "epic" / "a.md").read_bytes())
    assert isinstance(result, Story) and result.id == "A"


def test_links_out_of_the_repo_loops_and_dangling_links_are_nothing(
    tree: tuple[Path, Path],
) -> None:
    root, outside = tree
    (root / "out.md").symlink_to(outside / "secret.md")
    (root / "relative-out.md").symlink_to(Path("..") / "outside" / "secret.md")
    (root / "loop.md").symlink_to(root / "loop.md")
    (root / "loop-a.md").symlink_to(root / "loop-b.md")
    (root / "loop-b.md").symlink_to(root / "loop-a.md")
    (root / "dangling.md").symlink_to(root / "nowhere.md")
    (root / "linked").symlink_to(outside / "stories")
    for rel in ("out.md", "relative-out.md", "loop.md", "loop-a.md", "dangling.md"):
        assert read(root, rel) is None, rel
    assert read(root, "linked/s.md") is None  # a folder reached through a link
    assert read(root, "../outside/secret.md") is None
    assert read(root, "epic/../../outside/secret.md") is None


def test_a_link_to_a_file_inside_is_followed(tree: tuple[Path, Path]) -> None:
    root, _ = tree
    (root / "alias.md").symlink_to(root / "epic" / "a.md")
    (root / "relative-alias.md").symlink_to(Path("epic") / "a.md")
    for rel in ("alias.md", "relative-alias.md"):
        result = read(root, rel)
        assert isinstance(result, Story) and result.id == "A" and result.path == rel


def test_fifos_folders_and_gone_files_are_nothing_and_never_block(
    tree: tuple[Path, Path],
) -> None:
    root, _ = tree
    os.mkfifo(root / "fifo.md")
    (root / "link-to-fifo.md").symlink_to(root / "fifo.md")
    (root / "folder.md").mkdir()
    results: dict[str, object] = {}

    def read_all() -> None:
        for rel in ("fifo.md", "link-to-fifo.md", "folder.md", "gone.md", "epic/gone/x.md"):
            results[rel] = read(root, rel)

    reader = threading.Thread(target=read_all, daemon=True)
    reader.start()
    reader.join(10)
    assert not reader.is_alive(), "a read blocked (opened a FIFO?)"
    assert set(results.values()) == {None}


def test_too_large_is_an_error_without_reading(tree: tuple[Path, Path]) -> None:
    root, _ = tree
    big = root / "big.md"
    big.write_text(story_text("BIG", "x" * 200))
    result = read(root, "big.md", max_file_bytes=100)
    assert isinstance(result, ParseError) and result.reason == "too_large"
    assert str(big.stat().st_size) in result.message
    exact = root / "exact.md"
    exact.write_text(story_text("EXACT"))
    fits = read(root, "exact.md", max_file_bytes=exact.stat().st_size)
    assert isinstance(fits, Story) and fits.id == "EXACT"


def test_a_file_that_grows_while_read_is_read_to_the_limit() -> None:
    read_fd, write_fd = os.pipe()  # a stream that is longer than its announced size
    try:
        os.write(write_fd, b"x" * 300)
        os.close(write_fd)
        write_fd = -1
        assert repo_module._read_upto(read_fd, 10, 101) == b"x" * 101
    finally:
        os.close(read_fd)
        if write_fd >= 0:
            os.close(write_fd)


def test_empty_and_unreadable_files(tree: tuple[Path, Path]) -> None:
    root, _ = tree
    (root / "empty.md").write_bytes(b"")
    empty = read(root, "empty.md")
    assert isinstance(empty, ParseError) and not empty.has_front_matter
    if os.geteuid() == 0:
        return  # root reads anything: no permission error to see
    locked = root / "locked.md"
    locked.write_text(story_text("LOCKED"))
    locked.chmod(0)
    result = read(root, "locked.md")
    assert isinstance(result, ParseError) and result.reason == "unreadable"


def test_parse_tree_in_workers_matches_reading_one_by_one(
    tree: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    root, outside = tree
    for i in range(30):
        (root / "epic" / f"s{i:02d}.md").write_text(story_text(f"S{i}", f"body {i}\n"))
    (root / "broken.md").write_text("---\nid: [unclosed\n---\n")
    (root / "readme.md").write_text("no front-matter\n")
    (root / "odd.md").write_text(ODD)
    (root / "out.md").symlink_to(outside / "secret.md")
    repo = Repo(root, PathRules())
    rels = [*repo.walk(), "gone.md"]
    serial = {rel: repo.read(rel) for rel in rels}
    progress: list[int] = []
    # Straight to the pool: parse_tree would fall back to reading here if it failed.
    parallel = repo_module._parse_parallel(repo, rels, 2, progress.append)
    assert list(parallel) == rels
    assert parallel == serial
    for rel, result in serial.items():  # field order too: it is the order events show
        if isinstance(result, Story):
            other = parallel[rel]
            assert isinstance(other, Story) and list(other.fields) == list(result.fields)
    assert progress[-1] == len(rels)
    monkeypatch.setattr(repo_module, "PARALLEL_FROM", 1)
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    assert parse_tree(repo, rels) == serial


ODD = """---
id: 42
big: 123456789012345678901234567890
ratio: 0.5
inf: .inf
yes: true
none: null
when: 2024-01-02
nested: {b: [1, {c: d}], a: []}
set: !!set {x, y}
"unicode ✓": "été"
---
body ✓
"""


def test_results_cross_processes_unchanged() -> None:
    results = [
        ("odd.md", parse_story("odd.md", ODD.encode())),
        ("broken.md", parse_story("broken.md", b"---\nid: [x\n---\n")),
        ("no-line.md", ParseError("unreadable", "cannot read file", None)),
        ("readme.md", parse_story("readme.md", b"# no front-matter\n")),
        ("gone.md", None),
    ]
    assert isinstance(results[0][1], Story) and isinstance(results[3][1], ParseError)
    decoded = list(repo_module._decode(repo_module._encode(results)))
    assert decoded == results
    story = decoded[0][1]
    assert isinstance(story, Story) and list(story.fields) == list(results[0][1].fields)


def test_walk_says_once_when_the_tree_is_big(
    tree: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    root, _ = tree
    for i in range(5):
        (root / f"s{i}.md").write_text(story_text(f"S{i}"))
    calls: list[int] = []
    repo = Repo(root, PathRules())
    monkeypatch.setattr(repo_module, "PARALLEL_FROM", 3)
    assert len(repo.walk(when_big=lambda: calls.append(1))) == 6
    assert calls == [1]
    monkeypatch.setattr(repo_module, "PARALLEL_FROM", 7)
    repo.walk(when_big=lambda: calls.append(2))
    assert calls == [1]
    repo_module.start_workers()  # idempotent, and the pool still works after it
    repo_module.start_workers()
    assert repo_module._parse_parallel(repo, ["s0.md"], 2, None)["s0.md"] == repo.read("s0.md")
