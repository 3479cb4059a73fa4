"""ONNX export (preprocessing in the graph, parity-checked against PyTorch) and an ONNX Runtime backend."""

from __future__ import annotations

import contextlib
import csv
import json
import logging
import os
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
from histoscan.config import TrainConfig
from histoscan.errors import HistoscanInputError
from histoscan.inference.predictor import LoadedModel, load_model
from histoscan.utils.paths import shared_data

log = logging.getLogger(__name__)

PARITY_TOLERANCE = 1e-4  # max |logit_torch - logit_ort| accepted, fp32
PARITY_IMAGES = 64
INPUT_NAME, OUTPUT_NAMES = "images", ("logits", "probabilities")
MIN_OPSET = 11
TORCHSCRIPT_MAX_OPSET = (
    20  # the legacy exporter's ceiling in torch 2.13 (ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET)
)


class ParityError(RuntimeError):
    """The exported graph does not reproduce the PyTorch logits (exporter/runtime bug, not user error)."""


class _Exported(nn.Module):
    """uint8 N x S x S x 3 RGB -> (logits (N,), tumour probabilities (N,)); preprocessing included."""

    def __init__(self, loaded: LoadedModel):
        super().__init__()
        self.classifier = loaded.classifier

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


def _training_data_summary(loaded: LoadedModel) -> str:
    """JSON: the configured data path plus RUN/data.json (store, checksum, counts) when the run has one."""
    summary: dict[str, Any] = {"data": loaded.config.data}
    if loaded.run_dir is not None and (loaded.run_dir / "data.json").is_file():
        try:
            summary.update(json.loads((loaded.run_dir / "data.json").read_text()))
        except json.JSONDecodeError:
            log.warning("%s: not valid JSON; left out of the ONNX metadata", loaded.run_dir / "data.json")
    return json.dumps(summary, sort_keys=True, default=str)


