"""Grouped stratified splits: no patient on two sides (on the real idc-breast labels), class balance, seeds."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from histoscan.data.splits import (
    assign_groups,
    balanced_weights,
    check_grouping,
    make_folds,
    make_split,
)
from histoscan.errors import HistoscanInputError
from histoscan.folders.run import read_split, write_split


@pytest.fixture(scope="module")
def idc_labels(idc_root: Path) -> tuple[np.ndarray, list[str]]:
    with (idc_root / "labels.csv").open() as f:
        rows = list(csv.DictReader(f))
    return np.array([int(r["label"]) for r in rows]), [r["patient"] for r in rows]


def test_idc_split_never_shares_a_patient(idc_labels):
    labels, groups = idc_labels
    split = make_split(labels, groups, 0.15, 0.15, seed=0)
    check_grouping(split, groups)  # raises on a leak
    sides = {s: {g for g, t in zip(groups, split, strict=True) if t == s} for s in ("train", "val", "test")}
    assert (
        not sides["train"] & sides["val"]
        and not sides["train"] & sides["test"]
        and not sides["val"] & sides["test"]
    )
    assert sum(len(v) for v in sides.values()) == len(set(groups)) == 195


def test_idc_split_is_stratified_and_sized(idc_labels):
    labels, groups = idc_labels
    split = make_split(labels, groups, 0.15, 0.15, seed=1)
    overall = labels.mean()
    for name, share in (("train", 0.70), ("val", 0.15), ("test", 0.15)):
        part = labels[split == name]
        assert abs(len(part) / len(labels) - share) < 0.03, name
        assert abs(part.mean() - overall) < 0.03, name


def test_split_is_seeded(idc_labels):
    labels, groups = idc_labels
    a = make_split(labels, groups, 0.15, 0.15, seed=3)
    assert (a == make_split(labels, groups, 0.15, 0.15, seed=3)).all()
    assert (a != make_split(labels, groups, 0.15, 0.15, seed=4)).any()


def test_folds_grouped_and_balanced(idc_labels):
    labels, groups = idc_labels
    folds = make_folds(labels, groups, 5, seed=0)
    check_grouping(folds.astype(str), groups)
    sizes = np.bincount(folds, minlength=5)
    assert sizes.min() > 0.8 * len(labels) / 5
    for k in range(5):
        assert abs(labels[folds == k].mean() - labels.mean()) < 0.04


def test_check_grouping_detects_a_leak():
    with pytest.raises(AssertionError, match="p1"):
        check_grouping(np.array(["train", "val"]), ["p1", "p1"])


def test_ungrouped_rows_split_individually():
    labels = np.array([0, 1] * 50)
    parts = assign_groups(labels, None, [0.5, 0.5], seed=0)
    assert np.bincount(parts).tolist() == [50, 50]
    assert labels[parts == 0].sum() == 25


def test_predefined_split_wins_and_carves_val_when_missing():
    labels = np.array([0, 1] * 20)
    pre = ["train"] * 30 + ["test"] * 10
    split = make_split(labels, None, 0.2, 0.15, seed=0, predefined=pre)
    assert (split[30:] == "test").all()
    assert set(split[:30]) == {"train", "val"} and (split[:30] == "val").sum() == 6
    full = ["train"] * 20 + ["val"] * 10 + ["test"] * 10
    assert list(make_split(labels, None, 0.2, 0.15, seed=0, predefined=full)) == full


def test_bad_fractions():
    with pytest.raises(HistoscanInputError, match="fraction"):
        make_split(np.array([0, 1]), None, 0.6, 0.5, seed=0)


def test_balanced_weights_equalise_classes():
    labels = np.array([0] * 90 + [1] * 10)
    w = balanced_weights(labels)
    assert w[labels == 0].sum() == pytest.approx(w[labels == 1].sum())


def test_split_csv_round_trip(tmp_path):
    write_split(tmp_path / "split.csv", ["a", "b"], np.array([0, 1]), ["p", "q"], np.array(["train", "val"]))
    assert read_split(tmp_path / "split.csv") == {"a": "train", "b": "val"}
