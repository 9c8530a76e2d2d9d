"""3D UX-Net (Lee et al., ICLR 2023), as released in MASILab/3DUX-Net at commit 14ea46b.

Large-kernel depthwise encoder (4 stages of UX blocks) with a SwinUNETR-style residual decoder.
Input (B, C_in, D0, D1, D2) with every spatial axis a multiple of 16; output logits (B, num_classes, D0, D1, D2).
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from dynamic_network_architectures.architectures.abstract_arch import AbstractDynamicNetworkArchitectures
from dynamic_network_architectures.building_blocks.regularization import DropPath

from nnunetv2_uc.architectures.building_blocks.checkpointing import maybe_checkpoint
from nnunetv2_uc.architectures.building_blocks.conv_blocks import residual_block_3d
from nnunetv2_uc.architectures.building_blocks.fast_layers import PatchConvTranspose3d
from nnunetv2_uc.architectures.building_blocks.heads import SegmentationHead
from nnunetv2_uc.architectures.building_blocks.input_rules import InputRule, check_input_tensor
from nnunetv2_uc.architectures.building_blocks.layout import map_format, to_network_layout
from nnunetv2_uc.architectures.building_blocks.normalization import LayerNormChannelsFirst
from nnunetv2_uc.architectures.original_checkpoints import (
    KeyRule, OriginalCheckpoint, check_fixed_arguments, first_dim, take,
)


class DepthwiseChannelScaling(nn.Module):
    """The UX block's "DCS" layer: a 1x1x1 conv with ``groups = channels`` (no cross-channel mixing).

    Weights keep the grouped-conv shape ``(out, in/groups, 1, 1, 1)`` so checkpoints stay compatible, but the
    op runs as a broadcast multiply-add on a channels-last tensor (B, *spatial, C), which avoids the slow
    grouped-conv kernels. With ``groups`` input channels and ``groups * k`` outputs, each input channel c feeds
    outputs ``c*k .. c*k+k-1``; with ``groups * k`` inputs and ``groups`` outputs, output c sums inputs
    ``c*k .. c*k+k-1``.
    """

    def __init__(self, input_channels: int, output_channels: int) -> None:
        super().__init__()
        groups = min(input_channels, output_channels)
        if input_channels % groups or output_channels % groups:
            raise ValueError(f"DCS needs channel counts that divide: {input_channels} -> {output_channels}")
        self.groups = groups
        self.expand = output_channels >= input_channels
        self.weight = nn.Parameter(torch.empty(output_channels, input_channels // groups, 1, 1, 1))
        self.bias = nn.Parameter(torch.empty(output_channels))
        # PyTorch's default Conv3d init for exactly this layer shape
        reference = nn.Conv3d(input_channels, output_channels, 1, groups=groups)
        with torch.no_grad():
            self.weight.copy_(reference.weight)
            self.bias.copy_(reference.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, *spatial, C_in) channels-last -> (B, *spatial, C_out)."""
        g = self.groups
        if self.expand:  # (.., g, 1) * (g, k) -> (.., g*k)
            w = self.weight.view(g, -1)
            y = x.unsqueeze(-1) * w + self.bias.view(g, -1)
            return y.flatten(-2)
        w = self.weight.view(g, -1)  # (g, k): output c sums its k inputs
        y = (x.unflatten(-1, (g, -1)) * w).sum(-1)
        return y + self.bias


