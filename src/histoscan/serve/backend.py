"""The served model: a run folder, checkpoint or .onnx file behind one small interface, plus Grad-CAM."""

from __future__ import annotations

import io
import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from histoscan.inference.card import ModelCard
from histoscan.inference.predictor import Predictor, load_predictor
from histoscan.utils.digest import file_digest

log = logging.getLogger(__name__)


@dataclass
class ServedModel:
    """What the server needs from a model: logits for fitted uint8 images, its card, and Grad-CAM."""

    predictor: Predictor
    path: Path
    version: str
    _explain_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def card(self) -> ModelCard:
        return self.predictor.card

    @property
    def name(self) -> str:
        return self.card.model

    @property
    def image_size(self) -> int:
        return self.card.image_size

    @property
    def threshold(self) -> float:
        return self.card.threshold

    @property
    def mpp(self) -> float | None:
        return self.card.mpp

    @property
    def fit(self) -> str:
        return self.card.fit

    @property
    def backend(self) -> str:
        return "onnxruntime" if self.card.backend == "onnx" else self.card.backend

    @property
    def device(self) -> str:
        return self.predictor.device

    @property
    def can_explain(self) -> bool:
        return self.predictor.can_explain

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
            "threshold_source": self.card.threshold_source,
            "fit": self.fit,
            "normalisation": self.card.normalisation,
            "stain": self.card.stain,
            "explain": self.can_explain,
            "source": self.path.name,
        }

    def warmup(self) -> None:
        """One forward pass (CUDA/cuDNN set-up) and, for torch models, the Grad-CAM module's import, so the first
        requests do not pay for them. Errors are logged, never raised."""
        try:
            self.predict_logits(np.zeros((1, self.image_size, self.image_size, 3), np.uint8))
            if self.can_explain:
                import histoscan.gradcam.cam  # noqa: F401
        except Exception:
            log.exception("warm-up failed")

    def predict_logits(self, images: np.ndarray) -> np.ndarray:
        """Logits (N,) float32 for uint8 N x S x S x 3 images (called on the batcher's thread)."""
        return np.asarray(self.predictor.predict_logits(images), dtype=np.float32).reshape(-1)

    def require_explain(self) -> None:
        """Raise ExplainUnavailable unless this model can be explained (PyTorch backend)."""
        self.predictor.require_explainable(self.path.name)

    def explain(self, image: np.ndarray, probability: float, title: str) -> tuple[bytes, bytes]:
        """Grad-CAM of one fitted uint8 S x S x 3 patch: (figure PNG as `histoscan explain` writes, overlay).

        Calls are serialised: each one copies the network (Grad-CAM hooks must not touch the batcher's model).
        """
        self.require_explain()
        from histoscan.gradcam.cam import (  # lazy: only servers that explain load it
            NO_EVIDENCE_NOTE,
            cam_maps,
        )
        from histoscan.gradcam.render import overlay_panel, render_overlay
        from histoscan.models import target_layer_name

        clf = self.predictor.classifier
        with self._explain_lock:
            res = cam_maps(clf, image[None], target_layer_name(self.name, clf.net), self.threshold)
        maps = res.maps
        notes = [NO_EVIDENCE_NOTE] if bool(res.flat[0]) else []
        figure = render_overlay(image, maps[0], probability, self.threshold, title, notes)
        return _png(figure), _png(overlay_panel(image, maps[0]))


def _png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def load_served_model(path: str | Path, device: str = "auto") -> ServedModel:
    """Load MODEL (run folder, .ckpt or .onnx) for serving; the version is the weights file's short SHA-256.

    Raises:
        HistoscanInputError: MODEL is missing or not a histoscan model.
    """
    p = Path(path)
    predictor = load_predictor(p, "auto", device)
    card = predictor.card
    weights = Path(card.weights)
    stem = Path(card.run_dir).name if card.run_dir is not None else weights.stem
    version = f"{stem}@{file_digest(weights)}"
    log.info("serving %s (%s, %s) version %s", p, card.model, card.backend, version)
    return ServedModel(predictor, p, version)
