"""The one model seam: a Predictor maps uint8 N x S x S x 3 RGB to logits, whatever runs it.

`load_predictor(MODEL)` takes a run folder, a Lightning checkpoint or a `.onnx` export and picks the backend
from what it is given (`backend=` overrides): PyTorch (:class:`TorchPredictor`, CUDA when available) or ONNX
Runtime (:class:`histoscan.inference.onnx.OnnxPredictor`). Every predictor carries a frozen
:class:`~histoscan.inference.card.ModelCard`; predict, evaluate, slide, serve and export's parity check all
run models through this seam.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
import torch

from histoscan.config import TrainConfig
from histoscan.errors import HistoscanInputError
from histoscan.inference.base import Predictor
from histoscan.inference.card import ModelCard, threshold_fields
from histoscan.inference.ensemble import EnsemblePredictor, member_runs
from histoscan.models.classifier import NORMALISATION, PatchClassifier, build_classifier, saved_model_config
from histoscan.run import RunDir
from histoscan.utils.device import torch_device

BackendName = Literal["auto", "torch", "onnx"]
__all__ = [
    "BackendName",
    "Predictor",
    "TorchPredictor",
    "load_checkpoint",
    "load_predictor",
    "load_torch_predictor",
]


class TorchPredictor(Predictor):
    """A PatchClassifier in eval mode on a device; `classifier` is exposed for Grad-CAM."""

    can_explain = True

    def __init__(self, classifier: PatchClassifier, card: ModelCard, device: str | torch.device = "cpu"):
        self.torch_device = torch.device(device)
        self.device = str(self.torch_device)
        self.classifier = classifier.to(self.torch_device).eval()
        self.card = card

    def stain_note(self, what: str = "patches") -> str | None:
        stain = self.classifier.stain
        return stain.report(what) if stain is not None and hasattr(stain, "report") else None

    @torch.inference_mode()
    def __call__(self, images: np.ndarray | torch.Tensor) -> np.ndarray:
        if isinstance(images, np.ndarray) and not images.flags.writeable:  # e.g. a read-only memmap slice
            images = np.array(images)
        x = torch.as_tensor(images).to(self.torch_device, non_blocking=True)
        return self.classifier(x).float().cpu().numpy()


def load_checkpoint(ckpt_path: Path) -> tuple[PatchClassifier, TrainConfig, dict]:
    """(classifier with the checkpoint's weights, its TrainConfig, Lightning hyper-parameters) from a .ckpt."""
    try:
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False)
    except Exception as e:
        raise HistoscanInputError(f"{ckpt_path}: not a histoscan checkpoint ({_one_line(e)})") from None
    hp = ckpt.get("hyper_parameters", {}) if isinstance(ckpt, dict) else {}
    if "config" not in hp or "state_dict" not in ckpt:
        raise HistoscanInputError(f"{ckpt_path}: not a histoscan checkpoint (no config/state_dict)")
    config = TrainConfig.from_dict(hp["config"], source=str(ckpt_path))
    clf = build_classifier(saved_model_config(config), weights=False)
    state = {
        k.removeprefix("classifier."): v for k, v in ckpt["state_dict"].items() if k.startswith("classifier.")
    }
    try:
        clf.load_state_dict(state)
    except RuntimeError as e:
        raise HistoscanInputError(
            f"{ckpt_path}: weights do not match model '{config.model}' ({_one_line(e)})"
        ) from None
    return clf.eval(), config, hp


def _one_line(e: BaseException, limit: int = 240) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def load_torch_predictor(path: str | Path, device: str | None = "auto") -> TorchPredictor:
    """A TorchPredictor for a run folder (best, else last checkpoint) or a checkpoint file."""
    p = Path(path).expanduser()
    if p.is_dir():
        run = RunDir.open(p)
        ckpt = run.checkpoint()
    elif p.is_file():
        ckpt, run = p, RunDir.of_checkpoint(p)
    else:
        raise HistoscanInputError(f"{p}: no such run folder, checkpoint or .onnx file")
    clf, config, hp = load_checkpoint(ckpt)
    clf.temperature = run.temperature() if run is not None else 1.0
    threshold, source = threshold_fields(run.read_threshold() if run is not None else None)
    mpp = hp.get("mpp", config.mpp)
    card = ModelCard(
        model=config.model,
        image_size=int(hp.get("image_size") or config.image_size or 96),
        mpp=None if mpp is None else float(mpp),
        fit=config.fit,
        threshold=threshold,
        threshold_source=source,
        normalisation=NORMALISATION,
        stain=str((config.stain or {}).get("method", "none")),
        backend="torch",
        source=str(p),
        weights=str(ckpt),
        run_dir=str(run.path) if run is not None else None,
        config=config,
        temperature=clf.temperature,
    )
    return TorchPredictor(clf, card, torch_device(device))


def load_predictor(
    path: str | Path, backend: BackendName = "auto", device: str = "auto", threads: int | None = None
) -> Predictor:
    """A Predictor for MODEL: a run folder, a checkpoint, a .onnx export, or a `histoscan cv` folder (ensemble).

    Args:
        path: run folder (torch; with backend "onnx" its model.onnx), checkpoint file (torch), .onnx (onnx), or a
            cross-validation folder whose fold-*/ runs are averaged as one model.
        backend: "auto" picks from `path`; "torch" or "onnx" force one.
        device: "auto" (a GPU when the backend can use one), "cpu" or "cuda[:N]", the same for every backend:
            the torch device, or ONNX Runtime's execution providers
            (:func:`histoscan.utils.device.onnx_providers`); "cuda" without a GPU is a one-line error.
        threads: ONNX Runtime intra-op threads (default: the cores).
    """
    p = Path(path).expanduser()
    if backend not in ("auto", "torch", "onnx"):
        raise HistoscanInputError(f"--backend {backend}: choose torch or onnx")
    if not p.exists():
        raise HistoscanInputError(f"{p}: no such run folder, checkpoint or .onnx file")

    runs = member_runs(p)
    if runs:
        return EnsemblePredictor([load_predictor(r, backend, device, threads) for r in runs], p)
    is_onnx_file = p.is_file() and p.suffix.lower() == ".onnx"
    if backend == "torch" and is_onnx_file:
        raise HistoscanInputError(f"{p}: an ONNX export runs on ONNX Runtime; drop --backend torch")
    if backend == "onnx" or is_onnx_file:
        from histoscan.inference.onnx import OnnxPredictor  # lazy: onnxruntime only when asked for

        onnx_path = p
        if p.is_dir():
            onnx_path = RunDir.open(p).onnx_path
            if not onnx_path.is_file():
                raise HistoscanInputError(
                    f"{onnx_path}: not found; create it with histoscan export {p} --out {onnx_path}"
                )
        elif not is_onnx_file:
            raise HistoscanInputError(
                f"{p}: --backend onnx needs a .onnx file or a run folder holding {RunDir.ONNX}"
            )
        return OnnxPredictor(onnx_path, threads=threads, source=p, device=device or "auto")
    return load_torch_predictor(p, device)
