"""Helpers shared by the benchmark scripts (run from the repository: `python benchmarks/<name>.py`)."""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def shared_data() -> Path:
    """The shared data folder: $HISTOSCAN_SHARED_DATA, else ../shared/data beside the repository."""
    env = os.environ.get("HISTOSCAN_SHARED_DATA")
    return Path(env) if env else REPO_ROOT.parent / "shared" / "data"
