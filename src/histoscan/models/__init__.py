"""Model registry: every model is built by name and outputs one logit per image.

Built-in: `simple-cnn`, `resnet50-head`, `resnet18`, `resnet34`, `resnet50`. With the optional `vision` extra,
`timm:<name>` and `torchvision:<name>` build any model of those libraries (imported lazily, only then).

Each model declares the keyword options it honours (as timm's models take uniform keyword arguments): its
builder is called with those, and an option it does not honour, set to anything but the TrainConfig default,
is an error naming the model and the option (never silently ignored).
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from histoscan.config import TrainConfig
from histoscan.errors import HistoscanInputError
from histoscan.models.heads import TrunkWithHead, resnet50_head
from histoscan.models.p4m import P4MCNN
from histoscan.models.resnet import ResNet, resnet10_small, resnet18, resnet18_small, resnet34, resnet50
from histoscan.models.simple_cnn import SimpleCNN

OPTIONS = ("dropout",)  # model options: TrainConfig fields a model may honour, passed to its builder by name


@dataclass(frozen=True)
class ModelSpec:
    """How to build one model and its default Grad-CAM layer (by default its last convolutional stage).

    `build` is called with the `options` this model honours, as keyword arguments (each a name of OPTIONS).
    """

    name: str
    build: Callable[..., nn.Module]
    target_layer: str
    weights_prefix: str = ""  # where a torchvision-layout state dict goes inside this model
    options: tuple[str, ...] = ()


REGISTRY: dict[str, ModelSpec] = {}


def register(spec: ModelSpec) -> None:
    """Add a model to the registry."""
    REGISTRY[spec.name] = spec


# simple-cnn: the ReLU before the 4th pool (12 x 12 at 96 px, 7 x 7 at 50 px); the last block's 4 x 4 map at 50 px
# peaked at the borders whatever the content (docs/benchmarks.md, Grad-CAM fidelity)
register(ModelSpec("simple-cnn", SimpleCNN, "features.3.2", options=("dropout",)))
register(ModelSpec("resnet50-head", resnet50_head, "backbone.layer4", "backbone.", options=("dropout",)))
register(ModelSpec("resnet18", resnet18, "layer4"))
register(ModelSpec("resnet34", resnet34, "layer4"))
register(ModelSpec("resnet50", resnet50, "layer4"))
register(ModelSpec("resnet18-small", resnet18_small, "layer4"))
register(ModelSpec("resnet10-small", resnet10_small, "layer4"))
register(ModelSpec("p4m-cnn", P4MCNN, "features.4.2", options=("dropout",)))  # rotation/flip-invariant


def available_models() -> list[str]:
    """Names accepted by :func:`create_model` (external families listed as `timm:*`/`torchvision:*`)."""
    return sorted(REGISTRY) + ["timm:<name>", "torchvision:<name>"]


def _external(name: str) -> nn.Module:
    family, _, arch = name.partition(":")
    try:
        lib = importlib.import_module(family)
    except ImportError:
        raise HistoscanInputError(
            f"--model {name}: needs the optional package '{family}' (pip install 'histoscan[vision]')"
        ) from None
    try:
        if family == "timm":
            return lib.create_model(arch, pretrained=False, num_classes=1)
        return lib.models.get_model(arch, weights=None, num_classes=1)
    except Exception as e:  # the library's own "unknown model" errors vary by version
        raise HistoscanInputError(f"--model {name}: {family} cannot build '{arch}' ({e})") from None


def check_model_name(name: str) -> None:
    """Raise HistoscanInputError naming --model unless `name` is registered (or an external family name)."""
    if name.startswith(("timm:", "torchvision:")):
        family, _, arch = name.partition(":")
        if not arch:
            raise HistoscanInputError(f"--model {name}: give the {family} architecture after the colon")
        return
    if name not in REGISTRY:
        raise HistoscanInputError(
            f"--model {name}: unknown model; choose from {', '.join(available_models())}"
        )


def model_options(name: str) -> tuple[str, ...]:
    """The options (names of OPTIONS) model `name` honours; none for timm:/torchvision: models."""
    check_model_name(name)
    return REGISTRY[name].options if name in REGISTRY else ()


def option_default(option: str) -> Any:
    """The default of a model option: its TrainConfig field's, so "not set" means the same everywhere."""
    return next(f.default for f in dataclasses.fields(TrainConfig) if f.name == option)


