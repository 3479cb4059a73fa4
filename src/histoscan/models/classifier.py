"""The classifier wrapper every model runs in: uint8 NHWC RGB in, one logit per image out, preprocessing inside
the module so training, ONNX export, serving and slides all see the same graph."""

from __future__ import annotations

import torch
from torch import nn

from histoscan.config import TrainConfig
from histoscan.models import create_model

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
NORMALISATION = "imagenet mean/std on [0,1] RGB"


class PatchClassifier(nn.Module):
    """uint8 NHWC RGB in, one logit per image out.

    Stages, used separately by training (augmentation goes between `prepare` and `head`):
    `prepare`: NHWC 0..255 -> NCHW float in [0, 1] (channels_last), then stain normalisation if configured;
    `head`: per-channel normalisation -> network -> logits of shape (N,), divided by `temperature` (the run's
    calibration, 1.0 while training; a plain float, so an ONNX export bakes it into the graph as a constant).
    """

    def __init__(self, net: nn.Module, stain: nn.Module | None = None):
        super().__init__()
        self.net = net
        self.stain = stain
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.temperature = 1.0

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        """NHWC 0..255 -> NCHW float in [0, 1] (stain-normalised when a normaliser is set)."""
        x = x.permute(0, 3, 1, 2).float().div(255.0).contiguous(memory_format=torch.channels_last)
        return self.stain(x) if self.stain is not None else x

    def head(self, x: torch.Tensor) -> torch.Tensor:
        """NCHW float in [0, 1] -> logits (N,)."""
        logits = self.net((x - self.mean) / self.std).reshape(-1)
        return logits if self.temperature == 1.0 else logits / self.temperature

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.prepare(x))


def build_classifier(config: TrainConfig, weights: bool = True) -> PatchClassifier:
    """A fresh PatchClassifier for `config` (with `--weights` loaded when `weights` is true)."""
    stain = None
    if config.stain:
        from histoscan.stain import normaliser_from_config  # lazy: only runs that use stain normalisation

        stain = normaliser_from_config(config.stain)
    net = create_model(config.model, dropout=config.dropout, weights=config.weights if weights else None)
    return PatchClassifier(net, stain)
