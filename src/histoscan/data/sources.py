"""File-backed patch sources: manifest CSV, class folders, Kaggle HCD, plain image folders or files."""

from __future__ import annotations

import csv
import os
import re
from collections import Counter
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from histoscan.data.base import PCAM_MPP, Batch, Item, Part, Source, parse_label
from histoscan.data.images import Fit, image_size, list_images, load_patch
from histoscan.errors import HistoscanInputError
from histoscan.folders import StoreDir

IDC_MPP = 4.0  # IDC breast patches (Janowczyk & Madabhushi 2016): 2.5x, ~4 µm/px
_IDC_NAME = re.compile(r"^\d+_idx5_x\d+_y\d+_class[01]\.png$")

GROUP_COLUMNS = ("group", "patient", "slide", "wsi", "case")


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


def _load(
    item: Item, size: int, fit: Fit, skip_bad: bool
) -> tuple[np.ndarray | None, list[str], str, str | None]:
    """(fitted image or None, notes, fit note or "", error reason) for one file; errors raise unless
    `skip_bad`."""
    try:
        if not item.path.is_file():
            where = f" but listed in {item.listed_in}" if item.listed_in else ""
            raise HistoscanInputError(f"{item.source}: image file not found{where}")
        img, notes, fitted = load_patch(item.path, item.source, size, fit)
        return img, notes, fitted or "", None
    except HistoscanInputError as e:
        if not skip_bad:
            raise
        return None, [], "", str(e)


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
                    skipped=[{"source": it.source, "reason": r[3]} for it, r in pairs if r[3]],
                    fitted=[r[2] for _, r in keep],
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
        if d.is_dir() and not d.name.startswith((".", "_")) and not StoreDir(d).images.is_file()
    )


def read_class_folders(root: Path, part: Part) -> FileSource | None:
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


def read_image_file(path: Path, part: Part) -> FileSource:
    """One image file as an unlabelled source of one patch."""
    return _select("images", path, [Item(path.stem, -1, "", path, path.name)], part)


def read_image_folder(root: Path, part: Part) -> FileSource:
    """Every PNG/TIFF/JPEG file under `root` (recursively), unlabelled."""
    files = list_images(root)
    entries = [(f, f.relative_to(root).as_posix()) for f in files]
    items = [Item(i, -1, "", p, rel) for i, (p, rel) in zip(_unique_ids(entries), entries, strict=True)]
    if not items:
        raise HistoscanInputError(
            f"{root}: no supported data found (PCam .h5, Kaggle HCD, a manifest CSV, class folders or images)"
        )
    return _select("images", root, items, part)


def read_kaggle_hcd(root: Path, part: Part) -> FileSource | None:
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
