"""PatchStore: a prepared store opened read-only (images.npy memory-mapped, index.csv, meta.json), and
StoreSource, which reads one back as the input of another `prepare` (e.g. at another size)."""

from __future__ import annotations

import csv
import functools
import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from histoscan.data.base import Batch, Part, Source
from histoscan.data.images import Fit, fit_image, fit_kind, fit_note
from histoscan.errors import HistoscanInputError
from histoscan.folders import StoreDir

STORE_VERSION = 1
INDEX_COLUMNS = ["id", "label", "group", "source", "split"]
# optional files (stores written before them lack them; file names: StoreDir): every patch fitted to the
# store's size, every file skipped as unreadable (--skip-bad); meta.json counts both
FITTED_COLUMNS = ["row", "id", "fitted"]
SKIPPED_COLUMNS = ["path", "reason"]
FIT_KINDS = frozenset({"padded", "cropped", "resized", "padded+cropped"})


def is_store(path: Path) -> bool:
    """Whether `path` is a prepared store folder (meta.json + index.csv + images.npy)."""
    return StoreDir.is_store(path)


class PatchStore:
    """A prepared store opened read-only: `images` is a memory map, the index lives in memory."""

    def __init__(
        self,
        path: Path,
        images: np.ndarray,
        ids: list[str],
        labels: np.ndarray,
        groups: list[str],
        sources: list[str],
        splits: list[str],
        meta: dict,
    ):
        self.path, self.images, self.ids, self.labels = path, images, ids, labels
        self.groups, self.sources, self.splits, self.meta = groups, sources, splits, meta

    @classmethod
    def open(cls, root: str | Path) -> PatchStore:
        """Open STORE (raises HistoscanInputError when it is missing, incomplete or inconsistent)."""
        root = Path(root).expanduser()
        folder = StoreDir(root)
        if not is_store(root):
            raise HistoscanInputError(f"{root}: not a prepared store (missing {', '.join(folder.missing())})")
        try:
            meta = json.loads(folder.meta.read_text())
            images = np.load(folder.images, mmap_mode="r")
        except (OSError, ValueError) as e:
            raise HistoscanInputError(f"{root}: damaged store ({e})") from None
        with open(folder.index, newline="", encoding="utf-8") as f:
            reader = csv.reader(f)
            header = next(reader, [])
            if header != INDEX_COLUMNS:
                raise HistoscanInputError(f"{folder.index}: header {header}, expected {INDEX_COLUMNS}")
            rows = list(reader)
        if len(rows) != len(images) or images.ndim != 4 or images.shape[3] != 3 or images.dtype != np.uint8:
            raise HistoscanInputError(
                f"{root}: {StoreDir.INDEX} has {len(rows)} rows but {StoreDir.IMAGES} is {images.shape} "
                f"{images.dtype}"
            )
        cols = list(zip(*rows, strict=True)) if rows else [()] * 5
        labels = np.array([int(v) if v not in ("", "-1") else -1 for v in cols[1]], dtype=np.int8)
        return cls(root, images, list(cols[0]), labels, list(cols[2]), list(cols[3]), list(cols[4]), meta)

    def __len__(self) -> int:
        return len(self.ids)

    @functools.cached_property
    def fitted(self) -> list[str] | None:
        """Per row, how its image was fitted to the store's size (e.g. "padded 50x42 -> 50x50"; "" when it had
        the size); None when unknown: a store from before fitted.csv whose meta.json counts fitted images."""
        path = StoreDir(self.path).fitted
        if not path.is_file():
            notes = self.meta.get("notes") or {}
            return None if any(k in FIT_KINDS for k in notes) else [""] * len(self)
        out = [""] * len(self)
        with open(path, newline="", encoding="utf-8") as f:
            for row in csv.DictReader(f):
                out[int(row["row"])] = row["fitted"]
        return out

    def skipped_files(self) -> list[dict[str, str]]:
        """Every file skipped as unreadable (--skip-bad) as {"path", "reason"} (from skipped.csv, else the
        first ones meta.json lists)."""
        path = StoreDir(self.path).skipped
        if path.is_file():
            with open(path, newline="", encoding="utf-8") as f:
                return [{"path": r["path"], "reason": r["reason"]} for r in csv.DictReader(f)]
        return [{"path": k["source"], "reason": k["reason"]} for k in self.meta.get("skipped") or []]

    @property
    def size(self) -> int:
        """Patch side in pixels."""
        return int(self.images.shape[1])

    @property
    def has_labels(self) -> bool:
        """Every patch has a 0/1 label."""
        return len(self) > 0 and bool((self.labels >= 0).all())

    @property
    def has_groups(self) -> bool:
        """At least one patch has a known group (patient/slide)."""
        return any(self.groups)

    def __repr__(self) -> str:
        return f"PatchStore({self.path}, n={len(self)}, size={self.size}, format={self.meta.get('format')})"


def require_labelled(store: PatchStore, both_classes: bool = True, name: str | Path | None = None) -> None:
    """Raise HistoscanInputError unless every patch is labelled (and, if asked, both classes occur).

    `name` is what the message names (the user's DATA argument); default the store's folder.
    """
    where = name if name is not None else store.path
    if len(store) == 0:
        raise HistoscanInputError(f"{where}: the store holds no images")
    if not store.has_labels:
        n = int((store.labels < 0).sum())
        raise HistoscanInputError(f"{where}: {n} of {len(store)} images have no label; labelled data needed")
    if both_classes:
        counts = np.bincount(store.labels.astype(np.int64), minlength=2)
        if counts.min() == 0:
            only = int(counts.argmax())
            raise HistoscanInputError(
                f"{where}: only class {only} ({counts[only]} images); need both 0 (normal) and 1 (tumor)"
            )


class StoreSource(Source):
    """A prepared store used as input (re-packing it, e.g. at another size)."""

    kind = "store"

    def __init__(self, root: Path, part: Part = "auto"):
        self.store = PatchStore.open(root)
        if part == "labelled" and not self.store.has_labels:
            raise HistoscanInputError(f"{root}: has no labels (part 'labelled' asked for)")
        self.path, self.part = root, "labelled" if self.store.has_labels else "unlabelled"
        self.mpp, self.native_size = self.store.meta.get("mpp"), self.store.size

    def __len__(self) -> int:
        return len(self.store)

    @property
    def labelled(self) -> bool:
        return self.store.has_labels

    def inputs(self) -> list[Path]:
        return StoreDir(self.path).files()

    def batches(self, size: int, fit: Fit, skip_bad: bool, batch_size: int = 4096) -> Iterator[Batch]:
        s = self.store
        for a in range(0, len(s), batch_size):
            b = min(a + batch_size, len(s))
            x = np.asarray(s.images[a:b])
            notes: Counter[str] = Counter()
            before = s.fitted[a:b] if s.fitted is not None else [""] * (b - a)
            now = fit_note(s.size, s.size, size, fit)
            if now:
                x = np.stack([fit_image(im, size, fit) for im in x])
                notes[fit_kind(s.size, s.size, size, fit) or ""] += len(x)
            fitted = ["; ".join(n for n in (old, now) if n) for old in before]
            yield Batch(
                x,
                s.ids[a:b],
                s.labels[a:b].tolist(),
                s.groups[a:b],
                s.sources[a:b],
                s.splits[a:b],
                notes,
                fitted=fitted,
            )
