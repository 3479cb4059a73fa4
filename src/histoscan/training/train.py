"""`histoscan train`: grouped split, Lightning training with early stopping, checkpoints and a run folder."""

from __future__ import annotations

import csv
import json
import logging
import shutil
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import BackboneFinetuning, EarlyStopping, ModelCheckpoint

from histoscan.config import TrainConfig
from histoscan.data.loader import StoreDataModule
from histoscan.data.splits import check_grouping, make_folds, make_split, write_split
from histoscan.data.store import PatchStore, require_labelled, resolve_store
from histoscan.errors import HistoscanInputError
from histoscan.inference.predictor import load_model
from histoscan.training.module import EpochSeeding, MetricsCSV, PatchModule
from histoscan.models import REGISTRY

log = logging.getLogger(__name__)


def _precision(config: TrainConfig) -> str:
    """fp32 on CPU (autocast is slower there); bf16 (else fp16) mixed precision on GPUs."""
    if config.precision != "auto":
        return {"32": "32-true"}.get(config.precision, config.precision)
    if torch.cuda.is_available():
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    return "32-true"


def _prepare_run_dir(run: Path, force: bool, resume: bool) -> None:
    if resume:
        if not (run / "checkpoints" / "last.ckpt").is_file():
            raise HistoscanInputError(f"--resume: {run}/checkpoints/last.ckpt not found")
        return
    if run.exists() and any(run.iterdir()):
        if not force:
            raise HistoscanInputError(
                f"--out {run}: run folder exists and is not empty (use --force to overwrite)"
            )
        shutil.rmtree(run)
    run.mkdir(parents=True, exist_ok=True)


def _trim_metrics(path: Path, before_epoch: int) -> None:
    """On resume, drop metric rows of epochs that will be trained again."""
    if not path.is_file():
        return
    with path.open(newline="") as f:
        rows = [r for r in csv.DictReader(f) if int(r["epoch"]) < before_epoch]
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["epoch"])
        w.writeheader()
        w.writerows(rows)
    if not rows:
        path.unlink()


def split_store(store: PatchStore, config: TrainConfig) -> np.ndarray:
    """The run's split ("train"/"val"/"test" per store row), grouped by patient/slide when known."""
    groups = store.groups if store.has_groups else None
    if config.folds:
        split = _fold_split(store, groups, config)
    else:
        split = make_split(
            store.labels, groups, config.val_fraction, config.test_fraction, config.seed, store.splits
        )
    check_grouping(split, groups)
    for name in ("train", "val"):
        labels = store.labels[split == name]
        if len(np.unique(labels)) < 2:
            raise HistoscanInputError(
                f"--data {config.data}: the {name} split has {len(labels)} patches of one class only "
                "(too few patients/patches per class for a grouped split)"
            )
    return split


def _fold_split(store: PatchStore, groups: list[str] | None, config: TrainConfig) -> np.ndarray:
    """Cross-validation split: fold `config.fold` is the test side; validation is carved from the other folds."""
    if config.fold is None or not 0 <= config.fold < config.folds:
        raise HistoscanInputError(f"--fold {config.fold}: must be in 0..{config.folds - 1}")
    folds = make_folds(store.labels, groups, config.folds, config.seed)
    split = np.where(folds == config.fold, "test", "train").astype(object)
    rest = np.flatnonzero(split == "train")
    val_share = config.val_fraction / (1 - 1 / config.folds)
    sub = make_split(
        store.labels[rest], None if groups is None else [groups[i] for i in rest], val_share, 0.0, config.seed
    )
    split[rest] = sub
    return split


def build_trainer(config: TrainConfig, run: Path, callbacks: list[L.Callback] | None = None) -> L.Trainer:
    """A Trainer with early stopping, best/last checkpoints, per-epoch metrics.csv and the run's precision."""
    mode = "max" if config.monitor == "val_auc" else "min"
    cbs: list[L.Callback] = [
        EpochSeeding(config.seed),
        MetricsCSV(run / "metrics.csv"),
        EarlyStopping(config.monitor, patience=config.patience, mode=mode),
        ModelCheckpoint(
            run / "checkpoints",
            filename="best",
            monitor=config.monitor,
            mode=mode,
            enable_version_counter=False,
        ),
        # last.ckpt every epoch whatever the monitor did (save_last only follows top-k saves): what --resume uses
        ModelCheckpoint(run / "checkpoints", filename="last", monitor=None, enable_version_counter=False),
    ]
    if config.freeze_epochs > 0:
        cbs.append(
            BackboneFinetuning(
                unfreeze_backbone_at_epoch=config.freeze_epochs,
                backbone_initial_ratio_lr=0.1,
                should_align=True,
                train_bn=True,
                verbose=False,
            )
        )
    cbs += callbacks or []
    gpus = torch.cuda.device_count()
    return L.Trainer(
        max_epochs=config.epochs,
        accelerator="gpu" if gpus else "cpu",
        devices=gpus if gpus else 1,
        strategy="ddp" if gpus > 1 else "auto",
        precision=_precision(config),
        callbacks=cbs,
        logger=False,
        default_root_dir=str(run),
        limit_train_batches=config.limit_batches,
        limit_val_batches=config.limit_batches,
        num_sanity_val_steps=0,
        deterministic=False,
        use_distributed_sampler=False,  # EpochBatchSampler shards by rank itself
        enable_model_summary=False,
        log_every_n_steps=10,
    )


