"""Grad-CAM explanations of one-logit patch classifiers: heat maps, overlay PNGs and a probabilities table."""

from __future__ import annotations

import copy
import csv
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from monai.visualize import GradCAM
from torch import nn

from histoscan.errors import HistoscanInputError
from histoscan.explain.render import render_overlay
from histoscan.inference.predictor import Predictor, TorchPredictor
from histoscan.models import target_layer_name
from histoscan.models.classifier import PatchClassifier
from histoscan.utils.fs import staged_folder


class _SignedLogits(nn.Module):
    """[-logit, logit] as two class scores, so Grad-CAM can explain either predicted class of a one-logit net.

    d(-logit)/dA is the evidence for "normal": explaining a negative prediction with the positive logit would
    show where the model saw *no* tumour evidence, not what made it say normal. Input: N x 3 x H x W
    (0..255), the layout MONAI reads the map size from.
    """

    def __init__(self, classifier: PatchClassifier):
        super().__init__()
        self.classifier = classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.classifier(x.permute(0, 2, 3, 1))
        return torch.stack([-z, z], dim=1)


def _minmax(x: torch.Tensor) -> torch.Tensor:
    """Per-map scaling to [0, 1] (max -> 1); an all-zero map (no positive evidence) stays zero.

    Replaces MONAI's default post-processing, which maps (min, max) to (1, 0), i.e. flips the map.
    """
    flat = x.flatten(1)
    lo = flat.min(1).values.view(-1, *[1] * (x.ndim - 1))
    span = (flat.max(1).values.view_as(lo) - lo).clamp_min(1e-12)
    return torch.where(span > 1e-12, (x - lo) / span, torch.zeros_like(x))


