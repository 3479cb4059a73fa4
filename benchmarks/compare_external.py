"""Compare finished recipes on an external test set: train on all of one set, score on another, several seeds.

Usage (resumable: a killed run continues from its last checkpoint, a finished one is reused):
    python benchmarks/compare_external.py --train ../shared/data/hcd-train --test ../shared/data/hcd-test \
        --name hcd-test --out runs/external --recipes pytorch-seed,previous-default,default-54db6fc \
        --seeds 42,1,2 --markdown docs/results.md

Each recipe runs *as it would ship*: its own epochs and patience (nothing shared caps it). A run trains on the
whole training set with `--test-fraction 0`: its own 15 % validation split (by patch when the set has no groups)
serves early stopping, the decision threshold and calibration. Nothing is fitted on the test set. For every
recipe x seed the kept file KEEP/NAME/<recipe>-s<seed>.csv holds the test logits (no TTA and 8-view TTA) and
KEEP/NAME/<recipe>-s<seed>.val.csv the validation logits, with the resolved configuration, train time and the
run's threshold in the .json beside them, so tables regenerate without training and go stale when a recipe's
configuration changes. The table: mean AUC over seeds with its spread (max - min), balanced accuracy at each
run's own threshold, ECE, and the paired bootstrap CI of the difference in seed-mean AUC to the PyTorch seed and
to the pinned 54db6fc default (test patches resampled; per resample each recipe's AUC averaged over its seeds).
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
from paired_bootstrap import _resample_weights, weighted_auc

from histoscan.config import TrainConfig, config_from_options
from histoscan.data.store import resolve_store
from histoscan.inference.predictor import load_predictor
from histoscan.inference.tta import infer
from histoscan.run import RunDir
from histoscan.scoring.calibration import calibration_report, fit_decision, fit_temperature
from histoscan.scoring.metrics import compute_metrics, select_threshold
from histoscan.training.train import train
from histoscan.utils.numeric import sigmoid

# Pinned field by field, so a recipe stays itself when histoscan's defaults change (kept rows stay valid).
_SIMPLE = {"model": "simple-cnn", "batch_size": 64, "weight_decay": 1e-4, "dropout": 0.5, "augment": ["d4"],
           "monitor": "val_auc", "val_fraction": 0.15}  # fmt: skip
_ONECYCLE = {**_SIMPLE, "optimizer": "adamw", "lr": 1e-3, "schedule": "onecycle", "warmup_epochs": 1.0}
RECIPES: dict[str, dict[str, object]] = {
    "pytorch-seed": {
        **_SIMPLE,
        "optimizer": "adam",
        "lr": 1.5e-4,
        "schedule": "plateau",
        "epochs": 20,
        "patience": 5,
    },  # fmt: skip
    "previous-default": {
        **_SIMPLE,
        "optimizer": "adamw",
        "lr": 1.5e-4,
        "schedule": "plateau",
        "epochs": 20,
        "patience": 5,
    },  # fmt: skip
    "default-54db6fc": {**_ONECYCLE, "epochs": 8, "patience": 3},
    "onecycle-20": {**_ONECYCLE, "epochs": 20, "patience": 6},
    "onecycle-30": {**_ONECYCLE, "epochs": 30, "patience": 8},
    "resnet10-small-40": {**_ONECYCLE, "model": "resnet10-small", "epochs": 40, "patience": 8},
    "p4m-cnn-40": {**_ONECYCLE, "model": "p4m-cnn", "epochs": 40, "patience": 8},
    "default": {},  # exactly what `histoscan train` does with no options
}
BASELINES = ("pytorch-seed", "default-54db6fc")


def recipe_config(name: str, fields: dict[str, object], data: str, out: Path, seed: int) -> TrainConfig:
    """The run configuration of recipe `name` at `seed`, training on all of `data` (no test split)."""
    return config_from_options(
        {**fields, "data": data, "out": str(out / name / f"s{seed}"), "seed": seed, "test_fraction": 0.0}
    )


def kaggle_subset(root: str, size: int, seed: int, out: Path) -> str:
    """A stratified random `size`-patch subset of a Kaggle-layout set (symbolic links, same layout), for the
    learning curve; drawn with the run's seed, so each seed sees another subset and recipes pair on the same one."""
    folder = out / f"{Path(root).name}-n{size}-s{seed}"
    if (folder / "train_labels.csv").is_file():
        return str(folder)
    with open(Path(root) / "train_labels.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    if not 0 < size <= len(rows):
        raise SystemExit(f"--train-size {size}: must be in 1..{len(rows)}")
    rng = np.random.default_rng(seed)
    labels = np.array([int(r["label"]) for r in rows])
    keep: list[int] = []
    for c in (0, 1):  # each class in proportion
        idx = np.flatnonzero(labels == c)
        keep += list(rng.choice(idx, round(size * len(idx) / len(rows)), replace=False))
    (folder / "train").mkdir(parents=True, exist_ok=True)
    for i in keep:
        link = folder / "train" / f"{rows[i]['id']}.tif"
        if not link.exists():
            link.symlink_to((Path(root) / "train" / f"{rows[i]['id']}.tif").resolve())
    tmp = folder / "train_labels.csv.tmp"
    with tmp.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "label"])
        w.writerows([rows[i]["id"], rows[i]["label"]] for i in sorted(keep))
    tmp.rename(folder / "train_labels.csv")
    return str(folder)


