"""Batched inference through a backend (torch or ONNX Runtime) with dihedral TTA; CSV and Kaggle writers."""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from tqdm import tqdm

from histoscan.config import TrainConfig
from histoscan.data.store import PatchStore, is_store, resolve_store
from histoscan.errors import HistoscanInputError
from histoscan.inference.predictor import threshold_record

log = logging.getLogger(__name__)

Backend = Callable[[Any], np.ndarray]  # uint8 N x S x S x 3 (numpy, or torch on `backend.device`) -> N logits
TTA_CHOICES = (0, 1, 4, 8)


class TorchBackend:
    """A loaded PatchClassifier as a backend: uint8 NHWC batch (numpy or tensor) -> float32 logits (N,)."""

    def __init__(self, classifier: torch.nn.Module, device: torch.device):
        self.classifier, self.device = classifier.to(device).eval(), device

    @torch.inference_mode()
    def __call__(self, batch: np.ndarray | torch.Tensor) -> np.ndarray:
        x = torch.as_tensor(batch).to(self.device, non_blocking=True)
        return self.classifier(x).float().cpu().numpy()


def default_device() -> torch.device:
    """CUDA when available, else CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _threshold_info(run_dir: Path | None) -> dict[str, Any]:
    """The run's decision threshold and where it came from (0.5 when the run has none)."""
    info = threshold_record(run_dir)
    if info is None:
        return {"threshold": 0.5, "threshold_source": "default 0.5 (the run has no threshold.json)"}
    method = info.get("method", "?")
    return {
        "threshold": info["threshold"],
        "threshold_source": f"threshold.json: {method}, chosen on the validation split",
    }


def _run_meta(run_dir: Path) -> dict[str, Any]:
    """Model facts from a run folder without loading weights (for backends that bring their own graph)."""
    config = TrainConfig.load(run_dir / "config.yaml")
    data = json.loads((run_dir / "data.json").read_text()) if (run_dir / "data.json").is_file() else {}
    size = data.get("image_size") or config.image_size
    if not size:
        raise HistoscanInputError(
            f"{run_dir}: cannot tell the model's image size (no data.json or image_size)"
        )
    mpp = config.mpp if config.mpp is not None else data.get("mpp")
    return {"image_size": int(size), "mpp": mpp, "model": config.model, "fit": config.fit, "config": config}


def _onnx_backend(path: Path) -> tuple[Backend, dict[str, Any]]:
    try:
        from histoscan.export.onnx import onnx_backend  # lazy: onnxruntime only when asked for
    except ImportError:
        raise HistoscanInputError(
            "--backend onnx: not available in this installation (histoscan.export.onnx)"
        ) from None
    run_dir = path if path.is_dir() else (path.parent if (path.parent / "config.yaml").is_file() else None)
    onnx_path = path / "model.onnx" if path.is_dir() else path
    if not onnx_path.is_file():
        raise HistoscanInputError(
            f"{onnx_path}: not found; create it with histoscan export RUN --out {onnx_path}"
        )
    fn = onnx_backend(onnx_path)
    meta = dict(getattr(fn, "meta", None) or {})
    if run_dir is not None:
        meta = {**_run_meta(run_dir), **_threshold_info(run_dir), **meta}
    if "image_size" not in meta:
        raise HistoscanInputError(
            f"{onnx_path}: no image size in the model's metadata and no run folder beside it"
        )
    if "threshold" in meta.get("raw", {}):
        meta.setdefault("threshold_source", "ONNX metadata (chosen on the run's validation split)")
    meta.setdefault("threshold", 0.5)
    meta.setdefault("threshold_source", "default 0.5 (the ONNX model carries no threshold)")
    meta.update(backend="onnx", checkpoint=str(onnx_path), run_dir=run_dir)
    return fn, meta


