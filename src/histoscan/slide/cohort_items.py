"""A cohort's slides: listing a folder or CSV, file-name-safe ids, and the keys that make a slide "done"."""

from __future__ import annotations

import csv
import hashlib
import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path

from histoscan.errors import HistoscanInputError
from histoscan.folders import CohortDir
from histoscan.inference.card import ModelCard
from histoscan.slide.tiles import SlideOptions
from histoscan.utils.digest import file_digest

SLIDE_SUFFIXES = (".svs", ".tif", ".tiff", ".ndpi", ".mrxs", ".scn", ".bif", ".svslide")
RESERVED_IDS = CohortDir.RESERVED  # names the cohort folder itself uses (ids never start with ".")
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_MIB = 1 << 20


@dataclass(frozen=True)
class CohortItem:
    """One slide of a cohort: its id (DIR/<id>/), path, level-0 µm/px from the CSV (None: metadata), and its
    outlines (`slides --truth`; None: mapped, not scored)."""

    id: str
    path: Path
    mpp: float | None = None
    truth: Path | None = None


def list_cohort(source: str | Path, exclude: str | Path | None = None) -> list[CohortItem]:
    """The slides of INPUT: a folder (searched recursively) or a CSV with `path` and optional `mpp`, `id`.

    Folder: every .svs/.tif/.tiff/.ndpi/.mrxs/.scn/.bif/.svslide file not under a hidden folder (nor under
    `exclude`, the output folder), sorted; ids are the path relative to INPUT without suffix, "/" -> "__".
    CSV: paths relative to the CSV's folder; an empty `mpp` or `id` cell means "from the slide".
    Derived ids are made file-name safe and unique (`-2`, `-3`... in listing order); ids given in the CSV
    must already be both.

    Raises:
        HistoscanInputError: INPUT missing, no slides, or a bad CSV (naming the file and line).
    """
    src = Path(source).expanduser().absolute()  # workers on other nodes have another working folder
    if src.is_dir():
        items = _list_folder(src, Path(exclude).resolve() if exclude else None)
    elif src.is_file() and src.suffix.lower() == ".csv":
        items = _list_csv(src)
    elif src.exists():
        raise HistoscanInputError(
            f"{src}: INPUT must be a folder of slides or a CSV with a path column (optional mpp, id)"
        )
    else:
        raise HistoscanInputError(f"{src}: no such folder or CSV")
    if not items:
        raise HistoscanInputError(f"{src}: no slides ({', '.join(SLIDE_SUFFIXES)})")
    return items


def _list_folder(root: Path, exclude: Path | None) -> list[CohortItem]:
    paths = []
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root)
        if p.suffix.lower() not in SLIDE_SUFFIXES or any(part.startswith(".") for part in rel.parts):
            continue
        if exclude is not None and p.resolve().is_relative_to(exclude):
            continue
        if p.is_file():
            paths.append((p, "__".join(rel.with_suffix("").parts)))
    ids = unique_ids([name for _, name in paths])
    return [CohortItem(i, p) for i, (p, _) in zip(ids, paths, strict=True)]


def _list_csv(path: Path) -> list[CohortItem]:
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            fields = [c.strip().lower() for c in reader.fieldnames or []]
            if "path" not in fields:
                raise HistoscanInputError(f"{path}: line 1: no 'path' column (columns: path[,mpp,id])")
            reader.fieldnames = fields
            rows = [(reader.line_num, r) for r in reader]
    except UnicodeDecodeError as e:
        raise HistoscanInputError(f"{path}: not a text CSV ({e.reason})") from None
    except csv.Error as e:
        raise HistoscanInputError(f"{path}: bad CSV ({e})") from None
    given: dict[str, int] = {}
    seen: dict[Path, int] = {}
    parsed = []
    for line, r in rows:
        raw = (r.get("path") or "").strip()
        if not raw:
            raise HistoscanInputError(f"{path}: line {line}: empty path")
        p = Path(raw).expanduser()
        p = p if p.is_absolute() else path.parent / p
        key = p.resolve()
        if key in seen:
            raise HistoscanInputError(f"{path}: line {line}: {raw} repeats line {seen[key]}")
        seen[key] = line
        mpp = _parse_mpp(r.get("mpp"), path, line)
        sid = (r.get("id") or "").strip()
        if sid:
            if safe_id(sid) != sid or sid.lower() in RESERVED_IDS:
                raise HistoscanInputError(
                    f"{path}: line {line}: id {sid!r} is not a safe folder name (letters, digits, . _ -; "
                    "not starting with '.')"
                )
            if sid.lower() in given:
                raise HistoscanInputError(
                    f"{path}: line {line}: id {sid!r} repeats line {given[sid.lower()]}"
                )
            given[sid.lower()] = line
        parsed.append((p, sid, mpp))
    derived = unique_ids([p.stem for p, sid, _ in parsed if not sid], taken=set(given))
    it = iter(derived)
    return [CohortItem(sid or next(it), p, mpp) for p, sid, mpp in parsed]


