"""Where shared data and caches live (overridable by environment variables)."""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def shared_data() -> Path:
    """The shared data folder: $HISTOSCAN_SHARED_DATA, else ../shared/data beside the repository."""
    env = os.environ.get("HISTOSCAN_SHARED_DATA")
    return Path(env) if env else REPO_ROOT.parent / "shared" / "data"


def cache_dir() -> Path:
    """Cache root for prepared stores: $HISTOSCAN_CACHE, else ~/.cache/histoscan."""
    env = os.environ.get("HISTOSCAN_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "histoscan"
