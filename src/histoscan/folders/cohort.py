"""CohortDir: the one owner of a cohort output folder's layout (what `histoscan slides` writes).

<id>/ per slide (a :class:`SlideDir` plus `.done.json`, the marker that records what made it), cohort.csv (one
row per slide), index.html, and hidden state: .cohort.json (marks the folder as a cohort), .lock (one run at
a time), .work/ (slides being built) and .failed/<id>.json (each slide's last failure).
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar


class CohortDir:
    """A cohort folder: where each of its files and each slide's folder is."""

    CSV = "cohort.csv"
    INDEX = "index.html"
    MARK = ".cohort.json"
    LOCK = ".lock"
    WORK = ".work"
    FAILED = ".failed"
    DONE = ".done.json"  # in each slide's folder
    RESERVED: ClassVar[frozenset[str]] = frozenset({CSV, INDEX})  # no slide id may take these names

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"CohortDir({str(self.path)!r})"

    @property
    def csv_path(self) -> Path:
        return self.path / self.CSV

    @property
    def index_path(self) -> Path:
        return self.path / self.INDEX

    @property
    def mark_path(self) -> Path:
        return self.path / self.MARK

    @property
    def lock_path(self) -> Path:
        return self.path / self.LOCK

    @property
    def work(self) -> Path:
        return self.path / self.WORK

    def is_cohort(self) -> bool:
        """Whether the folder was made by `histoscan slides` (has .cohort.json)."""
        return self.mark_path.is_file()

    def slide(self, slide_id: str) -> Path:
        """The finished folder of slide `slide_id`."""
        return self.path / slide_id

    def done_marker(self, folder: str | Path) -> Path:
        """.done.json of a slide folder (`folder`: a slide id of this cohort, or a staged slide folder)."""
        return (self.path / folder if isinstance(folder, str) else Path(folder)) / self.DONE

    def failure(self, slide_id: str) -> Path:
        """.failed/<id>.json: slide `slide_id`'s last failure."""
        return self.path / self.FAILED / f"{slide_id}.json"