def _metadata(loaded: LoadedModel, opset: int, parity: float, parity_source: str) -> dict[str, str]:
    c = loaded.config
    return {
        "histoscan_version": __version__,
        "model": c.model,
        "image_size": str(loaded.image_size),
        "mpp": "" if loaded.mpp is None else str(loaded.mpp),
        "threshold": repr(float(loaded.threshold)),
        "fit": c.fit,
        "stain": _stain_method(loaded),
        "input": f"{INPUT_NAME}: uint8 N x {loaded.image_size} x {loaded.image_size} x 3 RGB 0..255",
        "outputs": "logits: (N,) tumour logit; probabilities: (N,) sigmoid(logit)",
        "training_data": _training_data_summary(loaded),
        "config": json.dumps(c.to_dict(), default=str),
        "checkpoint": str(loaded.checkpoint),
        "opset": str(opset),
        "parity_max_abs_logit_diff": f"{parity:.3g}",
        "parity_images": parity_source,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def _shared_patches(size: int, fit: str, n: int) -> np.ndarray | None:
    """Up to `n` real idc-breast patches (both classes, fitted to `size`), or None without shared data."""
    from histoscan.data.images import decode_image, fit_image  # lazy: export needs no image codecs otherwise

    labels = shared_data() / "idc-breast" / "labels.csv"
    if not labels.is_file():
        return None
    with open(labels, newline="") as f:
        rows = list(csv.DictReader(f))
    picked = [r for r in rows if r["label"] == "1"][: n // 2] + [r for r in rows if r["label"] == "0"][
        : n - n // 2
    ]
    imgs = [fit_image(decode_image(labels.parent / r["path"], r["path"])[0], size, fit) for r in picked]
    return np.stack(imgs) if imgs else None


def _check_images(loaded: LoadedModel, images: np.ndarray | None) -> tuple[np.ndarray, str]:
    s = loaded.image_size
    if images is not None:
        images = np.asarray(images)
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != (s, s, 3):
            raise HistoscanInputError(
                f"check_images: expected uint8 N x {s} x {s} x 3, got {images.dtype} {images.shape}"
            )
        return images, f"{len(images)} given images"
    real = _shared_patches(s, loaded.config.fit, PARITY_IMAGES)
    if real is not None:
        return real, f"{len(real)} idc-breast patches"
    return np.random.default_rng(0).integers(0, 256, (16, s, s, 3), dtype=np.uint8), "16 random uint8 images"


def parity(loaded: LoadedModel, backend: OnnxBackend, images: np.ndarray) -> float:
    """Max |Δlogit| between PyTorch (fp32, CPU) and ONNX Runtime, for the whole batch and for one image."""
    ref = loaded.predict_logits(images, batch_size=len(images)).astype(np.float64)
    whole = backend(images, batch_size=len(images))
    single = backend(images[:1], batch_size=1)  # the batch axis really is dynamic
    return float(max(np.abs(whole - ref).max(), np.abs(single - ref[:1]).max()))


def export_onnx(
    run_or_ckpt: str | Path,
    out: str | Path,
    opset: int = 17,
    check_images: np.ndarray | None = None,
    tolerance: float = PARITY_TOLERANCE,
) -> Path:
    """Export a run or checkpoint to ONNX, parity-checked against PyTorch; the file exists only if it passed.

    The graph takes uint8 N x S x S x 3 RGB ("images", dynamic N) and returns "logits" and "probabilities".
    Metadata (`metadata_props`) carries image_size, mpp, threshold, model, fit, histoscan version, the
    training-data summary, the full config, the parity figure and the creation time (:func:`read_metadata`).

    Args:
        run_or_ckpt: run folder or checkpoint.
        out: destination .onnx file (overwritten).
        opset: ONNX opset (11 up to what the installed onnx knows; above 20 the torch.export-based exporter).
        check_images: uint8 images for the parity check (default: real idc-breast patches fitted to the
            model's size when the shared data is there, else random images).
        tolerance: largest accepted |Δlogit|.

    Returns:
        The written path.

    Raises:
        ParityError: ONNX Runtime and PyTorch disagree by more than `tolerance` (no file is left behind).
        HistoscanInputError: bad run, or a stain normaliser that cannot be exported.
    """
    out = Path(out)
    if not MIN_OPSET <= opset <= onnx.defs.onnx_opset_version():
        raise HistoscanInputError(f"--opset {opset}: choose {MIN_OPSET}..{onnx.defs.onnx_opset_version()}")
    loaded = load_model(run_or_ckpt, "cpu")
    images, source = _check_images(loaded, check_images)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.partial")
    try:
        model = _Exported(loaded).eval()
        dummy = torch.as_tensor(images[:2])
        try:
            _torch_onnx_export(model, dummy, tmp, opset)
        except Exception as e:
            if loaded.config.stain:
                raise HistoscanInputError(
                    f"{loaded.checkpoint}: its stain normaliser ({_stain_method(loaded)}) cannot be "
                    f"exported to ONNX ({type(e).__name__}: {str(e).splitlines()[0][:160]}); "
                    "export a run trained without --stain"
                ) from None
            raise
        diff = parity(loaded, OnnxBackend(tmp, threads=None), images)
        if not diff <= tolerance:  # also catches NaN
            raise ParityError(
                f"{out}: ONNX Runtime differs from PyTorch by {diff:.3g} in logits on {source} "
                f"(tolerance {tolerance:g}); file not written"
            )
        proto = onnx.load(str(tmp))
        written_opset = next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
        onnx.helper.set_model_props(proto, _metadata(loaded, written_opset, diff, source))
        proto.doc_string = f"histoscan {__version__} {loaded.config.model} tumour classifier"
        onnx.checker.check_model(proto)
        onnx.save(proto, str(tmp))
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    log.debug("exported %s (max |Δlogit| %.3g on %s)", out, diff, source)
    return out


def _stain_method(loaded: LoadedModel) -> str:
    return str((loaded.config.stain or {}).get("method", "none"))


def read_metadata(path: str | Path) -> dict[str, str]:
    """The histoscan metadata_props of an exported model (strings, as stored)."""
    path = Path(path)
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as e:
        raise HistoscanInputError(f"{path}: not an ONNX model ({str(e).splitlines()[0][:120]})") from None
    return {p.key: p.value for p in proto.metadata_props}


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


class OnnxBackend:
    """ONNX Runtime session for an exported histoscan model: uint8 N x S x S x 3 -> logits (N,).

    `meta` holds image_size (int), mpp (float | None), threshold (float), model, version, fit and the raw
    metadata strings under "raw". CUDA is used when onnxruntime-gpu provides it, else the CPU.
    """

    def __init__(self, path: str | Path, threads: int | None = None, providers: list[str] | None = None):
        import onnxruntime as ort

        self.path = Path(path)
        if not self.path.is_file():
            raise HistoscanInputError(f"{self.path}: ONNX model not found")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads or _cores()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        available = ort.get_available_providers()
        providers = providers or [
            p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available
        ]
        try:
            self.session = ort.InferenceSession(str(self.path), opts, providers=providers)
        except Exception as e:  # onnxruntime raises its own exception types for invalid files
            raise HistoscanInputError(
                f"{self.path}: ONNX Runtime cannot load it ({str(e).splitlines()[0][:160]})"
            ) from None
        inp = self.session.get_inputs()[0]
        raw = {k: v for k, v in self.session.get_modelmeta().custom_metadata_map.items()}
        size = raw.get("image_size") or inp.shape[1]
        if inp.type != "tensor(uint8)" or not str(size).isdigit():
            raise HistoscanInputError(
                f"{self.path}: not a histoscan export (input {inp.name} {inp.type} {inp.shape})"
            )
        self.input_name = inp.name
        self.meta: dict[str, Any] = {
            "image_size": int(size),
            "mpp": float(raw["mpp"]) if raw.get("mpp") else None,
            "threshold": float(raw.get("threshold", 0.5)),
            "model": raw.get("model", "unknown"),
            "version": raw.get("histoscan_version", "unknown"),
            "fit": raw.get("fit", "pad"),
            "raw": raw,
        }

    def __call__(self, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """Logits (float32, N) for uint8 N x S x S x 3 RGB images."""
        images = np.asarray(images)
        s = self.meta["image_size"]
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != (s, s, 3):
            raise HistoscanInputError(
                f"images: {self.path.name} expects uint8 N x {s} x {s} x 3, got {images.dtype} {images.shape}"
            )
        out = [
            self.session.run(
                [OUTPUT_NAMES[0]], {self.input_name: np.ascontiguousarray(images[i : i + batch_size])}
            )[0]
            for i in range(0, len(images), batch_size)
        ]
        return np.concatenate(out).astype(np.float32) if out else np.zeros(0, np.float32)


class OnnxModel:
    """A LoadedModel-like view of an exported model for the predict, slide and serve stages (no torch needed).

    Exposes predict_logits / predict_proba, image_size, mpp, threshold, model_name, config (the TrainConfig
    rebuilt from the export's metadata, so `config.fit` is the training fit mode), run_dir (None), checkpoint.
    """

    def __init__(self, path: str | Path, threads: int | None = None):
        self.backend = OnnxBackend(path, threads)
        meta = self.backend.meta
        self.image_size: int = meta["image_size"]
        self.mpp: float | None = meta["mpp"]
        self.threshold: float = meta["threshold"]
        self.model_name: str = meta["model"]
        self.run_dir: Path | None = None
        self.checkpoint = self.backend.path
        cfg = json.loads(meta["raw"]["config"]) if "config" in meta["raw"] else {}
        try:
            self.config = TrainConfig.from_dict(cfg)
        except (HistoscanInputError, TypeError):  # exported by another histoscan version: keep what we know
            self.config = TrainConfig(
                model=self.model_name, image_size=self.image_size, fit=meta["fit"], mpp=self.mpp
            )

    def predict_logits(self, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """Logits for uint8 N x S x S x 3 images."""
        return self.backend(images, batch_size)

    def predict_proba(self, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """Tumour probabilities (sigmoid of the logits)."""
        return 1.0 / (1.0 + np.exp(-self.predict_logits(images, batch_size)))


def onnx_backend(path: str | Path, threads: int | None = None) -> OnnxBackend:
    """An ONNX Runtime backend for `path` (intra-op threads = cores unless given, all graph optimisations)."""
    return OnnxBackend(path, threads)


def load_onnx_model(path: str | Path, threads: int | None = None) -> OnnxModel:
    """Load an exported model as a LoadedModel-like object (see :class:`OnnxModel`)."""
    return OnnxModel(path, threads)
