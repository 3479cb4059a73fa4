"""`simple-cnn`: the PyTorch seed's five conv-BN-ReLU-maxpool blocks, then FC + dropout."""

from __future__ import annotations

import torch
from torch import nn


class SimpleCNN(nn.Module):
    """Five conv blocks (32..512 channels), global average pool, FC-ReLU-Dropout-FC to one logit.

    Global pooling makes it work at any input size >= 32 px (50 px IDC patches, 96 px PCam patches).
    """

    def __init__(self, dropout: float = 0.5, widths: tuple[int, ...] = (32, 64, 128, 256, 512)):
        super().__init__()
        blocks: list[nn.Module] = []
        cin = 3
        for w in widths:
            blocks.append(
                nn.Sequential(
                    nn.Conv2d(cin, w, 3, padding=1, bias=False),
                    nn.BatchNorm2d(w),
                    nn.ReLU(inplace=True),
                    nn.MaxPool2d(2, ceil_mode=True),
                )
            )
            cin = w
        self.features = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(cin, 256), nn.ReLU(inplace=True), nn.Dropout(dropout), nn.Linear(256, 1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.pool(self.features(x)))
