"""Class-activation maps of one-logit patch classifiers: Grad-CAM, Grad-CAM++, Integrated Grad-CAM, flatness."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from histoscan.errors import HistoscanInputError
from histoscan.models.classifier import PatchClassifier
from histoscan.scoring import DEFAULT_THRESHOLD
from histoscan.utils.numeric import sigmoid


def feature_shapes(net: nn.Module, image_size: int) -> dict[str, tuple[int, ...]]:
    """Output shape (without the batch) of every submodule of `net` (names relative to it) at `image_size`."""
    shapes: dict[str, tuple[int, ...]] = {}
    hooks = [
        m.register_forward_hook(
            lambda _m, _i, o, n=n: shapes.__setitem__(n, tuple(o.shape[1:]) if torch.is_tensor(o) else ())
        )
        for n, m in net.named_modules()
        if n
    ]
    device = next(net.parameters()).device
    was_training = net.training
    try:
        net.eval()
        with torch.no_grad():
            net(torch.zeros(1, 3, image_size, image_size, device=device))
    finally:
        net.train(was_training)
        for h in hooks:
            h.remove()
    return shapes


def spatial_layers(net: nn.Module, image_size: int) -> list[str]:
    """Names (relative to `net`) of the submodules whose output is a 4-D feature map at `image_size`."""
    return [n for n, s in feature_shapes(net, image_size).items() if len(s) == 3]


def tiles_exactly(size: int, side: int) -> bool:
    """A side-cell map tiles a size-px input exactly: power-of-two stride, no partial pooling windows."""
    stride = size // side if side else 0
    return stride > 0 and size == stride * side and stride & (stride - 1) == 0


def resolve_method(method: str, net: nn.Module, target_layer: str, image_size: int) -> str:
    """`method`, or for "auto": "gradcam" where every target layer's map tiles the input exactly
    (:func:`tiles_exactly`; simple-cnn at 96 px), else "integrated-gradcam" (simple-cnn at 50 px: the ceil-mode
    pooling's partial windows and the padding give the far cells a position-only signal that plain Grad-CAM
    shows as hot borders; docs/benchmarks.md, Grad-CAM fidelity)."""
    if method != "auto":
        return method
    shapes = feature_shapes(net, image_size)
    for layer in target_layer.split("+"):
        shape = shapes.get(layer, ())
        if len(shape) == 3 and not (
            tiles_exactly(image_size, shape[1]) and tiles_exactly(image_size, shape[2])
        ):
            return "integrated-gradcam"
    return "gradcam"


def check_target_layer(net: nn.Module, layer: str, image_size: int, model_name: str = "") -> None:
    """Raise HistoscanInputError naming `layer` and listing valid ones unless it yields a 4-D feature map."""
    valid = spatial_layers(net, image_size)
    if layer in valid:
        return
    shown = [n for n in valid if n.count(".") <= 1]  # stages and blocks; deeper names are valid too
    what = (
        "is not a layer"
        if layer not in dict(net.named_modules())
        else "has no spatial (N x C x H x W) output"
    )
    raise HistoscanInputError(
        f"--target-layer {layer}: {what} of model '{model_name or type(net).__name__}'; "
        f"choose e.g. {', '.join(shown)}"
        + (f" (or any of {len(valid) - len(shown)} deeper layers)" if len(valid) > len(shown) else "")
    )


METHODS = ("auto", "gradcam", "gradcam++", "integrated-gradcam")
FLAT_SPREAD = 0.3  # below this evidence spread (see CamMaps) a map is flat: "no localised evidence"
NO_EVIDENCE_NOTE = "no localised evidence: the Grad-CAM map is flat, so no part of the patch stands out"


@dataclass(frozen=True)
class CamMaps:
    """Class-activation maps of N images for their predicted class.

    `spread` measures how localised the evidence is: the range (max - min) over the feature map's positions
    of the rectified class-evidence map, each position's share of the explained score in logit units (for
    Grad-CAM H*W * sum_k w_k A_k: its mean over positions is the first-order part of the score), divided by
    max(|logit|, 1). A map whose positions all add about the same evidence has a spread near 0; normalising
    it to [0, 1] would paint noise as a hot spot. Maps with spread < FLAT_SPREAD are `flat`.
    """

    maps: np.ndarray  # float32 N x H x W in [0, 1] (max -> 1); flat maps all zero when zero_flat
    probabilities: np.ndarray  # float32 N, tumour probability
    logits: np.ndarray  # float32 N
    spread: np.ndarray  # float32 N

    @property
    def flat(self) -> np.ndarray:
        """Per image: True when the map shows no localised evidence (spread < FLAT_SPREAD)."""
        return self.spread < FLAT_SPREAD


# Written here rather than with MONAI's CAM classes (monai.visualize), which this project used before: MONAI
# 1.6.1's GradCAMpp fails on any batch of more than one image (a shape mismatch), and the two-point Integrated
# Grad-CAM that the fidelity benchmark chose for 50 px inputs is not among MONAI's CAMs. One hook-based
# implementation serves all three methods on the same activations and gradients.
def _class_map(
    acts: torch.Tensor,
    grads: torch.Tensor,
    method: str,
    base: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """Rectified evidence map N x h x w (logit units) from a layer's activations and the score's gradients.

    gradcam: sum_k w_k A_k with w_k = d score / d mean(A_k) (Selvaraju et al. 2017). gradcam++: Chattopadhay
    et al. 2018 for exp(score) (that per-image factor dropped). integrated-gradcam: sum_k w_k (A_k - B_k), the
    activations' change from the baseline's B, with w_k from the gradients averaged over input and baseline (a
    two-point Integrated Grad-CAM, Sattarzadeh et al. 2021); position-only structure (padding, partial pooling
    windows) that the baseline shares cancels.
    """
    hw = acts.shape[2] * acts.shape[3]
    if method == "gradcam++":
        g2 = grads.pow(2)
        denom = 2 * g2 + (acts * grads.pow(3)).sum((2, 3), keepdim=True)
        alpha = g2 / torch.where(denom != 0, denom, torch.ones_like(denom))
        weights = (alpha * torch.relu(grads)).sum((2, 3), keepdim=True)
    elif base is not None:  # integrated-gradcam
        weights = (grads + base[1]).mean((2, 3), keepdim=True) * hw / 2
        acts = acts - base[0]
    else:
        weights = grads.mean((2, 3), keepdim=True) * hw
    return torch.relu((weights * acts).sum(1))


def flat_baseline(images: np.ndarray) -> np.ndarray:
    """Each image replaced by a flat patch of its mean colour (the integrated-gradcam baseline)."""
    mean = np.rint(images.reshape(len(images), -1, 3).mean(1)).astype(np.uint8)
    return np.ascontiguousarray(np.broadcast_to(mean[:, None, None, :], images.shape))


def _minmax(x: torch.Tensor) -> torch.Tensor:
    """Per-map scaling of N x H x W maps to [0, 1] (max -> 1); a constant map becomes all zero."""
    flat = x.flatten(1)
    lo = flat.min(1).values.view(-1, 1, 1)
    span = flat.max(1).values.view(-1, 1, 1) - lo
    return torch.where(span > 1e-12, (x - lo) / span.clamp_min(1e-12), torch.zeros_like(x))


def _hooked(classifier: PatchClassifier, layers: list[str], size: int) -> tuple[PatchClassifier, dict, list]:
    """A copy of `classifier` that records the outputs of `layers` (in-place ops off, parameters with grad)."""
    clf = copy.deepcopy(classifier).eval()
    for m in clf.modules():
        if getattr(m, "inplace", False):  # an in-place op after a target layer would change its output
            m.inplace = False
    for p in clf.parameters():
        p.requires_grad_(True)
    for layer in layers:
        check_target_layer(clf.net, layer, size)
    modules = dict(clf.net.named_modules())
    acts: dict[str, torch.Tensor] = {}
    hooks = [
        modules[name].register_forward_hook(lambda _m, _i, o, name=name: acts.__setitem__(name, o))
        for name in layers
    ]
    return clf, acts, hooks


def cam_maps(
    classifier: PatchClassifier,
    images: np.ndarray,
    target_layer: str | Sequence[str],
    threshold: float = DEFAULT_THRESHOLD,
    batch_size: int = 32,
    method: str = "auto",
    zero_flat: bool = True,
) -> CamMaps:
    """Class-activation maps for the predicted class of each image, with how localised each one is.

    Args:
        classifier: uint8 NHWC -> one logit per image (its weights are not modified; a copy is hooked).
        images: uint8 N x H x W x 3 RGB.
        target_layer: layer of `classifier.net` whose activations and gradients make the map; several
            (a sequence, or names joined by "+") average their [0, 1] maps.
        threshold: probability at or above which the prediction is tumour (the explained score then is the
            logit, else minus the logit: the evidence for "normal").
        batch_size: images per forward/backward pass.
        method: one of METHODS (see :func:`_class_map`; "auto": :func:`resolve_method`); integrated-gradcam's
            baseline is :func:`flat_baseline`.
        zero_flat: return flat maps (no localised evidence) all zero instead of stretching them to [0, 1].

    Returns:
        The maps (bilinearly upsampled to H x W), probabilities, logits and evidence spreads.
    """
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3:
        raise HistoscanInputError(f"images: expected N x H x W x 3, got shape {images.shape}")
    if method not in METHODS:
        raise HistoscanInputError(f"method {method}: choose from {', '.join(METHODS)}")
    layers = target_layer.split("+") if isinstance(target_layer, str) else list(target_layer)
    n, h, w = images.shape[:3]
    clf, acts, hooks = _hooked(classifier, layers, min(h, w))
    method = resolve_method(method, clf.net, "+".join(layers), min(h, w))
    device = next(clf.parameters()).device
    maps = np.zeros((n, h, w), np.float32)
    logits = np.zeros(n, np.float32)
    spread = np.zeros(n, np.float32)

    def forward(batch: np.ndarray, sign: torch.Tensor | None) -> tuple[torch.Tensor, list, list]:
        z = clf(torch.as_tensor(batch).to(device)).float()
        if sign is None:
            sign = torch.where(torch.sigmoid(z.detach()) >= threshold, 1.0, -1.0)
        grads = torch.autograd.grad((sign * z).sum(), [acts[name] for name in layers])
        return z.detach(), [acts[name].detach().float() for name in layers], [g.float() for g in grads]

    try:
        with torch.inference_mode(False), torch.enable_grad():
            for start in range(0, n, batch_size):
                batch = images[start : start + batch_size]
                z, a, g = forward(batch, None)
                bases: list = [None] * len(layers)
                if method == "integrated-gradcam":
                    _, a0, g0 = forward(
                        flat_baseline(batch), torch.where(torch.sigmoid(z) >= threshold, 1.0, -1.0)
                    )
                    bases = list(zip(a0, g0, strict=True))
                up, spreads = [], []
                for acts_i, grads_i, base in zip(a, g, bases, strict=True):
                    cam = _class_map(acts_i, grads_i, method, base)
                    spreads.append((cam.amax((1, 2)) - cam.amin((1, 2))) / z.abs().clamp_min(1.0))
                    big = nn.functional.interpolate(
                        cam[:, None], (h, w), mode="bilinear", align_corners=False
                    )
                    up.append(_minmax(big[:, 0]))
                sl = slice(start, start + len(batch))
                maps[sl] = torch.stack(up).mean(0).cpu().numpy()
                logits[sl] = z.cpu().numpy()
                spread[sl] = torch.stack(spreads).amax(0).cpu().numpy()
    finally:
        for hook in hooks:
            hook.remove()
    if zero_flat:
        maps[spread < FLAT_SPREAD] = 0.0
    probs = sigmoid(logits).astype(np.float32)
    return CamMaps(maps, probs, logits, spread)
