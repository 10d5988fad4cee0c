"""storywatch: stream every change of a markdown story repo over WebSocket."""

from __future__ import annotations

__version__ = "0.1.0"
SERVER_NAME = f"storywatch/{__version__}"
