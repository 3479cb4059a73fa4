"""Test helpers: a tiny labelled IDC store and run folders as histoscan train writes them (random weights).

The one builder of run folders for the whole suite (`make_run`); import it as `from run_fixtures import ...`
(pytest puts tests/ on sys.path, as tests/ has no __init__.py).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from histoscan.config import TrainConfig
from histoscan.data.store import PatchStore, prepare
from histoscan.models.classifier import build_classifier


def idc_manifest(idc_root: Path, out_csv: Path, patients: int = 6, per_class: int = 4) -> Path:
    """A manifest (absolute paths): `per_class` patches per class from the first patients having both."""
    with (idc_root / "labels.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    by_patient: dict[str, dict[str, list[str]]] = {}
    for r in rows:
        by_patient.setdefault(r["patient"], {"0": [], "1": []})[r["label"]].append(r["path"])
    chosen = [p for p, c in by_patient.items() if len(c["0"]) >= per_class and len(c["1"]) >= per_class][
        :patients
    ]
    out_csv.parent.mkdir(parents=True, exist_ok=True)
    with out_csv.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label", "patient"])
        for p in chosen:
            for label in ("0", "1"):
                for rel in by_patient[p][label][:per_class]:
                    w.writerow([str(idc_root / rel), label, p])
    return out_csv


def idc_store(
    idc_root: Path, tmp: Path, patients: int = 6, per_class: int = 4, size: int | None = 50
) -> PatchStore:
    """A prepared store of real IDC patches (patients x 2 x per_class images)."""
    manifest = idc_manifest(idc_root, tmp / "manifest.csv", patients, per_class)
    return prepare(manifest, tmp / "store", image_size=size)


def make_run(
    root: Path,
    model: str = "simple-cnn",
    image_size: int = 50,
    threshold: float | None = 0.5,
    store: PatchStore | None = None,
    mpp: float | None = 4.0,
    seed: int = 0,
    test_fraction: float = 0.34,
    *,
    bn_stats: bool = False,
    data_json: dict | None = None,
    **config: Any,
) -> Path:
    """Write the run folder ROOT as `histoscan train` would, with a randomly initialised (seeded) model.

    Files: config.yaml (TrainConfig of `model`, `image_size`, `mpp` and any other `config` fields, e.g. data,
    stain), checkpoints/best.ckpt (the keys load_model reads), metrics.csv, threshold.json (unless `threshold`
    is None); with a store also split.csv (by patient, the first `test_fraction` of groups as test) and
    data.json (its path and checksum). `data_json` writes data.json with that content instead. `bn_stats`
    gives BatchNorm layers non-trivial running statistics, so outputs vary between images and an exported
    graph must carry them.
    """
    (root / "checkpoints").mkdir(parents=True, exist_ok=True)
    config.setdefault("data", str(store.path) if store else "")
    cfg = TrainConfig(out=str(root), model=model, image_size=image_size, mpp=mpp, **config)
    cfg.save(root / "config.yaml")
    torch.manual_seed(seed)
    clf = build_classifier(cfg, weights=False).eval()
    if bn_stats:
        with torch.no_grad():
            for m in clf.modules():
                if isinstance(m, torch.nn.BatchNorm2d):
                    m.running_mean.uniform_(-0.1, 0.1)
                    m.running_var.uniform_(0.5, 1.5)
    torch.save(
        {
            "hyper_parameters": {"config": cfg.to_dict(), "image_size": image_size, "mpp": mpp},
            "state_dict": {"classifier." + k: v for k, v in clf.state_dict().items()},
        },
        root / "checkpoints" / "best.ckpt",
    )
    if threshold is not None:
        (root / "threshold.json").write_text(json.dumps({"threshold": threshold, "method": "youden"}))
    with (root / "metrics.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["epoch", "train_loss", "train_auc", "train_acc", "val_loss", "val_auc", "val_acc", "lr"])
        for e in range(4):
            w.writerow(
                [
                    e,
                    0.6 - 0.1 * e,
                    0.7 + 0.05 * e,
                    0.65 + 0.05 * e,
                    0.62 - 0.08 * e,
                    0.68 + 0.04 * e,
                    0.64 + 0.04 * e,
                    1e-3,
                ]
            )
    if store is not None:
        groups = sorted(set(store.groups))
        n_test = max(1, round(test_fraction * len(groups)))
        test = set(groups[:n_test])
        val = set(groups[n_test : 2 * n_test])
        split = ["test" if g in test else "val" if g in val else "train" for g in store.groups]
        with (root / "split.csv").open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["id", "label", "group", "split"])
            w.writerows(zip(store.ids, store.labels.tolist(), store.groups, split, strict=True))
        if data_json is None:
            data_json = {
                "store": str(store.path),
                "checksum": store.meta.get("checksum"),
                "image_size": store.size,
                "mpp": store.meta.get("mpp"),
                "splits": {s: {"n": split.count(s)} for s in ("train", "val", "test")},
            }
    if data_json is not None:
        (root / "data.json").write_text(json.dumps(data_json))
    return root


def split_rows(run: Path, name: str) -> np.ndarray:
    """Ids of the rows of RUN/split.csv in split `name`."""
    with (run / "split.csv").open(newline="") as f:
        return np.array([r["id"] for r in csv.DictReader(f) if r["split"] == name])
