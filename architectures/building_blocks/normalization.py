"""Normalisation layers the paper networks use that torch does not have as such."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class LayerNormChannelsFirst(nn.Module):
    """LayerNorm over the channel axis of a (B, C, *spatial) map (biased variance, affine)."""

    def __init__(self, num_channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # torch's fused layer_norm on a channels-last view; moveaxis is a view, not a copy.
        y = F.layer_norm(torch.movedim(x, 1, -1), (x.shape[1],), self.weight, self.bias, self.eps)
        return torch.movedim(y, -1, 1)


class HalfGroupNorm(nn.GroupNorm):
    """GroupNorm with ``num_channels / 2`` groups (the uC 2-D U-Net's norm); built like a BatchNorm."""

    def __init__(self, num_channels: int, eps: float = 1e-5, affine: bool = True) -> None:
        if num_channels % 2:
            raise ValueError(f"HalfGroupNorm needs an even channel count, got {num_channels}")
        super().__init__(num_channels // 2, num_channels, eps=eps, affine=affine)
