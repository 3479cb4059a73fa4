"""`resnet50-head`: the Keras seed's ResNet50 trunk + GAP + Dense/ReLU + Dropout + BatchNorm + one logit."""

from __future__ import annotations

import torch
from torch import nn

from histoscan.models.resnet import ResNet, resnet50


class TrunkWithHead(nn.Module):
    """A pooled-feature trunk (`backbone`) and a small classification head (`head`).

    `backbone` is the attribute Lightning's BackboneFinetuning callback freezes in phase 1 and unfreezes for
    phase 2 fine-tuning.
    """

    def __init__(self, backbone: ResNet, hidden: int = 256, dropout: float = 0.5):
        super().__init__()
        backbone.fc = nn.Identity()
        self.backbone = backbone
        self.head = nn.Sequential(
            nn.Linear(backbone.num_features, hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.BatchNorm1d(hidden),
            nn.Linear(hidden, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


def resnet50_head(dropout: float = 0.5) -> TrunkWithHead:
    """ResNet50 trunk with the Keras seed's head."""
    return TrunkWithHead(resnet50(), dropout=dropout)
