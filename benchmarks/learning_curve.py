"""Learning curve on an external test set: test AUC against the number of training patches, per recipe, 3 seeds.

Each size is a stratified random subset of the training set drawn with the run's seed (compare_external's
`--train-size`; each subset keeps its own 15 % validation split); the full size is the recipe's full-set result.
Results are the kept predictions of compare_external (trained here when missing). Writes a table (mean AUC, each
seed, paired bootstrap CI of the difference between the first two recipes) and a plot with error bars (the
seeds' min..max around the mean).

    python benchmarks/learning_curve.py --train ../shared/data/hcd-train --test ../shared/data/hcd-test \
        --name hcd-test --out runs/external --recipes onecycle-30,pytorch-seed,default-54db6fc \
        --sizes 500,1000,2000,4500 --markdown docs/results.md
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import numpy as np
from _common import replace_block
from compare_external import (
    RECIPES,
    kaggle_subset,
    recipe_config,
    run_recipe_seed,
)
from external_tables import LABEL, recipe_row, seed_mean_auc_diff


def n_patches(root: str) -> int:
    with open(Path(root) / "train_labels.csv", newline="") as f:
        return sum(1 for _ in csv.DictReader(f))


def curve(args: argparse.Namespace) -> dict[str, dict[int, list[dict]]]:
    """{recipe: {size: [result per seed]}} from the kept predictions (training what is missing; with
    `args.kept_only`, a size missing any seed's result is left out of its recipe and named on stderr)."""
    full = n_patches(args.train)
    out, keep = Path(args.out), Path(args.keep) / args.name
    results: dict[str, dict[int, list[dict]]] = {}
    train = not getattr(args, "kept_only", False)
    for name in args.recipes.split(","):
        if name not in RECIPES:
            raise SystemExit(f"--recipes {name}: unknown (known: {', '.join(RECIPES)})")
        results[name] = {}
        for size in (int(s) for s in args.sizes.split(",")):
            if not 0 < size <= full:
                raise SystemExit(f"--sizes {size}: must be in 1..{full} (the training set's patches)")
            runs = []
            for seed in (int(s) for s in args.seeds.split(",")):
                data, tag = args.train, name
                if size < full:
                    data, tag = kaggle_subset(args.train, size, seed, out / "subsets"), f"{name}-n{size}"
                cfg = recipe_config(tag, RECIPES[name], data, out, seed)
                runs.append(run_recipe_seed(tag, cfg, args.test, keep, size if size < full else None, train))
            missing = [seed for seed, r in zip(args.seeds.split(","), runs, strict=True) if r is None]
            if missing:
                print(f"   {name} at {size} patches: seed(s) {', '.join(missing)} not kept yet; left out",
                      file=sys.stderr)  # fmt: skip
            else:
                results[name][size] = runs
    return results


def _sizes(results: dict[str, dict[int, list[dict]]]) -> list[int]:
    """Every training-set size some recipe has a result for, ascending."""
    return sorted({n for by_size in results.values() for n in by_size})


def table(name: str, results: dict[str, dict[int, list[dict]]], command: str) -> str:
    recipes = list(results)
    a, b = (recipes + [None])[:2]
    sizes = _sizes(results)
    seeds = next((rs for by_size in results.values() for rs in by_size.values()), [])
    head = f"| patches | {' | '.join(f'{LABEL.get(r, r)} AUC mean (each seed)' for r in recipes)} |"
    diff_head = f" {a} − {b} [paired 95 % CI] |" if b else ""
    lines = [
        f"### Learning curve on {name}: test AUC against training-set size (as shipped; seeds "
        f"{', '.join(str(r['setup']['seed']) for r in seeds)})",
        "",
        "Each size is a stratified random subset of the training patches drawn per seed (so seeds differ in data "
        "as well as initialisation); each keeps its own 15 % validation split. Patches are split at random (no "
        "slide ids), as on Kaggle.",
        "",
        head + diff_head,
        "|---|" + "---|" * len(recipes) + ("---|" if b else ""),
    ]
    for size in sizes:
        cells = []
        for r in recipes:
            if size not in results[r]:
                cells.append("– (not run yet)")
                continue
            row = recipe_row(results[r][size])
            cells.append(f"{row['auc']:.3f} ({', '.join(f'{x:.3f}' for x in row['auc_each'])})")
        diff = ""
        if b and size in results[a] and size in results[b]:
            d = seed_mean_auc_diff(results[a][size], results[b][size], None)
            diff = f" {d['diff']:+.3f} [{d['ci95'][0]:+.3f}, {d['ci95'][1]:+.3f}] |"
        elif b:
            diff = " – |"
        lines.append(f"| {size} | " + " | ".join(cells) + " |" + diff)
    lines += ["", f"![learning curve](results/{name}/learning-curve.png)", "", f"Command: `{command}`", ""]
    return "\n".join(lines)


def plot(results: dict[str, dict[int, list[dict]]], path: Path, name: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4))
    every = _sizes(results)
    for k, (recipe, by_size) in enumerate(results.items()):
        if not by_size:
            continue
        sizes = np.array(sorted(by_size))
        by_size = {n: by_size[n] for n in sizes}
        aucs = [recipe_row(rs)["auc_each"] for rs in by_size.values()]
        mean = np.array([np.mean(x) for x in aucs])
        lo, hi = mean - np.array([min(x) for x in aucs]), np.array([max(x) for x in aucs]) - mean
        shift = 1 + 0.02 * (k - (len(results) - 1) / 2)  # side by side, so the bars do not hide each other
        ax.errorbar(sizes * shift, mean, yerr=[lo, hi], marker="o", capsize=4, label=LABEL.get(recipe, recipe))
    ax.set_xscale("log")
    ax.set_xticks(every, [str(s) for s in every])
    ax.set_xlabel("training patches (log scale)")
    ax.set_ylabel(f"{name} AUC (mean; bars: min..max over seeds)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--train", required=True, help="Kaggle-layout training set (subsets drawn from it)")
    ap.add_argument("--test", required=True, help="external labelled test set (scored only)")
    ap.add_argument("--name", required=True, help="test set name (kept folder KEEP/NAME)")
    ap.add_argument("--out", required=True, help="folder for the run folders and subsets (resumed)")
    ap.add_argument(
        "--recipes",
        default="onecycle-30,pytorch-seed,default-54db6fc",
        help="recipes of compare_external; the first two are paired (the default now and the PyTorch seed)",
    )
    ap.add_argument("--sizes", default="500,1000,2000,4500")
    ap.add_argument("--seeds", default="42,1,2")
    ap.add_argument(
        "--keep", default="docs/results", help="kept predictions: KEEP/NAME/<recipe>[-n<size>]-s<seed>.*"
    )
    ap.add_argument("--markdown", help="file whose `learning-curve NAME` block is replaced by the table")
    ap.add_argument(
        "--kept-only",
        action="store_true",
        help="train nothing: the table and plot from the kept results (a size missing a seed is left out)",
    )
    args = ap.parse_args()
    results = curve(args)
    if args.kept_only and not any(results.values()):
        raise SystemExit(f"--kept-only: nothing kept in {Path(args.keep) / args.name} for these recipes and sizes")
    block = table(args.name, results, "python " + " ".join(sys.argv))
    plot(results, Path(args.keep) / args.name / "learning-curve.png", args.name)
    print(block)
    if args.markdown:
        replace_block(args.markdown, f"learning-curve {args.name}", block)
    return 0


if __name__ == "__main__":
    sys.exit(main())
