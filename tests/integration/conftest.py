from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.daemon import Daemon, copy_fixtures
from tests.integration.redis_server import RedisServer


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return copy_fixtures(tmp_path / "stories")


@pytest.fixture
def daemon_factory(tmp_path: Path) -> Iterator[type[Daemon]]:
    started: list[Daemon] = []

    class _Factory(Daemon):
        def __init__(self, repo: Path, **kwargs: object) -> None:
            super().__init__(repo, tmp_path, **kwargs)  # type: ignore[arg-type]
            started.append(self)

    yield _Factory
    for n, daemon in enumerate(started):
        daemon.stop()
        # Shown by pytest only when the test failed.
        print(f"--- daemon {n} ({daemon.command}, port {daemon.port}) stderr ---")
        print("".join(daemon.stderr_lines[-60:]))


@pytest.fixture
def daemon(repo: Path, daemon_factory: type[Daemon]) -> Daemon:
    d = daemon_factory(repo).start()
    d.wait_healthy()
    return d


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "/integration/" in str(item.fspath):
            item.add_marker(pytest.mark.integration)


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis").start()
    yield server
    server.stop()
