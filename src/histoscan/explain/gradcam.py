"""Grad-CAM explanations of one-logit patch classifiers: heat maps, overlay PNGs and a probabilities table."""

from __future__ import annotations

import csv
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from torch import nn

from histoscan.errors import HistoscanInputError
from histoscan.explain.cam import NO_EVIDENCE_NOTE, cam_maps, check_target_layer, resolve_method
from histoscan.explain.render import render_overlay
from histoscan.folders import ExplainDir
from histoscan.inference.predictor import Predictor, TorchPredictor
from histoscan.models import target_layer_name
from histoscan.models.classifier import PatchClassifier
from histoscan.utils.fs import staged_folder


def default_explainer(model_name: str, net: nn.Module, image_size: int) -> tuple[str, str]:
    """(method, layer) `histoscan explain` uses by default: the registry's layer, method by its map size."""
    layer = target_layer_name(model_name, net)
    return resolve_method("auto", net, layer, image_size), layer


def gradcam(
    classifier: PatchClassifier,
    images: np.ndarray,
    target_layer: str | Sequence[str],
    threshold: float = 0.5,
    batch_size: int = 32,
    method: str = "auto",
) -> tuple[np.ndarray, np.ndarray]:
    """(maps float32 N x H x W in [0, 1], tumour probabilities float32 N): :func:`cam_maps` in short.

    A flat map (no localised evidence, see :class:`CamMaps`) is all zero rather than noise stretched to a
    hot spot.
    """
    res = cam_maps(classifier, images, target_layer, threshold, batch_size, method)
    return res.maps, res.probabilities


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
    method: str = "auto",
) -> list[Path]:
    """Write `<id>_gradcam.png` per image, probabilities.csv (id,probability,label) and gradcam.npz.

    gradcam.npz holds one map per input, in input order: ids (N), maps (float16 N x S x S in [0, 1]; all zero
    where the map is flat), probabilities, logits, spread and localised (N; see :class:`CamMaps`), notes (N),
    target_layer, method, threshold and warnings. A flat map's figure says "no localised evidence".

    Args:
        predictor: a PyTorch predictor (:func:`histoscan.inference.predictor.load_predictor`).
        images: uint8 N x S x S x 3, already fitted to the model's image size.
        ids: one id per image (file names are made safe; ids must be unique).
        out_dir: folder to write into (created).
        target_layer: layer of the network to explain (default: the registry's, :func:`default_explainer`); several
            joined by "+" average their maps.
        batch_size: images per Grad-CAM pass.
        notes: per image, caption lines for its figure (e.g. how it was fitted to the model's size).
        warnings: domain warnings for all the images: on every figure (red) and in gradcam.npz.
        threshold: the decision threshold (default: the model's), e.g. slide's --threshold.
        method: "auto" (:func:`histoscan.explain.cam.resolve_method`), "gradcam", "gradcam++" or
            "integrated-gradcam".

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
    for part in layer.split("+"):
        check_target_layer(net, part, card.image_size, card.model)
    threshold = card.threshold if threshold is None else float(threshold)
    method = resolve_method(method, net, layer, card.image_size)
    res = cam_maps(predictor.classifier, images, layer, threshold, batch_size, method)
    maps, probs = res.maps, res.probabilities

    out = ExplainDir(out_dir)
    out.path.mkdir(parents=True, exist_ok=True)
    paths = []
    for img, cam, p, i, name, lines, flat in zip(
        images, maps, probs, ids, names, notes, res.flat, strict=True
    ):
        path = out.overlay(name)
        caption = [
            *([NO_EVIDENCE_NOTE] if flat else ()),
            *(lines or ()),
            *(f"warning: {w}" for w in warnings),
        ]
        render_overlay(img, cam, float(p), threshold, i, caption).save(path)
        paths.append(path)
    with open(out.probabilities, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "probability", "label"])
        writer.writerows([i, f"{p:.6f}", int(p >= threshold)] for i, p in zip(ids, probs, strict=True))
    np.savez_compressed(
        out.maps,
        ids=np.asarray(ids),
        maps=maps.astype(np.float16),
        probabilities=probs,
        localised=~res.flat,
        spread=res.spread,
        logits=res.logits,
        target_layer=layer,
        method=method,
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
