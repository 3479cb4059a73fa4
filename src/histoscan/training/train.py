"""`histoscan train`: grouped split, Lightning training with early stopping, checkpoints and a run folder."""

from __future__ import annotations

import logging
import shutil
import signal
import time
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch

from histoscan.config import TrainConfig
from histoscan.data.loader import StoreDataModule
from histoscan.data.splits import check_grouping, make_folds, make_split
from histoscan.data.store import PatchStore, require_labelled, resolve_store, write_skipped
from histoscan.errors import HistoscanInputError, Interrupted
from histoscan.inference.predictor import load_torch_predictor
from histoscan.inference.tta import infer
from histoscan.models import REGISTRY, check_model_options
from histoscan.models.classifier import model_kwargs
from histoscan.run import RunDir
from histoscan.scoring.calibration import fit_decision
from histoscan.training.module import PatchModule
from histoscan.training.progress import Echo, end_summary, start_line, stop_reason
from histoscan.training.resume import changed, resume_config
from histoscan.training.trainer import CtrlC, build_trainer, early_stopping_wait, placement, process_rank
from histoscan.utils.fs import guard_output

log = logging.getLogger(__name__)


def _trim_metrics(run: RunDir, done: int) -> None:
    """On resume, keep the metric rows of the `done` epochs the checkpoint holds (1-based: epochs 1..done); the
    rest will be trained again. A run's older 0-based metrics.csv is rewritten 1-based here."""
    if run.metrics_path.is_file():
        run.write_metrics([r for r in run.read_metrics() if int(r["epoch"]) <= done])


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


def train(
    config: TrainConfig,
    force: bool = False,
    resume: bool = False,
    echo: Echo | None = None,
    given: set[str] | None = None,
    callbacks: list[L.Callback] | None = None,
) -> Path:
    """Train a model as configured; returns the run folder.

    A new run is staged in a hidden sibling of `config.out` and moved into place when training starts, so a
    start that fails (bad data, bad option) leaves nothing behind and an existing run untouched.

    Args:
        config: the run's configuration (`config.out` is the run folder).
        force: replace an existing non-empty run folder.
        resume: continue from RUN/checkpoints/last.ckpt with the run's own RUN/config.yaml; of the `given`
            fields, those that may change on resume (`training.resume.RESUMABLE`: --epochs, --patience, ...)
            replace the recorded values (and are recorded), any other must equal the recorded one.
        echo: where the start line, per-epoch lines (off a terminal) and the end summary go (None: silent).
        given: with `resume`, the fields the caller set (the CLI: the options given); None: all of `config`.
        callbacks: extra Lightning callbacks (e.g. Optuna's pruning callback).

    Raises:
        HistoscanInputError: bad data or options (on resume: an option that conflicts with the run's).
        Interrupted: Ctrl-C; the message says what was saved and how to continue.
    """
    t0 = time.perf_counter()
    config.validate()
    rank = process_rank()
    say = echo if echo is not None and rank == 0 else None
    record = False  # a resumed run whose config.yaml takes changed settings
    if resume:
        run = RunDir(config.out)
        if not run.last_ckpt.is_file():
            raise HistoscanInputError(f"--resume: {run.last_ckpt} not found")
        saved = run.read_config()
        config = resume_config(saved, config, given)  # refused here: nothing has been written
        record = rank == 0 and changed(saved, config)
    else:
        check_model_options(config.model, **model_kwargs(config))  # a model rejects an option it ignores
        if rank == 0:
            guard_output(config.out, force, "folder", "--out")
    placement(config)  # a bad --accelerator/--devices fails before any data is prepared
    store = resolve_store(config.data, image_size=config.image_size, fit=config.fit, skip_bad=config.skip_bad)
    require_labelled(store, both_classes=True, name=config.data)
    spec = REGISTRY.get(config.model)
    if config.freeze_epochs > 0 and (spec is None or spec.weights_prefix != "backbone."):
        raise HistoscanInputError(f"--freeze-epochs: model {config.model} has no separate backbone to freeze")
    L.seed_everything(config.seed, workers=True, verbose=False)
    split = split_store(store, config)
    if not resume:  # only rank 0 stages; DDP children write nothing of their own
        run = RunDir.stage(config.out, force) if rank == 0 else RunDir(Path(config.out).resolve())
    try:
        trainer = _fit(run, config, store, split, resume, say, callbacks, record=record)
    except BaseException as e:
        if rank == 0 and not resume:
            run.discard()  # a start that failed before the fit: the staging folder goes
            if not isinstance(e, Interrupted) and not run.staged and not run.last_ckpt.is_file():
                shutil.rmtree(run.path, ignore_errors=True)  # failed in the fit before any epoch was saved
        raise
    if trainer.is_global_zero:
        decide(run, store, np.flatnonzero(split == "val"), config)
        if say is not None:
            metrics = run.read_metrics()
            reason = stop_reason(trainer, config)
            for line in end_summary(str(run.path), config.data, metrics, config, reason, run.read_threshold(),
                                    time.perf_counter() - t0):  # fmt: skip
                say(line)
    return run.path


