"""ONNX export (preprocessing in the graph, parity-checked against PyTorch) and an ONNX Runtime backend."""

from __future__ import annotations

import contextlib
import json
import logging
import warnings
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torch import nn

from histoscan import __version__
from histoscan.errors import HistoscanInputError
from histoscan.inference.onnx import INPUT_NAME, OUTPUT_NAMES, OnnxPredictor, read_metadata
from histoscan.inference.predictor import TorchPredictor, load_torch_predictor
from histoscan.run import RunDir
from histoscan.utils.fs import atomic_path, guard_output

__all__ = ["ParityError", "export_onnx", "read_metadata"]

log = logging.getLogger(__name__)

PARITY_TOLERANCE = 1e-4  # max |logit_torch - logit_ort| accepted, fp32
PARITY_IMAGES = 64
MIN_OPSET = 11
TORCHSCRIPT_MAX_OPSET = (
    20  # the legacy exporter's ceiling in torch 2.13 (ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET)
)


class ParityError(RuntimeError):
    """The exported graph does not reproduce the PyTorch logits (exporter/runtime bug, not user error)."""


class _Exported(nn.Module):
    """uint8 N x S x S x 3 RGB -> (logits (N,), tumour probabilities (N,)); preprocessing included."""

    def __init__(self, predictor: TorchPredictor):
        super().__init__()
        self.classifier = predictor.classifier

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.classifier(images)
        return logits, torch.sigmoid(logits)


@contextlib.contextmanager
def _quiet(levels: dict[str, int]) -> Iterator[None]:
    """Set loggers to the given levels for a while (the torch.export-based exporter logs every pass)."""
    saved = {name: logging.getLogger(name).level for name in levels}
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)
    try:
        yield
    finally:
        for name, level in saved.items():
            logging.getLogger(name).setLevel(level)


def _torch_onnx_export(model: nn.Module, dummy: torch.Tensor, path: Path, opset: int) -> None:
    """torch.onnx.export with a dynamic batch axis.

    The TorchScript exporter comes first (for opsets it supports): on torch 2.13 it writes the requested opset
    directly in seconds, while the torch.export-based one takes ~30 s for a ResNet and its down-conversion
    below opset 18 fails. The latter is the fallback, at opset 18 or above.
    """
    names = dict(input_names=[INPUT_NAME], output_names=list(OUTPUT_NAMES))
    if opset <= TORCHSCRIPT_MAX_OPSET:
        try:
            with warnings.catch_warnings():
                # deprecation notices, and tracer notes on Python numbers taken from fixed (non-batch) shapes:
                # the parity check at two batch sizes guards against a trace that does not generalise
                for category in (DeprecationWarning, FutureWarning, UserWarning, torch.jit.TracerWarning):
                    warnings.simplefilter("ignore", category)
                axes = {n: {0: "batch"} for n in (INPUT_NAME, *OUTPUT_NAMES)}
                torch.onnx.export(
                    model, (dummy,), str(path), dynamo=False, dynamic_axes=axes, opset_version=opset, **names
                )
            return
        except Exception as e:  # noqa: BLE001 - any failure of the legacy exporter: try the new one
            first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
            log.info("TorchScript ONNX exporter failed (%s); trying the torch.export-based exporter", first)
    batch = torch.export.Dim("batch", min=1, max=65536)
    quiet = {"onnxscript": logging.WARNING, "onnx_ir": logging.WARNING, "torch.onnx": logging.WARNING}
    quiet["torch.onnx._internal.exporter._registration"] = logging.ERROR  # "torchvision is not installed"
    with _quiet(quiet), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        torch.onnx.export(
            model,
            (dummy,),
            str(path),
            dynamo=True,
            dynamic_shapes=({0: batch},),
            opset_version=max(opset, 18),
            verbose=False,
            **names,
        )


def _training_data_summary(predictor: TorchPredictor) -> str:
    """JSON: the configured data path plus RUN/data.json (store, checksum, counts) when the run has one."""
    card = predictor.card
    summary: dict[str, Any] = {"data": card.config.data if card.config else ""}
    if card.run_dir is not None:
        try:
            summary.update(RunDir(card.run_dir).read_data())
        except HistoscanInputError as e:
            log.warning("%s; left out of the ONNX metadata", e)
    return json.dumps(summary, sort_keys=True, default=str)