def spatial_layers(net: nn.Module, image_size: int) -> list[str]:
    """Names (relative to `net`) of the submodules whose output is a 4-D feature map at `image_size`."""
    shapes: dict[str, int] = {}
    hooks = [
        m.register_forward_hook(
            lambda _m, _i, o, n=n: shapes.__setitem__(n, o.ndim if torch.is_tensor(o) else 0)
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
    return [n for n, d in shapes.items() if d == 4]


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


def gradcam(
    classifier: PatchClassifier,
    images: np.ndarray,
    target_layer: str,
    threshold: float = 0.5,
    batch_size: int = 32,
) -> tuple[np.ndarray, np.ndarray]:
    """Grad-CAM maps for the predicted class of each image.

    Args:
        classifier: uint8 NHWC -> one logit per image (its weights are not modified; a copy is hooked).
        images: uint8 N x H x W x 3 RGB.
        target_layer: layer of `classifier.net` whose activations and gradients make the map.
        threshold: probability at or above which the prediction is tumour (the explained class then is the
            positive logit, else the negative logit).
        batch_size: images per forward/backward pass.

    Returns:
        (maps float32 N x H x W in [0, 1], tumour probabilities float32 N).
    """
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3:
        raise HistoscanInputError(f"images: expected N x H x W x 3, got shape {images.shape}")
    n, h, w = images.shape[:3]
    # hooks are registered on a copy: MONAI never removes them, and in-place ops are switched off for the
    # full backward hooks (an in-place ReLU after the target layer would otherwise break them)
    clf = copy.deepcopy(classifier).eval()
    for m in clf.modules():
        if getattr(m, "inplace", False):
            m.inplace = False
    for p in clf.parameters():
        p.requires_grad_(True)
    check_target_layer(clf.net, target_layer, min(h, w))
    cam = GradCAM(_SignedLogits(clf), target_layers=f"classifier.net.{target_layer}", postprocessing=_minmax)
    device = next(clf.parameters()).device
    maps = np.zeros((n, h, w), np.float32)
    probs = np.zeros(n, np.float32)
    with torch.inference_mode(False), torch.enable_grad():
        for start in range(0, n, batch_size):
            x = torch.as_tensor(images[start : start + batch_size]).to(device).permute(0, 3, 1, 2)
            with torch.no_grad():
                p = torch.sigmoid(clf(x.permute(0, 2, 3, 1)).float())
            probs[start : start + len(x)] = p.cpu().numpy()
            positive = p >= threshold
            for cls in (0, 1):
                idx = torch.nonzero(positive == bool(cls)).flatten()
                if len(idx):
                    m = cam(x[idx], class_idx=cls)
                    maps[start + idx.cpu().numpy()] = m[:, 0].detach().float().cpu().numpy()
    return maps, probs


def _safe_name(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", s).strip("._") or "image"


def require_torch(predictor: Predictor) -> TorchPredictor:
    """The predictor itself when Grad-CAM can run on it (PyTorch); an ONNX export cannot be explained."""
    if not isinstance(predictor, TorchPredictor):
        raise HistoscanInputError(
            f"{predictor.card.source}: Grad-CAM needs the PyTorch model (run folder or .ckpt), not an ONNX export"
        )
    return predictor


def explain_images(
    predictor: Predictor,
    images: np.ndarray,
    ids: list[str],
    out_dir: str | Path,
    target_layer: str | None = None,
    batch_size: int = 32,
    notes: Sequence[Sequence[str] | None] | None = None,
    warnings: Sequence[str] = (),
    threshold: float | None = None,
) -> list[Path]:
    """Write `<id>_gradcam.png` per image, probabilities.csv (id,probability,label) and gradcam.npz.

    Args:
        predictor: a PyTorch predictor (:func:`histoscan.inference.predictor.load_predictor`).
        images: uint8 N x S x S x 3, already fitted to the model's image size.
        ids: one id per image (file names are made safe; ids must be unique).
        out_dir: folder to write into (created).
        target_layer: layer of the network to explain (default: the model's last convolutional stage).
        batch_size: images per Grad-CAM pass.
        notes: per image, caption lines for its figure (e.g. how it was fitted to the model's size).
        warnings: domain warnings for all the images: on every figure (red) and in gradcam.npz.
        threshold: the decision threshold (default: the model's), e.g. slide's --threshold.

    Returns:
        Paths of the overlay PNGs, in input order.
    """
    images = np.asarray(images)
    if len(ids) != len(images):
        raise HistoscanInputError(f"ids: {len(ids)} ids for {len(images)} images")
    names = [_safe_name(i) for i in ids]
    if len(set(names)) != len(names):
        raise HistoscanInputError("ids: not unique (after making them file-name safe)")
    notes = list(notes) if notes is not None else [None] * len(ids)
    if len(notes) != len(ids):
        raise HistoscanInputError(f"notes: {len(notes)} caption lists for {len(ids)} images")
    predictor = require_torch(predictor)
    card = predictor.card
    net = predictor.classifier.net
    layer = target_layer or target_layer_name(card.model, net)
    check_target_layer(net, layer, card.image_size, card.model)
    threshold = card.threshold if threshold is None else float(threshold)
    maps, probs = gradcam(predictor.classifier, images, layer, threshold, batch_size)

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for img, cam, p, i, name, lines in zip(images, maps, probs, ids, names, notes, strict=True):
        path = out / f"{name}_gradcam.png"
        caption = [*(lines or ()), *(f"warning: {w}" for w in warnings)]
        render_overlay(img, cam, float(p), threshold, i, caption).save(path)
        paths.append(path)
    with open(out / "probabilities.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "probability", "label"])
        writer.writerows([i, f"{p:.6f}", int(p >= threshold)] for i, p in zip(ids, probs, strict=True))
    np.savez_compressed(
        out / "gradcam.npz",
        ids=np.asarray(ids),
        maps=maps.astype(np.float16),
        probabilities=probs,
        target_layer=layer,
        threshold=threshold,
        notes=np.asarray(["; ".join(n or ()) for n in notes]),
        warnings=np.asarray(list(warnings), dtype=str),
    )
    return paths


def fit_note(height: int, width: int, size: int, fit: str, conversion: str | None = None) -> str | None:
    """What the model saw of an image of `height` x `width` px fitted to `size` (None: the image itself)."""
    parts = []
    if (height, width) != (size, size):
        if fit == "resize":
            parts.append(
                f"the model saw this {width}x{height} px image resized to {size}x{size} px (fit: resize)"
            )
        elif height >= size and width >= size:
            parts.append(
                f"the model saw only the centre {size}x{size} px crop of this {width}x{height} px image (fit: pad)"
            )
        elif height <= size and width <= size:
            parts.append(f"this {width}x{height} px image was reflect-padded to the model's {size}x{size} px")
        else:
            parts.append(
                f"this {width}x{height} px image was centre-cropped and reflect-padded to the model's "
                f"{size}x{size} px"
            )
    if conversion:
        parts.append(f"converted on reading ({conversion})")
    return "; ".join(parts) or None


def explain_files(
    model: str | Path,
    files: list[Path],
    out: str | Path,
    target_layer: str | None = None,
    device: str | None = "auto",
    force: bool = False,
) -> tuple[list[Path], TorchPredictor, list[str]]:
    """`histoscan explain`: decode and fit image files as in training, explain them into `out` (all or nothing).

    Each figure's caption says when the model saw a crop, padding or resize of the file (e.g. the centre
    50 x 50 px of a 96 x 96 px upload) rather than the file itself; a colour far from the training patches'
    (:mod:`histoscan.inference.domain`) is a warning on every figure.

    Returns:
        (overlay paths in `out`, the predictor used, warning lines).
    """
    from histoscan.data.images import decode_image, fit_image  # lazy: image codecs
    from histoscan.inference.domain import domain_warnings
    from histoscan.inference.predictor import load_predictor

    predictor = require_torch(load_predictor(model, "auto", device))  # an .onnx: the Grad-CAM message
    card = predictor.card
    fitted, notes = [], []
    for f in files:
        img, conversion = decode_image(f, str(f))
        note = fit_note(img.shape[0], img.shape[1], card.image_size, card.fit, conversion)
        notes.append([note] if note else None)
        fitted.append(fit_image(img, card.image_size, card.fit))
    images = np.stack(fitted)
    warnings, _ = domain_warnings(predictor, None, images, what="images")
    ids = _unique_ids(files)
    dest = Path(out)
    with staged_folder(dest, force) as tmp:
        paths = explain_images(
            predictor, images, ids, tmp, target_layer=target_layer, notes=notes, warnings=warnings
        )
    return [dest / p.name for p in paths], predictor, warnings


def _unique_ids(files: list[Path]) -> list[str]:
    """File stems, with the parent folder prepended where stems repeat."""
    stems = [f.stem for f in files]
    return [f"{f.parent.name}_{f.stem}" if stems.count(f.stem) > 1 else f.stem for f in files]
