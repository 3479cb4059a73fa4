"""The one device choice, for every model kind: "auto" (a GPU when the backend can use one, else the CPU),
"cpu", or "cuda" / "cuda:N" (a GPU, or a clear error when there is none)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from histoscan.errors import HistoscanInputError

if TYPE_CHECKING:
    import torch

DEVICES = ("auto", "cpu", "cuda")  # the choices of --device; "cuda:N" picks one GPU
CUDA_PROVIDER, CPU_PROVIDER = "CUDAExecutionProvider", "CPUExecutionProvider"


def cuda_count() -> int:
    """CUDA GPUs visible to PyTorch in this process (0 without CUDA)."""
    import torch  # lazy: `histoscan --help` must not import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def cuda_available() -> bool:
    """Whether PyTorch sees a CUDA GPU."""
    return cuda_count() > 0


def _cuda_index(device: str) -> int | None:
    """N of "cuda:N" (None for plain "cuda"); a HistoscanInputError for anything but auto/cpu/cuda[:N]."""
    if device == "cuda":
        return None
    head, _, tail = device.partition(":")
    if head == "cuda" and tail.isdigit():
        return int(tail)
    raise HistoscanInputError(f"--device {device}: choose auto, cpu or cuda (cuda:N for one GPU)")


def resolve_device(device: str | None = "auto") -> str:
    """The PyTorch device for `device`: "auto" (or None) -> "cuda" when a GPU is visible, else "cpu".

    Raises:
        HistoscanInputError: an unknown device, or cuda[:N] asked for where PyTorch sees no such GPU.
    """
    device = "auto" if device in (None, "") else str(device)
    if device == "auto":
        return "cuda" if cuda_available() else "cpu"
    if device == "cpu":
        return device
    index, count = _cuda_index(device), cuda_count()
    if not count:
        raise HistoscanInputError(
            f"--device {device}: no CUDA GPU is visible to this process (use cpu or auto)"
        )
    if index is not None and index >= count:
        raise HistoscanInputError(
            f"--device {device}: only {count} GPU(s) visible (cuda:0..cuda:{count - 1})"
        )
    return device


def torch_device(device: str | None = "auto") -> torch.device:
    """:func:`resolve_device` as a torch.device."""
    import torch

    return torch.device(resolve_device(device))


def onnx_providers(device: str | None, available: Sequence[str]) -> list[Any]:
    """ONNX Runtime execution providers for `device`, given the providers this onnxruntime build offers.

    "cuda" / "cuda:N": the CUDA provider (on GPU N), then the CPU for any operator it lacks; a clear error when
    this onnxruntime has no CUDA provider (the CPU-only package; onnxruntime-gpu has one). "cpu": the CPU only.
    "auto": the CUDA provider when offered, else the CPU — as "auto" means for PyTorch models.
    """
    device = "auto" if device in (None, "") else str(device)
    if device == "cpu":
        return [CPU_PROVIDER]
    if device == "auto":
        return [p for p in (CUDA_PROVIDER, CPU_PROVIDER) if p in available] or [CPU_PROVIDER]
    index = _cuda_index(device)
    if CUDA_PROVIDER not in available:
        raise HistoscanInputError(
            f"--device {device}: this onnxruntime has no CUDA execution provider (it offers "
            f"{', '.join(available) or 'none'}; install onnxruntime-gpu, or use cpu or auto)"
        )
    cuda: Any = CUDA_PROVIDER if index is None else (CUDA_PROVIDER, {"device_id": index})
    return [cuda, CPU_PROVIDER]
