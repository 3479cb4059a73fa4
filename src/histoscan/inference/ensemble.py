"""An ensemble of runs as one Predictor: the fold runs of `histoscan cv` (OUT/fold-*/), logits averaged.

The members must take the same patch size, fit mode and resolution. Logits are averaged (as TTA does), and
the decision threshold is the median of the members' thresholds, each chosen on that member's validation
patients — never on data it is scored on.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from histoscan.errors import HistoscanInputError
from histoscan.folders import CvDir, RunDir
from histoscan.inference.base import Predictor
from histoscan.inference.card import ModelCard


def member_runs(path: str | Path) -> list[Path]:
    """The run folders of a cross-validation folder (OUT/fold-<k>/ with config.yaml), in fold order; [] if none."""
    return CvDir(path).fold_runs()


class EnsemblePredictor(Predictor):
    """Mean logit of member predictors (same image size, fit and µm/px); one ModelCard for all of them."""

    kind = "an ensemble of runs"

    def __init__(self, members: list[Predictor], source: str | Path):
        if len(members) < 2:
            raise HistoscanInputError(f"{source}: an ensemble needs at least two runs")
        cards = [m.card for m in members]
        first = cards[0]
        for c in cards[1:]:
            if (c.image_size, c.fit, c.mpp) != (first.image_size, first.fit, first.mpp):
                raise HistoscanInputError(
                    f"{source}: members differ ({first.weights}: {first.image_size} px, {first.fit}, "
                    f"{first.mpp} µm/px; {c.weights}: {c.image_size} px, {c.fit}, {c.mpp} µm/px)"
                )
        self.members = members
        self.device = members[0].device
        names = sorted({c.model for c in cards})
        thresholds = [c.threshold for c in cards]
        self.card = ModelCard(
            model=f"ensemble of {len(members)} x {'/'.join(names)}",
            image_size=first.image_size,
            mpp=first.mpp,
            fit=first.fit,
            threshold=float(np.median(thresholds)),
            threshold_source=f"median of the {len(members)} members' validation thresholds "
            f"({', '.join(f'{t:.3g}' for t in thresholds)})",
            normalisation=first.normalisation,
            stain=first.stain,
            backend=first.backend,
            source=str(source),
            weights=str(source),
            run_dir=None,
            config=first.config,
        )

    def training_runs(self) -> list[RunDir]:
        """Every member's run folder (for the check that evaluation data was not trained on)."""
        return [RunDir(m.card.run_dir) for m in self.members if m.card.run_dir]

    def __call__(self, images: np.ndarray | torch.Tensor) -> np.ndarray:
        return np.mean([np.asarray(m(images), np.float64) for m in self.members], axis=0).astype(np.float32)

    def stain_note(self, what: str = "patches") -> str | None:
        notes = [n for n in (m.stain_note(what) for m in self.members) if n]
        return notes[0] if notes else None
