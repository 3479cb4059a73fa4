"""What training tells the user: a start line, a bar with totals on a terminal (one line per epoch otherwise),
and an end summary with the next command. Everything is printed by rank 0 only."""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import EarlyStopping, TQDMProgressBar

from histoscan.config import TrainConfig

Echo = Callable[[str], None]


def is_terminal() -> bool:
    """Whether progress goes to a terminal (a bar) or to a file/pipe (one line per epoch)."""
    return sys.stderr.isatty()


class EpochBar(TQDMProgressBar):
    """Lightning's tqdm bar, saying "Epoch k/N" (1-based, with the total) instead of "Epoch k-1"."""

    def on_train_epoch_start(self, trainer: L.Trainer, *_: Any) -> None:
        super().on_train_epoch_start(trainer)
        self.train_progress_bar.set_description(f"Epoch {trainer.current_epoch + 1}/{trainer.max_epochs}")


class EpochLines(L.Callback):
    """One line per epoch (when output is not a terminal): epoch k/N, losses, AUCs, learning rate, seconds."""

    def __init__(self, echo: Echo):
        self.echo = echo
        self._t0 = time.perf_counter()

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._t0 = time.perf_counter()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero or trainer.sanity_checking:
            return
        m = trainer.callback_metrics
        parts = [f"epoch {trainer.current_epoch + 1}/{trainer.max_epochs}"]
        for key in ("train_loss", "train_auc", "val_loss", "val_auc"):
            if key in m:
                parts.append(f"{key} {float(m[key]):.4f}")
        parts.append(f"lr {trainer.optimizers[0].param_groups[0]['lr']:.3g}")
        parts.append(f"{time.perf_counter() - self._t0:.0f} s")
        self.echo("  ".join(parts))


def start_line(config: TrainConfig, counts: dict[str, dict[str, int]], size: int, mpp: float | None,
               device: str, precision: str, world: int, resume_epoch: int | None) -> str:  # fmt: skip
    """The line printed before the first batch: data, split sizes and patients, model, device, precision, epochs."""

    def part(name: str) -> str:
        c = counts[name]
        groups = f", {c['groups']} patients/slides" if c.get("groups") else ""
        return f"{name} {c['n']} ({c['positive']} tumour{groups})"

    mpp_text = "?" if mpp is None else f"{mpp:g}"
    procs = f" x {world} processes (DDP)" if world > 1 else ""
    again = f", resuming after epoch {resume_epoch}" if resume_epoch is not None else ""
    return (
        f"train: {config.model} on {config.data} ({size} px, {mpp_text} µm/px) | split {part('train')}, "
        f"{part('val')}, {part('test')} | {device}{procs}, precision {precision} | up to {config.epochs} epochs, "
        f"batch {config.batch_size}, lr {config.lr:g}, early stop on {config.monitor} (patience {config.patience})"
        f"{limit_text(config, ', ')}{again}"
    )


def limit_text(config: TrainConfig, lead: str = "") -> str:
    """The smoke-run cap (`--limit-batches N`) in words, after `lead`; "" when the run has none."""
    n = config.limit_batches
    return f"{lead}--limit-batches {n}: at most {n} train and {n} val batches per epoch" if n else ""


def stop_reason(trainer: L.Trainer, config: TrainConfig) -> str:
    """Why the fit ended: early stopping (with its patience), the epoch limit, or Ctrl-C."""
    if trainer.interrupted:
        return "interrupted"
    es = next((c for c in trainer.callbacks if isinstance(c, EarlyStopping)), None)
    if es is not None and es.stopped_epoch > 0:
        return f"early stopping: no {config.monitor} gain for {config.patience} epochs"
    return f"reached --epochs {config.epochs}"


def best_epoch(metrics: list[dict[str, str]], monitor: str) -> tuple[int | None, float | None]:
    """(epoch, value) of the best `monitor` value (max AUC, min loss; the first of ties, as best.ckpt keeps it)
    in metrics.csv rows as :meth:`RunDir.read_metrics` gives them (epochs 1-based)."""
    values = [(int(r["epoch"]), float(r[monitor])) for r in metrics if r.get(monitor) not in (None, "")]
    values = [(e, v) for e, v in values if not math.isnan(v)]
    if not values:
        return None, None
    pick = max if monitor == "val_auc" else min
    e, v = pick(values, key=lambda ev: ev[1])
    return e, v


def end_summary(
    run: str, data: str, metrics: list[dict[str, str]], config: TrainConfig, reason: str,
    threshold: dict[str, Any] | None, seconds: float,
) -> list[str]:  # fmt: skip
    """The lines printed when training ends: best epoch and value, why it stopped, threshold, time, next command."""
    epoch, value = best_epoch(metrics, config.monitor)
    best = f"best epoch {epoch} ({config.monitor} {value:.4f})" if epoch else "no validated epoch"
    thr = (
        f"threshold {threshold['threshold']:.3g} ({threshold.get('method', '?')} on the "
        f"{'calibrated ' if threshold.get('calibrated') else ''}validation split)"
        if threshold
        else "no threshold"
    )
    minutes = f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.0f} s"
    return [
        f"done: {len(metrics)} epoch(s) in {minutes}; {best}; stopped: {reason}; {thr}{limit_text(config, '; ')}",
        f"next: histoscan evaluate {run} --data {data} --tta 8",
    ]