# Decided after training on the kept validation logits (as `train` decides: fit_decision), so not part of what
# identifies a kept training; each result is scored with its recipe's current decision settings.
DECISION = ("threshold_rule", "calibrate", "tta", "target_sensitivity")
DEFAULTS = TrainConfig().to_dict()


def _setup(cfg: TrainConfig) -> dict[str, object]:
    return {k: v for k, v in cfg.to_dict().items() if k not in ("data", "out", "num_workers", *DECISION)}


def _same_setup(saved: dict[str, object], wanted: dict[str, object]) -> bool:
    """Whether a kept training is the wanted one: a field the kept record lacks (added to TrainConfig later)
    counts as its default, so new options at their defaults do not make kept results stale."""
    return same_config({k: v for k, v in saved.items() if k not in DECISION}, wanted, DEFAULTS)


def decision_settings(cfg: TrainConfig) -> dict[str, object]:
    return {k: getattr(cfg, k) for k in DECISION}


def train_run(cfg: TrainConfig) -> float:
    """Train (or continue) one run; returns its training seconds summed over every part it ran in."""
    run = RunDir(cfg.out)
    clock = Path(cfg.out + ".seconds.json")
    spent = json.loads(clock.read_text())["seconds"] if clock.is_file() else 0.0
    if (run.path / "bench-done").is_file():
        return spent
    resume = run.last_ckpt.is_file()
    t0 = time.perf_counter()
    try:
        train(cfg, force=not resume, resume=resume, echo=lambda line: print("   " + line, flush=True))
    finally:
        clock.parent.mkdir(parents=True, exist_ok=True)
        clock.write_text(json.dumps({"seconds": spent + time.perf_counter() - t0}))
    (run.path / "bench-done").write_text("")
    return spent + time.perf_counter() - t0


def score_run(run_dir: str, test: str) -> dict[str, dict[str, np.ndarray]]:
    """Logits (TTA 1 and 8) of the run's best checkpoint on its validation split and on the test set."""
    run = RunDir(run_dir)
    predictor = load_predictor(run.path)
    predictor.classifier.temperature = 1.0  # kept logits are raw: each table applies its decision to them
    train_store = resolve_store(run.read_config().data)
    split = run.read_split()
    val_rows = np.array([i for i, sid in enumerate(train_store.ids) if split.get(sid) == "val"])
    test_store = resolve_store(test, image_size=train_store.size)
    out = {}
    for part, store, rows in (
        ("val", train_store, val_rows),
        ("test", test_store, np.arange(len(test_store))),
    ):
        out[part] = {
            "id": np.asarray(store.ids)[rows],
            "label": store.labels[rows].astype(int),
            "logit": infer(predictor, store.images, rows, tta=0, desc=f"{part} tta1"),
            "logit_tta8": infer(predictor, store.images, rows, tta=8, desc=f"{part} tta8"),
        }
    return out


def _write(path: Path, cols: dict[str, np.ndarray]) -> None:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "label", "logit", "logit_tta8"])
        for i, y, a, b in zip(cols["id"], cols["label"], cols["logit"], cols["logit_tta8"], strict=True):
            w.writerow([i, int(y), f"{a:.6f}", f"{b:.6f}"])


def _read(path: Path) -> dict[str, np.ndarray]:
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    return {
        "id": np.array([r["id"] for r in rows]),
        "label": np.array([int(r["label"]) for r in rows]),
        "logit": np.array([float(r["logit"]) for r in rows]),
        "logit_tta8": np.array([float(r["logit_tta8"]) for r in rows]),
    }