def train(config: TrainConfig, force: bool = False, resume: bool = False) -> Path:
    """Train a model as configured; returns the run folder.

    Args:
        config: the run's configuration (`config.out` is the run folder).
        force: overwrite an existing non-empty run folder.
        resume: continue from RUN/checkpoints/last.ckpt (the config is read from the run; only `epochs` may grow).
    """
    run = Path(config.out)
    if resume:
        _prepare_run_dir(run, force, resume)
        saved = TrainConfig.load(run / "config.yaml")
        saved.epochs = config.epochs
        config = saved
    store = resolve_store(config.data, image_size=config.image_size, fit=config.fit, skip_bad=config.skip_bad)
    require_labelled(store, both_classes=True, name=config.data)
    spec = REGISTRY.get(config.model)
    if config.freeze_epochs > 0 and (spec is None or spec.weights_prefix != "backbone."):
        raise HistoscanInputError(f"--freeze-epochs: model {config.model} has no separate backbone to freeze")
    if not resume:
        _prepare_run_dir(run, force, resume)
    L.seed_everything(config.seed, workers=True, verbose=False)
    split = split_store(store, config)
    config.save(run / "config.yaml")
    write_split(run / "split.csv", store.ids, store.labels, store.groups, split)
    mpp = config.mpp if config.mpp is not None else store.meta.get("mpp")
    (run / "data.json").write_text(json.dumps(_data_summary(store, split), indent=2))

    rows = np.arange(len(store))
    dm = StoreDataModule(
        store.images,
        store.labels,
        rows[split == "train"],
        rows[split == "val"],
        config.batch_size,
        config.seed,
        config.balanced,
        config.num_workers,
    )
    module = PatchModule(config.to_dict(), image_size=store.size, mpp=mpp)
    trainer = build_trainer(config, run)
    ckpt_path = None
    if resume:
        ckpt_path = run / "checkpoints" / "last.ckpt"
        _trim_metrics(
            run / "metrics.csv", torch.load(ckpt_path, map_location="cpu", weights_only=False)["epoch"] + 1
        )
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", ".*does not have many workers.*")
        warnings.filterwarnings("ignore", ".*The number of training batches.*")
        trainer.fit(module, datamodule=dm, ckpt_path=ckpt_path)
    if trainer.is_global_zero:
        _choose_threshold(run, store, rows[split == "val"], config.batch_size, config.target_sensitivity)
    return run


def _data_summary(store: PatchStore, split: np.ndarray) -> dict[str, Any]:
    counts = {
        name: {
            "n": int((split == name).sum()),
            "positive": int(store.labels[split == name].sum()),
            "groups": len({g for g, s in zip(store.groups, split, strict=True) if s == name and g}),
        }
        for name in ("train", "val", "test")
    }
    return {
        "store": str(store.path),
        "checksum": store.meta.get("checksum"),
        "format": store.meta.get("format"),
        "image_size": store.size,
        "mpp": store.meta.get("mpp"),
        "splits": counts,
    }


def _choose_threshold(
    run: Path, store: PatchStore, val_rows: np.ndarray, batch_size: int, target_sensitivity: float | None
) -> None:
    """Pick the decision threshold on the validation split with the best checkpoint; store RUN/threshold.json."""
    from histoscan.evaluation.metrics import choose_run_threshold

    model = load_model(run)
    probs = model.predict_proba(store.images[np.sort(val_rows)], batch_size=max(batch_size, 128))
    result = choose_run_threshold(store.labels[np.sort(val_rows)], probs, target_sensitivity)
    (run / "threshold.json").write_text(json.dumps(result, indent=2))
