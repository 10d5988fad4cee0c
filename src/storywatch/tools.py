"""The command-line toolbelt: scan, diff, publish, tail, token."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any


def add_commands(sub: Any, common: Callable[[argparse.ArgumentParser], None]) -> None:
    return None


def dispatch(args: argparse.Namespace) -> int:
    raise SystemExit(f"unknown command {args.command}")