def make_backend(
    run_or_ckpt: str | Path,
    backend: Literal["torch", "onnx"] = "torch",
    device: str | torch.device | None = None,
) -> tuple[Backend, dict[str, Any]]:
    """A callable `uint8 NHWC batch -> logits` for RUN_OR_CKPT, plus what the model expects.

    Args:
        run_or_ckpt: run folder or checkpoint (torch); run folder holding model.onnx, or a .onnx file (onnx).
        backend: "torch" (CUDA when available) or "onnx" (ONNX Runtime, from histoscan.export.onnx).
        device: torch device override.

    Returns:
        (backend, meta) with meta keys image_size, threshold, threshold_source, mpp, model, fit, config,
        run_dir, checkpoint, backend.
    """
    if backend == "onnx":
        return _onnx_backend(Path(run_or_ckpt))
    if backend != "torch":
        raise HistoscanInputError(f"--backend {backend}: choose torch or onnx")
    from histoscan.inference.predictor import load_model  # lazy: keeps `import histoscan.inference.predict` light for the CLI

    dev = torch.device(device) if device is not None else default_device()
    try:
        m = load_model(run_or_ckpt, dev)
    except HistoscanInputError as e:  # state-dict mismatches list every key over many lines: keep one line
        msg = " ".join(str(e).split())
        raise HistoscanInputError(msg if len(msg) <= 300 else msg[:297] + "...") from None
    meta = {
        "image_size": m.image_size,
        "mpp": m.mpp,
        "model": m.model_name,
        "fit": m.config.fit,
        "config": m.config,
        "run_dir": m.run_dir,
        "checkpoint": str(m.checkpoint),
        "backend": "torch",
        **_threshold_info(m.run_dir),
    }
    return TorchBackend(m.classifier, dev), meta


def n_views(tta: int) -> int:
    """Views for a --tta value: 0/1 none, 4 the rotations, 8 the dihedral group D4."""
    if tta not in TTA_CHOICES:
        raise HistoscanInputError(f"--tta {tta}: choose 0 (off), 4 (rotations) or 8 (rotations and flips)")
    return max(tta, 1)


def dihedral_views(x: torch.Tensor, n: int = 8) -> torch.Tensor:
    """The first `n` dihedral transforms of an N x H x W x C batch, stacked view-major ((n*N) x H x W x C).

    Views 0-3 rotate by 0/90/180/270 degrees; views 4-7 are the same rotations, then flipped left-right.
    """
    views = []
    for k in range(n):
        v = torch.rot90(x, k % 4, dims=(1, 2))
        views.append(v.flip(2) if k >= 4 else v)
    return torch.cat(views)


def tta_logits(backend: Backend, batch: np.ndarray | torch.Tensor, tta: int = 0) -> np.ndarray:
    """Logits of a uint8 NHWC batch, averaged over the TTA views in logit space.

    All views go through the backend in one call (view-major), so 8 views cost about 8 forwards. Averaging
    logits (not probabilities) keeps the result symmetric and lets views disagree on a log-odds scale; the
    mean logit's sigmoid is the TTA probability. Views are built on the backend's device when it has one.
    """
    n = n_views(tta)
    device = getattr(backend, "device", None)
    x = torch.from_numpy(np.array(batch, copy=True)) if isinstance(batch, np.ndarray) else batch  # writable
    if device is not None:
        x = x.to(device, non_blocking=True)
    if n > 1:
        x = dihedral_views(x, n)
    out = backend(x if device is not None else x.numpy())
    return np.asarray(out, dtype=np.float32).reshape(n, -1).mean(axis=0)


def infer(
    backend: Backend,
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
            )  # a slice reads the memmap fastest
            out[a : a + len(sel)] = tta_logits(backend, np.asarray(chunk), tta)
            bar.update(len(sel))
    return out


def sigmoid(z: np.ndarray) -> np.ndarray:
    """Numerically stable logistic function."""
    return np.exp(-np.logaddexp(0.0, -np.asarray(z, dtype=np.float64)))


