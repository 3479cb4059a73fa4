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
run's own threshold, ECE, and the paired bootstrap CI of the difference in seed-mean AUC to the PyTorch seed, to
the pinned 54db6fc default and to the default since (onecycle-30), each where it is in the table (test patches
resampled; per resample each recipe's AUC averaged over its seeds).
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
import yaml
from _common import replace_block, same_config
from external_decision import decide, decision_table
from external_tables import BASELINES, calibration_table, recipe_row, table

from histoscan.config import TrainConfig, config_from_options
from histoscan.data.store import resolve_store
from histoscan.errors import HistoscanInputError
from histoscan.inference.predictor import load_predictor
from histoscan.inference.tta import infer
from histoscan.run import RunDir
from histoscan.training.train import train

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


def extra_fields(text: str) -> dict[str, object]:
    """An --extra recipe's fields: `k=v,...` over histoscan's current defaults, or `@FILE[,k=v,...]`: a saved
    TrainConfig (tune's best.yaml, a run's config.yaml) as the recipe, any k=v overriding it. Where the file's run
    trained (data, out, seed, test split, folds) is not part of the recipe."""
    from compare_recipes import parse_fields
    from compare_recipes import recipe_config as fields_config

    base: dict[str, object] = {}
    if text.startswith("@"):
        path, _, text = text[1:].partition(",")
        try:
            base = TrainConfig.from_dict(yaml.safe_load(Path(path).read_text()), source=path).to_dict()
        except (OSError, yaml.YAMLError) as e:
            raise SystemExit(f"--extra @{path}: cannot read it ({e})") from None
        except HistoscanInputError as e:
            raise SystemExit(f"--extra @{e}") from None
    cfg = fields_config(parse_fields(text), **base)
    where = ("data", "out", "seed", "test_fraction", "folds", "fold")
    return {k: v for k, v in cfg.to_dict().items() if k not in where}


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


def _epoch_seconds(run_dir: str) -> list[float]:
    """Seconds of each epoch the run trained (RUN/metrics.csv), for external_tables.train_minutes."""
    return [float(r["seconds"]) for r in RunDir(run_dir).read_metrics() if r.get("seconds")]


def run_recipe_seed(
    name: str, cfg: TrainConfig, test: str, keep: Path, train_size: int | None = None, train: bool = True
) -> dict[str, object] | None:
    """Kept result of one recipe x seed (trained and scored unless kept with the same configuration; with
    `train=False`, None instead of training)."""
    stem = keep / f"{name}-s{cfg.seed}"
    setup = json.loads(json.dumps({**_setup(cfg), **({"train_size": train_size} if train_size else {})}))
    info_path = Path(f"{stem}.json")
    if info_path.is_file():
        info = json.loads(info_path.read_text())
        if _same_setup(info.get("setup") or {}, setup) and Path(f"{stem}.csv").is_file():
            print(f"   reusing {stem}.csv", flush=True)
            if "epoch_seconds" not in info and _epoch_seconds(cfg.out):  # kept before epochs were timed
                info["epoch_seconds"] = _epoch_seconds(cfg.out)
                info_path.write_text(json.dumps(info, indent=2, default=str))
            kept = {"test": _read(Path(f"{stem}.csv")), "val": _read(Path(f"{stem}.val.csv"))}
            return {**info, **kept, "decision": decision_settings(cfg)}
    if not train:
        return None
    seconds = train_run(cfg)
    scored = score_run(cfg.out, test)
    run = RunDir(cfg.out)
    metrics = run.read_metrics()
    info = {
        "setup": setup,
        "seconds": round(seconds, 1),
        "epochs_trained": run.epochs_done(),
        "epoch_seconds": _epoch_seconds(cfg.out),
        "threshold": run.read_threshold(),
        "best_val_auc": max((float(r["val_auc"]) for r in metrics if r.get("val_auc")), default=None),
    }
    keep.mkdir(parents=True, exist_ok=True)
    _write(Path(f"{stem}.csv"), scored["test"])
    _write(Path(f"{stem}.val.csv"), scored["val"])
    info_path.write_text(json.dumps(info, indent=2, default=str))
    return {**info, **scored, "decision": decision_settings(cfg)}


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
    ap.add_argument(
        "--screen", default="", help="recipes trained at the first of --seeds only (a one-seed screen)"
    )
    ap.add_argument(
        "--extra",
        action="append",
        default=[],
        metavar="NAME:k=v,...|NAME:@FILE[,k=v...]",
        help="another recipe: TrainConfig fields, or a saved configuration (tune's best.yaml) they override",
    )
    ap.add_argument("--keep", default="docs/results", help="kept predictions: KEEP/NAME/<recipe>-s<seed>.*")
    ap.add_argument("--train-only", action="store_true", help="train and keep; no table")
    ap.add_argument(
        "--train-size",
        type=int,
        help="learning curve: train on a stratified subset of this many patches (per seed; kept as "
        "<recipe>-n<size>-s<seed>; the subset keeps its own 15 %% validation split)",
    )
    ap.add_argument("--markdown", help="file whose `external NAME` blocks are replaced by the tables")
    ap.add_argument(
        "--cv-keep",
        help="kept 5-fold CVs of a second set (compare_recipes.py's KEEP/NAME, e.g. docs/results/idc-breast): "
        "adds the default decision (benchmarks/external_decision.py) as the `external NAME decision` block",
    )
    args = ap.parse_args()
    extras = {n: extra_fields(f) for n, _, f in (s.partition(":") for s in args.extra)}
    out, keep = Path(args.out), Path(args.keep) / args.name
    results: dict[str, list[dict]] = {}
    configs: dict[str, dict[str, object]] = {}
    screened = [n for n in args.screen.split(",") if n]
    for name in [n for n in args.recipes.split(",") if n] + screened:
        if name not in RECIPES and name not in extras:
            raise SystemExit(f"--recipes {name}: unknown (known: {', '.join(RECIPES)}; or give it --extra)")
        fields = extras[name] if name in extras else RECIPES[name]
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
            configs[name] = cfg.to_dict()
    if args.train_only:
        return 0
    command = "python " + " ".join(sys.argv)
    blocks = {
        "": table(args.name, results, None, command) + "\n" + calibration_table(args.name, results, None),
        " views": "\n".join(table(args.name, results, k, command) for k in ("logit", "logit_tta8")),
    }
    summary = {r: {k or "shipped": recipe_row(rs, k) for k in (None, "logit", "logit_tta8")}
               for r, rs in results.items()}  # fmt: skip
    if args.cv_keep:
        decision = decide(results, configs, Path(args.cv_keep))
        blocks[" decision"] = decision_table(args.name, decision, Path(args.cv_keep).name)
        summary["decision"] = {"winner": decision["winner"], "current": decision["current"]}
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
