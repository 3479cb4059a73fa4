"""Stain normalisation (Macenko, Reinhard): fit a reference on patches, save/load it, build the torch module.

`ops` holds the batched tensor helpers (optical density, tissue masks, masked statistics, CIE L*a*b*);
`normalise` the fitting and the normaliser modules, whose public API is re-exported here.
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
