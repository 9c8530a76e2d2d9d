"""The segmentation head."""
from __future__ import annotations

import torch
from torch import nn

from nnunetv2_uc.architectures.building_blocks.fast_layers import PointwiseConv3d


class SegmentationHead(nn.Module):
    """1x1x1 conv to class logits: (B, C, *spatial) -> (B, num_classes, *spatial).

    The conv sits under the name ``seg_layers`` because nnU-Net's ``-pretrained_weights`` loader skips keys
    containing ".seg_layers.", so a checkpoint trained for another label set can be fine-tuned.
    """

    def __init__(self, input_channels: int, num_classes: int) -> None:
        super().__init__()
        self.seg_layers = PointwiseConv3d(input_channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.seg_layers(x)
