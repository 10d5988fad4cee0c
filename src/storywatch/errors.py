"""The error tree. Library exceptions are wrapped at the edge with ``raise … from exc``.

    StorywatchError
    ├── ConfigError          bad config key, type or file → the CLI exits 2
    ├── StateError           an unusable state file (sqlite) → the CLI exits 2
    ├── BackendError         the event log backend failed (e.g. Redis unreachable)
    │   └── NotLeaderError   this process lost the watcher lock; its appends are refused
    └── GitError             a git command failed (unknown revision, shallow clone)

Only ``cli.py`` turns these into exit codes.
"""

from __future__ import annotations


class StorywatchError(Exception):
    """Root of every error storywatch raises on purpose."""


class ConfigError(StorywatchError):
    """The configuration is invalid; the message names the key."""


class StateError(StorywatchError):
    """The persisted state cannot be used."""


class BackendError(StorywatchError):
    """The event log backend failed."""


class NotLeaderError(BackendError):
    """This process lost the watcher lock: its appends are refused."""


class GitError(StorywatchError):
    """A git operation failed."""
