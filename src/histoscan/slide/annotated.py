"""`histoscan tiles`: labelled training tiles cut from annotated whole slides, written as a patch store.

Each slide's tissue is tiled at the patch resolution (PCam's 0.972 µm/px and 96 px by default); each tile is
labelled from the slide's outlines (slide/annotations.py: PCam's centre rule, or an area fraction) and goes into
the store with group = slide id, so `train`, `cv` and `tune` split by slide. Slides are cut one at a time into
parts kept beside the store (StoreDir.parts_path), so an interrupted run continues with the next slide; the store
is packed from the parts at the end, with a manifest of what each slide gave, skipped and warned.
"""

from __future__ import annotations

import csv
import io
import json
import math
import shutil
import sys
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np

from histoscan.data.base import Batch, Source
from histoscan.data.images import Fit
from histoscan.data.patchstore import PatchStore
from histoscan.data.store import pack_source
from histoscan.errors import HistoscanInputError
from histoscan.folders import StoreDir
from histoscan.options.slide import TilesOptions
from histoscan.slide.annotations import (
    SlideAnnotations,
    annotation_files,
    parse_label_map,
    read_annotations,
    tile_labels,
)
from histoscan.slide.io import open_slide
from histoscan.slide.tiles import plan_grid, stream_tiles, tile_tissue_fraction
from histoscan.stain.tissue import thumbnail_tissue_mask
from histoscan.utils.fs import guard_output

MANIFEST_COLUMNS = ["slide", "annotations", "tissue_tiles", "tumour", "normal", "skipped_unannotated", "warnings"]


def slide_id(path: Path) -> str:
    """A slide's id (its group in the store, and the stem its annotation file is named after)."""
    return path.stem


def cut_slide(slide: Path, annotation: Path | None, opts: TilesOptions, progress: bool = True) -> dict:
    """Tile one slide's tissue and label the tiles: {"images", "xy", "labels", "row"} (row: manifest)."""
    from tqdm import tqdm

    reader = open_slide(slide, opts.slide_mpp)
    try:
        if reader.mpp is None:
            raise HistoscanInputError(
                f"{slide}: no µm/px in the slide's metadata; pass --slide-mpp with its level-0 µm/px"
            )
        ann: SlideAnnotations | None = None
        if annotation is not None:
            ann = read_annotations(annotation, reader.dimensions, parse_label_map(opts.label_map))
        grid = plan_grid(reader, opts.size, opts.mpp, opts.stride or opts.size)
        side = min(max(1024, math.ceil(8 * max(reader.dimensions) / grid.tile0)), 4096)
        mask = thumbnail_tissue_mask(reader.thumbnail(side))
        rc = np.argwhere(tile_tissue_fraction(mask, grid, reader.dimensions) >= opts.min_tissue)
        xy = grid.origins(rc)
        boxes = np.concatenate([xy, xy + grid.tile0], axis=1).astype(np.float64)
        if ann is not None:
            labels = tile_labels(ann, boxes, opts.label_rule, opts.centre / opts.size, opts.fraction, opts.unannotated)
        else:  # no outlines: Camelyon's normal slides (all tissue normal), or nothing to take when skipping
            labels = np.full(len(xy), 0 if opts.unannotated == "normal" else -1, np.int64)
        keep = labels >= 0
        xy, labels = xy[keep], labels[keep]
        images = np.empty((len(xy), opts.size, opts.size, 3), np.uint8)
        with tqdm(total=len(xy), unit="tile", file=sys.stderr, disable=None if progress else True,
                  desc=slide.name) as bar:  # fmt: skip
            for start, batch in stream_tiles(reader, grid, xy, 256, opts.read_threads):
                images[start : start + len(batch)] = batch
                bar.update(len(batch))
    finally:
        reader.close()
    warned = Counter(ann.warnings) if ann is not None else Counter()
    row = {
        "slide": str(slide),
        "annotations": str(annotation) if annotation is not None else "",
        "tissue_tiles": len(rc),
        "tumour": int((labels == 1).sum()),
        "normal": int((labels == 0).sum()),
        "skipped_unannotated": int((~keep).sum()),
        "warnings": "; ".join(f"{k}: {v}" for k, v in sorted(warned.items())),
    }
    return {"images": images, "xy": xy, "labels": labels, "row": row}


