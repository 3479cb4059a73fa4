"""Lightning Trainer assembly: devices and DDP, precision, callbacks (checkpoints, early stopping, fine-tuning,
progress) and the experiment logger."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterable, Iterator
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import BackboneFinetuning, EarlyStopping, EMAWeightAveraging, ModelCheckpoint
from torch import nn

from histoscan.config import TrainConfig
from histoscan.errors import HistoscanInputError
from histoscan.run import RunDir
from histoscan.training.module import EpochSeeding, MetricsCSV
from histoscan.training.progress import Echo, EpochBar, EpochLines, is_terminal
from histoscan.utils.device import cuda_count


def process_rank() -> int:
    """This process's global rank in a DDP job (0 outside one; children started by Lightning or torchrun).

    Known before the Trainer exists, so only rank 0 stages and writes the run folder.
    """
    if os.environ.get("RANK"):  # torchrun / TorchElastic
        return int(os.environ["RANK"])
    if (
        os.environ.get("SLURM_PROCID") and int(os.environ.get("SLURM_NTASKS") or 1) > 1
    ):  # srun, one task a device
        return int(os.environ["SLURM_PROCID"])
    local, node = int(os.environ.get("LOCAL_RANK") or 0), int(os.environ.get("NODE_RANK") or 0)
    return local + node * int(os.environ.get("LOCAL_WORLD_SIZE") or 1) if (local or node) else 0


def placement(config: TrainConfig) -> tuple[str, int]:
    """(accelerator, processes per node): `--accelerator auto` is every visible GPU, else one CPU process."""
    gpus = cuda_count()
    accelerator = config.accelerator if config.accelerator != "auto" else ("gpu" if gpus else "cpu")
    if accelerator == "gpu" and not gpus:
        raise HistoscanInputError("--accelerator gpu: no CUDA GPU is visible to this process")
    devices = config.devices or (gpus if accelerator == "gpu" else 1)
    if accelerator == "gpu" and devices > gpus:
        raise HistoscanInputError(f"--devices {devices}: only {gpus} GPU(s) visible")
    return accelerator, devices


def precision(config: TrainConfig, accelerator: str) -> str:
    """fp32 on CPU (autocast is slower there); bf16 (else fp16) mixed precision on GPUs."""
    if config.precision != "auto":
        return {"32": "32-true"}.get(config.precision, config.precision)
    if accelerator == "gpu":
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    return "32-true"


class EarlyStop(EarlyStopping):
    """EarlyStopping whose patience is the run's configured one, also on --resume.

    Lightning restores `patience` from the checkpoint, so `--resume --patience 10` would have been ignored.
    """

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        patience = self.patience
        super().load_state_dict(state_dict)
        self.patience = patience


class PreciseBN(L.Callback):
    """Re-estimate BatchNorm running statistics on clean training batches before every validation.

    Strong colour/stain augmentation shifts the batch statistics BatchNorm accumulates during training away from
    those of real (unaugmented) patches, so evaluation-mode outputs drift (the instability seen with HED jitter
    on idc-breast). Recomputing the statistics as an exact average over `batches` clean batches — "precise BN"
    (Wu & Johnson 2021) — removes that mismatch; the weights are untouched.
    """

    def __init__(self, batches: int):
        self.batches = batches

    @torch.no_grad()
    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        bns = [m for m in pl_module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        loader = trainer.train_dataloader
        if not bns or loader is None or trainer.sanity_checking:
            return
        momenta = [bn.momentum for bn in bns]
        for bn in bns:
            bn.reset_running_stats()
            bn.momentum = None  # cumulative moving average: the exact mean over the batches seen
        pl_module.train()
        clf = pl_module.classifier
        for i, (x, _) in enumerate(loader):
            if i >= self.batches:
                break
            clf.head(clf.prepare(x.to(pl_module.device)))  # no augmentation: real patches' statistics
        for bn, m in zip(bns, momenta, strict=True):
            bn.momentum = m
        pl_module.eval()  # validation continues in eval mode


class Finetuning(BackboneFinetuning):
    """BackboneFinetuning that recognises parameters by identity.

    Lightning's `filter_on_optimizer` compares parameter *values* (`torch.equal`), so a trunk BatchNorm weight
    that happens to equal one in the head (all ones at initialisation) was taken for a parameter already in the
    optimizer: it was never unfrozen into training, and Lightning printed a misleading HINT at every unfreeze.
    """

    @staticmethod
    def filter_on_optimizer(
        optimizer: torch.optim.Optimizer, params: Iterable[nn.Parameter]
    ) -> list[nn.Parameter]:
        held = {id(p) for group in optimizer.param_groups for p in group["params"]}
        return [p for p in params if id(p) not in held]


def experiment_logger(config: TrainConfig, run: RunDir) -> Any:
    """Lightning's TensorBoard or MLflow logger in the run folder, or False (metrics.csv only, the default)."""
    if config.logger == "csv":
        return False
    if config.logger == "tensorboard":
        try:
            import tensorboard  # noqa: F401  # Lightning falls back to tensorboardX silently otherwise
            from lightning.pytorch.loggers import TensorBoardLogger
        except ImportError:
            raise HistoscanInputError(
                "--logger tensorboard: the tensorboard package is not installed (pip install tensorboard)"
            ) from None
        return TensorBoardLogger(save_dir=str(run.final), name=RunDir.LOGS, version="", default_hp_metric=False)
    try:
        import mlflow  # noqa: F401
        from lightning.pytorch.loggers import MLFlowLogger
    except ImportError:
        raise HistoscanInputError(
            "--logger mlflow: the mlflow package is not installed (pip install mlflow)"
        ) from None
    uri = run.final_path(RunDir.MLRUNS).resolve().as_uri()
    return MLFlowLogger(experiment_name="histoscan", run_name=run.final.name, tracking_uri=uri)


