"""The one device choice: CUDA when a GPU is visible, else the CPU."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


def resolve_device(device: str | None = "auto") -> str:
    """'auto' or None -> 'cuda' when a GPU is visible, else 'cpu'; anything else ('cpu', 'cuda:1') is kept."""
    if device not in (None, "", "auto"):
        return str(device)
    import torch  # lazy: `histoscan --help` must not import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def torch_device(device: str | None = "auto") -> torch.device:
    """:func:`resolve_device` as a torch.device."""
    import torch

    return torch.device(resolve_device(device))
