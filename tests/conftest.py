from __future__ import annotations

import atexit
import functools
import io
import os
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

# Every timeout in the tests is multiplied by this (CI machines are shared and slow).
_DEFAULT_SCALE = "3" if os.environ.get("CI") else "1"
TIMEOUT_SCALE = float(os.environ.get("STORYWATCH_TEST_TIMEOUT_SCALE", _DEFAULT_SCALE))


def scaled(seconds: float) -> float:
    return seconds * TIMEOUT_SCALE


FIXTURES_IN_CHECKOUT = Path(__file__).resolve().parents[1] / "fixtures" / "stories"


@functools.cache
def committed_fixtures() -> Path:
    """The example stories as committed, copied once per test run — never the working
    copy, which a README tour may have changed (an edited story, the daemon's
    ``.storywatch/`` state)."""
    dest = Path(tempfile.mkdtemp(prefix="storywatch-fixtures-")) / "stories"
    atexit.register(shutil.rmtree, dest.parent, True)
    root = FIXTURES_IN_CHECKOUT.parents[1]
    archive = subprocess.run(
        ["git", "-C", str(root), "archive", "--format=tar", "HEAD:fixtures/stories"],
        capture_output=True,
        check=False,
    )
    if archive.returncode == 0:
        dest.mkdir()
        with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
            tar.extractall(dest, filter="data")
    else:  # not a git checkout (an unpacked source tree): copy, leaving state behind
        shutil.copytree(FIXTURES_IN_CHECKOUT, dest, ignore=shutil.ignore_patterns(".storywatch"))
    return dest