def build_trainer(
    config: TrainConfig, run: RunDir, echo: Echo | None = None, callbacks: list[L.Callback] | None = None
) -> L.Trainer:
    """A Trainer with early stopping, best/last checkpoints, per-epoch metrics.csv and the run's precision.

    Files go to the run's final place (`run.final`): the caller commits a staged run just before the fit.
    Progress: a bar with totals on a terminal, else one line per epoch through `echo` (None: nothing).
    """
    mode = "max" if config.monitor == "val_auc" else "min"
    ckpt_dir = run.final_path(RunDir.CHECKPOINTS)
    cbs: list[L.Callback] = [
        EpochSeeding(config.seed),
        MetricsCSV(run.final_path(RunDir.METRICS)),
        EarlyStop(config.monitor, patience=config.patience, mode=mode),
        ModelCheckpoint(
            ckpt_dir, filename=RunDir.BEST, monitor=config.monitor, mode=mode, enable_version_counter=False
        ),
        # last.ckpt every epoch whatever the monitor did (save_last only follows top-k saves): what --resume uses
        ModelCheckpoint(ckpt_dir, filename=RunDir.LAST, monitor=None, enable_version_counter=False),
    ]
    if config.freeze_epochs > 0:
        cbs.append(
            Finetuning(
                unfreeze_backbone_at_epoch=config.freeze_epochs,
                backbone_initial_ratio_lr=0.1,
                should_align=True,
                train_bn=True,
                verbose=False,
            )
        )
    if config.precise_bn:
        cbs.append(PreciseBN(config.precise_bn))
    if config.ema:
        cbs.append(
            EMAWeightAveraging(decay=config.ema)
        )  # validation and checkpoints use the averaged weights
    bar = echo is not None and is_terminal()
    if bar:
        cbs.append(EpochBar())
    elif echo is not None:
        cbs.append(EpochLines(echo))
    cbs += callbacks or []
    accelerator, devices = placement(config)
    world = devices * config.num_nodes
    return L.Trainer(
        max_epochs=config.epochs,
        accelerator=accelerator,
        devices=devices,
        num_nodes=config.num_nodes,
        strategy="ddp" if world > 1 else "auto",
        precision=precision(config, accelerator),
        callbacks=cbs,
        logger=experiment_logger(config, run),
        enable_progress_bar=bar,
        default_root_dir=str(run.final),
        limit_train_batches=config.limit_batches,
        limit_val_batches=config.limit_batches,
        num_sanity_val_steps=0,
        deterministic=False,
        use_distributed_sampler=False,  # EpochBatchSampler shards by rank itself
        enable_model_summary=False,
        log_every_n_steps=10,
    )


def early_stopping_wait(ckpt: dict[str, Any]) -> int:
    """Epochs without a gain that a checkpoint's early-stopping state had counted (0 when none)."""
    for key, state in (ckpt.get("callbacks") or {}).items():
        if str(key).startswith("EarlyStop") and isinstance(state, dict):
            return int(state.get("wait_count") or 0)
    return 0


class CtrlC(L.Callback):
    """Ctrl-C that always stops a fit: the SIGINT handler raises KeyboardInterrupt as usual (Lightning then
    shuts down gracefully) and also sets a flag that the next batch end turns into a KeyboardInterrupt.

    CPython swallows an exception raised inside a `__del__` or weakref callback ("Exception ignored in ..."): a
    Ctrl-C that lands while the garbage collector runs one during training was lost, and the run went on (seen
    under load in the test suite). The flag makes the stop independent of where the signal lands.
    """

    def __init__(self) -> None:
        self.hit = False

    def _handler(self, signum: int, frame: object) -> None:
        self.hit = True
        raise KeyboardInterrupt

    @contextlib.contextmanager
    def armed(self) -> Iterator[None]:
        """Install the handler for the duration of the fit (main thread only), then restore the previous one."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = signal.signal(signal.SIGINT, self._handler)
        try:
            yield
        finally:
            if signal.getsignal(signal.SIGINT) == self._handler:
                signal.signal(signal.SIGINT, previous)

    def _check(self, *args: object) -> None:
        if self.hit:
            raise KeyboardInterrupt

    on_train_batch_end = _check
    on_validation_batch_end = _check
    on_train_epoch_end = _check