class UXBlock(nn.Module):
    """3D UX-Net block: depthwise conv k7 -> LayerNorm -> DCS (x4) -> GELU -> DCS -> layer scale -> + input.

    (B, C, D0, D1, D2) -> same shape. One residual; no cross-channel mixing.
    """

    def __init__(self, channels: int, kernel_size: int = 7, drop_path: float = 0.0,
                 layer_scale_init_value: float = 1e-6, expansion: int = 4) -> None:
        super().__init__()
        self.dwconv = nn.Conv3d(channels, channels, kernel_size, padding=kernel_size // 2, groups=channels)
        self.norm = nn.LayerNorm(channels, eps=1e-6)
        self.pwconv1 = DepthwiseChannelScaling(channels, expansion * channels)
        self.act = nn.GELU()
        self.pwconv2 = DepthwiseChannelScaling(expansion * channels, channels)
        self.gamma = nn.Parameter(layer_scale_init_value * torch.ones(channels))
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.movedim(self.dwconv(x), 1, -1)  # channels-last view
        y = self.pwconv2(self.act(self.pwconv1(self.norm(y)))) * self.gamma
        return x + self.drop_path(torch.movedim(y, -1, 1))


class UXNetEncoder(nn.Module):
    """Stem (k7 s2) + 3 downsamplings (LN, k2 s2); UX blocks per stage; LayerNorm on each stage output.

    (B, C_in, S) -> 4 maps (B, feature_sizes[i], S / 2^(i+1)). The stream that continues downwards is the
    un-normalised one; only the copies handed to the decoder are normalised.
    """

    def __init__(self, input_channels: int, feature_sizes: Sequence[int], depths: Sequence[int],
                 kernel_size: int, drop_path_rate: float, layer_scale_init_value: float) -> None:
        super().__init__()
        if len(feature_sizes) != 4 or len(depths) != 4:
            raise ValueError(f"UXNet needs 4 feature sizes and 4 depths, got {list(feature_sizes)} and {list(depths)}")
        total = sum(depths)
        rates = [drop_path_rate * i / (total - 1) if total > 1 else 0.0 for i in range(total)]
        self.downsample = nn.ModuleList([nn.Sequential(
            nn.Conv3d(input_channels, feature_sizes[0], 7, stride=2, padding=3),
            LayerNormChannelsFirst(feature_sizes[0]),
        )])
        for c_in, c_out in zip(feature_sizes[:-1], feature_sizes[1:]):
            self.downsample.append(nn.Sequential(LayerNormChannelsFirst(c_in), nn.Conv3d(c_in, c_out, 2, stride=2)))
        self.stages = nn.ModuleList()
        for stage, (channels, depth) in enumerate(zip(feature_sizes, depths)):
            first = sum(depths[:stage])
            self.stages.append(nn.Sequential(*[
                UXBlock(channels, kernel_size, rates[first + j], layer_scale_init_value) for j in range(depth)
            ]))
        self.norms = nn.ModuleList(LayerNormChannelsFirst(c) for c in feature_sizes)

    def forward(self, x: torch.Tensor, checkpoint_stages: bool = False) -> list[torch.Tensor]:
        outputs = []
        for down, stage, norm in zip(self.downsample, self.stages, self.norms):
            x = maybe_checkpoint(stage, down(x), enabled=checkpoint_stages)
            outputs.append(norm(x))
        return outputs


class UXNetUpBlock(nn.Module):
    """ConvTranspose k2 s2 (no bias) in->out, cat[up, skip], residual block 2*out -> out."""

    def __init__(self, input_channels: int, output_channels: int) -> None:
        super().__init__()
        self.upsample = PatchConvTranspose3d(input_channels, output_channels, bias=False)
        self.block = residual_block_3d(2 * output_channels, output_channels)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.block(torch.cat([self.upsample(x), skip], dim=1))


class UXNet(AbstractDynamicNetworkArchitectures):
    """3D UX-Net. Defaults are the paper configuration (53,006,069 parameters for 1 input, 5 classes).

    Args:
        input_channels: image channels.
        num_classes: output logit channels.
        feature_sizes: widths of the 4 encoder stages.
        depths: UX blocks per stage.
        hidden_size: bottleneck width (at 1/16).
        kernel_size: depthwise kernel of the UX blocks.
        drop_path_rate: final stochastic-depth rate (linear over blocks).
        layer_scale_init_value: initial layer scale gamma. The original ignores its own argument and always
            uses 1e-6; ``interop.load_original`` reproduces that.
        activation_checkpointing: recompute each encoder stage's and each residual block's activations in the
            backward pass instead of storing them (training memory down, step time up; values unchanged).
        deep_supervision: accepted for nnU-Net's ``get_network_from_plans``; must be falsy (no DS heads).
    """

    input_rule = InputRule(total_stride=16, every_axis_multiple=True)

    def __init__(self, input_channels: int, num_classes: int,
                 feature_sizes: Sequence[int] = (48, 96, 192, 384), depths: Sequence[int] = (2, 2, 2, 2),
                 hidden_size: int = 768, kernel_size: int = 7, drop_path_rate: float = 0.0,
                 layer_scale_init_value: float = 1e-6, activation_checkpointing: bool = False,
                 deep_supervision: bool = False) -> None:
        super().__init__()
        if deep_supervision:
            raise ValueError("UXNet has no deep-supervision heads; build it with deep_supervision=False")
        f = list(feature_sizes)
        self.input_channels = input_channels
        self.num_classes = num_classes
        self.activation_checkpointing = activation_checkpointing
        self.encoder = UXNetEncoder(input_channels, f, depths, kernel_size, drop_path_rate, layer_scale_init_value)
        # residual blocks on the skips: raw input, then stage outputs 0..2, and the bottleneck on stage 3
        self.skip_blocks = nn.ModuleList([
            residual_block_3d(input_channels, f[0]),
            residual_block_3d(f[0], f[1]),
            residual_block_3d(f[1], f[2]),
            residual_block_3d(f[2], f[3]),
        ])
        self.bottleneck = residual_block_3d(f[3], hidden_size)
        widths = [hidden_size] + f[::-1]  # decoder goes hidden -> f3 -> f2 -> f1 -> f0
        self.up_blocks = nn.ModuleList(UXNetUpBlock(c_in, c_out) for c_in, c_out in zip(widths[:-1], widths[1:]))
        self.head_block = residual_block_3d(f[0], f[0])
        self.head = SegmentationHead(f[0], num_classes)
        # where nnU-Net's pretraining tools find the encoder, the stem and the weights that read the image
        self.key_to_encoder = "encoder"
        self.key_to_stem = "encoder.downsample.0"
        self.keys_to_in_proj = ("encoder.downsample.0.0", "skip_blocks.0.conv1.conv", "skip_blocks.0.skip.0.conv")
        to_network_layout(self)

    def check_input(self, x: torch.Tensor) -> None:
        check_input_tensor(x, self.input_channels, "UXNet")
        self.input_rule.check(x.shape[2:], "UXNet")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, input_channels, D0, D1, D2) -> logits (B, num_classes, D0, D1, D2)."""
        self.check_input(x)
        # channels_last_3d: the depthwise k7 conv's backward is up to ~10x faster on CPU (oneDNN) and reaches cuDNN
        # on CUDA; the UX blocks' channels-last views then cost no copies
        x = x.contiguous(memory_format=map_format())
        stage_outputs = self.encoder(x, self.activation_checkpointing)
        run = self._run
        skips = [run(self.skip_blocks[0], x)] + [run(blk, s) for blk, s in zip(self.skip_blocks[1:], stage_outputs[:3])]
        y = run(self.bottleneck, stage_outputs[3])
        for up, skip in zip(self.up_blocks, reversed(skips)):
            y = run(up, y, skip)
        return self.head(run(self.head_block, y))

    def checkpoint_segments(self) -> list[nn.Module]:
        """The modules whose activations ``activation_checkpointing`` recomputes, one at a time, in backward."""
        return [*self.encoder.stages, *self.skip_blocks, self.bottleneck, *self.up_blocks, self.head_block]

    def _run(self, module: nn.Module, *inputs: torch.Tensor) -> torch.Tensor:
        return maybe_checkpoint(module, *inputs, enabled=self.activation_checkpointing)


# ----------------------------------------------------------------------------------------------------------
# the authors' checkpoints (MASILab/3DUX-Net): our parameter name -> original key, original kwargs -> ours
# ----------------------------------------------------------------------------------------------------------
_RESBLOCK = {"conv1.conv": "conv1.conv", "conv2.conv": "conv2.conv", "skip.0.conv": "conv3.conv"}

ORIGINAL_KEY_RULES: list[KeyRule] = [
    (r"encoder\.downsample\.(.*)", lambda m: f"uxnet_3d.downsample_layers.{m[1]}"),
    (r"encoder\.stages\.(.*)", lambda m: f"uxnet_3d.stages.{m[1]}"),
    (r"encoder\.norms\.(\d+)\.(.*)", lambda m: f"uxnet_3d.norm{m[1]}.{m[2]}"),
    (r"skip_blocks\.(\d+)\.(conv1\.conv|conv2\.conv|skip\.0\.conv)\.(.*)",
     lambda m: f"encoder{int(m[1]) + 1}.layer.{_RESBLOCK[m[2]]}.{m[3]}"),
    (r"bottleneck\.(conv1\.conv|conv2\.conv|skip\.0\.conv)\.(.*)", lambda m: f"encoder5.layer.{_RESBLOCK[m[1]]}.{m[2]}"),
    (r"up_blocks\.(\d+)\.upsample\.(.*)", lambda m: f"decoder{5 - int(m[1])}.transp_conv.conv.{m[2]}"),
    (r"up_blocks\.(\d+)\.block\.(conv1\.conv|conv2\.conv|skip\.0\.conv)\.(.*)",
     lambda m: f"decoder{5 - int(m[1])}.conv_block.{_RESBLOCK[m[2]]}.{m[3]}"),
    (r"head_block\.(conv1\.conv|conv2\.conv)\.(.*)", lambda m: f"decoder1.layer.{_RESBLOCK[m[1]]}.{m[2]}"),
    (r"head\.seg_layers\.(.*)", lambda m: f"out.conv.conv.{m[1]}"),
]


def kwargs_from_original(original: dict, state: dict) -> dict:
    """Our constructor kwargs for the original ``UXNET(**original)``; widths not given are read off ``state``."""
    kw = dict(original)
    feat = take(kw, "feat_size", [first_dim(state, f"uxnet_3d.downsample_layers.{i}.{0 if i == 0 else 1}.weight", d)
                                   for i, d in enumerate((48, 96, 192, 384))])
    depths = take(kw, "depths", [len({k.split(".")[3] for k in state if k.startswith(f"uxnet_3d.stages.{i}.")}) or 2
                                  for i in range(4)])
    stem = state.get("uxnet_3d.downsample_layers.0.0.weight")
    ours = {
        "input_channels": take(kw, "in_chans", int(stem.shape[1]) if stem is not None else 1),
        "num_classes": take(kw, "out_chans", first_dim(state, "out.conv.conv.weight", 13)),
        "feature_sizes": list(feat),
        "depths": list(depths),
        "hidden_size": take(kw, "hidden_size", first_dim(state, "encoder5.layer.conv1.conv.weight", 768)),
        "drop_path_rate": float(take(kw, "drop_path_rate", 0.0)),
        # the original ignores its layer_scale_init_value argument and always builds with 1e-6
        "layer_scale_init_value": 1e-6,
    }
    kw.pop("layer_scale_init_value", None)
    fixed = {"spatial_dims": 3, "norm_name": "instance", "res_block": True, "conv_block": True}
    check_fixed_arguments(kw, fixed, "UXNET")
    return ours


ORIGINAL_CHECKPOINT = OriginalCheckpoint("MASILab/3DUX-Net @14ea46b, class UXNET", ORIGINAL_KEY_RULES,
                                         kwargs_from_original)