def _fit(
    run: RunDir,
    config: TrainConfig,
    store: PatchStore,
    split: np.ndarray,
    resume: bool,
    say: Echo | None,
    callbacks: list[L.Callback] | None = None,
    record: bool = False,
) -> L.Trainer:
    """Write the run's files and train; turns Lightning's Ctrl-C exit into :class:`Interrupted`.

    `record`: a resumed run's config.yaml takes the changed settings (e.g. --epochs) just before the fit, so a
    later plain --resume continues to them."""
    counts = _data_summary(store, split)
    if not resume and run.staged:
        run.write_config(config)
        run.write_split(store.ids, store.labels, store.groups, split)
        run.write_data(counts)
        if (skipped := write_skipped(store, run.path, run.final)) and say is not None:  # --skip-bad's list
            say(skipped)
    mpp = config.mpp if config.mpp is not None else store.meta.get("mpp")
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
    ctrl_c = CtrlC()
    trainer = build_trainer(config, run, say, [*(callbacks or []), ctrl_c])
    ckpt_path, resume_epoch = None, None
    if resume:
        ckpt_path = run.last_ckpt
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False)
        resume_epoch = int(ckpt["epoch"]) + 1  # epochs done; the next is resume_epoch + 1 (1-based)
        _trim_metrics(run, resume_epoch)
        if say is not None and resume_epoch >= config.epochs:
            say(
                f"note: this run has trained {resume_epoch} of its --epochs {config.epochs}: nothing more to "
                f"train; pass --epochs N (above {resume_epoch}) to train longer"
            )
        wait = early_stopping_wait(ckpt)
        if say is not None and wait >= config.patience - 1:
            say(
                f"note: early stopping had counted {wait} epoch(s) without a {config.monitor} gain (patience "
                f"{config.patience}): one more such epoch ends the run; pass --patience N to train longer"
            )
    if say is not None:
        accelerator, devices = placement(config)
        say(start_line(config, counts["splits"], store.size, mpp, accelerator, trainer.precision,
                       devices * config.num_nodes, resume_epoch))  # fmt: skip
    if run.staged:  # everything that bad input can break has been checked: the run moves into place now
        run.commit()
    if record:
        run.write_config(config)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", ".*does not have many workers.*")
            warnings.filterwarnings("ignore", ".*The number of training batches.*")
            warnings.filterwarnings("ignore", ".*Checkpoint directory .* exists and is not empty.*")
            # Lightning 2.6's own pytree helper trips torch 2.13's LeafSpec deprecation on every run; not ours
            warnings.filterwarnings("ignore", ".*isinstance\\(treespec, LeafSpec\\).*")
            with ctrl_c.armed():
                trainer.fit(module, datamodule=dm, ckpt_path=ckpt_path)
    except SystemExit:  # Lightning ends a Ctrl-C'd fit with sys.exit(1) after its graceful shutdown
        signal.signal(signal.SIGINT, signal.default_int_handler)  # Lightning left Ctrl-C ignored
        if trainer.interrupted:
            raise Interrupted(_interrupted_message(run, config, resume)) from None
        raise
    if trainer.interrupted:  # a callback stopped the run through KeyboardInterrupt without exiting
        raise Interrupted(_interrupted_message(run, config, resume))
    return trainer


def _interrupted_message(run: RunDir, config: TrainConfig, resume: bool) -> str:
    """What Ctrl-C left behind, and the command that continues from it. Removes a new run with no epoch."""
    again = f"histoscan train --data {config.data} --out {config.out} --resume"
    if run.last_ckpt.is_file():
        saved = run.last_ckpt.relative_to(run.path)
        return f"saved {run.path} after {run.epochs_done()} epoch(s) ({saved}); continue with: {again}"
    if resume:
        return f"{run.path} is as it was; continue with: {again}"
    shutil.rmtree(run.path, ignore_errors=True)  # committed, but no epoch finished: nothing worth keeping
    return f"no epoch finished, nothing saved ({run.final} removed)"


def _data_summary(store: PatchStore, split: np.ndarray) -> dict[str, Any]:
    """data.json: the training store, its split counts and the colour statistics of (a sample of up to 2,000)
    train-split patches, which predict/evaluate/slide compare their input against."""
    from histoscan.stain.domain import colour_stats

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
        "colour": colour_stats(store.images, np.flatnonzero(split == "train")),
    }


def decide(run: RunDir, store: PatchStore, val_rows: np.ndarray, config: TrainConfig) -> None:
    """Fix the run's decision on its validation split with the best checkpoint, scored as the run will be
    (`config.tta` views): the calibration temperature (RUN/calibration.json, `config.calibrate`), then the
    threshold by `config.threshold_rule` on the calibrated probabilities (RUN/threshold.json)."""
    predictor = load_torch_predictor(run.path)
    predictor.classifier.temperature = 1.0  # raw logits, also when an earlier calibration of this run exists
    rows = np.sort(val_rows)
    y = store.labels[rows]
    logits = infer(predictor, store.images, rows, config.tta, max(config.batch_size, 128), "calibrate")
    d = fit_decision(y, logits, config.calibrate, config.threshold_rule, config.target_sensitivity)
    run.write_calibration({**d["calibration"], "fitted_on": "validation split", "n_val": len(rows), "tta": config.tta})
    run.write_threshold({**d["threshold"], "tta": config.tta})