def run_recipe_seed(
    name: str, cfg: TrainConfig, test: str, keep: Path, train_size: int | None = None
) -> dict[str, object]:
    """Kept result of one recipe x seed (trained and scored unless kept with the same configuration)."""
    stem = keep / f"{name}-s{cfg.seed}"
    setup = json.loads(json.dumps({**_setup(cfg), **({"train_size": train_size} if train_size else {})}))
    info_path = Path(f"{stem}.json")
    if info_path.is_file():
        info = json.loads(info_path.read_text())
        if _same_setup(info.get("setup") or {}, setup) and Path(f"{stem}.csv").is_file():
            print(f"   reusing {stem}.csv", flush=True)
            kept = {"test": _read(Path(f"{stem}.csv")), "val": _read(Path(f"{stem}.val.csv"))}
            return {**info, **kept, "decision": decision_settings(cfg)}
    seconds = train_run(cfg)
    scored = score_run(cfg.out, test)
    run = RunDir(cfg.out)
    metrics = run.read_metrics()
    info = {
        "setup": setup,
        "seconds": round(seconds, 1),
        "epochs_trained": run.epochs_done(),
        "threshold": run.read_threshold(),
        "best_val_auc": max((float(r["val_auc"]) for r in metrics if r.get("val_auc")), default=None),
    }
    keep.mkdir(parents=True, exist_ok=True)
    _write(Path(f"{stem}.csv"), scored["test"])
    _write(Path(f"{stem}.val.csv"), scored["val"])
    info_path.write_text(json.dumps(info, indent=2, default=str))
    return {**info, **scored, "decision": decision_settings(cfg)}


def seed_mean_auc_diff(a: list[dict], b: list[dict], key: str | None, n_boot: int = 2000) -> dict[str, object]:
    """Seed-mean AUC of recipe a minus recipe b over the same test patches, with a paired bootstrap 95 % CI."""
    ids = a[0]["test"]["id"]
    for r in a + b:
        if not np.array_equal(r["test"]["id"], ids):
            raise SystemExit("kept predictions of different test sets cannot be paired")
    y = a[0]["test"]["label"]
    w = _resample_weights(len(y), None, n_boot, 0)

    def mean_auc(rs: list[dict]) -> np.ndarray:
        return np.mean([weighted_auc(y, r["test"][key or view_key(r)], w) for r in rs], axis=0)

    d = mean_auc(a) - mean_auc(b)
    lo, hi = np.percentile(d[1:], [2.5, 97.5])
    return {"diff": float(d[0]), "ci95": [float(lo), float(hi)]}


def view_key(r: dict) -> str:
    """The kept logits a result is scored with as shipped: its recipe's `tta` (0 or 8 views are kept)."""
    tta = int(r["decision"]["tta"])
    if tta not in (0, 8):
        raise SystemExit(f"tta {tta}: the kept logits hold 1 and 8 views only")
    return "logit_tta8" if tta == 8 else "logit"


def shipped(r: dict, key: str | None = None) -> tuple[np.ndarray, np.ndarray, float]:
    """(test labels, test probabilities, threshold) as the run decides: `fit_decision` on its validation logits
    with its recipe's settings, exactly what `histoscan train` writes and evaluate/predict/slide/serve apply."""
    key = key or view_key(r)
    d = r["decision"]
    fitted = fit_decision(
        r["val"]["label"], r["val"][key], d["calibrate"], d["threshold_rule"], d["target_sensitivity"]
    )
    t = fitted["calibration"]["temperature"]
    return r["test"]["label"], sigmoid(r["test"][key] / t), float(fitted["threshold"]["threshold"])


def recipe_row(results: list[dict], key: str | None = None) -> dict[str, object]:
    """Mean and spread of AUC over seeds; balanced accuracy at each run's threshold; ECE; train minutes. `key`
    None: each result as shipped (its own TTA, calibration and threshold rule)."""
    aucs, bas, eces = [], [], []
    for r in results:
        y, p, t = shipped(r, key)
        m = compute_metrics(y, p, t, n_boot=0)
        aucs.append(m["auc"])
        bas.append(m["balanced_accuracy"])
        eces.append(m["ece"])
    return {
        "seeds": [r["setup"]["seed"] for r in results],
        "auc": float(np.mean(aucs)),
        "auc_each": [round(a, 4) for a in aucs],
        "spread": float(max(aucs) - min(aucs)),
        "balanced_accuracy": float(np.mean(bas)),
        "ece": float(np.mean(eces)),
        "ece_max": float(max(eces)),
        "minutes": float(np.mean([r["seconds"] for r in results]) / 60),
        "epochs": [r["epochs_trained"] for r in results],
    }


