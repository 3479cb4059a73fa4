"""Stratified train/val/test splits and k folds, grouped by patient or slide; class-balanced sampling weights."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from histoscan.errors import HistoscanInputError

SPLITS = ("train", "val", "test")


def assign_groups(
    labels: np.ndarray, groups: Sequence[str] | None, fractions: Sequence[float], seed: int
) -> np.ndarray:
    """Assign every row to one of len(fractions) parts so no group spans two parts and classes stay stratified.

    Rows without a group (None or "") are their own group. Groups are taken largest first (random tie order) and
    each goes to the part that is furthest below its target counts for the group's class mix.

    Args:
        labels: 0/1 per row.
        groups: patient/slide id per row, or None when unknown.
        fractions: target share of each part (normalised to sum 1).
        seed: seeds the group order.

    Returns:
        Part index per row (int array).
    """
    labels = np.asarray(labels).astype(np.int64)
    n = len(labels)
    if groups is None:
        keys = np.arange(n).astype(str)
    else:
        keys = np.array([g if g else f"__row{i}" for i, g in enumerate(groups)])
    uniq, inverse = np.unique(keys, return_inverse=True)
    pos = np.bincount(inverse, weights=labels == 1, minlength=len(uniq))
    neg = np.bincount(inverse, weights=labels == 0, minlength=len(uniq))
    frac = np.asarray(fractions, dtype=float)
    frac = frac / frac.sum()
    target = np.stack([frac * pos.sum(), frac * neg.sum()], 1)  # parts x (pos, neg)
    have = np.zeros_like(target)
    rng = np.random.default_rng(seed)
    order = np.lexsort((rng.random(len(uniq)), -(pos + neg)))
    part_of_group = np.empty(len(uniq), dtype=np.int64)
    for g in order:
        mix = np.array([pos[g], neg[g]])
        # relative deficit of each part, weighted by this group's class mix
        need = ((target - have) / np.maximum(target, 1e-9) * mix).sum(1) / max(mix.sum(), 1)
        best = int(np.argmax(need + 1e-12 * rng.random(len(frac))))
        part_of_group[g] = best
        have[best] += mix
    return part_of_group[inverse]


def make_split(
    labels: np.ndarray,
    groups: Sequence[str] | None,
    val_fraction: float,
    test_fraction: float,
    seed: int,
    predefined: Sequence[str] | None = None,
) -> np.ndarray:
    """ "train"/"val"/"test" per row: predefined splits (e.g. PCam's files) win, else grouped stratified."""
    if not 0 <= val_fraction < 1 or not 0 <= test_fraction < 1 or val_fraction + test_fraction >= 1:
        raise HistoscanInputError(
            f"--val-fraction {val_fraction} / --test-fraction {test_fraction}: must sum below 1"
        )
    if predefined is not None and len(predefined) and all(s in SPLITS for s in predefined):
        out = np.asarray(predefined, dtype=object)
        if (out == "val").any():
            return out
        # e.g. only a train file given: carve validation from it below, keep the rest as predefined
        train_rows = np.flatnonzero(out == "train")
        sub = make_split(
            np.asarray(labels)[train_rows],
            None if groups is None else [groups[i] for i in train_rows],
            val_fraction,
            0.0,
            seed,
        )
        out[train_rows] = sub
        return out
    fracs = [1 - val_fraction - test_fraction, val_fraction, test_fraction]
    parts = assign_groups(labels, groups, [f for f in fracs if f > 0], seed)
    names = np.array([s for s, f in zip(SPLITS, fracs, strict=True) if f > 0], dtype=object)
    return names[parts]


def make_folds(labels: np.ndarray, groups: Sequence[str] | None, k: int, seed: int) -> np.ndarray:
    """Fold index 0..k-1 per row for grouped stratified k-fold cross-validation."""
    if k < 2:
        raise HistoscanInputError(f"--folds {k}: need at least 2")
    return assign_groups(labels, groups, [1.0] * k, seed)


def check_grouping(split: np.ndarray, groups: Sequence[str] | None) -> None:
    """Raise if any group appears in two splits (a patient leak)."""
    if groups is None:
        return
    seen: dict[str, str] = {}
    for g, s in zip(groups, split, strict=True):
        if g and seen.setdefault(g, s) != s:
            raise AssertionError(f"group {g} is in both {seen[g]} and {s}")


def balanced_weights(labels: np.ndarray) -> np.ndarray:
    """Per-row sampling weights giving each class an equal expected share (the PyTorch seed's 80k/80k)."""
    labels = np.asarray(labels).astype(np.int64)
    counts = np.bincount(labels, minlength=2).astype(float)
    return 1.0 / counts[labels]
