"""Pyro programs written the way Pyro's examples write them, trained by ppvae and compared
with Pyro's own SVI; shared helpers live in ``programs_helpers.py`` (put on the path here)."""

from __future__ import annotations

import sys
from pathlib import Path

HERE = str(Path(__file__).resolve().parent)
if HERE not in sys.path:
    sys.path.insert(0, HERE)
