"""Reading the story repo from disk: walking, reading files safely, the git HEAD."""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path, PurePosixPath
from typing import Any, Final

from storywatch.paths import PathRules
from storywatch.story import ParseError, ParseResult, parse_story

logger = logging.getLogger(__name__)


class Repo:
    def __init__(self, root: Path, rules: PathRules, *, max_file_bytes: int = 1_048_576) -> None:
        self.root = root
        self.real_root = root.resolve()
        self.rules = rules
        self.max_file_bytes = max_file_bytes

    def rel(self, path: str | os.PathLike[str]) -> str | None:
        """The POSIX path relative to the root, or None when outside it."""
        try:
            rel = Path(os.path.abspath(path)).relative_to(os.path.abspath(self.root))
        except ValueError:
            try:
                rel = Path(os.path.abspath(path)).relative_to(self.real_root)
            except ValueError:
                return None
        text = rel.as_posix()
        return None if text == "." else text

    def walk(self, under: str = "") -> list[str]:
        """Every wanted file below ``under`` (a relative folder; "" = the root), sorted."""
        found: list[str] = []
        start = self.root / under if under else self.root
        stack = [(start, under)]
        while stack:
            folder, prefix = stack.pop()
            try:
                entries = list(os.scandir(folder))
            except OSError:
                continue  # vanished or unreadable folder: nothing to find there
            for entry in entries:
                rel = f"{prefix}/{entry.name}" if prefix else entry.name
                try:
                    # Folders are walked only when real: links to folders are never followed.
                    if entry.is_dir(follow_symlinks=False):
                        if not self.rules.ignored_dir(entry.name):
                            stack.append((Path(entry.path), rel))
                    elif self.rules.wanted(rel):
                        found.append(rel)
                except OSError:
                    continue
        found.sort()
        return found

    def is_dir(self, rel: str) -> bool:
        path = self.root / rel
        return path.is_dir() and not path.is_symlink()

    def read(self, rel: str, folders: dict[str, bool] | None = None) -> ParseResult | None:
        """Parse the file at ``rel``; None when it is gone or not a file we may read."""
        path = self.root / rel
        try:
            if not self._inside(path, rel, {} if folders is None else folders):
                logger.debug(
                    "ignoring %s: it leads outside the repo or through a linked folder", rel
                )
                return None
            st = path.stat()
            if not _is_regular(st.st_mode):
                return None
            if st.st_size > self.max_file_bytes:
                return ParseError(
                    "too_large", f"file is {st.st_size} bytes, limit is {self.max_file_bytes}"
                )
            with open(path, "rb") as handle:
                raw = handle.read(self.max_file_bytes + 1)
        except (FileNotFoundError, NotADirectoryError):
            return None
        except RuntimeError:  # symlink loop in Path.resolve
            return None
        except OSError as exc:
            if exc.errno == 40:  # ELOOP
                return None
            return ParseError("unreadable", f"cannot read file: {exc.strerror or exc}")
        return parse_story(rel, raw, max_bytes=self.max_file_bytes)

    def _inside(self, path: Path, rel: str, folders: dict[str, bool]) -> bool:
        """Whether ``rel`` is a plain path in the repo: no ``..``, no folder reached through a
        link, and (for a linked file) a target inside the repo. ``folders`` caches the
        folder check for one batch of reads."""
        if rel.startswith("/") or ".." in rel.split("/"):
            return False
        folder = rel.rpartition("/")[0]
        plain = folders.get(folder)
        if plain is None:
            real_folder = Path(os.path.realpath(path.parent))
            plain = folders[folder] = real_folder == self.real_root / PurePosixPath(folder)
        if not plain:
            return False
        if not path.is_symlink():
            return True
        return Path(os.path.realpath(path)).is_relative_to(self.real_root)

    def read_many(self, rels: Iterable[str]) -> dict[str, ParseResult | None]:
        folders: dict[str, bool] = {}
        return {rel: self.read(rel, folders) for rel in rels}

    def git_head(self) -> dict[str, Any] | None:
        """{"head": sha, "branch": name or None} for a git checkout, else None."""
        git = self.root / ".git"
        try:
            if git.is_file():  # worktree or submodule: "gitdir: …"
                pointer = git.read_text().strip()
                git = (self.root / pointer.removeprefix("gitdir:").strip()).resolve()
            head = (git / "HEAD").read_text().strip()
        except OSError:
            return None
        if not head.startswith("ref:"):
            return {"head": head, "branch": None}
        ref = head[4:].strip()
        branch = ref.removeprefix("refs/heads/")
        sha = _read_ref(git, ref)
        return {"head": sha, "branch": branch}


def _read_ref(git: Path, ref: str) -> str | None:
    try:
        return (git / ref).read_text().strip()
    except OSError:
        pass
    common = git
    try:
        common = (git / (git / "commondir").read_text().strip()).resolve()
        return (common / ref).read_text().strip()
    except OSError:
        pass
    try:
        for line in (common / "packed-refs").read_text().splitlines():
            if line.endswith(" " + ref):
                return line.split(" ", 1)[0]
    except OSError:
        pass
    return None


def _is_regular(mode: int) -> bool:
    import stat

    return stat.S_ISREG(mode)


# Below this many files, starting worker processes costs more than it saves.
PARALLEL_FROM: Final = 2000


def parse_tree(
    repo: Repo, paths: Sequence[str], on_progress: Callable[[int], None] | None = None
) -> dict[str, ParseResult | None]:
    """Read and parse many files: in worker processes for big trees (YAML parsing is
    CPU-bound and holds the GIL), else here."""
    workers = min(os.cpu_count() or 1, 8)
    if len(paths) >= PARALLEL_FROM and workers > 1:
        with contextlib.suppress(OSError, BrokenProcessPool):
            return _parse_parallel(repo, paths, workers, on_progress)
    results: dict[str, ParseResult | None] = {}
    folders: dict[str, bool] = {}
    for n, rel in enumerate(paths, 1):
        results[rel] = repo.read(rel, folders)
        if on_progress is not None and n % 200 == 0:
            on_progress(n)
    return results


def _parse_parallel(
    repo: Repo,
    paths: Sequence[str],
    workers: int,
    on_progress: Callable[[int], None] | None,
) -> dict[str, ParseResult | None]:
    size = max(100, len(paths) // (workers * 8))
    chunks = [list(paths[i : i + size]) for i in range(0, len(paths), size)]
    results: dict[str, ParseResult | None] = {}
    # Not fork: forking a process that may hold threads can deadlock (and warns from 3.12).
    method = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
    context = multiprocessing.get_context(method)
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        futures = [
            pool.submit(_parse_chunk, str(repo.root), repo.rules, repo.max_file_bytes, chunk)
            for chunk in chunks
        ]
        for future in as_completed(futures):
            results.update(future.result())
            if on_progress is not None:
                on_progress(len(results))
    return {rel: results[rel] for rel in paths}


def _parse_chunk(
    root: str, rules: PathRules, max_file_bytes: int, paths: list[str]
) -> list[tuple[str, ParseResult | None]]:
    repo = Repo(Path(root), rules, max_file_bytes=max_file_bytes)
    folders: dict[str, bool] = {}
    return [(rel, repo.read(rel, folders)) for rel in paths]