class _PartsSource(Source):
    """The cut slides, read back from their parts in slide order, as the input of the store's packing."""

    kind = "annotated-slides"

    def __init__(self, path: Path, parts: list[tuple[str, Path]], mpp: float, size: int) -> None:
        self.path, self.parts, self.mpp, self.native_size = path, parts, mpp, size
        self.counts = [int(np.load(p, mmap_mode="r")["labels"].shape[0]) for _, p in parts]

    def __len__(self) -> int:
        return sum(self.counts)

    @property
    def labelled(self) -> bool:
        return True

    def inputs(self) -> list[Path]:
        return [p for _, p in self.parts]

    def batches(self, size: int, fit: Fit, skip_bad: bool, batch_size: int = 1024) -> Iterator[Batch]:
        for (sid, part), n in zip(self.parts, self.counts, strict=True):
            with np.load(part) as z:
                images, xy, labels = z["images"], z["xy"], z["labels"]
            for s in range(0, n, batch_size):
                e = min(n, s + batch_size)
                ids = [f"{sid}_{x}_{y}" for x, y in xy[s:e]]
                yield Batch(images[s:e], ids, [int(v) for v in labels[s:e]], [sid] * (e - s),
                            [f"{sid}@{x},{y}" for x, y in xy[s:e]], [""] * (e - s))  # fmt: skip


def make_tiles(
    slides: Sequence[str | Path],
    annotations: str | Path,
    out: str | Path,
    options: TilesOptions | None = None,
    progress: bool = True,
    echo: Callable[[str], None] | None = None,
) -> PatchStore:
    """Cut labelled tiles from annotated slides into the patch store `out` (resumable; see module doc).

    Args:
        slides: slide files (any OpenSlide format or TIFF).
        annotations: a folder of ``<slide stem>.xml`` / ``.geojson`` files, or one file for a single slide.
        out: the store folder to write (refused when it exists, unless options.force).
        options: see :class:`TilesOptions`.

    Raises:
        HistoscanInputError: a bad slide or annotation file (named), no slides, or `out` exists.
    """
    opts = options or TilesOptions()
    paths = [Path(s) for s in slides]
    if not paths:
        raise HistoscanInputError("tiles: no slides given")
    files = annotation_files(paths, annotations, "--annotations")
    ids = [slide_id(p) for p in paths]
    twice = [k for k, v in Counter(ids).items() if v > 1]
    if twice:
        raise HistoscanInputError(f"tiles: two slides share the id {twice[0]} (file name without extension)")
    out = Path(out).expanduser()
    guard_output(out, opts.force, "folder", "--out")  # checked before any slide is cut
    work = StoreDir(out).parts_path
    work.mkdir(parents=True, exist_ok=True)
    key, rows, parts = opts.key(), [], []
    for i, (slide, sid) in enumerate(zip(paths, ids, strict=True)):
        part, info = work / f"{sid}.npz", work / f"{sid}.json"
        kept = json.loads(info.read_text()) if info.is_file() and part.is_file() else None
        if kept is not None and kept.get("key") == key and kept.get("slide") == str(slide.resolve()):
            row = kept["row"]
            if echo is not None:
                echo(f"tiles: {i + 1}/{len(paths)} {slide.name}: kept from an earlier run")
        else:
            annotation = files[i]
            cut = cut_slide(slide, annotation, opts, progress)
            buf = io.BytesIO()
            np.savez(buf, images=cut["images"], xy=cut["xy"], labels=cut["labels"])
            tmp = part.with_suffix(".npz.tmp")
            tmp.write_bytes(buf.getvalue())
            tmp.replace(part)
            row = cut["row"]
            info.write_text(json.dumps({"key": key, "slide": str(slide.resolve()), "row": row}))
            if echo is not None:
                note = "" if annotation is not None else f" (no annotation file: unannotated = {opts.unannotated})"
                echo(
                    f"tiles: {i + 1}/{len(paths)} {slide.name}: {row['tumour']} tumour, {row['normal']} normal "
                    f"of {row['tissue_tiles']} tissue tiles{note}" + (f"; {row['warnings']}" if row["warnings"] else "")
                )
        rows.append(row)
        parts.append((sid, part))
    manifest = io.StringIO()
    w = csv.DictWriter(manifest, MANIFEST_COLUMNS, lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    source = _PartsSource(out, [(s, p) for (s, p), r in zip(parts, rows, strict=True) if r["tumour"] + r["normal"]],
                          opts.mpp, opts.size)  # fmt: skip
    if not len(source):
        raise HistoscanInputError(f"tiles: no tiles taken from {len(paths)} slide(s) (see the lines above)")
    store = pack_source(source, out, opts.size, key, force=opts.force, extra={StoreDir.MANIFEST: manifest.getvalue()})
    shutil.rmtree(work, ignore_errors=True)
    return store
