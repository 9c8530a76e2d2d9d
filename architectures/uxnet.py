"""3D UX-Net (Lee et al., ICLR 2023), as released in MASILab/3DUX-Net at commit 14ea46b.

Large-kernel depthwise encoder (4 stages of UX blocks) with a SwinUNETR-style residual decoder.
Input (B, C_in, D0, D1, D2) with every spatial axis a multiple of 16; output logits (B, num_classes, D0, D1, D2).
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from nnunetv2_uc.architectures.blocks import (
    LayerNormChannelsFirst, PatchConvTranspose3d, SegmentationHead, UXBlock, maybe_checkpoint, residual_block_3d,
    map_format, to_network_layout,
)
from nnunetv2_uc.architectures.input_checks import check_input_tensor, check_spatial_shape


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


class UXNet(nn.Module):
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

    patch_multiple_of_16 = True

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
        to_network_layout(self)

    def check_input(self, x: torch.Tensor) -> None:
        check_input_tensor(x, self.input_channels, "UXNet")
        check_spatial_shape(x.shape[2:], multiple_of_16=True, network="UXNet")

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
