"""The ONNX Runtime Predictor for an exported histoscan model (uint8 NHWC in, logits out; no torch needed)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from histoscan.config import TrainConfig
from histoscan.errors import HistoscanInputError
from histoscan.inference.base import Predictor
from histoscan.inference.card import ModelCard
from histoscan.run import RunDir
from histoscan.scoring import DEFAULT_THRESHOLD
from histoscan.utils.device import CUDA_PROVIDER, onnx_providers

INPUT_NAME, OUTPUT_NAMES = "images", ("logits", "probabilities")


def read_metadata(path: str | Path) -> dict[str, str]:
    """The histoscan metadata_props of an exported model (strings, as stored)."""
    import onnx

    path = Path(path)
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as e:
        raise HistoscanInputError(f"{path}: not an ONNX model ({str(e).splitlines()[0][:120]})") from None
    return {p.key: p.value for p in proto.metadata_props}


def cores() -> int:
    """CPU cores this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _config(raw: dict[str, str], card: dict[str, Any]) -> TrainConfig:
    """The training config stored in the export (or the facts we know, for an export of another version)."""
    try:
        return TrainConfig.from_dict(json.loads(raw["config"]))
    except (KeyError, ValueError, TypeError, HistoscanInputError):
        return TrainConfig(
            model=card["model"], image_size=card["image_size"], fit=card["fit"], mpp=card["mpp"]
        )


class OnnxPredictor(Predictor):
    """An ONNX Runtime session for an exported model, on the execution providers `device` picks
    (:func:`histoscan.utils.device.onnx_providers`: "auto" is CUDA when onnxruntime-gpu provides it, else the
    CPU; "cuda" insists on the GPU; "cpu" stays on the CPU)."""

    kind = "an ONNX export"

    def __init__(
        self,
        path: str | Path,
        threads: int | None = None,
        providers: list[str] | None = None,
        source: str | Path | None = None,
        device: str = "auto",
    ):
        """`providers` (an explicit ONNX Runtime provider list) overrides `device`."""
        import onnxruntime as ort

        self.path = Path(path)
        if not self.path.is_file():
            raise HistoscanInputError(f"{self.path}: ONNX model not found")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads or cores()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        providers = providers or onnx_providers(device, ort.get_available_providers())
        try:
            self.session = ort.InferenceSession(str(self.path), opts, providers=providers)
        except Exception as e:  # onnxruntime raises its own exception types for invalid files
            raise HistoscanInputError(
                f"{self.path}: ONNX Runtime cannot load it ({str(e).splitlines()[0][:160]})"
            ) from None
        inp = self.session.get_inputs()[0]
        raw = dict(self.session.get_modelmeta().custom_metadata_map)
        size = raw.get("image_size") or inp.shape[1]
        if inp.type != "tensor(uint8)" or not str(size).isdigit():
            raise HistoscanInputError(
                f"{self.path}: not a histoscan export (input {inp.name} {inp.type} {inp.shape})"
            )
        self.input_name = inp.name
        self.raw = raw
        self.device = "cuda" if CUDA_PROVIDER in self.session.get_providers() else "cpu"
        if self.device == "cpu" and str(device).startswith("cuda"):  # ONNX Runtime fell back (e.g. no cuDNN)
            raise HistoscanInputError(
                f"--device {device}: ONNX Runtime could not start its CUDA provider for {self.path} "
                "(check the CUDA and cuDNN libraries onnxruntime-gpu needs, or use cpu or auto)"
            )
        run = RunDir(self.path.parent) if RunDir.is_run(self.path.parent) else None
        facts: dict[str, Any] = {
            "model": raw.get("model", "unknown"),
            "image_size": int(size),
            "mpp": float(raw["mpp"]) if raw.get("mpp") else None,
            "fit": raw.get("fit", "pad"),
        }
        self.card = ModelCard(
            **facts,
            threshold=float(raw.get("threshold", DEFAULT_THRESHOLD)),
            threshold_source=raw.get(
                "threshold_source",
                "ONNX metadata (chosen on the run's validation split)"
                if "threshold" in raw
                else f"default {DEFAULT_THRESHOLD:g} (the ONNX model carries no threshold)",
            ),
            normalisation=raw.get("normalisation", "imagenet mean/std on [0,1] RGB"),
            stain=raw.get("stain", "none"),
            backend="onnx",
            source=str(source if source is not None else self.path),
            weights=str(self.path),
            run_dir=str(run.path) if run is not None else None,
            config=_config(raw, facts),
            temperature=float(raw.get("temperature", 1.0)),  # inside the graph already; said, not applied
        )

    def training_data(self) -> dict | None:
        """RUN/data.json when the export lies in its run folder, else the export's training_data metadata."""
        info = super().training_data()
        if info:
            return info
        try:
            info = json.loads(self.raw.get("training_data") or "{}")
        except (ValueError, TypeError):
            return None
        return info if isinstance(info, dict) else None

    def __call__(self, images: np.ndarray) -> np.ndarray:
        images = np.asarray(images)
        self.check_images(images)
        out = self.session.run([OUTPUT_NAMES[0]], {self.input_name: np.ascontiguousarray(images)})[0]
        return np.asarray(out, np.float32).reshape(-1)
