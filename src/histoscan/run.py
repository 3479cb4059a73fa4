"""RunDir's import path of old: the owner lives in :mod:`histoscan.folders.run` with the other folder owners."""

from __future__ import annotations

from histoscan.folders.run import RunDir, epoch_offset, read_metrics_file, write_metrics_file

__all__ = ["RunDir", "epoch_offset", "read_metrics_file", "write_metrics_file"]