def load_data(data: str | Path, meta: dict[str, Any], part: Literal["labelled", "unlabelled"]) -> PatchStore:
    """The store for DATA at the model's image size.

    A raw source is prepared as the run was (its image_size/fit) and re-fitted to the model's size if it comes
    out at another size; a prepared STORE of another size is an error (re-fitting it would change the data
    the store was made to hold).
    """
    size, fit = int(meta["image_size"]), meta.get("fit") or "pad"
    p = Path(data).expanduser()
    if is_store(p):
        store = resolve_store(p, part=part)
        if store.size != size:
            raise HistoscanInputError(
                f"{p}: store holds {store.size}px patches but the model expects {size}px; prepare the data "
                f"again with --image-size {size}, or pass the raw source to re-fit it automatically"
            )
    else:
        config = meta.get("config")
        skip_bad = bool(config and config.skip_bad)
        # the run's own settings first, so its training data resolves to the same store (same checksum)
        store = resolve_store(
            p, image_size=config.image_size if config else size, fit=fit, skip_bad=skip_bad, part=part
        )
        if store.size != size:
            log.info("%s: %dpx patches fitted (%s) to the model's %dpx", p, store.size, fit, size)
            store = resolve_store(p, image_size=size, fit=fit, skip_bad=skip_bad, part=part)
    if len(store) == 0:
        raise HistoscanInputError(f"{p}: no images to predict")
    return store


def _submission_order(data: Path) -> list[str] | None:
    """Ids of a Kaggle sample_submission.csv in DATA (or beside a test/ folder), in file order."""
    for cand in (data / "sample_submission.csv", data.parent / "sample_submission.csv"):
        if data.is_dir() and cand.is_file():
            with cand.open(newline="") as f:
                return [row["id"] for row in csv.DictReader(f)]
    return None


def write_predictions(
    path: Path, ids: list[str], probs: np.ndarray, threshold: float, fmt: Literal["csv", "kaggle"], order=None
) -> None:
    """Write csv (id,probability,label; label = probability >= threshold) or kaggle (id,label=probability)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "kaggle" and order is not None:
        where = {i: k for k, i in enumerate(ids)}
        missing = [i for i in order if i not in where]
        if missing:
            raise HistoscanInputError(
                f"sample_submission.csv: {len(missing)} ids have no image, e.g. {missing[0]}"
            )
        ids, probs = list(order), probs[[where[i] for i in order]]
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        if fmt == "kaggle":
            w.writerow(["id", "label"])
            w.writerows((i, f"{q:.6f}") for i, q in zip(ids, probs, strict=True))
        else:
            w.writerow(["id", "probability", "label"])
            w.writerows((i, f"{q:.6f}", int(q >= threshold)) for i, q in zip(ids, probs, strict=True))


def predict(
    run_or_ckpt: str | Path,
    data: str | Path,
    out: str | Path,
    fmt: Literal["csv", "kaggle"] = "csv",
    tta: int = 0,
    batch_size: int = 256,
    backend: Literal["torch", "onnx"] = "torch",
) -> dict[str, Any]:
    """Tumour probabilities for every patch of DATA (labels, if any, are ignored), written to `out`.

    Args:
        run_or_ckpt: run folder or checkpoint (or .onnx with backend "onnx").
        data: a source (image folder, Kaggle HCD test layout, PCam, manifest) or a prepared STORE.
        out: output CSV file.
        fmt: "csv" (id,probability,label at the run's threshold) or "kaggle" (id,label = tumour probability,
            in sample_submission.csv order when DATA has one; ids are file stems).
        tta: 0, 4 or 8 dihedral views averaged in logit space.
        batch_size: patches per forward (times the TTA views).
        backend: "torch" or "onnx".

    Returns:
        Summary: n, out, threshold, threshold_source, n_positive (at the threshold), mean_probability, tta.
    """
    if fmt not in ("csv", "kaggle"):
        raise HistoscanInputError(f"--format {fmt}: choose csv or kaggle")
    n_views(tta)
    out = Path(out)
    if out.is_dir():
        raise HistoscanInputError(
            f"--out {out}: is a folder; give a file name such as {out / 'predictions.csv'}"
        )
    fn, meta = make_backend(run_or_ckpt, backend)
    store = load_data(data, meta, "unlabelled")
    probs = sigmoid(infer(fn, store.images, tta=tta, batch_size=batch_size))
    order = _submission_order(Path(data)) if fmt == "kaggle" else None
    write_predictions(out, store.ids, probs, meta["threshold"], fmt, order)
    return {
        "n": len(probs),
        "out": str(out),
        "format": fmt,
        "threshold": meta["threshold"],
        "threshold_source": meta["threshold_source"],
        "n_positive": int((probs >= meta["threshold"]).sum()),
        "mean_probability": float(probs.mean()),
        "tta": n_views(tta),
    }
