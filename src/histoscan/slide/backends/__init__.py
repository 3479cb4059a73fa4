"""Slide-reader backends, one module per library, kept apart from the factory that picks one
(`histoscan.slide.io.open_slide`). A backend module imports its library at the top and is itself imported
only when that backend is used."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from histoscan.errors import HistoscanInputError
from histoscan.slide.backends.base import SlideReader

BACKENDS = ("openslide", "tiffslide")
# "tifffile" named the hand-written tifffile reader that the tiffslide backend replaced; still accepted
ALIASES = {"tifffile": "tiffslide"}


def backend(name: str) -> Callable[[Path], SlideReader]:
    """The opener (path -> SlideReader) of backend `name` (or an alias), its library imported now."""
    match ALIASES.get(name, name):
        case "openslide":
            from histoscan.slide.backends.openslide import OpenSlideReader

            return OpenSlideReader.open
        case "tiffslide":
            from histoscan.slide.backends.tiffslide import TiffSlideReader

            return TiffSlideReader.open
    raise HistoscanInputError(f"--reader {name}: must be auto or one of {', '.join(BACKENDS)}")
