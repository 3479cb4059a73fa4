"""Batches of uint8 patches straight from a packed store: one sorted fancy-index read per batch, no per-image
decode or per-sample transform (augmentation runs later on the whole batch, on the training device)."""

from __future__ import annotations

from collections.abc import Iterator

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from histoscan.data.splits import balanced_weights
from histoscan.utils.device import cuda_available


class StoreBatches(Dataset):
    """`dataset[rows]` -> (uint8 N x S x S x 3 tensor, float labels N) for an array of store rows."""

    def __init__(self, images: np.ndarray, labels: np.ndarray):
        self.images = images
        self.labels = np.asarray(labels, dtype=np.float32)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, rows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        rows = np.sort(np.asarray(rows))  # sequential memmap reads; order inside a batch does not matter
        return torch.from_numpy(np.ascontiguousarray(self.images[rows])), torch.from_numpy(self.labels[rows])


class EpochBatchSampler(Sampler[np.ndarray]):
    """Yields arrays of row indices; the order depends only on (seed, epoch), so a resumed run sees the same
    batches as an uninterrupted one (`per_epoch=False`: the same order every epoch). Shards by rank for multi-GPU
    runs; optional class-balanced sampling."""

    def __init__(
        self,
        rows: np.ndarray,
        batch_size: int,
        shuffle: bool,
        seed: int,
        labels: np.ndarray | None = None,
        balanced: bool = False,
        drop_last: bool = False,
        per_epoch: bool = True,
        even: bool = True,
    ):
        self.rows, self.batch_size, self.shuffle, self.seed = np.asarray(rows), batch_size, shuffle, seed
        self.weights = balanced_weights(labels) if balanced and labels is not None else None
        self.drop_last, self.per_epoch, self.even = drop_last, per_epoch, even
        self.epoch, self.rank, self.world = 0, 0, 1

    def set_epoch(self, epoch: int) -> None:
        """Called by Lightning at each epoch start."""
        self.epoch = epoch

    def set_distributed(self, rank: int, world: int) -> None:
        """Give this process its shard of every epoch."""
        self.rank, self.world = rank, world

    def _order(self) -> np.ndarray:
        rng = np.random.default_rng([self.seed, self.epoch if self.per_epoch else 0])
        if self.weights is not None:
            p = self.weights / self.weights.sum()
            return self.rows[rng.choice(len(self.rows), size=len(self.rows), replace=True, p=p)]
        return self.rows[rng.permutation(len(self.rows))] if self.shuffle else self.rows

    def __iter__(self) -> Iterator[np.ndarray]:
        order = self._order()
        if (
            self.world > 1 and self.even
        ):  # training: equal shards (DDP steps in lockstep); a remainder is dropped
            per_rank = len(order) // self.world
            order = order[self.rank * per_rank : (self.rank + 1) * per_rank]
        elif self.world > 1:  # validation: every row on exactly one rank, so metrics see the whole split
            order = order[self.rank :: self.world]
        stop = len(order) - (len(order) % self.batch_size if self.drop_last else 0)
        for i in range(0, stop, self.batch_size):
            yield order[i : i + self.batch_size]

    def __len__(self) -> int:
        n = len(self.rows) // self.world if self.even else len(range(self.rank, len(self.rows), self.world))
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)


class StoreDataModule(L.LightningDataModule):
    """Train/val loaders over the rows of a packed store."""

    def __init__(
        self,
        images: np.ndarray,
        labels: np.ndarray,
        train_rows: np.ndarray,
        val_rows: np.ndarray,
        batch_size: int,
        seed: int,
        balanced: bool = False,
        num_workers: int = 0,
    ):
        super().__init__()
        self.data = StoreBatches(images, labels)
        labels = np.asarray(labels)
        # drop a lone last batch of 1: BatchNorm cannot train on it
        drop_last = len(train_rows) % batch_size == 1
        self.train_sampler = EpochBatchSampler(
            train_rows, batch_size, True, seed, labels[train_rows], balanced, drop_last=drop_last
        )
        # validation: one fixed shuffle, so a --limit-batches subset still mixes patients and classes
        self.val_sampler = EpochBatchSampler(val_rows, batch_size, True, seed, per_epoch=False, even=False)
        self.num_workers = num_workers

    def setup(self, stage: str | None = None) -> None:
        if self.trainer is not None and self.trainer.world_size > 1:
            for s in (self.train_sampler, self.val_sampler):
                s.set_distributed(self.trainer.global_rank, self.trainer.world_size)

    def _loader(self, sampler: EpochBatchSampler) -> DataLoader:
        return DataLoader(
            self.data,
            batch_size=None,
            sampler=sampler,
            num_workers=self.num_workers,
            pin_memory=cuda_available(),
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_sampler)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_sampler)
