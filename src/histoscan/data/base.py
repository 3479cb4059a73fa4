"""What every patch source shares: the Source interface, decoded Batches, file Items, labels, checksums."""

from __future__ import annotations

import hashlib
import os
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from histoscan.data.images import Fit

Part = Literal["auto", "labelled", "unlabelled"]
PCAM_MPP = 0.972  # PCam and Kaggle HCD: Camelyon16 level 2 (10x)

# Accepted label spellings (folder names and CSV values), compared lower-case with "_"/" " read as "-".
NEGATIVE_NAMES = frozenset(
    "0 normal negative neg benign healthy non-tumor non-tumour nontumor nontumour no-tumor no-tumour "
    "class0 class-0 idc-negative".split()
)
POSITIVE_NAMES = frozenset(
    "1 tumor tumour positive pos malignant cancer carcinoma metastasis metastatic class1 class-1 "
    "idc-positive".split()
)


def parse_label(value: str) -> int | None:
    """0/1 for an accepted label spelling (see NEGATIVE_NAMES / POSITIVE_NAMES), else None."""
    v = value.strip().lower().replace("_", "-").replace(" ", "-")
    if v in NEGATIVE_NAMES or v == "0.0":
        return 0
    if v in POSITIVE_NAMES or v == "1.0":
        return 1
    return None


def fingerprint(paths: Sequence[Path], extra: str = "") -> str:
    """Fast checksum of inputs: sha256 of each path, size and mtime (missing files count too) plus `extra`."""
    h = hashlib.sha256()
    for p in paths:
        try:
            st = os.stat(p)
            h.update(f"{p}\t{st.st_size}\t{st.st_mtime_ns}\n".encode())
        except OSError:
            h.update(f"{p}\tmissing\n".encode())
    h.update(extra.encode())
    return h.hexdigest()


@dataclass
class Batch:
    """Decoded, fitted patches ready to pack, with their index rows and what happened on the way."""

    images: np.ndarray  # k x S x S x 3 uint8
    ids: list[str]
    labels: list[int]
    groups: list[str]
    sources: list[str]
    splits: list[str]
    notes: Counter[str] = field(default_factory=Counter)
    skipped: list[dict[str, str]] = field(default_factory=list)
    fitted: list[str] = field(default_factory=list)  # per id: fit_note ("" none); empty list: none fitted


class Source:
    """A detected dataset. Subclasses set the attributes and implement `__len__`, `inputs` and `batches`.

    Attributes:
        kind: "pcam", "kaggle-hcd", "manifest", "folders", "images" or "store".
        path: the path the user gave.
        part: the part selected ("labelled" or "unlabelled"; "all" when the source has only one).
        mpp: µm per pixel when known.
        native_size: the size patches of this format have (96 for PCam/HCD), else None.
    """

    kind: str = ""
    path: Path
    part: str = "all"
    mpp: float | None = None
    native_size: int | None = None

    def __len__(self) -> int:
        raise NotImplementedError

    @property
    def labelled(self) -> bool:
        """Whether every patch of the selected part has a 0/1 label."""
        raise NotImplementedError

    def inputs(self) -> list[Path]:
        """Every file the source reads (for the inputs checksum)."""
        raise NotImplementedError

    def sizes(self) -> Counter[tuple[int, int]]:
        """How many patches have each (height, width)."""
        return Counter({(self.native_size, self.native_size): len(self)}) if self.native_size else Counter()

    def batches(self, size: int, fit: Fit, skip_bad: bool, batch_size: int = 1024) -> Iterator[Batch]:
        """Decode and fit every patch, in order, `batch_size` at a time."""
        raise NotImplementedError


@dataclass(frozen=True)
class Item:
    """One image file of a file-backed source."""

    id: str
    label: int  # -1: unlabelled
    group: str
    path: Path
    source: str  # as written to index.csv (path relative to the dataset root)
    listed_in: str = ""  # the CSV that lists this file, for "listed but absent" messages
    split: str = ""