def _metadata(predictor: TorchPredictor, opset: int, parity: float, parity_source: str) -> dict[str, str]:
    card = predictor.card
    s = card.image_size
    return {
        "histoscan_version": __version__,
        "model": card.model,
        "image_size": str(s),
        "mpp": "" if card.mpp is None else str(card.mpp),
        "threshold": repr(float(card.threshold)),
        "threshold_source": card.threshold_source,
        "temperature": repr(float(card.temperature)),  # divides the logits inside this graph
        "fit": card.fit,
        "stain": card.stain,
        "normalisation": card.normalisation,
        "input": f"{INPUT_NAME}: uint8 N x {s} x {s} x 3 RGB 0..255",
        "outputs": "logits: (N,) tumour logit; probabilities: (N,) sigmoid(logit)",
        "training_data": _training_data_summary(predictor),
        "config": json.dumps(card.config.to_dict() if card.config else {}, default=str),
        "checkpoint": card.weights,
        "opset": str(opset),
        "parity_max_abs_logit_diff": f"{parity:.3g}",
        "parity_images": parity_source,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def _run_patches(predictor: TorchPredictor, n: int) -> np.ndarray | None:
    """Up to `n` real patches of the run's own training store (both classes when labelled), else None."""
    from histoscan.data.store import PatchStore  # lazy: export needs no store otherwise

    card = predictor.card
    info = RunDir(card.run_dir).read_data() if card.run_dir else {}
    if not info.get("store"):
        return None
    try:
        store = PatchStore.open(info["store"])
    except HistoscanInputError:
        return None
    if store.size != card.image_size or len(store) == 0:
        return None
    pos, neg = np.flatnonzero(store.labels == 1), np.flatnonzero(store.labels != 1)
    rows = np.sort(np.concatenate([pos[: n // 2], neg[: n - min(len(pos), n // 2)]]))[:n]
    return np.ascontiguousarray(store.images[rows])


def _check_images(predictor: TorchPredictor, images: np.ndarray | None) -> tuple[np.ndarray, str]:
    s = predictor.card.image_size
    if images is not None:
        images = np.asarray(images)
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != (s, s, 3):
            raise HistoscanInputError(
                f"check_images: expected uint8 N x {s} x {s} x 3, got {images.dtype} {images.shape}"
            )
        return images, f"{len(images)} given images"
    real = _run_patches(predictor, PARITY_IMAGES)
    if real is not None:
        return real, f"{len(real)} patches of the run's training data"
    return np.random.default_rng(0).integers(0, 256, (16, s, s, 3), dtype=np.uint8), "16 random uint8 images"


def parity(reference: TorchPredictor, onnx: OnnxPredictor, images: np.ndarray) -> float:
    """Max |Δlogit| between PyTorch (fp32, CPU) and ONNX Runtime, for the whole batch and for one image."""
    ref = reference.predict_logits(images, batch_size=len(images)).astype(np.float64)
    whole = onnx.predict_logits(images, batch_size=len(images))
    single = onnx.predict_logits(images[:1], batch_size=1)  # the batch axis really is dynamic
    return float(max(np.abs(whole - ref).max(), np.abs(single - ref[:1]).max()))


def export_onnx(
    run_or_ckpt: str | Path,
    out: str | Path,
    opset: int = 17,
    check_images: np.ndarray | None = None,
    tolerance: float = PARITY_TOLERANCE,
    force: bool = False,
) -> Path:
    """Export a run or checkpoint to ONNX, parity-checked against PyTorch; the file exists only if it passed.

    The graph takes uint8 N x S x S x 3 RGB ("images", dynamic N) and returns "logits" and "probabilities".
    Metadata (`metadata_props`) carries image_size, mpp, threshold, model, fit, histoscan version, the
    training-data summary, the full config, the parity figure and the creation time (:func:`read_metadata`).

    Args:
        run_or_ckpt: run folder or checkpoint.
        out: destination .onnx file (an existing one needs `force`).
        opset: ONNX opset (11 up to what the installed onnx knows; above 20 the torch.export-based exporter).
        check_images: uint8 images for the parity check (default: real patches of the run's training store
            when it is still there, else random images).
        tolerance: largest accepted |Δlogit|.
        force: overwrite an existing `out`.

    Returns:
        The written path.

    Raises:
        ParityError: ONNX Runtime and PyTorch disagree by more than `tolerance` (no file is left behind).
        HistoscanInputError: bad run, or a stain normaliser that cannot be exported.
    """
    if not MIN_OPSET <= opset <= onnx.defs.onnx_opset_version():
        raise HistoscanInputError(f"--opset {opset}: choose {MIN_OPSET}..{onnx.defs.onnx_opset_version()}")
    out = guard_output(out, force, "file")
    if out.suffix.lower() != ".onnx":
        raise HistoscanInputError(f"--out {out}: give a file name ending in .onnx")
    if Path(run_or_ckpt).suffix.lower() == ".onnx":
        raise HistoscanInputError(
            f"{run_or_ckpt}: is already an ONNX export; export the run folder or checkpoint"
        )
    predictor = load_torch_predictor(run_or_ckpt, "cpu")
    card = predictor.card
    images, source = _check_images(predictor, check_images)
    with atomic_path(out) as tmp:
        model = _Exported(predictor).eval()
        dummy = torch.as_tensor(images[:2])
        try:
            _torch_onnx_export(model, dummy, tmp, opset)
        except Exception as e:
            if card.stain != "none":
                raise HistoscanInputError(
                    f"{card.weights}: its stain normaliser ({card.stain}) cannot be exported to ONNX "
                    f"({type(e).__name__}: {str(e).splitlines()[0][:160]}); export a run trained without --stain"
                ) from None
            raise
        diff = parity(predictor, OnnxPredictor(tmp), images)
        if not diff <= tolerance:  # also catches NaN
            raise ParityError(
                f"{out}: ONNX Runtime differs from PyTorch by {diff:.3g} in logits on {source} "
                f"(tolerance {tolerance:g}); file not written"
            )
        proto = onnx.load(str(tmp))
        written_opset = next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
        onnx.helper.set_model_props(proto, _metadata(predictor, written_opset, diff, source))
        proto.doc_string = f"histoscan {__version__} {card.model} tumour classifier"
        onnx.checker.check_model(proto)
        onnx.save(proto, str(tmp))
    log.debug("exported %s (max |Δlogit| %.3g on %s)", out, diff, source)
    return out
