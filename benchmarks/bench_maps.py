"""Slide-map accuracy on truth mosaics: `histoscan slide` per setting, scored against the known tumour cells.

    python benchmarks/bench_maps.py --model runs/compare-hcd/pytorch-seed/fold-0 \\
        --split-from runs/compare-hcd/pytorch-seed/fold-0 --out /tmp/bench-maps \\
        --settings "--stride 96 --smooth 0" "--stride 48 --smooth 0" "--stride 32 --smooth 0" \\
                   "--stride 96 --smooth 1" "--stride 48 --smooth 0.75"

Mosaics (benchmarks/make_mosaic.py: 96 px cells of real hcd-train patches at 0.972 µm/px, glass margin, tumour
blobs, glass holes; pyramidal JPEG TIFF) are built from the patches RUN/split.csv marks "test" for
`--split-from` (the model never saw them), then every setting (extra `histoscan slide` options; "" = the
defaults) maps every mosaic in a fresh CLI process. Mosaics are built for each `--offsets` value: 0 puts
the cells on the tile grid (a 96 px tile is one patch), 48 shifts them half a cell (every 96 px tile straddles
four patches, the worst case for boundaries). Scores per mosaic (`histoscan.slide.scoring.score_map`, each
heatmap cell against the truth cell under its centre), averaged over the mosaics: tile AUC over tissue cells,
Dice at the run's threshold (and the best Dice over thresholds), region sensitivity at <= 1/2/4 false-positive
regions per slide (thresholds swept), false-positive regions at the threshold, tumour-area error (mm²), glass
cells classified, tissue cells missed (%), tiles classified and time (map = map_slide; wall = the process).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

import numpy as np
from _common import run_timed, shared_data
from make_mosaic import load_pools, make_mosaics, test_ids

from histoscan.folders import SlideDir
from histoscan.slide.scoring import score_map, truth_under_cells

COLUMNS = (
    ("tile AUC", "tile_auc", "{:.3f}"),
    ("Dice", "dice", "{:.3f}"),
    ("best Dice", "best_dice", "{:.3f}"),
    ("sens @1 FP", "froc_1", "{:.2f}"),
    ("@2 FP", "froc_2", "{:.2f}"),
    ("@4 FP", "froc_4", "{:.2f}"),
    ("FP regions", "fp_regions", "{:.1f}"),
    ("area err mm²", "area_error_mm2", "{:.3f}"),
    ("called − true mm²", "area_bias_mm2", "{:+.3f}"),
    ("glass classified %", "glass_classified_pct", "{:.2f}"),
    ("tissue missed %", "tissue_missed_pct", "{:.1f}"),
    ("tiles", "n_tissue_tiles", "{:.0f}"),
    ("map s", "map_s", "{:.1f}"),
    ("wall s", "wall_s", "{:.1f}"),
    ("CPU s", "cpu_s", "{:.1f}"),
)


def map_one(model: Path, slide: Path, out: Path, extra: list[str]) -> dict:
    """One `histoscan slide` process: its summary plus wall and CPU seconds (wait4)."""
    exe = str(Path(sys.executable).with_name("histoscan"))
    cmd = [exe, "slide", str(model), str(slide), "--out", str(out), "--force", "--no-progress", *extra]
    wall, usage, _, _ = run_timed(cmd)
    summary = SlideDir(out).read_summary()
    summary.update(wall_s=wall, cpu_s=usage.ru_utime + usage.ru_stime)
    return summary


def score_one(slide: Path, out: Path, summary: dict) -> dict:
    """Scores of one map (OUT/heatmap.npy) against the mosaic's truth."""
    stem = slide.with_suffix("")
    truth = np.load(f"{stem}.truth.npy")
    meta = json.loads(Path(f"{stem}.truth.json").read_text())
    heat = np.load(SlideDir(out).heatmap)
    cell0 = summary["cell_size_level0"]
    labels = truth_under_cells(truth, meta["cell_px"], meta["origin_px"], heat.shape, cell0)
    cell_mm2 = (cell0 * summary["slide_mpp"] / 1000) ** 2
    s = score_map(heat, labels, summary["threshold"], cell_mm2, truth_mm2=meta["tumour_mm2"])
    s.update(
        n_tissue_tiles=summary["n_tissue_tiles"],
        map_s=summary["seconds"],
        wall_s=summary["wall_s"],
        cpu_s=summary["cpu_s"],
    )
    return s


def table(results: dict[str, list[dict]]) -> str:
    """Markdown: one row per (grid offset, setting), each figure the mean over the mosaics (regions summed)."""
    head = ["offset | setting", *(c[0] for c in COLUMNS), "regions found"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * (len(head) + 1)]
    for name, rows in results.items():
        cells = []
        for _, key, fmt in COLUMNS:
            vals = [r[key] for r in rows if r[key] is not None]
            cells.append(fmt.format(np.mean(vals)) if vals else "–")
        found = f"{sum(r['regions_detected'] for r in rows)}/{sum(r['regions'] for r in rows)}"
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {found} |")
    return "\n".join(lines)


def main() -> None:
    """Build the mosaics, map them with each setting, print the table and write OUT/results.json."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, required=True, help="the model (run folder, checkpoint or .onnx)")
    ap.add_argument("--split-from", type=Path, default=None, help="mosaics only of RUN/split.csv's test ids")
    ap.add_argument("--data", type=Path, default=shared_data() / "hcd-train", help="hcd-train folder")
    ap.add_argument("--out", type=Path, required=True, help="work folder (mosaics/, maps/, results.json)")
    ap.add_argument("--mosaics", type=int, default=3)
    ap.add_argument("--size", type=int, default=24, help="tissue square side in cells")
    ap.add_argument(
        "--offsets",
        type=int,
        nargs="+",
        default=[0, 48],
        help="glass px before the cell grid: 0 = cells on the tile grid, 48 = tiles of 96 straddle 4 cells",
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--settings",
        nargs="+",
        default=[""],
        help='`histoscan slide` options per setting, quoted ("" = the defaults)',
    )
    args = ap.parse_args()
    if args.split_from is None:
        print("warning: no --split-from: mosaics may hold the model's own training patches", file=sys.stderr)
    ids = test_ids(args.split_from) if args.split_from else None
    normal, tumour, n_ids, t_ids = load_pools(args.data, ids)
    print(f"patches: {len(n_ids)} normal, {len(t_ids)} tumour", flush=True)
    results: dict[str, list[dict]] = {}
    for offset in args.offsets:
        folder = args.out / f"mosaics-offset{offset}"
        slides = make_mosaics(folder, normal, tumour, args.mosaics, args.size, args.seed, offset)
        for setting in args.settings:
            name = f"{offset} | `{setting}`" if setting else f"{offset} | defaults"
            label = "-".join(setting.replace("--", "").split()) or "defaults"
            results[name] = []
            for slide in slides:
                out = args.out / "maps" / f"offset{offset}" / label / slide.stem
                s = score_one(slide, out, map_one(args.model, slide, out, shlex.split(setting)))
                results[name].append(s)
                brief = {k: round(s[k], 3) for k in ("tile_auc", "dice", "map_s") if s[k] is not None}
                print(f"{name} {slide.name}: {json.dumps(brief)}", flush=True)
    record = {
        "command": shlex.join(sys.argv),
        "model": str(args.model),
        "split_from": str(args.split_from) if args.split_from else None,
        "results": results,
    }
    (args.out / "results.json").write_text(json.dumps(record, indent=2))
    print(table(results))


if __name__ == "__main__":
    main()
