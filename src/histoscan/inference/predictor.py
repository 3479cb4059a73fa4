"""The seam every downstream stage uses: a run folder or checkpoint -> a ready model with its preprocessing.

`PatchClassifier` takes uint8 (or 0..255 float) RGB batches N x H x W x 3, as stored, and returns one logit per
image; the preprocessing is inside the module so ONNX export, serving and slides all see the same graph.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from histoscan.config import TrainConfig
from histoscan.errors import HistoscanInputError
from histoscan.models import create_model

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class PatchClassifier(nn.Module):
    """uint8 NHWC RGB in, one logit per image out.

    Stages, used separately by training (augmentation goes between `prepare` and `head`):
    `prepare`: NHWC 0..255 -> NCHW float in [0, 1] (channels_last), then stain normalisation if configured;
    `head`: per-channel normalisation -> network -> logits of shape (N,).
    """

    def __init__(self, net: nn.Module, stain: nn.Module | None = None):
        super().__init__()
        self.net = net
        self.stain = stain
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        """NHWC 0..255 -> NCHW float in [0, 1] (stain-normalised when a normaliser is set)."""
        x = x.permute(0, 3, 1, 2).float().div(255.0).contiguous(memory_format=torch.channels_last)
        return self.stain(x) if self.stain is not None else x

    def head(self, x: torch.Tensor) -> torch.Tensor:
        """NCHW float in [0, 1] -> logits (N,)."""
        return self.net((x - self.mean) / self.std).reshape(-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.prepare(x))


def build_classifier(config: TrainConfig, weights: bool = True) -> PatchClassifier:
    """A fresh PatchClassifier for `config` (with `--weights` loaded when `weights` is true)."""
    stain = None
    if config.stain:
        from histoscan.stain.normalise import normaliser_from_config  # lazy: only runs that use stain normalisation

        stain = normaliser_from_config(config.stain)
    net = create_model(config.model, dropout=config.dropout, weights=config.weights if weights else None)
    return PatchClassifier(net, stain)


@dataclass
class LoadedModel:
    """A trained model ready for inference, with what it was trained on."""

    classifier: PatchClassifier
    config: TrainConfig
    threshold: float
    image_size: int
    mpp: float | None
    run_dir: Path | None
    checkpoint: Path

    @property
    def model_name(self) -> str:
        return self.config.model

    @torch.inference_mode()
    def predict_logits(self, images: np.ndarray | torch.Tensor, batch_size: int = 256) -> np.ndarray:
        """Logits for uint8 N x S x S x 3 images (S = image_size), batched."""
        self.classifier.eval()
        device = next(self.classifier.parameters()).device
        out = []
        for i in range(0, len(images), batch_size):
            chunk = torch.as_tensor(np.asarray(images[i : i + batch_size])).to(device)
            out.append(self.classifier(chunk).float().cpu())
        return torch.cat(out).numpy() if out else np.zeros(0, np.float32)

    def predict_proba(self, images: np.ndarray | torch.Tensor, batch_size: int = 256) -> np.ndarray:
        """Tumour probabilities (sigmoid of the logits)."""
        return 1.0 / (1.0 + np.exp(-self.predict_logits(images, batch_size)))


def find_checkpoint(path: str | Path) -> tuple[Path, Path | None]:
    """Resolve RUN_OR_CKPT to (checkpoint file, run folder or None)."""
    p = Path(path)
    if p.is_dir():
        for name in ("best.ckpt", "last.ckpt"):
            if (p / "checkpoints" / name).is_file():
                return p / "checkpoints" / name, p
        raise HistoscanInputError(f"{p}: not a run folder (no checkpoints/best.ckpt or last.ckpt)")
    if p.is_file():
        run = p.parent.parent if p.parent.name == "checkpoints" else None
        return p, run if run is not None and (run / "config.yaml").is_file() else None
    raise HistoscanInputError(f"{p}: no such run folder or checkpoint")


def threshold_record(run_dir: Path | None) -> dict | None:
    """RUN/threshold.json with a float `threshold`, or None when the run has none; a bad file is an input error."""
    path = run_dir / "threshold.json" if run_dir is not None else None
    if path is None or not path.is_file():
        return None
    try:
        info = json.loads(path.read_text())
        info["threshold"] = float(info["threshold"])
    except (ValueError, KeyError, TypeError) as e:
        raise HistoscanInputError(f"{path}: not a threshold file ({e})") from None
    return info


def read_threshold(run_dir: Path | None) -> float:
    """The decision threshold stored in the run (RUN/threshold.json), else 0.5."""
    info = threshold_record(run_dir)
    return 0.5 if info is None else info["threshold"]


def load_model(path: str | Path, device: str | torch.device = "cpu") -> LoadedModel:
    """Load RUN_OR_CKPT into an eval-mode PatchClassifier plus its config, threshold, size and µm/px."""
    ckpt_path, run_dir = find_checkpoint(path)
    try:
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False)
    except Exception as e:
        raise HistoscanInputError(f"{ckpt_path}: not a histoscan checkpoint ({e})") from None
    hp = ckpt.get("hyper_parameters", {}) if isinstance(ckpt, dict) else {}
    if "config" not in hp or "state_dict" not in ckpt:
        raise HistoscanInputError(f"{ckpt_path}: not a histoscan checkpoint (no config/state_dict)")
    config = TrainConfig.from_dict(hp["config"])
    clf = build_classifier(config, weights=False)
    state = {
        k.removeprefix("classifier."): v for k, v in ckpt["state_dict"].items() if k.startswith("classifier.")
    }
    try:
        clf.load_state_dict(state)
    except RuntimeError as e:
        detail = " ".join(str(e).split())[:300]
        raise HistoscanInputError(
            f"{ckpt_path}: weights do not match model '{config.model}' ({detail})"
        ) from None
    clf.to(device).eval()
    size = int(hp.get("image_size") or config.image_size or 96)
    mpp = hp.get("mpp", config.mpp)
    return LoadedModel(clf, config, read_threshold(run_dir), size, mpp, run_dir, ckpt_path)
