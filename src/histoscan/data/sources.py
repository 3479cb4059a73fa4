"""Patch sources (Kaggle HCD, manifest CSV, class folders, image folders, PCam via pcam.py): detection."""

from __future__ import annotations

import csv
import hashlib
import os
import re
from collections import Counter
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from histoscan.data.images import Fit, image_size, is_image_file, list_images, load_patch
from histoscan.errors import HistoscanInputError

Part = Literal["auto", "labelled", "unlabelled"]
PCAM_MPP = 0.972  # PCam and Kaggle HCD: Camelyon16 level 2 (10x)
IDC_MPP = 4.0  # IDC breast patches (Janowczyk & Madabhushi 2016): 2.5x, ~4 µm/px
_IDC_NAME = re.compile(r"^\d+_idx5_x\d+_y\d+_class[01]\.png$")

# Accepted label spellings (folder names and CSV values), compared lower-case with "_"/" " read as "-".
NEGATIVE_NAMES = frozenset(
    "0 normal negative neg benign healthy non-tumor non-tumour nontumor nontumour no-tumor no-tumour "
    "class0 class-0 idc-negative".split()
)
POSITIVE_NAMES = frozenset(
    "1 tumor tumour positive pos malignant cancer carcinoma metastasis metastatic class1 class-1 "
    "idc-positive".split()
)
GROUP_COLUMNS = ("group", "patient", "slide", "wsi", "case")


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


def _unique_ids(items: list[tuple[Path, str]]) -> list[str]:
    """File stems when they are unique, else relative paths without suffix (made unique with #k)."""
    stems = [p.stem for p, _ in items]
    if len(set(stems)) == len(stems):
        return stems
    ids, seen = [], Counter()
    for _p, rel in items:
        base = str(Path(rel).with_suffix(""))
        seen[base] += 1
        ids.append(base if seen[base] == 1 else f"{base}#{seen[base]}")
    return ids


def _load(item: Item, size: int, fit: Fit, skip_bad: bool) -> tuple[np.ndarray | None, list[str], str | None]:
    """(fitted image or None, notes, error reason) for one file; errors raise unless `skip_bad`."""
    try:
        if not item.path.is_file():
            where = f" but listed in {item.listed_in}" if item.listed_in else ""
            raise HistoscanInputError(f"{item.source}: image file not found{where}")
        img, notes = load_patch(item.path, item.source, size, fit)
        return img, notes, None
    except HistoscanInputError as e:
        if not skip_bad:
            raise
        return None, [], str(e)


class FileSource(Source):
    """Patches stored one per file (manifest CSV, class folders, image folders, Kaggle HCD)."""

    def __init__(
        self,
        kind: str,
        path: Path,
        items: list[Item],
        csvs: Sequence[Path] = (),
        part: str = "all",
        mpp: float | None = None,
        native_size: int | None = None,
    ):
        self.kind, self.path, self.items, self.csvs, self.part = kind, path, items, list(csvs), part
        self.mpp, self.native_size = mpp, native_size

    def __len__(self) -> int:
        return len(self.items)

    @property
    def labelled(self) -> bool:
        return bool(self.items) and all(it.label >= 0 for it in self.items)

    def inputs(self) -> list[Path]:
        return [*self.csvs, *(it.path for it in self.items)]

    def sizes(self) -> Counter[tuple[int, int]]:
        if self.native_size:
            return super().sizes()
        sizes: Counter[tuple[int, int]] = Counter()
        for it in self.items:
            try:
                sizes[image_size(it.path, it.source)] += 1
            except HistoscanInputError:
                pass  # reported (or skipped) when decoded
        return sizes

    def batches(self, size: int, fit: Fit, skip_bad: bool, batch_size: int = 1024) -> Iterator[Batch]:
        # Pillow, tifffile and zlib release the GIL while decoding, so threads scale without pickling images.
        workers = max(1, min(8, os.cpu_count() or 1))
        with ThreadPoolExecutor(workers) as pool:
            for start in range(0, len(self.items), batch_size):
                chunk = self.items[start : start + batch_size]
                results = list(pool.map(lambda it: _load(it, size, fit, skip_bad), chunk))
                pairs = list(zip(chunk, results, strict=True))
                keep = [(it, r) for it, r in pairs if r[0] is not None]
                its = [it for it, _ in keep]
                yield Batch(
                    np.stack([r[0] for _, r in keep]) if keep else np.zeros((0, size, size, 3), np.uint8),
                    *([getattr(it, a) for it in its] for a in ("id", "label", "group", "source", "split")),
                    notes=Counter(n for _, r in keep for n in r[1]),
                    skipped=[{"source": it.source, "reason": r[2]} for it, r in pairs if r[2]],
                )


