"""StoreDir: the one owner of a patch store's layout (what `histoscan prepare` writes).

images.npy (uint8 N×S×S×3, memory-mapped when read), index.csv (id,label,group,source,split), meta.json
(format, size, counts, checksum, ...) and the optional fitted.csv (every patch fitted to the store's size)
and skipped.csv (every file skipped as unreadable); stores written before those two lack them.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from histoscan.utils.fs import atomic_write_json


class StoreDir:
    """A patch store folder: where each of its files is."""

    META = "meta.json"
    INDEX = "index.csv"
    IMAGES = "images.npy"
    FITTED = "fitted.csv"
    SKIPPED = "skipped.csv"
    MANIFEST = "tiles-by-slide.csv"  # a store cut from annotated slides (`histoscan tiles`): one row per slide
    PARTS = ".parts"  # beside the store while `histoscan tiles` runs: .<store>.parts/<slide id>.npz / .json
    FILES: ClassVar[tuple[str, ...]] = (META, INDEX, IMAGES)  # the files every store has

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"StoreDir({str(self.path)!r})"

    @property
    def manifest_path(self) -> Path:
        return self.path / self.MANIFEST

    @property
    def parts_path(self) -> Path:
        """Where `histoscan tiles` keeps the slides it has cut until the store is packed (resumable)."""
        return self.path.parent / f".{self.path.name}{self.PARTS}"

    @classmethod
    def is_store(cls, path: str | Path) -> bool:
        """Whether `path` is a prepared store folder (meta.json + index.csv + images.npy)."""
        p = Path(path)
        return p.is_dir() and all((p / f).is_file() for f in cls.FILES)

    def missing(self) -> list[str]:
        """The store files this folder lacks."""
        return [f for f in self.FILES if not (self.path / f).is_file()]

    @property
    def meta(self) -> Path:
        return self.path / self.META

    @property
    def index(self) -> Path:
        return self.path / self.INDEX

    @property
    def images(self) -> Path:
        return self.path / self.IMAGES

    @property
    def fitted(self) -> Path:
        return self.path / self.FITTED

    @property
    def skipped(self) -> Path:
        return self.path / self.SKIPPED

    def files(self) -> list[Path]:
        """The paths of the files every store has."""
        return [self.path / f for f in self.FILES]

    def write_meta(self, meta: dict) -> None:
        atomic_write_json(self.meta, meta)
