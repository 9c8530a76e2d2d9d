"""uC 3DU-Net (NeurIPS 2024), as released in IMOP-lab/U-Shaped-Connection (branch version1.0, commit 10c1f6a).

A MONAI-BasicUNet-style 3-D U-Net whose three upper skip connections pass through a shared-weight 2-D U-Net
over every slice (the U-shaped connection), and whose lower decoder stages fuse with a DFi gate.
Input (B, C_in, D0, D1, D2), every axis >= 16 (multiples of 16 recommended); output logits of the same size.
"""
from __future__ import annotations

import warnings
from typing import Sequence

import torch
from torch import nn

from dynamic_network_architectures.architectures.abstract_arch import AbstractDynamicNetworkArchitectures

from nnunetv2_uc.architectures.building_blocks.checkpointing import maybe_checkpoint
from nnunetv2_uc.architectures.building_blocks.conv_blocks import conv_norm_act_stack
from nnunetv2_uc.architectures.building_blocks.fast_layers import FastInstanceNorm3d, PatchConvTranspose3d
from nnunetv2_uc.architectures.building_blocks.heads import SegmentationHead
from nnunetv2_uc.architectures.building_blocks.input_rules import InputRule, check_input_tensor
from nnunetv2_uc.architectures.building_blocks.layout import map_format, to_network_layout
from nnunetv2_uc.architectures.building_blocks.padding import pad_end_to_match
from nnunetv2_uc.architectures.building_blocks.u_connection import DFi, UShapedConnection
from nnunetv2_uc.architectures.original_checkpoints import (
    KeyRule, OriginalCheckpoint, check_fixed_arguments, first_dim, take,
)


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


#: constructor keywords renamed on 2026-12-05 (one name per concept with uC on nnU-Net's network) -> new names
RENAMED_KWARGS = {"uc_levels": "uc_stages", "slice_axis": "uc_slice_axis"}


def _renamed_kwargs(renamed: dict, uc_stages: Sequence[int], uc_slice_axis: str) -> tuple[Sequence[int], str]:
    """``uc_stages`` and ``uc_slice_axis``, taken from their old names where a plan written before the rename gives
    those (with a FutureWarning); any other unknown keyword is a TypeError, as for any constructor."""
    unknown = sorted(set(renamed) - set(RENAMED_KWARGS))
    if unknown:
        raise TypeError(f"UC3DUNet got unexpected keyword arguments {unknown}")
    for old, value in renamed.items():
        warnings.warn(f"UC3DUNet: {old} is deprecated and will be removed in the next release; use "
                      f"{RENAMED_KWARGS[old]} (in a plans file: arch_kwargs)", FutureWarning, stacklevel=3)
    return renamed.get("uc_levels", uc_stages), renamed.get("slice_axis", uc_slice_axis)


