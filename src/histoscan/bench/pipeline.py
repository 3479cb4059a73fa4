"""Throughput benchmarks: the packed-store pipeline (a) against a seed-style per-image loader (b).

(i) input pipeline alone: images/s delivered to the model as ready float batches;
(ii) end-to-end training images/s (forward + backward + optimiser step) through each pipeline.
"""

from __future__ import annotations

import csv
import os
import resource
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from histoscan.data.augment import BatchAugment
from histoscan.data.loader import StoreDataModule
from histoscan.data.store import resolve_store
from histoscan.errors import HistoscanInputError
from histoscan.models import create_model
from histoscan.models.classifier import PatchClassifier
from histoscan.utils.device import cuda_available, torch_device


def peak_rss_mb() -> float:
    """Peak resident set size of this process (and its finished children) in MiB."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(own, kids) / 1024


class SeedStyleDataset(Dataset):
    """The seeds' loader: PIL decode on every access and per-sample transforms, then ToTensor + Normalize.

    It applies the same augmentation as histoscan's default (D4 flip/rotation, affine rotation/zoom/shear,
    brightness/contrast, HED jitter) one image at a time, the way a torchvision/numpy pipeline does, so the
    comparison measures batching and decoding, not a lighter augmentation. Written with PIL/numpy because
    torchvision cannot be installed CPU-only here.
    """

    def __init__(self, paths: list[Path], labels: list[int], size: int):
        self.paths, self.labels, self.size = paths, labels, size
        self.mean = np.array([0.485, 0.456, 0.406], np.float32)
        self.std = np.array([0.229, 0.224, 0.225], np.float32)
        rgb_from_hed = np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]])
        self.rgb_from_hed = rgb_from_hed / np.linalg.norm(rgb_from_hed, axis=1, keepdims=True)
        self.hed_from_rgb = np.linalg.inv(self.rgb_from_hed)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        rng = np.random.default_rng()
        img = Image.open(self.paths[i]).convert("RGB").resize((self.size, self.size), Image.BILINEAR)
        for flip, p in ((Image.FLIP_LEFT_RIGHT, 0.5), (Image.FLIP_TOP_BOTTOM, 0.5), (Image.TRANSPOSE, 0.5)):
            if rng.random() < p:
                img = img.transpose(flip)
        a, z, sh = np.deg2rad(rng.uniform(-20, 20)), 1 / rng.uniform(0.8, 1.2), rng.uniform(-0.2, 0.2)
        m = z * np.array([[np.cos(a), np.cos(a) * sh - np.sin(a)], [np.sin(a), np.sin(a) * sh + np.cos(a)]])
        c = self.size / 2
        off = np.array([c, c]) - m @ np.array([c, c])
        img = img.transform(img.size, Image.AFFINE, (*m[0], off[0], *m[1], off[1]), resample=Image.BILINEAR)
        x = np.asarray(img, dtype=np.float32) / 255
        x = np.clip(x * rng.uniform(0.9, 1.1), 0, 1)
        grey = (x @ np.array([0.299, 0.587, 0.114], np.float32)).mean()
        x = np.clip((x - grey) * rng.uniform(0.9, 1.1) + grey, 0, 1)
        hed = -np.log(np.maximum(x, 1e-6)) @ self.hed_from_rgb
        x = np.clip(
            np.exp(-((hed * rng.uniform(0.95, 1.05, 3) + rng.uniform(-0.05, 0.05, 3)) @ self.rgb_from_hed)),
            0,
            1,
        )
        x = ((x - self.mean) / self.std).astype(np.float32)
        return torch.from_numpy(x.transpose(2, 0, 1).copy()), torch.tensor(float(self.labels[i]))


def _folder_items(data: Path) -> tuple[list[Path], list[int]]:
    labels_csv = data / "labels.csv"
    if not labels_csv.is_file():
        raise HistoscanInputError(f"{data}: the seed-style baseline needs a labels.csv (path,label) folder")
    with labels_csv.open() as f:
        rows = list(csv.DictReader(f))
    return [data / r["path"] for r in rows], [int(r["label"]) for r in rows]


@dataclass
class Pipelines:
    """The two pipelines over the same images, yielding ready (normalised float NCHW, labels) batches."""

    store_batches: Iterator[tuple[torch.Tensor, torch.Tensor]]
    seed_batches: Iterator[tuple[torch.Tensor, torch.Tensor]]


def make_pipelines(data: Path, size: int, batch_size: int, workers: int, device: torch.device) -> Pipelines:
    """(a) packed store + batched augmentation on `device`; (b) PIL per-sample loader with `workers` workers."""
    store = resolve_store(data, image_size=size, fit="resize")
    rows = np.arange(len(store))
    dm = StoreDataModule(store.images, store.labels, rows, rows[:0], batch_size, seed=0)
    aug = BatchAugment(["d4", "affine", "color", "hed"]).to(device).train()
    norm = PatchClassifier(torch.nn.Identity()).to(device)

    def store_iter() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        epoch = 0
        while True:
            dm.train_sampler.set_epoch(epoch)
            for x, y in dm.train_dataloader():
                x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                yield (aug(norm.prepare(x)) - norm.mean) / norm.std, y
            epoch += 1

    paths, labels = _folder_items(Path(data))
    seed_loader = DataLoader(
        SeedStyleDataset(paths, labels, size),
        batch_size=batch_size,
        shuffle=True,
        num_workers=workers,
        persistent_workers=workers > 0,
        drop_last=True,
    )

    def seed_iter() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        while True:
            for x, y in seed_loader:
                yield (
                    x.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last),
                    y.to(device),
                )

    return Pipelines(store_iter(), seed_iter())


def _rate(
    batches: Iterator[tuple[torch.Tensor, torch.Tensor]], n_batches: int, step=None, warmup: int = 2
) -> float:
    for _ in range(warmup):
        x, y = next(batches)
        if step:
            step(x, y)
    if cuda_available():
        torch.cuda.synchronize()
    t0, n = time.perf_counter(), 0
    for _ in range(n_batches):
        x, y = next(batches)
        if step:
            step(x, y)
        n += len(y)
    if cuda_available():
        torch.cuda.synchronize()
    return n / (time.perf_counter() - t0)


def _train_step(model_name: str, device: torch.device):
    net = create_model(model_name).to(device).to(memory_format=torch.channels_last).train()
    opt = torch.optim.AdamW(net.parameters(), lr=1e-4)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    amp = (
        torch.autocast("cuda", dtype=torch.bfloat16)
        if device.type == "cuda"
        else torch.autocast("cpu", enabled=False)
    )

    def step(x: torch.Tensor, y: torch.Tensor) -> None:
        with amp:
            loss = loss_fn(net(x).reshape(-1).float(), y.float())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def run_bench(
    data: Path,
    size: int = 96,
    batch_size: int = 64,
    batches: int = 30,
    train_batches: int = 5,
    models: tuple[str, ...] = ("simple-cnn", "resnet50"),
    workers: int | None = None,
) -> dict:
    """Run (i) and (ii) in one process; returns the figures (images/s, ratios, peak RSS)."""
    device = torch_device("auto")
    workers = (os.cpu_count() or 1) if workers is None else workers
    pipes = make_pipelines(Path(data), size, batch_size, workers, device)
    result: dict = {
        "device": str(torch.cuda.get_device_name() if device.type == "cuda" else "cpu"),
        "threads": torch.get_num_threads(),
        "workers_b": workers,
        "batch_size": batch_size,
        "image_size": size,
        "input": {},
        "train": {},
    }
    a = _rate(pipes.store_batches, batches)
    b = _rate(pipes.seed_batches, batches)
    result["input"] = {"store_batched": a, "seed_style": b, "ratio": a / b}
    for name in models:
        step = _train_step(name, device)
        ta = _rate(pipes.store_batches, train_batches, step, warmup=1)
        tb = _rate(pipes.seed_batches, train_batches, step, warmup=1)
        result["train"][name] = {"store_batched": ta, "seed_style": tb, "ratio": ta / tb}
    result["peak_rss_mb"] = peak_rss_mb()
    return result


def format_bench(r: dict) -> str:
    """A plain-text table of :func:`run_bench` results."""
    lines = [
        f"device {r['device']}, torch threads {r['threads']}, batch {r['batch_size']}, {r['image_size']} px, "
        f"seed-style workers {r['workers_b']}",
        f"{'what':28s} {'(a) store+batched img/s':>24s} {'(b) seed-style img/s':>21s} {'(a)/(b)':>8s}",
        f"{'input pipeline':28s} {r['input']['store_batched']:24.0f} {r['input']['seed_style']:21.0f} "
        f"{r['input']['ratio']:8.2f}",
    ]
    for name, t in r["train"].items():
        lines.append(
            f"{'train ' + name:28s} {t['store_batched']:24.1f} {t['seed_style']:21.1f} {t['ratio']:8.2f}"
        )
    lines.append(f"peak RSS {r['peak_rss_mb']:.0f} MiB")
    return "\n".join(lines)
