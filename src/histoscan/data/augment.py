"""Batched augmentation, random per sample, of NCHW float [0, 1] batches on their own device (GPU if any)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from histoscan.config import AUGMENT_OPS
from histoscan.errors import HistoscanInputError

# Written with plain torch ops: Kornia is the field's library for this, but it is not a dependency, and the
# four ops below are a few lines each once the random parameters are drawn per sample.

# Ruifrok & Johnston (2001) optical densities of haematoxylin, eosin and DAB (rows), normalised to unit
# length; the same stain vectors as skimage.color.rgb_from_hed.
_RGB_FROM_HED = torch.tensor(
    [[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]], dtype=torch.float64
)
_RGB_FROM_HED = _RGB_FROM_HED / _RGB_FROM_HED.norm(dim=1, keepdim=True)
_HED_FROM_RGB = torch.linalg.inv(_RGB_FROM_HED)
_OD_EPS = 1e-6  # intensities are clamped here before -log (0 -> OD 13.8, no inf)


class BatchAugment(nn.Module):
    """Random augmentation of whole batches, parameters drawn per sample; identity in eval mode.

    Ops, applied in this order when named (the order in `ops` does not matter):
    "d4" one of the 8 flips/90° rotations; "affine" rotation, zoom and shear in one `grid_sample` with
    reflection padding; "color" brightness and contrast jitter; "hed" haematoxylin/eosin/DAB stain jitter
    (Tellez et al. 2018: per-channel scale and shift in Ruifrok-Johnston HED space).

    Random numbers come from `generator` (forward argument, else the module's) or torch's global CPU RNG, and
    are drawn on the CPU, so `torch.manual_seed(k)` gives the same augmentation on CPU and GPU.

    Args:
        ops: names from histoscan.config.AUGMENT_OPS; empty: identity.
        rotation: affine rotation range in degrees, uniform in [-rotation, rotation] (Keras seed: 20).
        zoom: zoom factor uniform in [1 - zoom, 1 + zoom] (Keras seed: 0.2).
        shear: shear factor (tan of the shear angle) uniform in [-shear, shear]. The Keras seed's
            shear_range=0.2 is in degrees there, i.e. nothing; 0.2 as a factor (~11°) is the common intent.
        brightness: multiplicative brightness factor uniform in [1 - b, 1 + b].
        contrast: contrast factor uniform in [1 - c, 1 + c] around each image's mean grey level.
        hed_sigma: HED jitter: each stain's OD scaled by U[1 - s, 1 + s] and shifted by U[-s, s].
        generator: default torch.Generator (CPU) for the random parameters.
    """

    def __init__(
        self,
        ops: Sequence[str] = AUGMENT_OPS,
        *,
        rotation: float = 20.0,
        zoom: float = 0.2,
        shear: float = 0.2,
        brightness: float = 0.1,
        contrast: float = 0.1,
        hed_sigma: float = 0.05,
        generator: torch.Generator | None = None,
    ):
        super().__init__()
        if isinstance(ops, str):
            ops = [o for o in ops.split(",") if o]
        unknown = [o for o in ops if o not in AUGMENT_OPS]
        if unknown:
            raise HistoscanInputError(
                f"augment: unknown op(s) {', '.join(unknown)} (choose from {', '.join(AUGMENT_OPS)})"
            )
        self.ops = [o for o in AUGMENT_OPS if o in ops]
        self.rotation, self.zoom, self.shear = rotation, zoom, shear
        self.brightness, self.contrast, self.hed_sigma = brightness, contrast, hed_sigma
        self.generator = generator
        self.register_buffer("rgb_from_hed", _RGB_FROM_HED.float(), persistent=False)
        self.register_buffer("hed_from_rgb", _HED_FROM_RGB.float(), persistent=False)

    def extra_repr(self) -> str:
        return f"ops={self.ops}"

    def forward(
        self, x: torch.Tensor, labels: torch.Tensor | None = None, generator: torch.Generator | None = None
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Augment a batch N x C x H x W (float in [0, 1]); labels, when given, are returned untouched.

        Returns:
            The augmented batch (same shape, dtype, device, in [0, 1]), or (batch, labels) when labels given.
        """
        if self.training and self.ops and len(x):
            if x.ndim != 4:
                raise ValueError(f"BatchAugment expects N x C x H x W, got shape {tuple(x.shape)}")
            g = generator if generator is not None else self.generator
            channels_last = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
            dtype = x.dtype
            y = x.float()
            with torch.autocast(x.device.type, enabled=False):  # float32 even inside a bf16/fp16-mixed step
                fuse = "d4" in self.ops and "affine" in self.ops and y.shape[-1] == y.shape[-2]
                for op in self.ops:
                    if fuse and op == "d4":
                        continue  # folded into the affine grid: one resampling pass instead of two
                    if fuse and op == "affine":
                        y = self._affine(y, g, with_d4=True)
                    else:
                        y = getattr(self, f"_{op}")(y, g)
            x = y.to(dtype)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
        return x if labels is None else (x, labels)

    @staticmethod
    def _uniform(
        n: int, lo: float, hi: float, g: torch.Generator | None, device: torch.device
    ) -> torch.Tensor:
        # drawn on the CPU (tiny) so a seed gives the same parameters whatever the batch's device
        return (torch.rand(n, generator=g) * (hi - lo) + lo).to(device, non_blocking=True)

    def _d4(self, x: torch.Tensor, g: torch.Generator | None) -> torch.Tensor:
        # three random bits (transpose, flip W, flip H) pick one of the 8 D4 elements; torch.where keeps it
        # branch-free and sync-free on the GPU
        n, _, h, w = x.shape
        bits = (torch.rand(n, 3, generator=g) < 0.5).to(x.device, non_blocking=True).view(n, 3, 1, 1, 1)
        if h == w:
            x = torch.where(bits[:, 0], x.transpose(-1, -2), x)
        x = torch.where(bits[:, 1], x.flip(-1), x)
        return torch.where(bits[:, 2], x.flip(-2), x)

    def _affine(self, x: torch.Tensor, g: torch.Generator | None, with_d4: bool = False) -> torch.Tensor:
        n, _, h, w = x.shape
        dev = x.device
        angle = self._uniform(n, -self.rotation, self.rotation, g, dev) * (math.pi / 180.0)
        scale = 1.0 / self._uniform(
            n, 1.0 - self.zoom, 1.0 + self.zoom, g, dev
        )  # output->input: inverse zoom
        shear = self._uniform(n, -self.shear, self.shear, g, dev)
        cos, sin = angle.cos(), angle.sin()
        # A = R(angle) @ [[1, shear], [0, 1]] * scale, in pixel units; conjugated into affine_grid's [-1, 1]
        # coordinates (x scaled by w/2, y by h/2) so non-square images rotate without distortion
        a = torch.stack(
            [
                torch.stack([cos * scale, (cos * shear - sin) * scale * (h / w)], 1),
                torch.stack([sin * scale * (w / h), (sin * shear + cos) * scale], 1),
            ],
            1,
        )  # N x 2 x 2
        if with_d4:
            # a random D4 element (transpose, flip x, flip y bits) as a 2x2 matrix composed into the same grid;
            # 90° multiples map pixel centres onto pixel centres, so this part of the resampling is exact
            bits = (torch.rand(n, 3, generator=g) < 0.5).float()
            t = bits[:, 0].view(n, 1, 1)
            m = (1 - t) * torch.eye(2) + t * torch.tensor([[0.0, 1.0], [1.0, 0.0]])
            m = torch.diag_embed(1 - 2 * bits[:, 1:]) @ m
            a = a @ m.to(dev, non_blocking=True)
        theta = torch.cat([a, torch.zeros(n, 2, 1, device=dev)], 2)
        grid = F.affine_grid(theta, [n, x.shape[1], h, w], align_corners=False)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)

    def _color(self, x: torch.Tensor, g: torch.Generator | None) -> torch.Tensor:
        n = x.shape[0]
        b = self._uniform(n, 1.0 - self.brightness, 1.0 + self.brightness, g, x.device).view(n, 1, 1, 1)
        c = self._uniform(n, 1.0 - self.contrast, 1.0 + self.contrast, g, x.device).view(n, 1, 1, 1)
        # brightness b then contrast c around the (brightened) mean grey g*b, fused into one pass:
        # (x*b - g*b)*c + g*b = x*(b*c) + g*b*(1 - c)
        grey = (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]).mean(dim=(-2, -1)).view(n, 1, 1, 1)
        return torch.addcmul(grey * b * (1 - c), x, b * c).clamp_(0.0, 1.0)

    def _hed(self, x: torch.Tensor, g: torch.Generator | None) -> torch.Tensor:
        n, s = x.shape[0], self.hed_sigma
        alpha = self._uniform(n * 3, 1.0 - s, 1.0 + s, g, x.device).view(n, 3)
        beta = self._uniform(n * 3, -s, s, g, x.device).view(n, 1, 3)
        # ((od @ H) * alpha + beta) @ R == od @ (H diag(alpha) R) + beta @ R: one batched 3x3 per sample
        mix = self.hed_from_rgb @ (alpha.unsqueeze(-1) * self.rgb_from_hed)  # N x 3 x 3
        shift = beta @ self.rgb_from_hed  # N x 1 x 3
        od = -torch.log(x.clamp_min(_OD_EPS)).permute(0, 2, 3, 1).reshape(n, -1, 3)  # N x HW x 3
        od = torch.baddbmm(shift, od, mix)
        return torch.exp(-od).clamp_(0.0, 1.0).view(n, x.shape[2], x.shape[3], 3).permute(0, 3, 1, 2)
