from __future__ import annotations

import os

# Every timeout in the tests is multiplied by this (CI machines are shared and slow).
_DEFAULT_SCALE = "3" if os.environ.get("CI") else "1"
TIMEOUT_SCALE = float(os.environ.get("STORYWATCH_TEST_TIMEOUT_SCALE", _DEFAULT_SCALE))


def scaled(seconds: float) -> float:
    return seconds * TIMEOUT_SCALE