RULES = ("youden", "sensitivity-0.90", "0.5-calibrated")


def calibration_rows(results: list[dict], key: str | None) -> dict[str, object]:
    """Temperature fitted on each run's validation split, applied to the test set: ECE / Brier / NLL before and
    after (mean over seeds, and the worst seed's ECE), and each threshold rule's test balanced accuracy,
    sensitivity and specificity (thresholds chosen on validation only)."""
    cal, rules = [], {r: [] for r in RULES}
    for r in results:
        k = key or view_key(r)
        t = fit_temperature(r["val"]["label"], r["val"][k])
        cal.append(calibration_report(r["test"]["label"], r["test"][k], t))
        yv, pv = r["val"]["label"], sigmoid(r["val"][k] / t)
        thresholds = {
            "youden": select_threshold(yv, pv, "youden"),
            "sensitivity-0.90": select_threshold(yv, pv, "sensitivity", 0.90),
            "0.5-calibrated": 0.5,
        }
        y, p = r["test"]["label"], sigmoid(r["test"][k] / t)
        for rule, thr in thresholds.items():
            m = compute_metrics(y, p, thr, n_boot=0)
            rules[rule].append((m["balanced_accuracy"], m["recall"], m["specificity"]))
    out: dict[str, object] = {k: float(np.mean([c[k] for c in cal])) for k in cal[0]}
    out["ece_after_max"] = float(max(c["ece_after"] for c in cal))
    out["ece_before_max"] = float(max(c["ece_before"] for c in cal))
    out["rules"] = {rule: [float(v) for v in np.mean(vals, axis=0)] for rule, vals in rules.items()}
    return out


def calibration_table(name: str, results: dict[str, list[dict]], key: str | None) -> str:
    view = _view(key)
    lines = [
        f"### {name} ({view}): temperature scaling fitted on each run's validation split; threshold rules",
        "",
        "ECE of p(tumour), 15 equal-width bins (mean over seeds, worst seed in brackets); Brier and NLL before → "
        "after. Rules (thresholds chosen on validation, applied to the calibrated test probabilities): balanced "
        "accuracy / sensitivity / specificity on the test set.",
        "",
        "| recipe | T | ECE before | ECE after | Brier | NLL | " + " | ".join(RULES) + " |",
        "|---|---|---|---|---|---|" + "---|" * len(RULES),
    ]
    for recipe, rs in results.items():
        c = calibration_rows(rs, key)
        rules = " | ".join("{:.3f} / {:.3f} / {:.3f}".format(*c["rules"][r]) for r in RULES)
        lines.append(
            f"| {recipe} | {c['temperature']:.2f} | {c['ece_before']:.3f} ({c['ece_before_max']:.3f}) | "
            f"{c['ece_after']:.3f} ({c['ece_after_max']:.3f}) | {c['brier_before']:.3f} → {c['brier_after']:.3f} | "
            f"{c['nll_before']:.3f} → {c['nll_after']:.3f} | {rules} |"
        )
    return "\n".join(lines + [""])


def _view(key: str | None) -> str:
    if key is None:
        return "as shipped: each recipe's own TTA, temperature and threshold rule, fitted on its validation split"
    return "8-view TTA" if key == "logit_tta8" else "no TTA"


