"""Folder owners: one class per kind of folder histoscan writes, the only code that knows its file names.

RunDir (a training run), EvalDir (an evaluation), CvDir (a cross-validation), TuneDir (a tune), SlideDir (a
slide map), CohortDir (a cohort of slide maps), StoreDir (a prepared patch store) and ExplainDir (Grad-CAM
overlays). Every other module asks the owner for a path (or for a file read or written); tests/
test_folder_owners.py checks that no file name an owner declares is spelled anywhere else. This package sits
below every stage (it imports only config, utils and errors), so any stage, and the data layer, may use it.
"""

from __future__ import annotations

from histoscan.folders.cohort import CohortDir
from histoscan.folders.cv import CvDir
from histoscan.folders.evaluation import EvalDir
from histoscan.folders.explain import ExplainDir
from histoscan.folders.run import RunDir
from histoscan.folders.slide import SlideDir
from histoscan.folders.store import StoreDir
from histoscan.folders.tune import TuneDir

OWNERS: tuple[type, ...] = (RunDir, EvalDir, CvDir, TuneDir, SlideDir, CohortDir, StoreDir, ExplainDir)

__all__ = [
    "OWNERS",
    "CohortDir",
    "CvDir",
    "EvalDir",
    "ExplainDir",
    "RunDir",
    "SlideDir",
    "StoreDir",
    "TuneDir",
]
