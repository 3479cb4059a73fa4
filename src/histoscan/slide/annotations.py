"""Pathologists' outlines on whole slides: Camelyon ASAP XML and QuPath GeoJSON, read into shapely geometry.

Both formats give polygons in level-0 pixel coordinates. Each outline carries a class name (ASAP: its
``PartOfGroup``; QuPath: ``properties.classification.name``) that a label map turns into ``tumour``, ``normal``
or ``ignore``. The defaults follow the public sets: Camelyon16 groups ``_0`` / ``_1`` / ``Tumor`` and Camelyon17
``metastases`` are tumour, ``_2`` / ``Exclusion`` is normal tissue inside a tumour outline (cut out of it);
QuPath's ``Tumor`` / ``Tumour`` are tumour and ``Normal`` / ``Stroma`` / ``Other`` normal.

Bad files stop with one line naming the file (unreadable or malformed, every shape outside the slide, a class with
no label). Repairable problems are counted instead (``SlideAnnotations.warnings``, written to a manifest): a
self-intersecting polygon is repaired (shapely.make_valid), a shape partly outside the slide is clipped, an empty
one dropped.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import shapely
from shapely.geometry import MultiPolygon, Polygon, box, shape
from shapely.geometry.base import BaseGeometry

from histoscan.errors import HistoscanInputError

Label = Literal["tumour", "normal", "ignore"]
LABELS: tuple[str, ...] = ("tumour", "normal", "ignore")
SUFFIXES = (".xml", ".geojson", ".json")  # an annotation file per slide: <slide stem><suffix>
DEFAULT_LABELS: dict[str, str] = {
    # Camelyon16 (ASAP groups) and Camelyon17
    "_0": "tumour", "_1": "tumour", "Tumor": "tumour", "tumor": "tumour", "metastases": "tumour",
    "_2": "normal", "Exclusion": "normal", "exclusion": "normal",
    # QuPath classes
    "Tumour": "tumour", "tumour": "tumour", "Normal": "normal", "normal": "normal", "Stroma": "normal",
    "Other": "normal", "Necrosis": "ignore", "Ignore*": "ignore", "Region*": "ignore",
}  # fmt: skip


def parse_label_map(text: str | None) -> dict[str, str]:
    """``NAME=LABEL,NAME=LABEL`` (LABEL: tumour, normal or ignore) -> dict; raises naming the bad entry."""
    out: dict[str, str] = {}
    for item in (s.strip() for s in (text or "").split(",")):
        if not item:
            continue
        name, sep, label = item.rpartition("=")
        if not sep or not name or label not in LABELS:
            raise HistoscanInputError(
                f"--label-map {text}: {item!r} is not NAME=LABEL with LABEL one of {', '.join(LABELS)}"
            )
        out[name] = label
    return out


@dataclass
class SlideAnnotations:
    """One slide's outlines: tumour (with its normal cut-outs removed) and explicitly normal regions."""

    path: Path
    tumour: BaseGeometry
    normal: BaseGeometry
    shapes: Counter[str] = field(default_factory=Counter)  # label -> outlines kept
    warnings: Counter[str] = field(default_factory=Counter)  # repaired / clipped / dropped-empty -> count

    def lesions(self) -> list[Polygon]:
        """Connected tumour regions (Camelyon16's lesions), largest first."""
        parts = _polygons(self.tumour)
        return sorted(parts, key=lambda p: -p.area)

    def summary(self) -> dict[str, Any]:
        """JSON-ready counts for a manifest."""
        return {
            "file": str(self.path),
            "shapes": dict(self.shapes),
            "lesions": len(self.lesions()),
            "tumour_area_px": round(float(self.tumour.area), 1),
            "warnings": dict(self.warnings),
        }


def _polygons(geom: BaseGeometry) -> list[Polygon]:
    if geom.is_empty:
        return []
    if isinstance(geom, Polygon):
        return [geom]
    return [g for part in getattr(geom, "geoms", []) for g in _polygons(part)]


def annotation_files(slides: Sequence[str | Path], annotations: str | Path, option: str) -> list[Path | None]:
    """The annotation file of each slide (:func:`annotation_for`); a single file serves a single slide only
    (`option`, e.g. --annotations or --truth, names it in the error)."""
    a = Path(annotations)
    if a.is_file() and len(slides) > 1:
        raise HistoscanInputError(
            f"{option} {a}: one file serves one slide; give a folder of <slide stem>.xml / .geojson files for "
            f"{len(slides)} slides"
        )
    return [annotation_for(s, a) for s in slides]


