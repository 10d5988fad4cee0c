from __future__ import annotations

import os

# Every timeout in the tests is multiplied by this (CI machines are shared and slow).
TIMEOUT_SCALE = float(os.environ.get("STORYWATCH_TEST_TIMEOUT_SCALE", "3" if os.environ.get("CI") else "1"))


def scaled(seconds: float) -> float:
    return seconds * TIMEOUT_SCALE