def table(name: str, results: dict[str, list[dict]], key: str | None, command: str) -> str:
    view = _view(key)
    n = len(next(iter(results.values()))[0]["test"]["label"])
    lines = [
        f"### {name} ({n} patches, {view}): trained on all of the training set, each recipe at its own budget",
        "",
        "No slide ids exist: patches of one slide may sit in both sets, so these figures may be optimistic for new "
        "slides. CIs resample test patches (paired: both recipes on the same resample, AUC averaged over seeds).",
        "",
        "| recipe | seeds | AUC mean (each) | spread | balanced acc. | ECE (max) "
        + "".join(f"| − {b} [paired 95 % CI] " for b in BASELINES)
        + "| epochs | train time |",
        "|---|---|---|---|---|---|" + "---|" * len(BASELINES) + "---|---|",
    ]
    for recipe, rs in results.items():
        row = recipe_row(rs, key)
        diffs = []
        for b in BASELINES:
            if b == recipe or b not in results:
                diffs.append("–")
                continue
            d = seed_mean_auc_diff(rs, results[b], key)
            diffs.append(f"{d['diff']:+.3f} [{d['ci95'][0]:+.3f}, {d['ci95'][1]:+.3f}]")
        each = ", ".join(f"{a:.3f}" for a in row["auc_each"])
        lines.append(
            f"| {recipe} | {len(rs)} | {row['auc']:.3f} ({each}) | {row['spread']:.3f} | "
            f"{row['balanced_accuracy']:.3f} | {row['ece']:.3f} ({row['ece_max']:.3f}) | "
            + " | ".join(diffs)
            + f" | {','.join(map(str, row['epochs']))} | {row['minutes']:.0f} min |"
        )
    lines += ["", f"Command: `{command}`", ""]
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--train", required=True, help="labelled set trained on (all of it; 15 %% validation)")
    ap.add_argument("--test", required=True, help="external labelled test set (scored only)")
    ap.add_argument("--name", required=True, help="test set name for the table and the kept folder")
    ap.add_argument("--out", required=True, help="folder for the run folders (resumed)")
    ap.add_argument("--recipes", default=",".join(BASELINES))
    ap.add_argument(
        "--seeds", default="42,1,2", help="comma list of seeds, each recipe trained once per seed"
    )
    ap.add_argument("--screen", default="", help="recipes trained at the first of --seeds only (a one-seed screen)")
    ap.add_argument("--extra", action="append", default=[], metavar="NAME:k=v,...", help="another recipe")
    ap.add_argument("--keep", default="docs/results", help="kept predictions: KEEP/NAME/<recipe>-s<seed>.*")
    ap.add_argument("--train-only", action="store_true", help="train and keep; no table")
    ap.add_argument(
        "--train-size",
        type=int,
        help="learning curve: train on a stratified subset of this many patches (per seed; kept as "
        "<recipe>-n<size>-s<seed>; the subset keeps its own 15 %% validation split)",
    )
    ap.add_argument("--markdown", help="file whose `external NAME` blocks are replaced by the tables")
    args = ap.parse_args()
    from compare_recipes import parse_fields
    from compare_recipes import recipe_config as fields_config

    extras = {n: parse_fields(f) for n, _, f in (s.partition(":") for s in args.extra)}
    out, keep = Path(args.out), Path(args.keep) / args.name
    results: dict[str, list[dict]] = {}
    screened = [n for n in args.screen.split(",") if n]
    for name in [n for n in args.recipes.split(",") if n] + screened:
        if name not in RECIPES and name not in extras:
            raise SystemExit(f"--recipes {name}: unknown (known: {', '.join(RECIPES)}; or give it --extra)")
        fields = RECIPES.get(name) or (fields_config(extras[name]).to_dict() if name in extras else {})
        if name in extras:
            fields = {k: v for k, v in fields.items() if k not in ("data", "out")}
        results[name] = []
        seeds = [int(s) for s in args.seeds.split(",")]
        for seed in seeds[:1] if name in screened else seeds:
            print(f"== {name} seed {seed}", flush=True)
            data, tag = args.train, name
            if args.train_size:
                data, tag = (
                    kaggle_subset(args.train, args.train_size, seed, out / "subsets"),
                    f"{name}-n{args.train_size}",
                )
            cfg = recipe_config(tag, fields, data, out, seed)
            results[name].append(run_recipe_seed(tag, cfg, args.test, keep, args.train_size))
    if args.train_only:
        return 0
    command = "python " + " ".join(sys.argv)
    blocks = {
        "": table(args.name, results, None, command) + "\n" + calibration_table(args.name, results, None),
        " views": "\n".join(table(args.name, results, k, command) for k in ("logit", "logit_tta8")),
    }
    summary = {r: {k or "shipped": recipe_row(rs, k) for k in (None, "logit", "logit_tta8")}
               for r, rs in results.items()}  # fmt: skip
    summary["machine"] = f"{platform.machine()}, {platform.processor() or 'cpu'}"
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    for key, block in blocks.items():
        print(block)
        if args.markdown:
            replace_block(args.markdown, f"external {args.name}{key}", block)
    return 0


if __name__ == "__main__":
    sys.exit(main())