class UC3DUNet(AbstractDynamicNetworkArchitectures):
    """uC 3DU-Net. Defaults are the paper configuration (21,716,235 parameters for 1 input, 5 classes).

    Args:
        input_channels: image channels.
        num_classes: output logit channels.
        features: f0..f4 encoder widths and f5 the full-resolution decoder width (the original's ``features``).
        uc_stages: skip levels that pass through a U-shaped connection (the original: 0, 1, 2).
        uc_slice_axis: "first" folds spatial axis 0 (in-plane slices of nnU-Net's (z, y, x) tensors);
            "last" folds axis 2, as the original does on its MONAI (x, y, z) tensors.
        (``uc_levels`` / ``slice_axis``: the names of plans written before 2026-12-05; accepted for one release.)
        activation_checkpointing: recompute each stage's activations (3-D conv pairs, U-shaped connections, up
            blocks) in the backward pass instead of storing them (memory down, step time up; values unchanged).
        deep_supervision: accepted for nnU-Net's ``get_network_from_plans``; must be falsy (no DS heads).
    """

    input_rule = InputRule(total_stride=16, every_axis_multiple=False)  # multiples of 16 recommended

    def __init__(self, input_channels: int, num_classes: int,
                 features: Sequence[int] = (24, 48, 96, 192, 384, 32), uc_stages: Sequence[int] = (0, 1, 2),
                 uc_slice_axis: str = "first", activation_checkpointing: bool = False,
                 deep_supervision: bool = False, **renamed) -> None:
        super().__init__()
        uc_stages, uc_slice_axis = _renamed_kwargs(renamed, uc_stages, uc_slice_axis)
        if deep_supervision:
            raise ValueError("UC3DUNet has no deep-supervision heads; build it with deep_supervision=False")
        f = list(features)
        if len(f) != 6:
            raise ValueError(f"features needs 6 widths (f0..f4 encoder, f5 decoder), got {f}")
        if any(level not in (0, 1, 2, 3) for level in uc_stages):
            raise ValueError(f"uc_stages must be skip levels among 0..3, got {list(uc_stages)}")
        for level in uc_stages:  # the original's 2-D U-Net on level l is built for widths f_l..f4 that double
            if any(2 * a != b for a, b in zip(f[level:4], f[level + 1:5])):
                raise ValueError(f"UC3DUNet's uC on level {level} needs widths f{level}..f4 each double the previous, "
                                 f"got {f[level:5]}")
        self.input_channels = input_channels
        self.num_classes = num_classes
        self.uc_slice_axis = uc_slice_axis
        self.uc_stages = tuple(uc_stages)
        self.activation_checkpointing = activation_checkpointing
        self.stem = two_conv_3d(input_channels, f[0])
        self.down = nn.ModuleList(
            nn.Sequential(nn.MaxPool3d(2), two_conv_3d(c_in, c_out)) for c_in, c_out in zip(f[:4], f[1:5])
        )
        # a uC on skip level l runs a 2-D U-Net with widths f_l .. f4 (bottoming out at f4)
        self.u_connections = nn.ModuleDict(
            {str(level): UShapedConnection(f[level:5], uc_slice_axis) for level in self.uc_stages}
        )
        self.gated_up = nn.ModuleList(GatedUpBlock(f[level + 1], f[level]) for level in (3, 2, 1))
        self.concat_up = ConcatUpBlock(f[1], f[0], f[5])
        self.head = SegmentationHead(f[5], num_classes)
        # where nnU-Net's pretraining tools find the encoder, the stem and the weights that read the image
        self.key_to_encoder = "down"
        self.key_to_stem = "stem"
        self.keys_to_in_proj = ("stem.convs.0.conv", "stem.convs.0.all_modules.0")
        to_network_layout(self)  # channels-last throughout (cuDNN's layout, kept by the CPU fast paths) by default

    def check_input(self, x: torch.Tensor) -> None:
        check_input_tensor(x, self.input_channels, "UC3DUNet")
        self.input_rule.check(x.shape[2:], "UC3DUNet")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, input_channels, D0, D1, D2) -> logits (B, num_classes, D0, D1, D2)."""
        self.check_input(x)
        run = self._run
        features = [run(self.stem, x.contiguous(memory_format=map_format()))]
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


# ----------------------------------------------------------------------------------------------------------
# the authors' checkpoints (IMOP-lab/U-Shaped-Connection): our parameter name -> original key, original kwargs -> ours
# ----------------------------------------------------------------------------------------------------------
_MONAI_ADN = {"conv": "conv", "norm": "adn.N"}


def _uc_double_conv(index: str, part: str) -> str:
    # original 2-D DoubleConv is one Sequential: conv 0, GN 1, ReLU 2, conv 3, GN 4, ReLU 5
    return str(3 * int(index) + (0 if part == "conv" else 1))


ORIGINAL_KEY_RULES: list[KeyRule] = [
    (r"stem\.convs\.(\d)\.(conv|norm)\.(.*)", lambda m: f"conv_0.conv_{m[1]}.{_MONAI_ADN[m[2]]}.{m[3]}"),
    (r"down\.(\d)\.1\.convs\.(\d)\.(conv|norm)\.(.*)",
     lambda m: f"down_{int(m[1]) + 1}.convs.conv_{m[2]}.{_MONAI_ADN[m[3]]}.{m[4]}"),
    (r"u_connections\.(\d)\.unet\.encoder\.(\d+)\.1\.convs\.(\d)\.(conv|norm)\.(.*)",
     lambda m: f"uC_skip{m[1]}.unet.downs.{m[2]}.down.1.conv.{_uc_double_conv(m[3], m[4])}.{m[5]}"),
    (r"u_connections\.(\d)\.unet\.upsample\.(\d+)\.(.*)", lambda m: f"uC_skip{m[1]}.unet.ups.{m[2]}.up.{m[3]}"),
    (r"u_connections\.(\d)\.unet\.decoder\.(\d+)\.convs\.(\d)\.(conv|norm)\.(.*)",
     lambda m: f"uC_skip{m[1]}.unet.ups.{m[2]}.conv.conv.{_uc_double_conv(m[3], m[4])}.{m[5]}"),
    (r"gated_up\.(\d)\.upsample\.(.*)", lambda m: f"upcat_{4 - int(m[1])}.upsample.deconv.{m[2]}"),
    (r"gated_up\.(\d)\.fusion\.(fuse|gate_up|gate_skip)\.(.*)",
     lambda m: f"upcat_{4 - int(m[1])}.dfi.{ {'fuse': 'conv1', 'gate_up': 'conv2', 'gate_skip': 'conv3'}[m[2]] }.{m[3]}"),
    (r"concat_up\.upsample\.(.*)", lambda m: f"upcat_1.upsample.deconv.{m[1]}"),
    (r"concat_up\.convs\.convs\.(\d)\.(conv|norm)\.(.*)", lambda m: f"upcat_1.convs.conv_{m[1]}.{_MONAI_ADN[m[2]]}.{m[3]}"),
    (r"head\.seg_layers\.(.*)", lambda m: f"final_conv.{m[1]}"),
]


def kwargs_from_original(original: dict, state: dict) -> dict:
    """Our constructor kwargs for the original ``uC_3DUNet(**original)``; widths not given are read off ``state``."""
    kw = dict(original)
    stem = state.get("conv_0.conv_0.conv.weight")
    default_features = [first_dim(state, "conv_0.conv_0.conv.weight", 24)]
    default_features += [first_dim(state, f"down_{i}.convs.conv_0.conv.weight", d) for i, d in zip(range(1, 5), (48, 96, 192, 384))]
    default_features += [first_dim(state, "upcat_1.convs.conv_0.conv.weight", 32)]
    ours = {
        "input_channels": take(kw, "in_channels", int(stem.shape[1]) if stem is not None else 1),
        "num_classes": take(kw, "out_channels", first_dim(state, "final_conv.weight", 2)),
        "features": list(take(kw, "features", default_features)),
        "uc_slice_axis": "last",  # the original folds the last axis of its (x, y, z) tensors
    }
    for ignored in ("depths", "drop_path_rate", "hidden_size", "layer_scale_init_value", "conv_block", "res_block",
                    "norm_name", "spatial_dims"):
        kw.pop(ignored, None)  # accepted and unused by the original constructor
    check_fixed_arguments(kw, {"bias": True, "dropout": 0.0, "upsample": "deconv"}, "uC_3DUNet")
    return ours


ORIGINAL_CHECKPOINT = OriginalCheckpoint("IMOP-lab/U-Shaped-Connection @10c1f6a, get3dmodel('uC_3DUNet')",
                                         ORIGINAL_KEY_RULES, kwargs_from_original)
