"""Honest comparison of training recipes on one dataset: k-fold CV of each, with paired differences.

Usage (one command per dataset; each recipe's cross-validation resumes where it stopped):
    python benchmarks/compare_recipes.py --data ../shared/data/hcd-train --name hcd-train --out runs/compare-hcd
    python benchmarks/compare_recipes.py --data ../shared/data/idc-breast --name idc-breast --out runs/compare-idc
    ... --recipes pytorch-seed,keras-seed,floor,default --extra "p4m:model=p4m-cnn,lr=1e-3" --epochs 8

Recipes: `pytorch-seed` (simple-cnn, Adam 1.5e-4, flips/rotations), `keras-seed` (resnet50-head, trunk frozen one
epoch, Adam 1e-4, flips + rotation/zoom/shear), `floor` (logistic regression on colour histograms, same folds),
`default` (`histoscan train`'s defaults, at their own epochs and patience), `default-54db6fc` (the 8-epoch default
before issue 18) and any `--extra NAME:field=value,...` (TrainConfig fields). Every network recipe runs `histoscan
cv` with the same folds (grouped by patient when the data has groups, else stratified by patch); a recipe that
sets no epochs of its own runs at the shared cap `--epochs` / `--patience` (marked "capped" in the table).
Metrics are pooled over the folds with bootstrap CIs over patients (patches without groups), and every recipe is
compared with `pytorch-seed` by a paired bootstrap over the same patches/patients. Writes OUT/<recipe>/ (cv
folders), OUT/summary.json, OUT/table.md, and with --markdown FILE replaces the block between
`<!-- BEGIN compare NAME -->` and `<!-- END compare NAME -->` in FILE.
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
from _common import replace_block, same_config
from paired_bootstrap import paired_bootstrap

from histoscan.config import TrainConfig, config_from_options
from histoscan.cv.crossval import crossval
from histoscan.data.splits import make_folds
from histoscan.data.store import resolve_store
from histoscan.folders import CvDir
from histoscan.options.training import parse_folds
from histoscan.scoring.metrics import compute_metrics, select_threshold

RECIPES: dict[str, dict[str, object]] = {
    # the seed recipes are pinned field by field, so they stay the seeds' when histoscan's defaults change
    "pytorch-seed": {
        "model": "simple-cnn",
        "optimizer": "adam",
        "lr": 1.5e-4,
        "augment": "d4",
        "schedule": "plateau",
    },
    "keras-seed": {  # ResNet50 trains at ~25 img/s on the 2-core CPU: capped at 1 frozen + 1 fine-tuned epoch
        "epochs": 2,
        "model": "resnet50-head",
        "freeze_epochs": 1,
        "optimizer": "adam",
        "lr": 1e-4,
        "augment": "d4,affine",
        "schedule": "plateau",
    },
    # the default until issue 18 (one-cycle, 8 epochs), pinned so its kept CV stays valid
    "default-54db6fc": {
        "model": "simple-cnn",
        "optimizer": "adamw",
        "lr": 1e-3,
        "augment": "d4",
        "schedule": "onecycle",
        "warmup_epochs": 1.0,
        "epochs": 8,
        "patience": 3,
    },
    "default": {},  # exactly what `histoscan train` does with no options, at its own epochs and patience
}
BASELINE = "pytorch-seed"
TEXT = {"model", "optimizer", "augment", "schedule", "fit", "monitor", "precision", "logger", "accelerator"}


def colour_features(images: np.ndarray, bins: int = 16) -> np.ndarray:
    """Per-channel `bins`-bin histograms (fractions) plus channel means and standard deviations, per patch."""
    feats = []
    for start in range(0, len(images), 512):
        x = np.asarray(images[start : start + 512]).reshape(-1, images.shape[1] * images.shape[2], 3)
        n, pixels = x.shape[:2]
        parts = []
        for c in range(3):
            idx = x[:, :, c].astype(np.int64) * bins // 256 + bins * np.arange(n)[:, None]
            parts.append(np.bincount(idx.ravel(), minlength=n * bins).reshape(n, bins) / pixels)
        feats.append(np.concatenate([*parts, x.mean(1) / 255.0, x.std(1) / 255.0], 1))
    return np.concatenate(feats)


def floor_cv(data: str, out: Path, folds: int, seed: int) -> list[dict[str, str]]:
    """Logistic regression on colour features, scored fold by fold on the same folds as `histoscan cv`."""
    from sklearn.linear_model import LogisticRegression  # benchmark-only dependency (pip install '.[bench]')
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    store = resolve_store(data)
    groups = store.groups if store.has_groups else None
    fold = make_folds(store.labels, groups, folds, seed)
    x, y = colour_features(store.images), store.labels.astype(int)
    rows = []
    for k in range(folds):
        train, test = fold != k, fold == k
        clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)).fit(x[train], y[train])
        threshold = select_threshold(y[train], clf.predict_proba(x[train])[:, 1])  # in-sample: a floor
        p = clf.predict_proba(x[test])[:, 1]
        for i, q in zip(np.flatnonzero(test), p, strict=True):
            rows.append({"id": store.ids[i], "group": store.groups[i], "label": str(y[i]), "probability": f"{q:.6f}",
                         "fold": str(k), "decision": str(int(q >= threshold))})  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    CvDir(out).write_predictions(rows)  # laid out as `histoscan cv` lays out its pooled predictions
    return rows


def read_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def summarise(rows: list[dict[str, str]]) -> dict[str, object]:
    """Pooled AUC (+ CI) and, from the per-fold decisions, balanced accuracy and F1 (+ CIs)."""
    y = np.array([int(r["label"]) for r in rows])
    p = np.array([float(r["probability"]) for r in rows])
    d = np.array([int(r["decision"]) for r in rows])
    groups = [r["group"] for r in rows]
    groups = groups if all(groups) else None
    ranking = compute_metrics(y, p, 0.5, groups=groups)
    decided = compute_metrics(y, d.astype(float), 0.5, groups=groups)
    return {
        "n": len(rows),
        "auc": ranking["auc"],
        "auc_ci": ranking["ci95"]["auc"],
        "balanced_accuracy": decided["balanced_accuracy"],
        "balanced_accuracy_ci": decided["ci95"]["balanced_accuracy"],
        "f1": decided["f1"],
        "f1_ci": decided["ci95"]["f1"],
    }


def paired(rows_a: list[dict[str, str]], rows_b: list[dict[str, str]]) -> dict[str, object]:
    """Paired bootstrap of recipe a minus recipe b over the patches both scored."""
    b = {r["id"]: r for r in rows_b}
    common = [r for r in rows_a if r["id"] in b]
    y = [int(r["label"]) for r in common]
    groups = [r["group"] for r in common]
    return paired_bootstrap(
        y,
        [float(r["probability"]) for r in common],
        [float(b[r["id"]]["probability"]) for r in common],
        groups if all(groups) else None,
        [int(r["decision"]) for r in common],
        [int(b[r["id"]]["decision"]) for r in common],
    )


def _ci(v: float | None, ci: list[float] | None) -> str:
    if v is None:
        return "n/a"
    return f"{v:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else f"{v:.3f}"


def table(name: str, results: dict[str, dict], command: str, unit: str) -> str:
    """The markdown block: per recipe metrics with CIs and the paired difference to the PyTorch seed."""
    lines = [
        f"### {name}: {results[next(iter(results))]['summary']['n']} patches, CIs over {unit}",
        "",
        "| recipe | AUC [95 % CI] | balanced accuracy | F1 | AUC − PyTorch seed [paired 95 % CI] | time |",
        "|---|---|---|---|---|---|",
    ]
    for recipe, r in results.items():
        s, d = r["summary"], r.get("paired")
        label = recipe + (f" ({r['capped']})" if "capped" in r else "")
        if "folds" in r:  # a screen: its own patches, and the seed's AUC on exactly those
            seed = f"; seed there {d['auc']['b']:.3f}" if d is not None and "b" in d["auc"] else ""
            label = f"{recipe} (screen: fold {','.join(map(str, r['folds']))}, {s['n']} patches{seed})"
        diff = (
            "–"
            if d is None
            else f"{d['auc']['diff']:+.3f} [{d['auc']['ci95'][0]:+.3f}, {d['auc']['ci95'][1]:+.3f}]"
        )
        lines.append(
            f"| {label} | {_ci(s['auc'], s['auc_ci'])} | {_ci(s['balanced_accuracy'], s['balanced_accuracy_ci'])} "
            f"| {_ci(s['f1'], s['f1_ci'])} | {diff} | {r['minutes']:.0f} min |"
        )
    lines += ["", f"Command: `{command}`", ""]
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True)
    ap.add_argument("--name", required=True, help="dataset name for the table (e.g. hcd-train)")
    ap.add_argument("--out", required=True, help="folder for the cross-validations (resumed)")
    ap.add_argument("--recipes", default="pytorch-seed,keras-seed,floor,default")
    ap.add_argument("--extra", action="append", default=[], metavar="NAME:k=v,...", help="another recipe")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--patience", type=int, default=3)
    ap.add_argument("--tta", type=int, default=8)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument(
        "--use-folds",
        metavar="K,K",
        help="screen: run the network recipes on these folds of the split only (paired with the seed on the same "
        "patches; the table says so)",
    )
    ap.add_argument("--markdown", help="file whose `compare NAME` block is replaced by the table")
    ap.add_argument(
        "--keep",
        default="docs/results",
        help="folder where each finished recipe's pooled predictions are kept (KEEP/NAME/<recipe>.csv + .json) "
        "and reused when the same recipe is asked for again (default docs/results; '' to disable)",
    )
    args = ap.parse_args()
    out = Path(args.out)
    extras = {name: parse_fields(fields) for name, _, fields in (spec.partition(":") for spec in args.extra)}
    recipes: dict[str, dict[str, object]] = {}
    for name in (n for n in args.recipes.split(",") if n):  # in this order; an --extra may be named here too
        if name not in RECIPES and name not in extras and name != "floor":
            raise SystemExit(
                f"--recipes {name}: unknown (known: floor, {', '.join(RECIPES)}; or give it --extra)"
            )
        recipes[name] = extras.get(name, RECIPES.get(name, {}))
    recipes.update((name, fields) for name, fields in extras.items() if name not in recipes)
    results: dict[str, dict] = {}
    keep = Path(args.keep) / args.name if args.keep else None
    for name, fields in recipes.items():
        t0 = time.perf_counter()
        print(f"== {name}", flush=True)
        setup = {"recipe": fields, "folds": args.folds, "epochs": args.epochs, "patience": args.patience,
                 "tta": args.tta, "seed": args.seed}  # fmt: skip
        if name != "floor":  # a recipe's own fields (e.g. keras-seed's epochs) override the shared settings
            budget = {} if name == "default" else {"epochs": args.epochs, "patience": args.patience}
            cfg = recipe_config(fields, data=args.data, out=str(out / name), seed=args.seed, **budget)
            # the resolved configuration, so kept predictions of `default` go stale when the defaults change
            setup["config"] = {k: v for k, v in cfg.to_dict().items() if k not in ("data", "out")}
        use_folds = parse_folds(args.use_folds) if name != "floor" else None
        if use_folds is not None:
            setup["use_folds"] = use_folds
        kept = _kept(keep, name, setup)
        if kept is not None:
            rows, minutes = kept
            print(f"   reusing {keep / name}.csv (same recipe and settings)", flush=True)
        elif name == "floor":
            rows = floor_cv(args.data, out / name, args.folds, args.seed)
            minutes = (time.perf_counter() - t0) / 60
        else:
            cv = crossval(
                cfg,
                folds=args.folds,
                tta=args.tta,
                resume=True,
                echo=lambda line: print(line, flush=True),
                use_folds=use_folds,
            )
            rows = read_rows(CvDir(out / name).predictions_path)
            minutes = sum(f["seconds"] for f in cv["per_fold"]) / 60  # kept folds' time counts too
        results[name] = {"summary": summarise(rows), "minutes": minutes, "rows": rows}
        if name not in ("floor", "default") and "epochs" not in fields:
            results[name]["capped"] = f"capped at --epochs {args.epochs}, --patience {args.patience}"
        if use_folds is not None:
            results[name]["folds"] = use_folds
        if keep is not None and kept is None:
            _keep(keep, name, setup, rows, minutes)
    if BASELINE in results:
        for name, r in results.items():
            if name != BASELINE:
                r["paired"] = paired(r["rows"], results[BASELINE]["rows"])
    command = "python " + " ".join(sys.argv)
    unit = (
        "patients"
        if all(r["group"] for r in next(iter(results.values()))["rows"])
        else "patches (no slide ids)"
    )
    block = table(
        args.name + (f" screen (folds {args.use_folds} of {args.folds})" if args.use_folds else ""),
        results,
        command,
        unit,
    )
    summary = {k: {kk: vv for kk, vv in v.items() if kk != "rows"} for k, v in results.items()}
    summary["machine"] = f"{platform.machine()}, {platform.processor() or 'cpu'}"
    out.mkdir(parents=True, exist_ok=True)  # also when every recipe was reused
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    (out / "table.md").write_text(block)
    print(block)
    if args.markdown:  # a screen has its own block: it never replaces the full table
        replace_block(args.markdown, f"compare {args.name}" + (" screen" if args.use_folds else ""), block)
    return 0


def recipe_config(fields: dict[str, object], **shared: object) -> TrainConfig:
    """The TrainConfig of a recipe: `shared` settings, overridden by the recipe's own fields (text from --extra is
    converted to numbers except for the text-valued fields)."""
    own = {k: _number(v) if isinstance(v, str) and k not in TEXT else v for k, v in fields.items()}
    return config_from_options({**shared, **own})


def parse_fields(text: str) -> dict[str, str]:
    """`k=v,k=v` with list values allowed: `augment=d4,hed,precise_bn=20` keeps `d4,hed` together."""
    fields: dict[str, str] = {}
    last = None
    for part in (p for p in text.split(",") if p):
        if "=" in part:
            last, value = part.split("=", 1)
            fields[last] = value
        elif last is None:
            raise SystemExit(f"--extra: {part!r} is not field=value")
        else:
            fields[last] += "," + part
    return fields


def _kept(keep: Path | None, name: str, setup: dict) -> tuple[list[dict[str, str]], float] | None:
    """The kept predictions of `name` made with the same recipe and settings; for a screen (`use_folds`), a kept
    full cross-validation with otherwise the same settings serves too, restricted to those folds."""
    if keep is None or not (keep / f"{name}.csv").is_file() or not (keep / f"{name}.json").is_file():
        return None
    info = json.loads((keep / f"{name}.json").read_text())
    saved, wanted = info.get("setup") or {}, json.loads(json.dumps(setup))
    if "config" in saved and "config" in wanted:  # the resolved configuration decides, not how it was spelled
        if not same_config(saved["config"], wanted["config"], TrainConfig().to_dict()):
            return None
        saved, wanted = (
            {k: v for k, v in saved.items() if k not in ("recipe", "config")},
            {k: v for k, v in wanted.items() if k not in ("recipe", "config")},
        )
    folds = wanted.pop("use_folds", None)
    if saved == {**wanted, **({"use_folds": folds} if folds is not None else {})}:
        return read_rows(keep / f"{name}.csv"), float(info.get("minutes", 0.0))
    if folds is None or "use_folds" in saved or saved != wanted:
        return None
    rows = [r for r in read_rows(keep / f"{name}.csv") if int(r["fold"]) in folds]
    return rows, float(info.get("minutes", 0.0)) * len(folds) / int(saved["folds"])


def _keep(keep: Path, name: str, setup: dict, rows: list[dict[str, str]], minutes: float) -> None:
    keep.mkdir(parents=True, exist_ok=True)
    with (keep / f"{name}.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["id", "group", "label", "probability", "fold", "decision"])
        w.writeheader()
        w.writerows({k: r[k] for k in w.fieldnames} for r in rows)
    (keep / f"{name}.json").write_text(json.dumps({"setup": setup, "minutes": round(minutes, 1)}, indent=2))


def _number(v: str) -> object:
    try:
        return int(v)
    except ValueError:
        try:
            return float(v)
        except ValueError:
            return v


if __name__ == "__main__":
    sys.exit(main())
