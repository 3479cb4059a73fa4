"""Recognise the dataset at a path (store, PCam, Kaggle HCD, manifest, class or image folders) and open it."""

from __future__ import annotations

import csv
from pathlib import Path

from histoscan.data.base import Part, Source
from histoscan.data.images import is_image_file
from histoscan.data.patchstore import StoreSource, is_store
from histoscan.data.pcam import PCamSource
from histoscan.data.sources import (
    read_class_folders,
    read_image_file,
    read_image_folder,
    read_kaggle_hcd,
    read_manifest,
)
from histoscan.errors import HistoscanInputError
from histoscan.folders import StoreDir


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
    p = Path(path).expanduser()
    if part not in ("auto", "labelled", "unlabelled"):
        raise HistoscanInputError(f"--part: unknown value {part!r} (use auto, labelled or unlabelled)")
    if not p.exists():
        raise HistoscanInputError(f"{p}: no such file or folder")
    if p.is_file():
        return _detect_file(p, part)
    if is_store(p):
        return StoreSource(p, part)
    found = PCamSource.from_folder(p, part)
    if found is not None:
        return found
    hcd = read_kaggle_hcd(p, part)
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
    folders = read_class_folders(p, part)
    return folders if folders is not None else read_image_folder(p, part)


def _detect_file(p: Path, part: Part) -> Source:
    """A single file: PCam HDF5, manifest CSV, a store's own file (the store) or one image."""
    name = p.name.lower()
    if name.endswith(".gz"):
        raise HistoscanInputError(
            f"{p}: gzip-compressed; decompress it first (gunzip -k) or use histoscan download"
        )
    if name.endswith((".h5", ".hdf5")):
        return PCamSource.from_file(p, part)
    if name.endswith(".csv"):
        return read_manifest(p, part)
    if p.name in StoreDir.FILES and is_store(p.parent):
        return StoreSource(p.parent, part)
    if is_image_file(p):
        return read_image_file(p, part)
    raise HistoscanInputError(f"{p}: unknown format (expected a folder, .h5, .csv or PNG/TIFF/JPEG image)")
