"""The Predictor interface every backend implements: uint8 N x S x S x 3 RGB -> float32 logits, with a card."""

from __future__ import annotations

import numpy as np
import torch

from histoscan.errors import HistoscanInputError
from histoscan.inference.card import ModelCard
from histoscan.run import RunDir
from histoscan.utils.numeric import sigmoid


class ExplainUnavailable(HistoscanInputError):
    """Grad-CAM needs one PyTorch model: an ONNX export (or an ensemble of runs) cannot be explained."""


class Predictor:
    """uint8 N x S x S x 3 RGB (numpy, or a torch tensor for the torch backend) -> float32 logits (N,).

    Subclasses implement :meth:`__call__` for one batch; :meth:`predict_logits` batches any number of images.
    """

    card: ModelCard
    device: str = "cpu"
    can_explain: bool = False
    kind: str = "this kind of model"  # what it is, in the message of require_explainable

    def __call__(self, images: np.ndarray | torch.Tensor) -> np.ndarray:
        raise NotImplementedError

    def predict_logits(self, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """Logits for uint8 N x S x S x 3 images, `batch_size` at a time."""
        out = [np.asarray(self(images[i : i + batch_size])) for i in range(0, len(images), batch_size)]
        return np.concatenate(out).astype(np.float32) if out else np.zeros(0, np.float32)

    def predict_proba(self, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """Tumour probabilities (sigmoid of the logits)."""
        return sigmoid(self.predict_logits(images, batch_size))

    def require_explainable(self, name: str | None = None) -> None:
        """Raise :class:`ExplainUnavailable` unless Grad-CAM can run on this model (one PyTorch model).

        The one place that says so, for `histoscan explain`, `slide --explain` and the server's /v1/explain.

        Args:
            name: how the model is named in the message (default: the path it was loaded from).
        """
        if self.can_explain:
            return
        raise ExplainUnavailable(
            f"{name or self.card.source}: Grad-CAM needs the PyTorch model (run folder or .ckpt), not {self.kind}"
        )

    def stain_note(self, what: str = "patches") -> str | None:
        """One line on the patches the stain normaliser passed through since the last call (None: none)."""
        return None

    def training_data(self) -> dict | None:
        """The training-data record of the model's run (RUN/data.json: sources, counts, colour statistics);
        None without a run folder or record."""
        if not self.card.run_dir:
            return None
        try:
            return RunDir(self.card.run_dir).read_data()
        except HistoscanInputError:
            return None

    def training_runs(self) -> list[RunDir]:
        """The run folders whose training data this model saw (evaluate scores only their held-out rows)."""
        return [RunDir(self.card.run_dir)] if self.card.run_dir else []

    def check_images(self, images: np.ndarray | torch.Tensor) -> None:
        """Raise naming the expected shape unless `images` is uint8 N x S x S x 3 at the card's size."""
        s = self.card.image_size
        dtype_ok = images.dtype in (np.uint8, torch.uint8)
        if not dtype_ok or images.ndim != 4 or tuple(images.shape[1:]) != (s, s, 3):
            raise HistoscanInputError(
                f"images: {self.card.model} expects uint8 N x {s} x {s} x 3, got {images.dtype} {tuple(images.shape)}"
            )