def annotation_for(slide: str | Path, annotations: str | Path) -> Path | None:
    """The annotation file of `slide`: `annotations` itself when it is a file, else
    ``annotations/<slide stem>.xml`` / ``.geojson`` / ``.json`` when present (None: the slide has no outlines)."""
    a = Path(annotations)
    if a.is_file():
        return a
    if not a.is_dir():
        raise HistoscanInputError(f"--annotations {a}: no such file or folder")
    stem = Path(slide).stem
    found = [a / f"{stem}{s}" for s in SUFFIXES if (a / f"{stem}{s}").is_file()]
    if len(found) > 1:
        raise HistoscanInputError(f"--annotations {a}: {stem} has {len(found)} files ({', '.join(map(str, found))})")
    return found[0] if found else None


def read_annotations(
    path: str | Path, dimensions: tuple[int, int], label_map: Mapping[str, str] | None = None
) -> SlideAnnotations:
    """Read ASAP XML or QuPath GeoJSON outlines of a slide of level-0 size `dimensions` (width, height).

    Args:
        path: the annotation file (.xml: ASAP; .geojson / .json: GeoJSON).
        dimensions: the slide's level-0 (width, height) in pixels: outlines are clipped to it.
        label_map: class name -> tumour / normal / ignore, over DEFAULT_LABELS (a name ending in ``*`` is a
            prefix).

    Raises:
        HistoscanInputError: unreadable or malformed file, a class with no label, every outline outside the slide.
    """
    p = Path(path)
    labels = {**DEFAULT_LABELS, **dict(label_map or {})}
    try:
        raw = p.read_bytes()
    except OSError as e:
        raise HistoscanInputError(f"{p}: cannot read ({e.strerror or e})") from None
    shapes = _read_asap(p, raw) if p.suffix.lower() == ".xml" else _read_geojson(p, raw)
    if not shapes:
        raise HistoscanInputError(f"{p}: no outlines (polygons) in the file")
    frame = box(0, 0, float(dimensions[0]), float(dimensions[1]))
    kept: dict[str, list[BaseGeometry]] = {"tumour": [], "normal": []}
    counts: Counter[str] = Counter()
    warnings: Counter[str] = Counter()
    outside = 0
    for name, geom in shapes:
        label = _label(name, labels)
        if label is None:
            raise HistoscanInputError(
                f"{p}: class {name!r} has no label (map it: --label-map '{name}=tumour', =normal or =ignore)"
            )
        if label == "ignore":
            continue
        if not geom.is_empty and not geom.is_valid:
            geom = _areal(shapely.make_valid(geom))
            warnings["repaired self-intersecting"] += 1
        if geom.is_empty or geom.area <= 0:
            warnings["dropped empty"] += 1
            continue
        if not geom.intersects(frame) or geom.intersection(frame).area <= 0:
            outside += 1
            continue
        if not frame.contains(geom):
            geom = _areal(geom.intersection(frame))
            warnings["clipped at the slide edge"] += 1
        kept[label].append(geom)
        counts[label] += 1
    if outside and not (kept["tumour"] or kept["normal"]):
        raise HistoscanInputError(
            f"{p}: every outline lies outside the slide ({dimensions[0]} x {dimensions[1]} px at level 0); "
            "are the coordinates at level 0?"
        )
    if outside:
        warnings["dropped outside the slide"] += outside
    normal = shapely.union_all(kept["normal"]) if kept["normal"] else Polygon()
    tumour = shapely.union_all(kept["tumour"]) if kept["tumour"] else Polygon()
    tumour = _areal(tumour.difference(normal)) if not normal.is_empty else tumour
    return SlideAnnotations(p, tumour, normal, counts, warnings)


def _label(name: str, labels: Mapping[str, str]) -> str | None:
    if name in labels:
        return labels[name]
    for key, label in labels.items():
        if key.endswith("*") and name.startswith(key[:-1]):
            return label
    return None


def _areal(geom: BaseGeometry) -> BaseGeometry:
    """The polygonal part of a geometry (make_valid / intersection may add lines or points)."""
    polys = _polygons(geom)
    return MultiPolygon(polys) if len(polys) > 1 else (polys[0] if polys else Polygon())


