"""Where caches live (overridable by an environment variable). Nothing here points into the repository."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """Cache root for prepared stores: $HISTOSCAN_CACHE, else ~/.cache/histoscan."""
    env = os.environ.get("HISTOSCAN_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "histoscan"