def check_model_options(name: str, **options: Any) -> None:
    """Raise HistoscanInputError unless model `name` honours every option set to other than its default.

    None and the default count as not set (a config always carries every option).
    """
    honoured = model_options(name)
    for option, value in options.items():
        if option not in OPTIONS:
            raise HistoscanInputError(f"model option {option}: unknown (model options: {', '.join(OPTIONS)})")
        default = option_default(option)
        if option not in honoured and value is not None and value != default:
            has = f"honours only {', '.join(honoured)}" if honoured else "takes no options"
            raise HistoscanInputError(
                f"--{option} {value}: model {name} has no {option} ({has}); leave --{option} at {default}"
            )


def create_model(name: str, weights: str | Path | None = None, **options: Any) -> nn.Module:
    """Build a model by registry name, optionally loading a local torchvision-layout state dict.

    Args:
        name: registry name, or timm:<name> / torchvision:<name>.
        weights: a local state dict to load.
        **options: model options (OPTIONS, e.g. dropout=0.3); one the model does not honour, set to other
            than its default, is an error (:func:`check_model_options`). None: the model's own default.
    """
    check_model_options(name, **options)
    if name.startswith(("timm:", "torchvision:")):
        model = _external(name)
    else:
        spec = REGISTRY[name]
        model = spec.build(**{k: v for k, v in options.items() if k in spec.options and v is not None})
    if weights:
        load_weights(model, weights, REGISTRY[name].weights_prefix if name in REGISTRY else "")
    return model


def target_layer_name(name: str, model: nn.Module) -> str:
    """The default Grad-CAM layer: the registry's, else the last Conv2d-containing child module."""
    if name in REGISTRY:
        return REGISTRY[name].target_layer
    last = ""
    for mod_name, mod in model.named_modules():
        if isinstance(mod, nn.Conv2d):
            last = mod_name.rsplit(".", 1)[0] if "." in mod_name else mod_name
    if not last:
        raise HistoscanInputError(f"model {name}: no convolutional layer to explain")
    return last


def load_weights(model: nn.Module, path: str | Path, prefix: str = "") -> list[str]:
    """Load a local state dict (torchvision key layout) into `model`; returns the keys left out.

    Classifier keys (`fc.*`) whose shape does not fit the one-logit head are dropped, as when fine-tuning an
    ImageNet checkpoint. Any other missing or unexpected key is an error naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise HistoscanInputError(f"--weights {path}: file not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise HistoscanInputError(f"--weights {path}: not a PyTorch state dict ({e})") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise HistoscanInputError(f"--weights {path}: expected a state dict, got {type(state).__name__}")
    own = model.state_dict()
    mapped = {prefix + k: v for k, v in state.items()}
    # an ImageNet classifier (`fc.*` with 1000 outputs, or none in a trunk-with-head model) is not ours to load
    dropped = [
        prefix + k
        for k in state
        if k.startswith("fc.") and (prefix + k not in own or own[prefix + k].shape != state[k].shape)
    ]
    mapped = {k: v for k, v in mapped.items() if k not in dropped}
    missing, unexpected = (
        model.load_state_dict(mapped, strict=False) if not _shape_errors(own, mapped) else ([], [])
    )
    missing = [
        k
        for k in missing
        if not (k.startswith(("fc.", "head.")) or (dropped and k.startswith(prefix + "fc.")))
    ]
    bad = _shape_errors(own, mapped)
    if missing or unexpected or bad:
        detail = "; ".join(
            f"{label}: {', '.join(keys[:5])}{' …' if len(keys) > 5 else ''}"
            for label, keys in (("missing", missing), ("unexpected", list(unexpected)), ("shape", bad))
            if keys
        )
        raise HistoscanInputError(f"--weights {path}: does not fit this model ({detail})")
    return dropped


def _shape_errors(own: dict[str, torch.Tensor], new: dict[str, torch.Tensor]) -> list[str]:
    return [k for k in new if k in own and own[k].shape != new[k].shape]


__all__ = [
    "ModelSpec",
    "REGISTRY",
    "ResNet",
    "SimpleCNN",
    "TrunkWithHead",
    "OPTIONS",
    "available_models",
    "check_model_options",
    "create_model",
    "load_weights",
    "model_options",
    "option_default",
    "register",
    "target_layer_name",
]