def _read_csv(path: Path, required: Sequence[str]) -> tuple[list[str], list[dict[str, str]]]:
    """Header and rows of a CSV, checking the required columns (error names the file and the column)."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            header = [h.strip() for h in (reader.fieldnames or [])]
            reader.fieldnames = header
            rows = list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise HistoscanInputError(f"{path}: cannot read CSV ({e})") from None
    for col in required:
        if col not in header:
            raise HistoscanInputError(
                f"{path}: missing column '{col}' (has: {', '.join(header) or 'nothing'})"
            )
    return header, rows


def _label(value: str | None, csv_path: Path, line: int, column: str = "label") -> int:
    label = parse_label(value or "")
    if label is None:
        raise HistoscanInputError(f"{csv_path}, line {line}: {column} {value!r} is not 0 or 1")
    return label


def _select(
    kind: str, path: Path, items: list[Item], part: Part, csvs: Sequence[Path] = (), mpp: float | None = None
) -> FileSource:
    if not items:
        raise HistoscanInputError(f"{path}: no images found")
    labelled = all(it.label >= 0 for it in items)
    if part == "labelled" and not labelled:
        raise HistoscanInputError(f"{path}: has no labels (part 'labelled' asked for)")
    return FileSource(kind, path, items, csvs, "labelled" if labelled else "unlabelled", mpp)


def read_manifest(csv_path: Path, part: Part = "auto") -> FileSource:
    """A CSV with columns path,label[,group] (group may be patient/slide/wsi/case); paths relative to it."""
    header, rows = _read_csv(csv_path, ["path", "label"])
    group_col = next((c for c in GROUP_COLUMNS if c in header), None)
    root = csv_path.parent
    entries, labels, groups, seen = [], [], [], {}
    for line, row in enumerate(rows, start=2):
        rel = (row.get("path") or "").strip()
        if not rel:
            raise HistoscanInputError(f"{csv_path}, line {line}: empty path")
        if rel in seen:
            raise HistoscanInputError(f"{csv_path}, line {line}: {rel} already listed on line {seen[rel]}")
        seen[rel] = line
        entries.append((root / rel, rel))
        labels.append(_label(row.get("label"), csv_path, line))
        groups.append((row.get(group_col) or "").strip() if group_col else "")
    ids = _unique_ids(entries)
    items = [
        Item(i, lab, g, p, rel, csv_path.name)
        for i, lab, g, (p, rel) in zip(ids, labels, groups, entries, strict=True)
    ]
    idc = group_col == "patient" and bool(items) and all(_IDC_NAME.match(p.name) for p, _ in entries)
    return _select("manifest", csv_path, items, part, [csv_path], IDC_MPP if idc else None)


def _subdirs(p: Path) -> list[Path]:
    """Visible subfolders, leaving out prepared stores (a STORE written inside the data folder)."""
    return sorted(
        d
        for d in p.iterdir()
        if d.is_dir() and not d.name.startswith((".", "_")) and not (d / "images.npy").is_file()
    )


def _class_folders(root: Path, part: Part) -> FileSource | None:
    """ROOT/<label>/* or ROOT/<group>/<label>/*, label folders named as `parse_label` accepts."""
    subs = _subdirs(root)
    if not subs:
        return None
    layout: list[tuple[str, Path, int]] = []  # (group, folder, label)
    label_dirs = [d for d in subs if parse_label(d.name) is not None]
    if label_dirs and len(label_dirs) < len(
        subs
    ):  # a stray folder beside 0/ and 1/ is a mistake, not unlabelled
        odd = next(d for d in subs if parse_label(d.name) is None)
        names = ", ".join(d.name for d in label_dirs)
        raise HistoscanInputError(f"{odd}: not a label folder (use 0/1 or normal/tumor names) beside {names}")
    if label_dirs:
        layout = [("", d, parse_label(d.name)) for d in subs]  # type: ignore[misc]
    else:
        for g in subs:
            inner = _subdirs(g)
            if not inner or any(parse_label(d.name) is None for d in inner):
                return None
            layout += [(g.name, d, parse_label(d.name)) for d in inner]  # type: ignore[misc]
    entries, meta = [], []
    for group, folder, label in layout:
        for f in list_images(folder):
            entries.append((f, f.relative_to(root).as_posix()))
            meta.append((label, group))
    items = [
        Item(i, lab, g, p, rel)
        for i, (lab, g), (p, rel) in zip(_unique_ids(entries), meta, entries, strict=True)
    ]
    idc = bool(items) and all(_IDC_NAME.match(p.name) for p, _ in entries)
    return _select("folders", root, items, part, mpp=IDC_MPP if idc else None)


def _image_folder(root: Path, part: Part) -> FileSource:
    files = list_images(root)
    entries = [(f, f.relative_to(root).as_posix()) for f in files]
    items = [Item(i, -1, "", p, rel) for i, (p, rel) in zip(_unique_ids(entries), entries, strict=True)]
    if not items:
        raise HistoscanInputError(
            f"{root}: no supported data found (PCam .h5, Kaggle HCD, a manifest CSV, class folders or images)"
        )
    return _select("images", root, items, part)


def _kaggle_hcd(root: Path, part: Part) -> FileSource | None:
    """Kaggle HCD: train/ + train_labels.csv (labelled); test/ (or the folder) + sample_submission.csv."""
    labels_csv, sub_csv = root / "train_labels.csv", root / "sample_submission.csv"
    if not labels_csv.is_file() and not sub_csv.is_file():
        return None
    has_train = labels_csv.is_file()
    if has_train and not (root / "train").is_dir():
        raise HistoscanInputError(f"{root / 'train'}: folder missing (train_labels.csv lists its images)")
    test_dir = root / "test" if (root / "test").is_dir() else root
    has_test = sub_csv.is_file()
    if part == "labelled" and not has_train:
        raise HistoscanInputError(f"{root}: has no labels (no train_labels.csv; part 'labelled' asked for)")
    use_train = has_train and (part in ("labelled", "auto") or not has_test)
    csv_path, folder = (labels_csv, root / "train") if use_train else (sub_csv, test_dir)
    _, rows = _read_csv(csv_path, ["id", "label"] if use_train else ["id"])
    items = []
    for line, row in enumerate(rows, start=2):
        pid = (row.get("id") or "").strip()
        if not pid:
            raise HistoscanInputError(f"{csv_path}, line {line}: empty id")
        label = _label(row.get("label"), csv_path, line) if use_train else -1
        items.append(
            Item(
                pid,
                label,
                "",
                folder / f"{pid}.tif",
                (folder / f"{pid}.tif").relative_to(root).as_posix(),
                csv_path.name,
            )
        )
    if not items:
        raise HistoscanInputError(f"{csv_path}: lists no images")
    src = FileSource(
        "kaggle-hcd", root, items, [csv_path], "labelled" if use_train else "unlabelled", PCAM_MPP, 96
    )
    return src


def detect_source(path: str | Path, part: Part = "auto") -> Source:
    """Recognise the dataset at `path` and select its part.

    Recognised: a prepared store (meta.json + index.csv + images.npy); PCam HDF5 (a folder with any of
    camelyonpatch_level_2_split_{train,valid,test}_x.h5, or one _x.h5 file); Kaggle HCD (train/ +
    train_labels.csv and/or test/ or .tif files + sample_submission.csv); a manifest CSV (path,label[,group]),
    or a folder holding labels.csv/manifest.csv; class folders ROOT/<label>/* or ROOT/<group>/<label>/*;
    any other folder of PNG/TIFF/JPEG files (unlabelled); a single image file.

    Args:
        path: file or folder.
        part: "labelled" (error when there are no labels), "unlabelled" (the unlabelled part where a source
            has one, e.g. Kaggle HCD test/, else everything) or "auto" (the labelled part when there is one,
            else everything).

    Raises:
        HistoscanInputError: missing path, unknown format, empty dataset or malformed labels.
    """
    from histoscan.data import store  # lazy: store imports this module
    from histoscan.data.pcam import PCamSource  # lazy: pcam imports this module

    p = Path(path).expanduser()
    if part not in ("auto", "labelled", "unlabelled"):
        raise HistoscanInputError(f"--part: unknown value {part!r} (use auto, labelled or unlabelled)")
    if not p.exists():
        raise HistoscanInputError(f"{p}: no such file or folder")
    if p.is_file():
        name = p.name.lower()
        if name.endswith(".gz"):
            raise HistoscanInputError(
                f"{p}: gzip-compressed; decompress it first (gunzip -k) or use histoscan download"
            )
        if name.endswith((".h5", ".hdf5")):
            return PCamSource.from_file(p, part)
        if name.endswith(".csv"):
            return read_manifest(p, part)
        if p.name in ("meta.json", "index.csv", "images.npy") and store.is_store(p.parent):
            return store.StoreSource(p.parent, part)
        if is_image_file(p):
            return _select("images", p, [Item(p.stem, -1, "", p, p.name)], part)
        raise HistoscanInputError(
            f"{p}: unknown format (expected a folder, .h5, .csv or PNG/TIFF/JPEG image)"
        )
    if store.is_store(p):
        return store.StoreSource(p, part)
    found = PCamSource.from_folder(p, part)
    if found is not None:
        return found
    hcd = _kaggle_hcd(p, part)
    if hcd is not None:
        return hcd
    for name in ("labels.csv", "manifest.csv"):
        if (p / name).is_file():
            return read_manifest(p / name, part)
    for c in sorted(p.glob("*.csv")):
        with open(c, newline="", encoding="utf-8-sig", errors="replace") as f:
            head = {h.strip() for h in next(csv.reader(f), [])}
        if {"path", "label"} <= head:
            return read_manifest(c, part)
    folders = _class_folders(p, part)
    return folders if folders is not None else _image_folder(p, part)
