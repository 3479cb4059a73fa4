"""The LightningModule: uint8 batches -> [0,1] -> batched augmentation -> normalise -> net -> BCE-with-logits."""

from __future__ import annotations

import math
import random
import time
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch import nn
from torchmetrics import MeanMetric
from torchmetrics.classification import BinaryAccuracy, BinaryAUROC

from histoscan.config import TrainConfig
from histoscan.data.augment import BatchAugment
from histoscan.models.classifier import build_classifier
from histoscan.run import read_metrics_file, write_metrics_file

METRIC_COLUMNS = [
    "epoch",
    "train_loss",
    "train_auc",
    "train_acc",
    "val_loss",
    "val_auc",
    "val_acc",
    "lr",
    "seconds",
]


class PatchModule(L.LightningModule):
    """Binary tumour/normal classifier. Checkpoints hold `config`, `image_size` and `mpp` as hyper-parameters,
    which is what `histoscan.inference.predictor.load_checkpoint` reads back."""

    def __init__(self, config: dict[str, Any], image_size: int, mpp: float | None):
        super().__init__()
        self.save_hyperparameters()
        self.cfg = TrainConfig.from_dict(config)
        self.classifier = build_classifier(self.cfg)
        self._cycle: tuple[int, float] | None = None  # one-cycle plan (total steps, warm-up share)
        for (
            param
        ) in self.classifier.parameters():  # channels_last for 4-D weights (P4M's 5-D ones stay as they are)
            if param.dim() == 4:
                param.data = param.data.contiguous(memory_format=torch.channels_last)
        self.augment = BatchAugment(self.cfg.augment)
        self.loss = nn.BCEWithLogitsLoss()
        self.train_auc, self.val_auc = BinaryAUROC(), BinaryAUROC()
        self.train_acc, self.val_acc = BinaryAccuracy(), BinaryAccuracy()
        self.train_loss = MeanMetric()

    @property
    def backbone(self) -> nn.Module:
        """The trunk that Lightning's BackboneFinetuning freezes in phase 1 (models with a `backbone`)."""
        return self.classifier.net.backbone

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        images, targets = mix_batch(
            self.augment(self.classifier.prepare(x)), y, self.cfg.mixup, self.cfg.cutmix
        )
        eps = self.cfg.label_smoothing
        logits = self.classifier.head(images)
        loss = self.loss(logits.float(), targets * (1 - eps) + eps / 2)
        probs = torch.sigmoid(logits.detach().float())
        self.train_auc.update(probs, y.long())
        self.train_acc.update(probs, y.long())
        self.train_loss.update(loss.detach(), len(y))
        self.log("loss", loss, on_step=True, on_epoch=False, prog_bar=True, batch_size=len(y))
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        logits = self.classifier(x).float()
        # sync_dist: under DDP the logged loss is the mean over every rank's share of the validation split
        self.log(
            "val_loss", self.loss(logits, y), on_epoch=True, prog_bar=True, batch_size=len(y), sync_dist=True
        )
        probs = torch.sigmoid(logits)
        self.val_auc.update(probs, y.long())
        self.val_acc.update(probs, y.long())

    def on_validation_epoch_end(self) -> None:
        # validation runs after the epoch's training batches, so the train metrics are complete here too and
        # land in callback_metrics before MetricsCSV writes the epoch's row
        for name, metric in (
            ("val_auc", self.val_auc),
            ("val_acc", self.val_acc),
            ("train_auc", self.train_auc),
            ("train_acc", self.train_acc),
            ("train_loss", self.train_loss),
        ):
            if metric.update_count:
                self.log(name, metric.compute(), prog_bar=name == "val_auc")
            metric.reset()

    def on_train_epoch_end(self) -> None:
        stain = self.classifier.stain
        if stain is not None and hasattr(stain, "report") and self.trainer.is_global_zero:
            stain.report("training patches this epoch")  # one line per epoch, not one per batch

    def on_train_start(self) -> None:
        # `--resume --epochs N` with another N: Lightning restores OneCycleLR's state, horizon included, which would
        # stop the cycle early or raise past its end. Re-plan it for this run's length (cosine's LambdaLR is, by
        # construction); a run resumed with its own --epochs keeps the same plan, so it matches an uninterrupted one.
        sched = self.lr_schedulers() if self._cycle is not None else None
        if isinstance(sched, torch.optim.lr_scheduler.OneCycleLR):
            # a smoke run of under 3 steps had a constant rate and no cycle: the optimizer state restored from its
            # checkpoint lacks the cycle's fields, which OneCycleLR sets only when it starts afresh
            for group in sched.optimizer.param_groups:
                if "max_lr" not in group:
                    group.update(
                        max_lr=self.cfg.lr, initial_lr=self.cfg.lr / 25, min_lr=self.cfg.lr / 25 / 1e4
                    )
                    group.update(max_momentum=0.95, base_momentum=0.85)
        if isinstance(sched, torch.optim.lr_scheduler.OneCycleLR) and sched.total_steps != self._cycle[0]:
            total, pct = self._cycle
            phases = sched._schedule_phases  # no public API re-plans a OneCycleLR; its state is these fields
            phases[0]["end_step"], phases[-1]["end_step"] = float(pct * total) - 1, float(total) - 1
            sched.total_steps = total

    def configure_optimizers(self) -> dict[str, Any]:
        params = [p for p in self.parameters() if p.requires_grad]
        opt_cls = torch.optim.AdamW if self.cfg.optimizer == "adamw" else torch.optim.Adam
        opt = opt_cls(params, lr=self.cfg.lr, weight_decay=self.cfg.weight_decay)
        if self.cfg.schedule == "plateau":
            mode = "max" if self.cfg.monitor == "val_auc" else "min"
            sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode=mode, factor=0.5, patience=2)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "monitor": self.cfg.monitor}}
        total = max(1, int(self.trainer.estimated_stepping_batches))
        per_epoch = max(1, total // max(1, self.trainer.max_epochs or 1))
        warmup = min(total - 1, int(round(self.cfg.warmup_epochs * per_epoch)))
        if self.cfg.schedule == "onecycle" and total >= 3:
            # OneCycleLR divides by each phase's length: both need at least a step (warm-up >= 2 steps < total)
            rise = min(max(warmup or round(0.3 * total), 2), total - 1)
            self._cycle = total, rise / total  # this run's plan, for on_train_start
            sched = torch.optim.lr_scheduler.OneCycleLR(
                opt, max_lr=self.cfg.lr, total_steps=total, pct_start=rise / total
            )
        elif self.cfg.schedule == "onecycle":  # a smoke run of 1-2 steps has no cycle: constant rate
            sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0)
        else:
            sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: cosine_factor(step, warmup, total))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def cosine_factor(step: int, warmup: int, total: int) -> float:
    """Learning-rate factor: linear warm-up over `warmup` steps, then cosine decay to 0 at `total`."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def mix_batch(
    x: torch.Tensor, y: torch.Tensor, mixup: float, cutmix: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mixup (blend two patches) or cutmix (paste a box of one into another) with Beta(a, a) weights.

    One of the two per batch when both are on; soft targets weighted by the mixed share. Random numbers come
    from torch's global CPU generator (reseeded per batch by EpochSeeding, so --resume stays exact).
    """
    if not (mixup or cutmix) or len(x) < 2:
        return x, y
    use_cut = bool(cutmix) and (not mixup or torch.rand(()) < 0.5)
    a = cutmix if use_cut else mixup
    lam = float(torch.distributions.Beta(a, a).sample())
    perm = torch.randperm(len(x)).to(x.device)
    if not use_cut:
        return lam * x + (1 - lam) * x[perm], lam * y + (1 - lam) * y[perm]
    h, w = x.shape[-2:]
    ch, cw = int(round(h * math.sqrt(1 - lam))), int(round(w * math.sqrt(1 - lam)))
    cy, cx = int(torch.randint(h, ())), int(torch.randint(w, ()))
    y0, y1, x0, x1 = (
        max(cy - ch // 2, 0),
        min(cy + ch - ch // 2, h),
        max(cx - cw // 2, 0),
        min(cx + cw - cw // 2, w),
    )
    out = x.clone()
    out[..., y0:y1, x0:x1] = x[perm][..., y0:y1, x0:x1]
    share = (y1 - y0) * (x1 - x0) / (h * w)  # the pasted share, after clipping at the border
    return out, (1 - share) * y + share * y[perm]


class EpochSeeding(L.Callback):
    """Reseed every RNG before each training batch from (seed, epoch, batch), so augmentation and dropout do not
    depend on what ran before (data-loader start-up draws from the global RNG too): `--resume` then reproduces
    an uninterrupted run exactly."""

    def __init__(self, seed: int):
        self.seed = seed

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        s = int(np.random.SeedSequence([self.seed, trainer.current_epoch, batch_idx]).generate_state(1)[0])
        random.seed(s)
        np.random.seed(s)
        torch.manual_seed(s)


class MetricsCSV(L.Callback):
    """RUN/metrics.csv: one row per epoch (numbered from 1) with train/val loss, AUC, accuracy, learning rate
    and seconds."""

    def __init__(self, path: Path):
        self.path = path
        self._t0 = time.perf_counter()

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._t0 = time.perf_counter()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        m = trainer.callback_metrics
        row: dict[str, Any] = {"epoch": trainer.current_epoch + 1}  # 1-based, as the console and report say
        for k in METRIC_COLUMNS[1:-2]:
            row[k] = f"{float(m[k]):.6f}" if k in m else ""
        row["lr"] = f"{trainer.optimizers[0].param_groups[0]['lr']:.3g}"
        row["seconds"] = f"{time.perf_counter() - self._t0:.1f}"
        # the rows so far come back 1-based even from a run started before that numbering (renumbered here)
        write_metrics_file(self.path, [*read_metrics_file(self.path), row], METRIC_COLUMNS)
