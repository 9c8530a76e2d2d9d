"""uC 3DU-Net (NeurIPS 2024), as released in IMOP-lab/U-Shaped-Connection (branch version1.0, commit 10c1f6a).

A MONAI-BasicUNet-style 3-D U-Net whose three upper skip connections pass through a shared-weight 2-D U-Net
over every slice (the U-shaped connection), and whose lower decoder stages fuse with a DFi gate.
Input (B, C_in, D0, D1, D2), every axis >= 16 (multiples of 16 recommended); output logits of the same size.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from nnunetv2_uc.architectures.blocks import (
    DFi, FastInstanceNorm3d, PatchConvTranspose3d, SegmentationHead, UShapedConnection, conv_norm_act_stack,
    maybe_checkpoint, pad_end_to_match, to_channels_last,
)
from nnunetv2_uc.architectures.input_checks import check_input_tensor, check_spatial_shape


def two_conv_3d(input_channels: int, output_channels: int) -> nn.Module:
    """(conv3 with bias -> InstanceNorm(affine) -> LeakyReLU(0.1)) x 2."""
    return conv_norm_act_stack(nn.Conv3d, input_channels, output_channels, FastInstanceNorm3d,
                               {"eps": 1e-5, "affine": True}, nn.LeakyReLU, {"negative_slope": 0.1, "inplace": True})


class GatedUpBlock(nn.Module):
    """Deconv k2 s2 (in -> in/2, bias), pad 1 voxel at the end where the skip is larger, DFi(up, skip)."""

    def __init__(self, input_channels: int, skip_channels: int) -> None:
        super().__init__()
        if input_channels // 2 != skip_channels:
            raise ValueError(f"uC DFi level needs in/2 == skip width, got in={input_channels}, skip={skip_channels}")
        self.upsample = PatchConvTranspose3d(input_channels, skip_channels)
        self.fusion = DFi(skip_channels)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.fusion(pad_end_to_match(self.upsample(x), skip), skip)


class ConcatUpBlock(nn.Module):
    """Deconv k2 s2 (in -> in, bias), end pad, cat[skip, up], two convs (skip + in -> out)."""

    def __init__(self, input_channels: int, skip_channels: int, output_channels: int) -> None:
        super().__init__()
        self.upsample = PatchConvTranspose3d(input_channels, input_channels)
        self.convs = two_conv_3d(skip_channels + input_channels, output_channels)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.convs(torch.cat([skip, pad_end_to_match(self.upsample(x), skip)], dim=1))


class UC3DUNet(nn.Module):
    """uC 3DU-Net. Defaults are the paper configuration (21,716,235 parameters for 1 input, 5 classes).

    Args:
        input_channels: image channels.
        num_classes: output logit channels.
        features: f0..f4 encoder widths and f5 the full-resolution decoder width (the original's ``features``).
        uc_levels: skip levels that pass through a U-shaped connection (the original: 0, 1, 2).
        slice_axis: "first" folds spatial axis 0 (in-plane slices of nnU-Net's (z, y, x) tensors);
            "last" folds axis 2, as the original does on its MONAI (x, y, z) tensors.
        activation_checkpointing: recompute each stage's activations (3-D conv pairs, U-shaped connections, up
            blocks) in the backward pass instead of storing them (memory down, step time up; values unchanged).
        deep_supervision: accepted for nnU-Net's ``get_network_from_plans``; must be falsy (no DS heads).
    """

    patch_multiple_of_16 = False

    def __init__(self, input_channels: int, num_classes: int,
                 features: Sequence[int] = (24, 48, 96, 192, 384, 32), uc_levels: Sequence[int] = (0, 1, 2),
                 slice_axis: str = "first", activation_checkpointing: bool = False,
                 deep_supervision: bool = False) -> None:
        super().__init__()
        if deep_supervision:
            raise ValueError("UC3DUNet has no deep-supervision heads; build it with deep_supervision=False")
        f = list(features)
        if len(f) != 6:
            raise ValueError(f"features needs 6 widths (f0..f4 encoder, f5 decoder), got {f}")
        if any(level not in (0, 1, 2, 3) for level in uc_levels):
            raise ValueError(f"uc_levels must be skip levels among 0..3, got {list(uc_levels)}")
        for level in uc_levels:  # the original's 2-D U-Net on level l is built for widths f_l..f4 that double
            if any(2 * a != b for a, b in zip(f[level:4], f[level + 1:5])):
                raise ValueError(f"UC3DUNet's uC on level {level} needs widths f{level}..f4 each double the previous, "
                                 f"got {f[level:5]}")
        self.input_channels = input_channels
        self.num_classes = num_classes
        self.slice_axis = slice_axis
        self.uc_levels = tuple(uc_levels)
        self.activation_checkpointing = activation_checkpointing
        self.stem = two_conv_3d(input_channels, f[0])
        self.down = nn.ModuleList(
            nn.Sequential(nn.MaxPool3d(2), two_conv_3d(c_in, c_out)) for c_in, c_out in zip(f[:4], f[1:5])
        )
        # a uC on skip level l runs a 2-D U-Net with widths f_l .. f4 (bottoming out at f4)
        self.u_connections = nn.ModuleDict(
            {str(level): UShapedConnection(f[level:5], slice_axis) for level in self.uc_levels}
        )
        self.gated_up = nn.ModuleList(GatedUpBlock(f[level + 1], f[level]) for level in (3, 2, 1))
        self.concat_up = ConcatUpBlock(f[1], f[0], f[5])
        self.head = SegmentationHead(f[5], num_classes)
        to_channels_last(self)  # channels-last throughout: cuDNN's layout, and the CPU fast paths keep it

    def check_input(self, x: torch.Tensor) -> None:
        check_input_tensor(x, self.input_channels, "UC3DUNet")
        check_spatial_shape(x.shape[2:], multiple_of_16=False, network="UC3DUNet")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, input_channels, D0, D1, D2) -> logits (B, num_classes, D0, D1, D2)."""
        self.check_input(x)
        run = self._run
        features = [run(self.stem, x.contiguous(memory_format=torch.channels_last_3d))]
        for down in self.down:
            features.append(run(down, features[-1]))
        skips = [run(self.u_connections[str(level)], feat) if str(level) in self.u_connections else feat
                 for level, feat in enumerate(features[:4])]
        y = features[4]
        for up, skip in zip(self.gated_up, reversed(skips[1:])):
            y = run(up, y, skip)
        return self.head(run(self.concat_up, y, skips[0]))

    def checkpoint_segments(self) -> list[nn.Module]:
        """The modules whose activations ``activation_checkpointing`` recomputes, one at a time, in backward."""
        return [self.stem, *self.down, *self.u_connections.values(), *self.gated_up, self.concat_up]

    def _run(self, module: nn.Module, *inputs: torch.Tensor) -> torch.Tensor:
        return maybe_checkpoint(module, *inputs, enabled=self.activation_checkpointing)
