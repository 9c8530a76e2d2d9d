"""uC's U-shaped connection: a shared 2-D U-Net over the slices of a 3-D skip, and the DFi gate that fuses it.

Used by the paper's ``UC3DUNet`` and by uC on nnU-Net's planned networks. Shapes: (B, C, D0, D1, D2) for 3-D maps,
(N, C, H, W) for the 2-D slices.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from dynamic_network_architectures.building_blocks.simple_conv_blocks import StackedConvBlocks
from torch import nn

from nnunetv2_uc.architectures.building_blocks.conv_blocks import conv_norm_act_stack
from nnunetv2_uc.architectures.building_blocks import switches
from nnunetv2_uc.architectures.building_blocks.fast_layers import PatchConvTranspose2d, use_fast_path
from nnunetv2_uc.architectures.building_blocks.layout import map_format
from nnunetv2_uc.architectures.building_blocks.normalization import HalfGroupNorm
from nnunetv2_uc.architectures.building_blocks.padding import pad_centred_to_match


class DFi(nn.Module):
    """uC's gated fusion of an upsampled map F1 and a skip F2 (both (B, c, *spatial)).

    out = Conv1x1(cat[F1, F2], no bias) * sigmoid(Conv1x1(F1 -> 1) + Conv1x1(F2 -> 1)); the gate is one
    spatial map broadcast over the channels.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.fuse = nn.Conv3d(2 * channels, channels, 1, bias=False)
        self.gate_up = nn.Conv3d(channels, 1, 1)
        self.gate_skip = nn.Conv3d(channels, 1, 1)

    def gate(self, up: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        """The gate map, (B, 1, *spatial) in (0, 1)."""
        return torch.sigmoid(self.gate_up(up) + self.gate_skip(skip))

    def forward(self, up: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        if use_fast_path(up):
            return self._forward_one_gemm(up, skip)
        return self.fuse(torch.cat([up, skip], dim=1)) * self.gate(up, skip)

    def _forward_one_gemm(self, up: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        """All three 1x1 convs read cat[F1, F2]: one GEMM yields the c fused channels and the gate logit."""
        c = self.fuse.out_channels
        gate_weight = torch.cat([self.gate_up.weight.flatten(1), self.gate_skip.weight.flatten(1)], dim=1)
        weight = torch.cat([self.fuse.weight.flatten(1), gate_weight])  # (c + 1, 2c)
        bias = torch.cat([self.gate_up.bias.new_zeros(c), self.gate_up.bias + self.gate_skip.bias])
        y = F.linear(torch.movedim(torch.cat([up, skip], dim=1), 1, -1), weight, bias)  # (B, *spatial, c + 1)
        return torch.movedim(y[..., :c] * torch.sigmoid(y[..., c:]), -1, 1)


def double_conv_2d(input_channels: int, output_channels: int) -> StackedConvBlocks:
    """(conv3x3 -> GroupNorm(out/2) -> ReLU) x 2."""
    return conv_norm_act_stack(nn.Conv2d, input_channels, output_channels, HalfGroupNorm, {"eps": 1e-5},
                               nn.ReLU, {"inplace": True})


class SkipUNet2d(nn.Module):
    """2-D U-Net without stem or head: (N, L0, H, W) -> (N, L0, H, W), ReLU output.

    Encoder i: AvgPool2d(2) -> DoubleConv(L[i-1] -> L[i]). Decoder (bottom up): ConvTranspose2d(L[i] -> L[i-1]),
    centred zero-pad to the skip, cat[skip, up], DoubleConv(2 * L[i-1] -> L[i-1]). With widths that double (the
    original's) the up-conv is its L[i] -> L[i]/2 and every parameter shape is the original's; other widths
    (e.g. doubling capped at a maximum) keep the same structure.
    """

    def __init__(self, channels: Sequence[int]) -> None:
        super().__init__()
        channels = list(channels)
        if len(channels) < 2:
            raise ValueError(f"SkipUNet2d needs >= 2 widths (at least one pooling level), got {channels}")
        self.channels = channels
        self.encoder = nn.ModuleList(
            nn.Sequential(nn.AvgPool2d(2), double_conv_2d(c_in, c_out))
            for c_in, c_out in zip(channels[:-1], channels[1:])
        )
        self.upsample = nn.ModuleList()
        self.decoder = nn.ModuleList()
        for c_out, c_in in reversed(list(zip(channels[:-1], channels[1:]))):
            self.upsample.append(PatchConvTranspose2d(c_in, c_out))
            self.decoder.append(double_conv_2d(2 * c_out, c_out))

    def compute_conv_feature_map_size(self, plane_size: Sequence[int]) -> int:
        """Elements of the conv and up-conv outputs for one (H, W) plane (dynamic-network-architectures' count)."""
        sizes = [list(plane_size)]
        for _ in self.encoder:
            sizes.append([s // 2 for s in sizes[-1]])
        total = sum(int(stage[1].compute_conv_feature_map_size(size)) for stage, size in zip(self.encoder, sizes[1:]))
        for up, conv, size in zip(self.upsample, self.decoder, reversed(sizes[:-1])):
            total += up.out_channels * math.prod(size) + int(conv.compute_conv_feature_map_size(size))
        return total

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = [x]
        for stage in self.encoder:
            skips.append(stage(skips[-1]))
        y = skips.pop()
        for up, conv in zip(self.upsample, self.decoder):
            skip = skips.pop()
            y = conv(torch.cat([skip, pad_centred_to_match(up(y), skip)], dim=1))
        return y


SLICE_AXES = ("first", "last")


class UShapedConnection(nn.Module):
    """The uC module: run one shared 2-D U-Net on every slice of a 3-D map.

    (B, C, D0, D1, D2) -> same shape. ``slice_axis="first"`` folds D0 into the batch (2-D planes (D1, D2),
    the in-plane slices of nnU-Net's (z, y, x) tensors); ``"last"`` folds D2 (planes (D0, D1)), as the
    original code does on its (x, y, z) MONAI tensors.
    """

    def __init__(self, channels: Sequence[int], slice_axis: str = "first") -> None:
        super().__init__()
        if slice_axis not in SLICE_AXES:
            raise ValueError(f"slice_axis must be one of {SLICE_AXES}, got {slice_axis!r}")
        self.slice_axis = slice_axis
        self.unet = SkipUNet2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        slice_dim = 2 if self.slice_axis == "first" else 4
        order = (0, slice_dim, *(d for d in (2, 3, 4) if d != slice_dim), 1)  # (B, S, P0, P1, C)
        stacked = x.permute(order)
        b, s, p0, p1, c = stacked.shape
        # channels-last planes: a view when x is channels-last and the slice axis is "first", one copy otherwise
        planes = stacked.reshape(b * s, p0, p1, c).contiguous().permute(0, 3, 1, 2)
        if switches.LAYOUT == "contiguous":
            planes = planes.contiguous()
        y = self.unet(planes).permute(0, 2, 3, 1).reshape(b, s, p0, p1, c)
        inverse = sorted(range(5), key=order.__getitem__)
        return y.permute(inverse).contiguous(memory_format=map_format())
