"""The served model: a run folder, checkpoint or .onnx file behind one small interface, plus Grad-CAM."""

from __future__ import annotations

import hashlib
import io
import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from histoscan.errors import HistoscanInputError

log = logging.getLogger(__name__)


class ExplainUnavailable(HistoscanInputError):
    """Grad-CAM needs the PyTorch model (a run folder or .ckpt); an .onnx model cannot be explained."""


def file_digest(path: Path, n: int = 12) -> str:
    """First `n` hex digits of the file's SHA-256 (the served model's version)."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:n]


def resolve_device(device: str = "auto") -> str:
    """'auto' -> 'cuda' when a GPU is visible, else 'cpu'; anything else is passed through."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


@dataclass
class ServedModel:
    """What the server needs from a model: logits for fitted uint8 images, its metadata, and Grad-CAM."""

    model: Any  # LoadedModel (torch) or the ONNX model of histoscan.export.onnx (same surface)
    path: Path
    backend: str  # "torch" | "onnxruntime"
    version: str
    device: str
    _explain_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def name(self) -> str:
        return str(self.model.model_name)

    @property
    def image_size(self) -> int:
        return int(self.model.image_size)

    @property
    def threshold(self) -> float:
        return float(self.model.threshold)

    @property
    def mpp(self) -> float | None:
        return None if self.model.mpp is None else float(self.model.mpp)

    @property
    def fit(self) -> str:
        return str(self.model.config.fit)

    @property
    def can_explain(self) -> bool:
        return self.backend == "torch"

    def info(self) -> dict[str, Any]:
        """The /v1/model document."""
        return {
            "name": self.name,
            "version": self.version,
            "backend": self.backend,
            "device": self.device,
            "image_size": self.image_size,
            "mpp": self.mpp,
            "threshold": self.threshold,
            "fit": self.fit,
            "explain": self.can_explain,
            "source": self.path.name,
        }

    def warmup(self) -> None:
        """One forward pass (CUDA/cuDNN set-up) and, for torch models, the Grad-CAM imports (MONAI is slow to
        import), so the first requests do not pay for them. Errors are logged, never raised."""
        try:
            self.predict_logits(np.zeros((1, self.image_size, self.image_size, 3), np.uint8))
            if self.can_explain:
                import histoscan.explain.gradcam  # noqa: F401
        except Exception:
            log.exception("warm-up failed")

    def predict_logits(self, images: np.ndarray) -> np.ndarray:
        """Logits (N,) float32 for uint8 N x S x S x 3 images (called on the batcher's thread)."""
        return np.asarray(self.model.predict_logits(images), dtype=np.float32).reshape(-1)

    def require_explain(self) -> None:
        """Raise ExplainUnavailable unless this model can be explained (PyTorch backend)."""
        if not self.can_explain:
            raise ExplainUnavailable(
                f"{self.path.name}: Grad-CAM needs the PyTorch model (run folder or .ckpt); "
                "this server runs an .onnx export"
            )

    def explain(self, image: np.ndarray, probability: float, title: str) -> tuple[bytes, bytes]:
        """Grad-CAM of one fitted uint8 S x S x 3 patch: (figure PNG as `histoscan explain` writes, overlay).

        The overlay is the patch blended with the heat map, upscaled like the figure's panels (web page).
        Calls are serialised: each one copies the network (Grad-CAM hooks must not touch the batcher's model).
        """
        self.require_explain()
        from histoscan.explain import gradcam as explain  # lazy: only servers that explain import the Grad-CAM code (MONAI)
        from histoscan.models import target_layer_name

        clf = self.model.classifier
        with self._explain_lock:
            maps, _ = explain.gradcam(clf, image[None], target_layer_name(self.name, clf.net), self.threshold)
        figure = explain.render_overlay(image, maps[0], probability, self.threshold, title)
        return _png(figure), _png(overlay_panel(image, maps[0]))


def overlay_panel(
    image: np.ndarray, cam: np.ndarray, alpha: float = 0.45, min_side: int = 256
) -> Image.Image:
    """The patch (nearest-upscaled to at least `min_side`) blended with its Grad-CAM map (jet colour map).

    The same colours and blend as the overlay panel of :func:`histoscan.explain.gradcam.render_overlay`.
    """
    from matplotlib import colormaps  # the colour map only; no pyplot state

    h, w = image.shape[:2]
    scale = max(1, -(-min_side // max(h, w)))
    size = (w * scale, h * scale)
    patch = Image.fromarray(image).resize(size, Image.Resampling.NEAREST)
    cam_big = np.asarray(
        Image.fromarray(cam.astype(np.float32), mode="F").resize(size, Image.Resampling.BILINEAR)
    )
    heat = (colormaps["jet"](np.clip(cam_big, 0.0, 1.0))[..., :3] * 255).astype(np.uint8)
    return Image.blend(patch, Image.fromarray(heat), alpha)


def _png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def load_served_model(path: str | Path, device: str = "auto") -> ServedModel:
    """Load MODEL (run folder, .ckpt or .onnx) for serving; the version is the model file's short SHA-256.

    Raises:
        HistoscanInputError: MODEL is missing or not a histoscan model.
    """
    p = Path(path)
    if not p.exists():
        raise HistoscanInputError(f"{p}: no such run folder, checkpoint or .onnx file")
    device = resolve_device(device)
    if p.suffix.lower() == ".onnx":
        try:
            from histoscan.export.onnx import load_onnx_model
        except ImportError as e:
            raise HistoscanInputError(f"{p}: serving .onnx needs histoscan.export.onnx ({e})") from None
        model = load_onnx_model(p)
        version_file, backend = p, "onnxruntime"
        device = _onnx_device(model, device)
    else:
        from histoscan.inference.predictor import load_model

        model = load_model(p, device)
        version_file, backend = model.checkpoint, "torch"
    stem = model.run_dir.name if getattr(model, "run_dir", None) is not None else version_file.stem
    version = f"{stem}@{file_digest(version_file)}"
    log.info("serving %s (%s, %s) version %s", p, model.model_name, backend, version)
    return ServedModel(model, p, backend, version, device)


def _onnx_device(model: Any, device: str) -> str:
    session = getattr(getattr(model, "backend", None), "session", None)
    providers = session.get_providers() if session is not None else []
    return (
        "cuda"
        if any("CUDA" in pr or "Tensorrt" in pr for pr in providers)
        else "cpu"
        if providers
        else device
    )
