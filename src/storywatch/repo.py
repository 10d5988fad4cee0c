"""Reading the story repo from disk: walking, reading files safely, the git HEAD."""

from __future__ import annotations

import contextlib
import errno
import logging
import marshal
import multiprocessing
import multiprocessing.context
import os
import stat
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from multiprocessing import forkserver
from pathlib import Path, PurePosixPath
from typing import Any, Final

from storywatch.paths import PathRules
from storywatch.story import ParseError, ParseResult, Story, parse_story

logger = logging.getLogger(__name__)


class Repo:
    def __init__(self, root: Path, rules: PathRules, *, max_file_bytes: int = 1_048_576) -> None:
        self.root = root
        self._root = os.fspath(root)
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

    def walk(self, under: str = "", *, when_big: Callable[[], None] | None = None) -> list[str]:
        """Every wanted file below ``under`` (a relative folder; "" = the root), sorted.
        ``when_big`` is called once the walk has found PARALLEL_FROM files."""
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
                        if when_big is not None and len(found) == PARALLEL_FROM:
                            when_big()
                except OSError:
                    continue
        found.sort()
        return found

    def is_dir(self, rel: str) -> bool:
        path = self.root / rel
        return path.is_dir() and not path.is_symlink()

    def read(self, rel: str, folders: dict[str, bool] | None = None) -> ParseResult | None:
        """Parse the file at ``rel``; None when it is gone or not a file we may read."""
        # str paths and os.* calls: the startup scan reads every file, and Path objects,
        # a separate stat and a buffered open cost more than the read itself.
        path = os.path.join(self._root, rel)
        try:
            if not self._plain(path, rel, {} if folders is None else folders):
                self._ignored(rel)
                return None
            st = os.lstat(path)
            flags = _OPEN_FLAGS | os.O_NOFOLLOW
            if stat.S_ISLNK(st.st_mode):
                if not self._inside(path):
                    self._ignored(rel)
                    return None
                st = os.stat(path)
                flags = _OPEN_FLAGS
            # Never opened unless regular: opening a FIFO blocks, a device may act on it.
            if not stat.S_ISREG(st.st_mode):
                return None
            if st.st_size > self.max_file_bytes:
                return self._too_large(st.st_size)
            # O_NOFOLLOW: a link swapped in since the lstat is refused (ELOOP), not followed;
            # the watcher reports that change and the file is read again.
            fd = os.open(path, flags)
            try:
                st = os.fstat(fd)  # what was opened, which may differ from what was checked
                if not stat.S_ISREG(st.st_mode):
                    return None
                raw = _read_upto(fd, st.st_size, self.max_file_bytes + 1)
            finally:
                os.close(fd)
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                return None
            return ParseError("unreadable", f"cannot read file: {exc.strerror or exc}")
        return parse_story(rel, raw, max_bytes=self.max_file_bytes)

    def _plain(self, path: str, rel: str, folders: dict[str, bool]) -> bool:
        """Whether ``rel`` is a plain path in the repo: no ``..``, no folder reached through
        a link. ``folders`` caches the folder check for one batch of reads."""
        if rel.startswith("/") or ".." in rel.split("/"):
            return False
        folder = rel.rpartition("/")[0]
        plain = folders.get(folder)
        if plain is None:
            real_folder = Path(os.path.realpath(os.path.dirname(path)))
            plain = folders[folder] = real_folder == self.real_root / PurePosixPath(folder)
        return plain

    def _inside(self, link: str) -> bool:
        """Whether a linked file's target is inside the repo."""
        return Path(os.path.realpath(link)).is_relative_to(self.real_root)

    def _ignored(self, rel: str) -> None:
        logger.debug("ignoring %s: it leads outside the repo or through a linked folder", rel)

    def _too_large(self, size: int) -> ParseError:
        return ParseError("too_large", f"file is {size} bytes, limit is {self.max_file_bytes}")

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


# Non-blocking: a FIFO swapped in after the checks must not block the reader.
_OPEN_FLAGS: Final = os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK


def _read_upto(fd: int, size: int, limit: int) -> bytes:
    """Up to ``limit`` bytes of the open file whose size was ``size``. The first read asks
    for all of it (one buffer of the right size, not ``limit``), and one byte more: a file
    that grew since is read on, in small pieces, until its end or ``limit``."""
    chunks: list[bytes] = []
    total = 0
    want = min(size + 1, limit)
    while total < limit:
        chunk = os.read(fd, want)
        if not chunk:
            break
        chunks.append(chunk)
        total += len(chunk)
        want = min(limit - total, 65536)
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


# Below this many files, starting worker processes costs more than it saves.
PARALLEL_FROM: Final = 2000


def parse_tree(
    repo: Repo, paths: Sequence[str], on_progress: Callable[[int], None] | None = None
) -> dict[str, ParseResult | None]:
    """Read and parse many files: in worker processes for big trees (YAML parsing is
    CPU-bound and holds the GIL), else here."""
    workers = _worker_count()
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


def start_workers() -> None:
    """Start the process that forks the parse workers, with the parse code imported, so
    that it gets ready while the caller is still walking the tree (idempotent)."""
    if _worker_count() > 1 and _pool_context().get_start_method() == "forkserver":
        with contextlib.suppress(OSError):
            forkserver.ensure_running()


def _worker_count() -> int:
    return min(os.cpu_count() or 1, 8)


def _pool_context() -> multiprocessing.context.BaseContext:
    # Not fork: forking a process that may hold threads can deadlock (and warns from 3.12).
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    # Workers are forked from a server that imported this module once, rather than each
    # importing it (YAML, python-frontmatter: ~0.1 s) before its first file.
    forkserver.set_forkserver_preload([__name__])
    return multiprocessing.get_context("forkserver")


def _parse_parallel(
    repo: Repo,
    paths: Sequence[str],
    workers: int,
    on_progress: Callable[[int], None] | None,
) -> dict[str, ParseResult | None]:
    size = max(100, len(paths) // (workers * 8))
    chunks = [list(paths[i : i + size]) for i in range(0, len(paths), size)]
    results: dict[str, ParseResult | None] = {}
    with ProcessPoolExecutor(max_workers=workers, mp_context=_pool_context()) as pool:
        futures = [
            pool.submit(_parse_chunk, str(repo.root), repo.rules, repo.max_file_bytes, chunk)
            for chunk in chunks
        ]
        for future in as_completed(futures):
            results.update(_decode(future.result()))
            if on_progress is not None:
                on_progress(len(results))
    return {rel: results[rel] for rel in paths}


def _parse_chunk(root: str, rules: PathRules, max_file_bytes: int, paths: list[str]) -> bytes:
    repo = Repo(Path(root), rules, max_file_bytes=max_file_bytes)
    folders: dict[str, bool] = {}
    return _encode([(rel, repo.read(rel, folders)) for rel in paths])


# Results go back to the parent as marshal data, not pickled dataclasses: they are plain
# JSON-safe values, which marshal writes ~3x and reads ~1.5x faster than pickle handles
# the dataclasses (pickle goes through dataclasses.fields() per object). Both ends are
# this code, in processes of the same interpreter: marshal's format is theirs to share.
def _encode(results: list[tuple[str, ParseResult | None]]) -> bytes:
    return marshal.dumps([(rel, *_plain(result)) for rel, result in results])


def _plain(result: ParseResult | None) -> tuple[Any, ...]:
    if isinstance(result, Story):
        return ("story", result.id, result.fields, result.body)
    if isinstance(result, ParseError):
        return ("error", result.reason, result.message, result.line, result.has_front_matter)
    return (None,)


def _decode(data: bytes) -> Iterator[tuple[str, ParseResult | None]]:
    for rel, kind, *rest in marshal.loads(data):
        if kind == "story":
            story_id, fields, body = rest
            yield rel, Story(id=story_id, path=rel, fields=fields, body=body)
        elif kind == "error":
            reason, message, line, has_front_matter = rest
            yield rel, ParseError(reason, message, line, has_front_matter=has_front_matter)
        else:
            yield rel, None
