"""Real git repositories for the attribution and history tests: distinct authors, branches,
merges, renames. Every git call runs with a clean config (no user settings leak in)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

BASE_ENV = {
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_CONFIG_GLOBAL": os.devnull,
    "GIT_AUTHOR_NAME": "Ada",
    "GIT_AUTHOR_EMAIL": "ada@example.com",
    "GIT_COMMITTER_NAME": "Ada",
    "GIT_COMMITTER_EMAIL": "ada@example.com",
}


class GitRepo:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.clock = 1_700_000_000

    @classmethod
    def init(cls, root: Path, branch: str = "main") -> GitRepo:
        root.mkdir(parents=True, exist_ok=True)
        repo = cls(root)
        repo.git("init", "-q", "-b", branch)
        return repo

    def git(self, *args: str, author: str = "Ada", zone: str = "+0000", check: bool = True) -> str:
        self.clock += 60
        email = f"{author.split()[0].lower()}@example.com"
        env = {
            **os.environ,
            **BASE_ENV,
            "GIT_AUTHOR_NAME": author,
            "GIT_AUTHOR_EMAIL": email,
            "GIT_AUTHOR_DATE": f"{self.clock} {zone}",
            "GIT_COMMITTER_DATE": f"{self.clock} {zone}",
        }
        done = subprocess.run(
            ["git", "-C", str(self.root), *args], capture_output=True, text=True, env=env
        )
        if check and done.returncode != 0:
            raise AssertionError(f"git {' '.join(args)} failed: {done.stderr}")
        return done.stdout.strip()

    def write(self, rel: str, text: str) -> None:
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)

    def story(self, rel: str, story_id: str, status: str, title: str = "t") -> None:
        self.write(rel, f"---\nid: {story_id}\ntitle: {title}\nstatus: {status}\n---\nbody\n")

    def commit(self, message: str, *, author: str = "Ada", zone: str = "+0000") -> str:
        self.git("add", "-A")
        self.git("commit", "-q", "--allow-empty", "-m", message, author=author, zone=zone)
        return self.head()

    def head(self) -> str:
        return self.git("rev-parse", "HEAD")

    def last(self, rev: str, path: str) -> str:
        """What the SPEC names: ``git log -1 REV -- PATH`` (the sha, or "")."""
        return self.git("log", "-1", "--format=%H", rev, "--", path)
