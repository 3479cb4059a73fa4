"""Build a large synthetic pyramidal slide (tiled JPEG TIFF with MPP) from real tissue tiles, tile by tile.

    python benchmarks/make_big_tiff.py /tmp/big.tif --size 40960

The image is a grid of 512 px blocks: a few elliptical "sections" filled with real tissue tiles cut from the
shared slides (random flips/rotations), on a near-white background. Level 0 is at the source slide's µm/px
(0.499, cmu-1-small-region) so tissue appears at its true scale; levels 1.. are 2x downsamples down to
<= 1024 px, written as successive reduced-resolution pages, which both OpenSlide (generic-tiff) and tiffslide
read as one pyramid. Every tile comes from a generator, so memory stays at a few blocks whatever --size is.
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import tifffile
from _common import shared_data
from PIL import Image

from histoscan.slide.io import open_slide
from histoscan.stain.tissue import thumbnail_tissue_mask

BLOCK = 512
BACKGROUND = (243, 242, 240)


def tissue_bank(slides: list[Path], min_tissue: float = 0.6) -> list[np.ndarray]:
    """512 x 512 level-0 tiles of the shared slides that are mostly tissue, with their 8 flips/rotations."""
    bank = []
    for path in slides:
        reader = open_slide(path)
        w, h = reader.dimensions
        for y in range(0, h - BLOCK + 1, BLOCK):
            for x in range(0, w - BLOCK + 1, BLOCK):
                tile = reader.read_region(x, y, 0, (BLOCK, BLOCK))
                if thumbnail_tissue_mask(tile).mean() >= min_tissue:
                    for k in range(4):
                        bank += [np.rot90(tile, k).copy(), np.rot90(tile[::-1], k).copy()]
        reader.close()
    if not bank:
        raise SystemExit("no tissue tiles found in the shared slides")
    return bank


def layout(blocks: int, seed: int, sections: int = 6) -> tuple[np.ndarray, np.ndarray]:
    """Per block: is it tissue (elliptical sections with ragged edges) and which bank tile it shows."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:blocks, 0:blocks] + 0.5
    tissue = np.zeros((blocks, blocks), bool)
    for _ in range(sections):
        cy, cx = rng.uniform(0.15, 0.85, 2) * blocks
        ry, rx = rng.uniform(0.06, 0.16, 2) * blocks
        angle = rng.uniform(0, math.pi)
        dy, dx = yy - cy, xx - cx
        u = (dx * math.cos(angle) + dy * math.sin(angle)) / rx
        v = (-dx * math.sin(angle) + dy * math.cos(angle)) / ry
        tissue |= u**2 + v**2 < 1 + 0.25 * rng.standard_normal((blocks, blocks))
    return tissue, rng.integers(0, 1 << 30, (blocks, blocks))


def level_tiles(
    level: int, size: int, tissue: np.ndarray, choice: np.ndarray, banks: dict[int, list[np.ndarray]]
) -> Iterator[np.ndarray]:
    """TIFF tiles (BLOCK x BLOCK) of pyramid level `level` (downsample 2**level), row by row."""
    f = 2**level
    side = math.ceil(size / f)
    per = BLOCK // f if f <= BLOCK else 1  # level px per source block
    n = BLOCK // per  # source blocks per tile side
    bank = banks[level]
    for ty in range(math.ceil(side / BLOCK)):
        for tx in range(math.ceil(side / BLOCK)):
            tile = np.empty((BLOCK, BLOCK, 3), np.uint8)
            tile[:] = BACKGROUND
            for by in range(n):
                for bx in range(n):
                    gy, gx = ty * n + by, tx * n + bx
                    if gy < tissue.shape[0] and gx < tissue.shape[1] and tissue[gy, gx]:
                        tile[by * per : (by + 1) * per, bx * per : (bx + 1) * per] = bank[
                            choice[gy, gx] % len(bank)
                        ]
            yield tile


def main() -> None:
    """Write the synthetic slide."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--size", type=int, default=40960, help="level-0 side in px (multiple of 512)")
    ap.add_argument("--mpp", type=float, default=0.499, help="level-0 µm/px written to the file")
    ap.add_argument("--quality", type=int, default=85, help="JPEG quality")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if args.size % BLOCK:
        raise SystemExit(f"--size {args.size}: must be a multiple of {BLOCK}")
    t0 = time.perf_counter()
    slides = sorted((shared_data() / "slides").glob("*.svs"))
    bank0 = tissue_bank(slides[:1])  # cmu-1-small-region: the slide with a known µm/px
    blocks = args.size // BLOCK
    tissue, choice = layout(blocks, args.seed)
    levels = [0]
    while args.size / 2 ** levels[-1] > 1024:
        levels.append(levels[-1] + 1)
    banks = {
        k: [
            np.asarray(Image.fromarray(t).resize((max(1, BLOCK >> k),) * 2, Image.Resampling.BOX))
            for t in bank0
        ]
        for k in levels
    }
    with tifffile.TiffWriter(args.out, bigtiff=True) as tw:
        for k in levels:
            side = math.ceil(args.size / 2**k)
            res = 1e4 / (args.mpp * 2**k)  # px per cm
            tw.write(
                level_tiles(k, args.size, tissue, choice, banks),
                shape=(side, side, 3),
                dtype=np.uint8,
                tile=(BLOCK, BLOCK),
                photometric="rgb",
                compression="jpeg",
                compressionargs={"level": args.quality},
                subfiletype=1 if k else 0,
                resolution=(res, res),
                resolutionunit="CENTIMETER",
                description=f"histoscan synthetic slide|MPP = {args.mpp * 2**k}" if k == 0 else None,
                metadata=None,
            )
            print(f"level {k}: {side} x {side} px", flush=True)
    mb = args.out.stat().st_size / 1e6
    print(
        f"{args.out}: {args.size} x {args.size} px, {len(levels)} levels, {tissue.mean():.0%} tissue blocks, "
        f"{len(bank0)} tissue tile variants, {mb:.0f} MB, {time.perf_counter() - t0:.0f} s"
    )


if __name__ == "__main__":
    main()
