"""Grad-CAM of fitted images into a folder: one overlay figure per image, probabilities.csv and gradcam.npz."""

from __future__ import annotations

import csv
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from torch import nn

from histoscan.errors import HistoscanInputError
from histoscan.folders import ExplainDir
from histoscan.gradcam.cam import NO_EVIDENCE_NOTE, cam_maps, check_target_layer, resolve_method
from histoscan.gradcam.render import render_overlay
from histoscan.inference.predictor import Predictor, TorchPredictor
from histoscan.models import target_layer_name
from histoscan.models.classifier import PatchClassifier
from histoscan.scoring import DEFAULT_THRESHOLD

__all__ = ["check_target_layer", "default_explainer", "explain_images", "gradcam", "require_torch"]


def default_explainer(model_name: str, net: nn.Module, image_size: int) -> tuple[str, str]:
    """(method, layer) `histoscan explain` uses by default: the registry's layer, method by its map size."""
    layer = target_layer_name(model_name, net)
    return resolve_method("auto", net, layer, image_size), layer


def gradcam(
    classifier: PatchClassifier,
    images: np.ndarray,
    target_layer: str | Sequence[str],
    threshold: float = DEFAULT_THRESHOLD,
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
    """The predictor itself when Grad-CAM can run on it (:meth:`Predictor.require_explainable` says why not)."""
    predictor.require_explainable()
    if not isinstance(predictor, TorchPredictor):  # can_explain on another kind: a bug, not the user's input
        raise TypeError(f"{type(predictor).__name__} says it can be explained but is no TorchPredictor")
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
        method: "auto" (:func:`histoscan.gradcam.cam.resolve_method`), "gradcam", "gradcam++" or
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