def _parse_mpp(cell: str | None, path: Path, line: int) -> float | None:
    cell = (cell or "").strip()
    if not cell:
        return None
    try:
        mpp = float(cell)
    except ValueError:
        mpp = float("nan")
    if not mpp > 0 or mpp == float("inf"):
        raise HistoscanInputError(f"{path}: line {line}: mpp {cell!r} is not a positive µm/px")
    return mpp


def safe_id(name: str) -> str:
    """`name` as a file-name-safe id: runs of characters other than letters, digits, . _ - become "_"."""
    s = _UNSAFE.sub("_", name).lstrip(".-_")[:120].rstrip(".")
    return s or "slide"


def unique_ids(names: list[str], taken: set[str] | None = None) -> list[str]:
    """Safe ids for `names`, unique case-insensitively (also against `taken`): repeats get -2, -3..."""
    used = {t.lower() for t in taken or ()} | RESERVED_IDS
    out = []
    for name in names:
        base = safe_id(name)
        sid, k = base, 1
        while sid.lower() in used:
            k += 1
            sid = f"{base}-{k}"
        used.add(sid.lower())
        out.append(sid)
    return out


def slide_fingerprint(path: str | Path) -> str:
    """16 hex digits of SHA-256 over the resolved path, size, mtime (ns) and the first and last MiB.

    Cheap (at most 2 MiB read) and changes when the file is replaced, edited or moved. For formats whose
    pixels live in companion files (.mrxs) only the index file is fingerprinted.

    Raises:
        OSError: the file cannot be read.
    """
    p = Path(path).resolve()
    st = p.stat()
    h = hashlib.sha256(f"{p}\0{st.st_size}\0{st.st_mtime_ns}\0".encode())
    with p.open("rb") as f:
        h.update(f.read(_MIB))
        if st.st_size > _MIB:
            f.seek(max(_MIB, st.st_size - _MIB))
            h.update(f.read(_MIB))
    return h.hexdigest()[:16]


def model_id(card: ModelCard) -> str:
    """`<model name>@<first 12 hex of the weights file's SHA-256>`, e.g. "simple-cnn@3f2a9c01b4d7"."""
    return f"{card.model}@{file_digest(card.weights)}"


def settings_key(card: ModelCard, options: SlideOptions, item: CohortItem) -> str:
    """12 hex digits over what changes a slide's outputs besides slide and weights: the effective slide and
    model µm/px, threshold, stride, smoothing, level, min tissue, Grad-CAM count and thumbnail size (not batch
    size, reader threads or reader)."""
    o = asdict(options)
    keep = {k: o[k] for k in ("stride", "smooth", "level", "min_tissue", "explain", "thumbnail_size")}
    keep["mpp"] = item.mpp if item.mpp is not None else options.mpp
    keep["model_mpp"] = options.model_mpp or card.mpp
    keep["threshold"] = card.threshold if options.threshold is None else options.threshold
    keep["image_size"] = card.image_size
    if item.truth is not None:  # new or edited outlines: the slide is scored again
        st = item.truth.stat()
        keep["truth"] = [str(item.truth.resolve()), st.st_size, st.st_mtime_ns, options.label_map]
    return hashlib.sha256(json.dumps(keep, sort_keys=True).encode()).hexdigest()[:12]
