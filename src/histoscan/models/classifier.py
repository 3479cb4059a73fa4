"""The classifier wrapper every model runs in: uint8 NHWC RGB in, one logit per image out, preprocessing inside
the module so training, ONNX export, serving and slides all see the same graph."""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import nn

from histoscan.config import TrainConfig
from histoscan.models import OPTIONS, create_model, model_options, option_default

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


def model_kwargs(config: TrainConfig) -> dict[str, Any]:
    """The model options of `config` (its fields named in :data:`histoscan.models.OPTIONS`), by name."""
    return {option: getattr(config, option) for option in OPTIONS}


def saved_model_config(config: TrainConfig) -> TrainConfig:
    """A saved run's config with the model options its model does not honour back at their defaults.

    Runs saved before models rejected such options (tune searched dropout for every model) were built
    without them, so they load exactly as they trained.
    """
    honoured = model_options(config.model)
    reset = {o: option_default(o) for o in OPTIONS if o not in honoured}
    return dataclasses.replace(config, **reset) if reset else config


def build_classifier(config: TrainConfig, weights: bool = True) -> PatchClassifier:
    """A fresh PatchClassifier for `config` (with `--weights` loaded when `weights` is true).

    Raises:
        HistoscanInputError: `config` sets a model option its model does not honour (e.g. --dropout for
            resnet18; :func:`histoscan.models.check_model_options`).
    """
    stain = None
    if config.stain:
        from histoscan.stain import normaliser_from_config  # lazy: only runs that use stain normalisation

        stain = normaliser_from_config(config.stain)
    net = create_model(config.model, weights=config.weights if weights else None, **model_kwargs(config))
    return PatchClassifier(net, stain)
