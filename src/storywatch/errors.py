"""The error tree. Library exceptions are wrapped at the edge with ``raise … from exc``.

    StorywatchError
    ├── ConfigError          bad config key, type or file → the CLI exits 2
    ├── StateError           an unusable state file (sqlite) → the CLI exits 2
    ├── BackendError         the event log backend is unreachable (Redis down, disk full):
    │   │                    what was to be written is kept and retried
    │   └── NotLeaderError   this process lost the watcher lock; its appends are refused
    ├── RefusedError         the event log refused a batch that can never be written as it
    │                        is: the batch is dropped (its publisher gets an error)
    ├── PublishRejected      a publish the write side will not apply (code + message for
    │                        the client: forbidden, bad_request)
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


class RefusedError(StorywatchError):
    """The event log refused a batch for a reason retrying cannot fix."""


class PublishRejected(StorywatchError):
    """A publish that is not applied; ``code`` is the protocol's error code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class GitError(StorywatchError):
    """A git operation failed."""
