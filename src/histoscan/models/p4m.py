"""`p4m-cnn`: a rotation/reflection-equivariant CNN (group convolutions over P4M, Cohen & Welling 2016; the
PCam model family of Veeling et al. 2018), whose prediction is invariant to the 8 flips/90° rotations.

Written here because no maintained library installs on this machine: escnn needs a Fortran compiler for one
of its dependencies, and e2cnn (its predecessor, unmaintained) fails on NumPy 2 (`ndarray.tostring`). The group
is the D4 of `histoscan.utils.dihedral` (one definition of the 8 views for augmentation, TTA and this model).

A feature map of C group channels is a tensor N x (C*8) x H x W: channel c*8 + k is channel c seen under
view k. The lifting layer correlates the image with the 8 transformed copies of each filter; a group layer
transforms each filter spatially by g_k and permutes its orientation axis by g_k^-1 (so output orientation k
sees input orientation j through g_k^-1 g_j). BatchNorm shares statistics across the 8 orientations, 2x2
max-pooling is equivariant on even sizes, and the head pools over orientations then space. Inputs are
zero-padded evenly to a multiple of 32 px (50 -> 64), so the prediction is exactly invariant for every even
patch size (odd sizes cannot be padded symmetrically and are only approximately invariant).
"""

from __future__ import annotations

from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import nn

from histoscan.utils.dihedral import dihedral

G = 8  # |D4|


@lru_cache(maxsize=1)
def d4_tables() -> tuple[tuple[tuple[int, ...], ...], tuple[int, ...]]:
    """(mult, inv) of D4 in `dihedral`'s numbering: view mult[a][b] = view a applied after view b."""
    img = torch.arange(9.0).reshape(3, 3)  # no symmetry: every view is distinct
    views = [dihedral(img, k) for k in range(G)]

    def index(t: torch.Tensor) -> int:
        return next(i for i, v in enumerate(views) if torch.equal(v, t))

    mult = tuple(tuple(index(dihedral(dihedral(img, b), a)) for b in range(G)) for a in range(G))
    inv = tuple(next(b for b in range(G) if mult[a][b] == 0) for a in range(G))
    return mult, inv


class LiftingConv(nn.Module):
    """Image (N x Cin x H x W) -> group feature map N x (Cout*8) x H x W."""

    def __init__(self, cin: int, cout: int, kernel: int = 3):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(cout, cin, kernel, kernel))
        nn.init.kaiming_normal_(self.weight, mode="fan_out", nonlinearity="relu")
        self.padding = kernel // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = torch.stack([dihedral(self.weight, k) for k in range(G)], 1)  # Cout x 8 x Cin x k x k
        return F.conv2d(x, w.flatten(0, 1), padding=self.padding)


class GroupConv(nn.Module):
    """Group feature map N x (Cin*8) x H x W -> N x (Cout*8) x H x W, equivariant to D4."""

    def __init__(self, cin: int, cout: int, kernel: int = 3):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(cout, cin, G, kernel, kernel))
        nn.init.kaiming_normal_(
            self.weight.view(cout, cin * G, kernel, kernel), mode="fan_out", nonlinearity="relu"
        )
        mult, inv = d4_tables()
        # perm[k][j] = index of g_k^-1 g_j: the input orientation that output orientation k reads at slot j
        self.register_buffer(
            "perm", torch.tensor([[mult[inv[k]][j] for j in range(G)] for k in range(G)]), False
        )
        self.padding = kernel // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = torch.stack([dihedral(self.weight[:, :, self.perm[k]], k) for k in range(G)], 1)
        return F.conv2d(x, w.flatten(0, 1).flatten(1, 2), padding=self.padding)  # (Cout*8) x (Cin*8) x k x k


class GroupBatchNorm(nn.Module):
    """BatchNorm over group channels: one mean/variance per channel across its 8 orientations (keeps equivariance)."""

    def __init__(self, channels: int):
        super().__init__()
        self.bn = nn.BatchNorm3d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        return self.bn(x.reshape(n, c // G, G, h, w)).reshape(n, c, h, w)


class P4MCNN(nn.Module):
    """Five equivariant blocks (conv-BN-ReLU-maxpool, like `simple-cnn`), orientation pooling, FC to one logit.

    `widths` count group channels (each is 8 feature maps): (8, 16, 32, 64, 64) gives 64..512 maps at about
    simple-cnn's compute per image and a tenth of its parameters.
    """

    def __init__(self, dropout: float = 0.5, widths: tuple[int, ...] = (8, 16, 32, 64, 64)):
        super().__init__()
        blocks: list[nn.Module] = []
        cin = 3
        for i, w in enumerate(widths):
            conv = LiftingConv(cin, w) if i == 0 else GroupConv(cin, w)
            blocks.append(
                nn.Sequential(conv, GroupBatchNorm(w), nn.ReLU(inplace=True), nn.MaxPool2d(2, ceil_mode=True))
            )
            cin = w
        self.features = nn.Sequential(*blocks)
        self.classifier = nn.Sequential(
            nn.Linear(cin, 128), nn.ReLU(inplace=True), nn.Dropout(dropout), nn.Linear(128, 1)
        )
        self.num_features = cin

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        side = 2 ** len(
            self.features
        )  # pad (evenly on both sides) to a multiple of 2^blocks: even through pools
        extra = [(-s) % side for s in x.shape[-2:]]
        if any(extra) and all(e % 2 == 0 for e in extra):
            x = F.pad(x, (extra[1] // 2, extra[1] // 2, extra[0] // 2, extra[0] // 2))
        f = self.features(x)
        n, c, h, w = f.shape
        pooled = f.reshape(n, c // G, G, h, w).amax(2).mean((2, 3))  # max over orientations, mean over space
        return self.classifier(pooled)