def _read_asap(p: Path, raw: bytes) -> list[tuple[str, BaseGeometry]]:
    try:
        root = ET.fromstring(raw)
    except ET.ParseError as e:
        raise HistoscanInputError(f"{p}: not valid ASAP XML ({e})") from None
    if root.tag != "ASAP_Annotations":
        raise HistoscanInputError(f"{p}: root element <{root.tag}>, expected <ASAP_Annotations> (ASAP XML)")
    out: list[tuple[str, BaseGeometry]] = []
    for i, a in enumerate(root.iter("Annotation")):
        where = f"Annotation {i + 1} ({a.get('Name', '?')})"
        kind = (a.get("Type") or "Polygon").lower()
        if kind not in ("polygon", "spline", "rectangle"):
            continue  # dots and measurement lines carry no area
        try:
            coords = sorted(
                ((int(c.get("Order", j)), float(c.get("X", "")), float(c.get("Y", "")))
                 for j, c in enumerate(a.iter("Coordinate"))),
                key=lambda t: t[0],
            )  # fmt: skip
        except ValueError:
            raise HistoscanInputError(f"{p}: {where}: a Coordinate without numeric X / Y") from None
        pts = [(x, y) for _, x, y in coords]
        geom = Polygon(pts) if len(pts) >= 3 else Polygon()
        out.append((a.get("PartOfGroup") or "None", geom))
    return out


def _read_geojson(p: Path, raw: bytes) -> list[tuple[str, BaseGeometry]]:
    try:
        doc = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise HistoscanInputError(f"{p}: not valid JSON ({e})") from None
    if isinstance(doc, dict) and doc.get("type") == "FeatureCollection":
        features = doc.get("features")
    elif isinstance(doc, dict) and doc.get("type") == "Feature":
        features = [doc]
    else:
        features = doc  # QuPath's "export as a bare list of features"
    if not isinstance(features, list):
        raise HistoscanInputError(f"{p}: not GeoJSON (a FeatureCollection or a list of Features)")
    out: list[tuple[str, BaseGeometry]] = []
    for i, f in enumerate(features):
        if not isinstance(f, dict) or not isinstance(f.get("geometry"), dict):
            raise HistoscanInputError(f"{p}: feature {i + 1} has no geometry")
        gtype = f["geometry"].get("type")
        if gtype not in ("Polygon", "MultiPolygon"):
            continue  # points and lines carry no area
        try:
            geom = shape(f["geometry"])
        except (ValueError, TypeError, AttributeError, IndexError, shapely.errors.GEOSException) as e:
            raise HistoscanInputError(f"{p}: feature {i + 1}: bad {gtype} coordinates ({e})") from None
        props = f.get("properties") or {}
        cls = props.get("classification") or {}
        name = cls.get("name") if isinstance(cls, dict) else cls
        out.append((str(name) if name else props.get("name") or "Unclassified", geom))
    return out


def tile_labels(
    ann: SlideAnnotations,
    boxes: np.ndarray,
    rule: Literal["centre", "fraction"] = "centre",
    centre: float = 32 / 96,
    fraction: float = 0.5,
    unannotated: Literal["normal", "skip"] = "normal",
) -> np.ndarray:
    """Label tiles (level-0 boxes x0, y0, x1, y1): 1 tumour, 0 normal, -1 skipped.

    ``centre`` (PCam's rule): tumour if any tumour pixel lies in the tile's central square of side
    ``centre`` x the tile (32 px of a 96 px tile). ``fraction``: tumour if at least ``fraction`` of the tile is
    tumour. Other tiles are normal; with ``unannotated="skip"`` only those inside a normal outline are (the rest
    of an unannotated slide area is skipped: partly annotated QuPath slides).
    """
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    tiles = shapely.box(boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3])
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    cx, cy = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
    half_w, half_h = w * centre / 2, h * centre / 2
    centres = shapely.box(cx - half_w, cy - half_h, cx + half_w, cy + half_h)
    tumour = ann.tumour
    shapely.prepare(tumour)
    if rule == "centre":
        hit = shapely.intersects(tumour, centres)
        if hit.any():  # "a tumour pixel": the overlap has area, a shared edge is not a pixel
            hit[hit] = shapely.area(shapely.intersection(centres[hit], tumour)) > 0
    elif rule == "fraction":
        hit = shapely.area(shapely.intersection(tiles, tumour)) >= fraction * w * h
    else:
        raise HistoscanInputError(f"--label-rule {rule}: choose centre or fraction")
    labels = hit.astype(np.int64)
    if unannotated == "skip":
        normal = ann.normal
        shapely.prepare(normal)
        inside = shapely.covers(normal, centres) if not normal.is_empty else np.zeros(len(boxes), bool)
        labels[(labels == 0) & ~inside] = -1
    return labels

