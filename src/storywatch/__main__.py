from __future__ import annotations

import sys

from storywatch.cli import main

sys.exit(main())
