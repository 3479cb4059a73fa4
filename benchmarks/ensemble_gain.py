"""Does an ensemble of CV fold models beat one model trained on the same patches? Measured on an outer split.

A CV folder used as one model (`histoscan predict RUNS/cv ...`) cannot be scored by CV on its own data, so this
holds out one outer fold (`--fold` of a `--folds` split, grouped by patient when the data has groups), then on
the remaining patches (a) trains one model as `histoscan train` does and (b) runs `histoscan cv --folds
INNER`, and scores both on the held-out patches with the same TTA: the single model, the fold ensemble (mean
logit, median threshold) and their paired bootstrap difference over the same patches/patients.

Usage:
    python benchmarks/ensemble_gain.py --data ../shared/data/hcd-train --out runs/ensemble-hcd \\
        --recipe "lr=1e-3,schedule=onecycle,warmup_epochs=1" --markdown docs/results.md
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path

import numpy as np
from _common import replace_block
from compare_recipes import parse_fields, recipe_config
from paired_bootstrap import paired_bootstrap

from histoscan.cv.crossval import crossval
from histoscan.data.detect import detect_source
from histoscan.data.splits import make_folds
from histoscan.evaluation.evaluate import evaluate
from histoscan.folders import EvalDir
from histoscan.training.train import train


def write_manifests(data: str, out: Path, folds: int, fold: int, seed: int) -> tuple[Path, Path]:
    """OUT/inner.csv (every patch outside the outer fold) and OUT/outer.csv (the outer fold), as manifests."""
    items = detect_source(data).items
    labels = np.array([it.label for it in items])
    groups = [it.group for it in items] if all(it.group for it in items) else None
    outer = make_folds(labels, groups, folds, seed) == fold
    out.mkdir(parents=True, exist_ok=True)
    paths = out / "inner.csv", out / "outer.csv"
    for path, keep in zip(paths, (~outer, outer), strict=True):
        with path.open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["path", "label", "group"])
            w.writerows(
                [str(it.path.resolve()), it.label, it.group] for it, k in zip(items, keep, strict=True) if k
            )
    return paths


def read_predictions(path: Path, threshold: float) -> dict[str, tuple[int, float, int, str]]:
    """id -> (label, probability, decision at `threshold`, group) from an evaluation's predictions.csv."""
    with path.open(newline="") as f:
        return {
            r["id"]: (
                int(r["label"]),
                float(r["probability"]),
                int(float(r["probability"]) >= threshold),
                r["group"],
            )
            for r in csv.DictReader(f)
        }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--recipe", default="", help="TrainConfig fields, k=v,... (default: histoscan train's)")
    ap.add_argument("--folds", type=int, default=5, help="outer split (default 5)")
    ap.add_argument("--fold", type=int, default=0, help="the outer fold held out (default 0)")
    ap.add_argument("--inner", type=int, default=4, help="folds of the ensemble (default 4)")
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--patience", type=int, default=3)
    ap.add_argument("--tta", type=int, default=8)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--markdown", help="file whose `ensemble NAME` block is replaced by the result")
    ap.add_argument("--name", default="hcd-train")
    args = ap.parse_args()
    out = Path(args.out)
    inner, outer = write_manifests(args.data, out, args.folds, args.fold, args.seed)
    fields = parse_fields(args.recipe)
    base = {"data": str(inner), "epochs": args.epochs, "patience": args.patience, "seed": args.seed}
    t0 = time.perf_counter()
    single = train(recipe_config(fields, **base, out=str(out / "single")), force=True)
    single_eval = evaluate(single, outer, out=out / "single-eval", tta=args.tta, force=True)
    t1 = time.perf_counter()
    crossval(recipe_config(fields, **base, out=str(out / "cv")), folds=args.inner, tta=args.tta,
             resume=True, echo=lambda line: print(line, flush=True))  # fmt: skip
    ens_eval = evaluate(out / "cv", outer, out=out / "cv-eval", tta=args.tta, force=True)
    t2 = time.perf_counter()
    a = read_predictions(EvalDir(out / "cv-eval").predictions_path, float(ens_eval["threshold"]))
    b = read_predictions(EvalDir(out / "single-eval").predictions_path, float(single_eval["threshold"]))
    if set(a) != set(b):
        raise SystemExit(f"the two evaluations scored different patches ({len(a)} vs {len(b)})")
    ids = sorted(a)
    groups = [a[i][3] for i in ids]
    diff = paired_bootstrap(
        [a[i][0] for i in ids],
        [a[i][1] for i in ids],
        [b[i][1] for i in ids],
        groups if all(groups) else None,
        [a[i][2] for i in ids],
        [b[i][2] for i in ids],
    )
    result = {"single": single_eval, "ensemble": ens_eval, "paired": diff, "minutes": {
        "single": round((t1 - t0) / 60, 1), "ensemble": round((t2 - t1) / 60, 1)}, "args": vars(args)}  # fmt: skip
    (out / "summary.json").write_text(json.dumps(result, indent=2, default=str))
    block = table(args, single_eval, ens_eval, diff, result["minutes"], len(ids))
    (out / "table.md").write_text(block)
    print(block)
    if args.markdown:
        replace_block(args.markdown, f"ensemble {args.name}", block)
    return 0


def table(args: argparse.Namespace, single: dict, ens: dict, diff: dict, minutes: dict, n: int) -> str:
    """The markdown block: single model vs fold ensemble on the held-out outer fold, with the paired difference."""

    def ci(m: dict, k: str) -> str:
        lo, hi = m["ci95"][k]
        return f"{m[k]:.3f} [{lo:.3f}, {hi:.3f}]"

    def d(k: str) -> str:
        lo, hi = diff[k]["ci95"]
        return f"{diff[k]['diff']:+.3f} [{lo:+.3f}, {hi:+.3f}]"

    return "\n".join([
        f"### {args.name}: {args.inner}-fold ensemble vs one model, outer fold {args.fold}/{args.folds} ({n} patches)",
        "",
        "| model | AUC [95 % CI] | balanced accuracy | F1 | time |",
        "|---|---|---|---|---|",
        f"| one model (`histoscan train`) | {ci(single, 'auc')} | {ci(single, 'balanced_accuracy')} "
        f"| {ci(single, 'f1')} | {minutes['single']:.0f} min |",
        f"| {args.inner}-fold ensemble (`histoscan cv`, one ModelCard) | {ci(ens, 'auc')} "
        f"| {ci(ens, 'balanced_accuracy')} | {ci(ens, 'f1')} | {minutes['ensemble']:.0f} min |",
        f"| ensemble − one model [paired 95 % CI] | {d('auc')} | {d('balanced_accuracy')} | {d('f1')} | |",
        "",
        f"Recipe: `{args.recipe or 'histoscan train defaults'}`, {args.epochs} epochs (patience {args.patience}), "
        f"TTA {args.tta}. Command: `python {' '.join(sys.argv)}`",
        "",
    ])  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
