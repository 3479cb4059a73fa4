"""ExplainDir: the one owner of an explanation folder's layout (what `histoscan explain` writes; a slide
map's explain/ too).

<id>_gradcam.png per image (patch and overlay side by side), probabilities.csv (id,probability,label) and
gradcam.npz (the raw maps with their context).
"""

from __future__ import annotations

from pathlib import Path


class ExplainDir:
    """An explanation folder: where each of its files is."""

    OVERLAY = "_gradcam.png"  # suffix of each image's overlay, after its file-name-safe id
    PROBABILITIES = "probabilities.csv"
    MAPS = "gradcam.npz"

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"ExplainDir({str(self.path)!r})"

    def overlay(self, name: str) -> Path:
        """The overlay PNG of the image whose file-name-safe id is `name`."""
        return self.path / f"{name}{self.OVERLAY}"

    @property
    def probabilities(self) -> Path:
        return self.path / self.PROBABILITIES

    @property
    def maps(self) -> Path:
        return self.path / self.MAPS
