"""Colour code: stain normalisation (Macenko, Reinhard), colour-domain statistics and tissue detection.

`ops` holds the batched tensor helpers (the one optical density, the stained-pixel mask, masked statistics,
CIE L*a*b*); `normalise` the fitting and the normaliser modules, whose public API is re-exported here;
`domain` the resolution and colour checks of data against a model's training patches; `tissue` the tissue
region mask of a slide thumbnail. A lower layer: models (the normaliser inside the graph) and the stages use it.
"""

from histoscan.stain.normalise import (
    MacenkoNormaliser,
    ReinhardNormaliser,
    fit_stain,
    load_stain,
    normaliser_from_config,
    save_stain,
)

__all__ = [
    "MacenkoNormaliser",
    "ReinhardNormaliser",
    "fit_stain",
    "load_stain",
    "normaliser_from_config",
    "save_stain",
]
