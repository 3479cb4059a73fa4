"""A map scored against outlines: lesion cells, detections, Camelyon16's pooled FROC, tile AUC and Dice."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import shapely
from shapely.geometry import box

from histoscan.slide.annotations import SlideAnnotations
from histoscan.slide.truth import FP_PER_SLIDE, THRESHOLDS, detections, froc, lesion_cells, score_slide

CELL = 10.0


def _ann(*boxes: tuple[float, float, float, float]) -> SlideAnnotations:
    return SlideAnnotations(Path("t.xml"), tumour=shapely.union_all([box(*b) for b in boxes]), normal=box(0, 0, 0, 0))


def test_lesion_cells_hold_centres_and_tiny_lesions_own_one_cell() -> None:
    ann = _ann((0, 0, 30, 20), (60, 60, 63, 63))  # 3 x 2 cells, and one smaller than a cell
    lesions = lesion_cells(ann, (10, 10), CELL, 0.0)
    assert (lesions == 1).sum() == 6 and lesions[:2, :3].tolist() == [[1, 1, 1], [1, 1, 1]]
    assert (lesions == 2).sum() == 1 and lesions[6, 6] == 2
    shifted = lesion_cells(ann, (10, 10), CELL, 5.0)  # cells offset by half a cell: centres at 10, 20, 30 ...
    assert (shifted == 1).sum() == 2  # centres (10, 10) and (20, 10) lie inside 0..30 x 0..20; 30 is the edge


def test_detections_and_pooled_froc() -> None:
    ann = _ann((0, 0, 20, 20), (70, 70, 90, 90))
    lesions = lesion_cells(ann, (10, 10), CELL, 0.0)
    heat = np.full((10, 10), 0.1)
    heat[0:2, 0:2] = 0.9  # lesion 1 found at 0.9
    heat[4, 4] = 0.8  # a false positive region
    heat[8, 8] = 0.6  # lesion 2 found only at <= 0.6
    counts = detections(heat, lesions)
    at = {t: counts[i] for i, t in enumerate(THRESHOLDS)}
    assert at[0.85].tolist() == [1, 2, 0] and at[0.7].tolist() == [1, 2, 1] and at[0.5].tolist() == [2, 2, 1]
    assert at[0.05].tolist() == [2, 2, 0]  # everything called: one region covering both lesions, no FP
    f = froc([counts])
    assert f["sens_at_0.25_fp"] == 1.0 and f["score"] == 1.0  # the all-tissue region finds both with 0 FP
    # pooled over two slides: the second has no lesion and one false positive region at every threshold
    other = np.zeros_like(counts)
    other[:, 2] = 1
    pooled = froc([counts, other])
    assert pooled["sens_at_0.25_fp"] == 0.0 and pooled["sens_at_0.5_fp"] == 1.0
    assert pooled["score"] == pytest.approx(np.mean([0.0, 1, 1, 1, 1, 1]))
    assert set(pooled) == {f"sens_at_{f:g}_fp" for f in FP_PER_SLIDE} | {"score"}
    assert froc([other])["score"] is None  # no lesion anywhere


def test_score_slide_auc_dice_and_area() -> None:
    ann = _ann((0, 0, 40, 40))
    heat = np.full((10, 10), 0.2)
    heat[:4, :4] = 0.9
    heat[9, :] = np.nan  # glass row
    heat[0, 0] = 0.3  # one tumour cell missed at 0.5
    s = score_slide(heat, 0.5, ann, CELL, 0.0, cell_mm2=1e-4)
    assert s["lesions"] == 1 and s["tumour_cells"] == 16
    assert s["dice"] == pytest.approx(2 * 15 / (15 + 16))
    assert s["tile_auc"] == 1.0  # every tumour cell (0.9, and the missed 0.3) above every normal one (0.2)
    heat[5, 5] = 0.95  # a normal cell above all tumour cells: 16 of 16 x 74 pairs lost
    assert score_slide(heat, 0.5, ann, CELL, 0.0, 1e-4)["tile_auc"] == pytest.approx(1 - 16 / (16 * 74))
    assert s["true_mm2"] == pytest.approx(16 * 1e-4)
    assert len(s["detections"]["counts"]) == len(THRESHOLDS)
