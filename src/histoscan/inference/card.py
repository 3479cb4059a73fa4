"""ModelCard: the frozen facts a model carries into every stage (size, µm/px, fit, threshold, preprocessing)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from histoscan.config import TrainConfig
from histoscan.folders import RunDir
from histoscan.scoring import DEFAULT_THRESHOLD


@dataclass(frozen=True)
class ModelCard:
    """What a trained model expects and how it decides; built once when a model is loaded.

    Attributes:
        model: the model id as `histoscan.models.REGISTRY` spells it (simple-cnn, resnet50-head, resnet18,
            ...; `--model` of train), or timm:<name> / torchvision:<name>.
        image_size: patch side in px the model takes (uint8 S x S x 3).
        mpp: µm/px of the training patches (None when unknown).
        fit: how images of another size are fitted ("pad" or "resize"), as in training.
        threshold: decision threshold on the tumour probability.
        threshold_source: where the threshold came from (said in reports and summaries).
        normalisation: the input normalisation inside the graph.
        stain: stain normaliser method inside the graph ("none", "macenko", "reinhard").
        backend: "torch" or "onnx".
        source: the path the model was loaded from (run folder, checkpoint or .onnx).
        weights: the weights file (checkpoint or .onnx).
        run_dir: the run folder, when the model belongs to one.
        config: the training configuration (rebuilt from ONNX metadata for an export).
        temperature: the calibration temperature the logits are divided by (1.0: uncalibrated); already
            applied by the predictor (and inside an ONNX export's graph), recorded here to be said.
    """

    model: str
    image_size: int
    mpp: float | None
    fit: str
    threshold: float
    threshold_source: str
    normalisation: str
    stain: str
    backend: str
    source: str
    weights: str
    run_dir: str | None = None
    config: TrainConfig | None = field(default=None, compare=False, repr=False)
    temperature: float = 1.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict (the config as a plain dict)."""
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "config"}
        d["config"] = self.config.to_dict() if self.config is not None else None
        return d

    def describe(self) -> str:
        """One line for console summaries."""
        mpp = "?" if self.mpp is None else f"{self.mpp:g}"
        calibrated = f", calibrated T={self.temperature:.3g}" if self.temperature != 1.0 else ""
        return (
            f"{self.model} ({self.backend}, {self.image_size} px at {mpp} µm/px{calibrated}, threshold "
            f"{self.threshold:.3g} from {self.threshold_source})"
        )


def threshold_fields(info: dict[str, Any] | None) -> tuple[float, str]:
    """(threshold, source) from a run's threshold.json record (None: the default threshold, said so)."""
    if info is None:
        return DEFAULT_THRESHOLD, f"default {DEFAULT_THRESHOLD:g} (the run has no {RunDir.THRESHOLD})"
    method = info.get("method", "?")
    on = "calibrated validation probabilities" if info.get("calibrated") else "the validation split"
    return float(info["threshold"]), f"{RunDir.THRESHOLD}: {method}, chosen on {on}"
