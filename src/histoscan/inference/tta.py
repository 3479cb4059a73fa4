"""Test-time augmentation and batched inference through a Predictor."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from tqdm import tqdm

from histoscan.errors import HistoscanInputError
from histoscan.inference.predictor import Predictor, TorchPredictor
from histoscan.utils.dihedral import dihedral_views

TTA_CHOICES = (0, 1, 4, 8)


def n_views(tta: int) -> int:
    """Views for a --tta value: 0/1 none, 4 the rotations, 8 the dihedral group D4."""
    if tta not in TTA_CHOICES:
        raise HistoscanInputError(f"--tta {tta}: choose 0 (off), 4 (rotations) or 8 (rotations and flips)")
    return max(tta, 1)


def run_tta(predictor: Predictor, tta: int | None) -> int:
    """`tta` when given, else the TTA the model's run recorded at training time (its `tta` config field, which
    its threshold and calibration were fitted with); 0 for a model that records none."""
    if tta is not None:
        n_views(tta)
        return tta
    config = getattr(predictor.card, "config", None)
    return int(getattr(config, "tta", 0) or 0)


def tta_logits(
    predictor: Predictor | Callable[[np.ndarray], np.ndarray], batch: np.ndarray | torch.Tensor, tta: int = 0
) -> np.ndarray:
    """Logits of a uint8 NHWC batch, averaged over the TTA views in logit space.

    All views go through the predictor in one call (view-major), so 8 views cost about 8 forwards. Averaging
    logits (not probabilities) keeps the result symmetric and lets views disagree on a log-odds scale; the
    mean logit's sigmoid is the TTA probability. Views are built on the predictor's torch device when it has
    one (ONNX Runtime takes numpy).
    """
    n = n_views(tta)
    if n == 1:
        return np.asarray(predictor(batch), dtype=np.float32).reshape(-1)
    x = torch.from_numpy(np.array(batch, copy=True)) if isinstance(batch, np.ndarray) else batch
    on_torch = isinstance(predictor, TorchPredictor)
    if on_torch:
        x = x.to(predictor.torch_device, non_blocking=True)
    views = torch.cat(dihedral_views(x, n, dims=(1, 2)))
    out = predictor(views if on_torch else views.cpu().numpy())
    return np.asarray(out, dtype=np.float32).reshape(n, -1).mean(axis=0)


def infer(
    predictor: Predictor,
    images: np.ndarray,
    rows: np.ndarray | None = None,
    tta: int = 0,
    batch_size: int = 256,
    desc: str = "predict",
) -> np.ndarray:
    """Logits for `images[rows]` (all rows when None), in batches, with a progress bar on stderr."""
    if batch_size < 1:
        raise HistoscanInputError(f"--batch-size {batch_size}: must be at least 1")
    n_views(tta)
    idx = np.arange(len(images)) if rows is None else np.asarray(rows)
    out = np.empty(len(idx), dtype=np.float32)
    with tqdm(total=len(idx), desc=desc, unit="patch", disable=None, leave=False) as bar:
        for a in range(0, len(idx), batch_size):
            sel = idx[a : a + batch_size]
            contiguous = sel[-1] - sel[0] == len(sel) - 1 and bool((np.diff(sel) == 1).all())
            chunk = (
                images[sel[0] : sel[-1] + 1] if contiguous else images[sel]
            )  # a slice reads a memmap fastest
            out[a : a + len(sel)] = tta_logits(predictor, np.asarray(chunk), tta)
            bar.update(len(sel))
    return out
