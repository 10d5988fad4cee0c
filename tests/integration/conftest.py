from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.daemon import Daemon, copy_fixtures


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
    for daemon in started:
        daemon.stop()


@pytest.fixture
def daemon(repo: Path, daemon_factory: type[Daemon]) -> Daemon:
    d = daemon_factory(repo).start()
    d.wait_healthy()
    return d


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "/integration/" in str(item.fspath):
            item.add_marker(pytest.mark.integration)
