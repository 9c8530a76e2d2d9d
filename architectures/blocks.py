"""Building blocks shared by 3D UX-Net and uC 3DU-Net.

Shapes use (B, C, D0, D1, D2) for 3-D maps and (N, C, H, W) for 2-D maps. Where
dynamic-network-architectures has the block (conv-norm-act stacks, the residual block) it is used;
the rest (UX block, channels-first LayerNorm, DFi gate, the 2-D skip U-Net) is defined here once.
"""
from __future__ import annotations

import math
from typing import Sequence, Type

import torch
import torch.nn.functional as F
from dynamic_network_architectures.building_blocks.residual import BasicBlockD
from dynamic_network_architectures.building_blocks.simple_conv_blocks import StackedConvBlocks
from torch import nn
from torch.utils.checkpoint import checkpoint


def to_channels_last(module: nn.Module) -> nn.Module:
    """Store 5-D parameters channels_last_3d and 4-D ones channels_last (in place); returns ``module``.

    Convolutions then run on oneDNN's / cuDNN's channels-last kernels without re-ordering the weights on
    every call; values and state-dict keys are unchanged.
    """
    for param in module.parameters():
        if param.ndim in (4, 5):
            fmt = torch.channels_last_3d if param.ndim == 5 else torch.channels_last
            param.data = param.data.contiguous(memory_format=fmt)
    return module


# ----------------------------------------------------------------------------------------------------------
# drop-in subclasses of torch layers: same parameters, state-dict keys and values, faster CPU kernels.
# The fast paths were measured on CPU only (BENCHMARKS.md); on other devices the torch layer runs unchanged.
# ----------------------------------------------------------------------------------------------------------
def _fast_path(x: torch.Tensor) -> bool:
    return x.device.type == "cpu"


class FastInstanceNorm3d(nn.InstanceNorm3d):
    """``nn.InstanceNorm3d`` without running statistics; (B, C, D0, D1, D2) -> same shape and layout.

    ``instance_norm`` normalises a (1, B*C, ...) reshape, which copies channels-last maps in and returns them
    contiguous. On CPU a contiguous map goes to ``group_norm`` with one group per channel and a channels-last
    map to ``batch_norm`` per sample (batch statistics of one sample are its instance statistics): fused
    kernels, and the layout it was given.
    """

    def __init__(self, num_features: int, eps: float = 1e-5, affine: bool = False) -> None:
        super().__init__(num_features, eps=eps, affine=affine, track_running_stats=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not _fast_path(x) or x.ndim != 5:
            return super().forward(x)
        if x.is_contiguous():
            return F.group_norm(x, self.num_features, self.weight, self.bias, self.eps)
        if x.shape[0] == 1:
            return self._batch_norm(x)
        return torch.cat([self._batch_norm(sample) for sample in x.split(1)])

    def _batch_norm(self, x: torch.Tensor) -> torch.Tensor:
        return F.batch_norm(x, None, None, self.weight, self.bias, True, 0.0, self.eps)


class PointwiseConv3d(nn.Conv3d):
    """1x1x1 ``nn.Conv3d``: (B, C_in, *spatial) -> (B, C_out, *spatial), channels-last.

    On CPU it runs as one GEMM on the channels-last view, without the layout copies of the conv path.
    """

    def __init__(self, input_channels: int, output_channels: int, bias: bool = True) -> None:
        super().__init__(input_channels, output_channels, 1, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not _fast_path(x):
            return super().forward(x)
        return torch.movedim(F.linear(torch.movedim(x, 1, -1), self.weight.flatten(1), self.bias), -1, 1)


def patch_transposed_conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """Transposed conv with stride == kernel, no padding: every input voxel writes its own k0 x k1 (x k2) block.

    x (B, C_in, *S), weight (C_in, C_out, *k) -> (B, C_out, *(S * k)) channels-last: one GEMM producing all
    kernel offsets per voxel, then one copy that interleaves them into place.
    """
    ndim = x.ndim - 2
    c_out, kernel = weight.shape[1], weight.shape[2:]
    offsets = math.prod(kernel)
    w = torch.movedim(weight, 1, -1).reshape(weight.shape[0], offsets * c_out)  # columns: (*k, C_out)
    b = bias.repeat(offsets) if bias is not None else None
    y = F.linear(torch.movedim(x, 1, -1), w.t(), b)  # (B, *S, prod(k) * C_out)
    batch, spatial = x.shape[0], x.shape[2:]
    y = y.view(batch, *spatial, *kernel, c_out)
    interleave = [0] + [i for axis in range(ndim) for i in (1 + axis, 1 + ndim + axis)] + [1 + 2 * ndim]
    y = y.permute(interleave).reshape(batch, *(s * k for s, k in zip(spatial, kernel)), c_out)
    return torch.movedim(y, -1, 1)


class _PatchTransposedConvMixin:
    """Runs a k == stride transposed conv through ``patch_transposed_conv`` on CPU."""

    def _check_patch_geometry(self) -> None:
        if (tuple(self.kernel_size) != tuple(self.stride) or any(self.padding) or any(self.output_padding)
                or any(d != 1 for d in self.dilation) or self.groups != 1):
            raise ValueError("patch transposed conv needs kernel == stride, no padding, dilation 1, groups 1")

    def forward(self, x: torch.Tensor, output_size=None) -> torch.Tensor:
        if output_size is not None or not _fast_path(x):
            return super().forward(x, output_size)
        return patch_transposed_conv(x, self.weight, self.bias)


class PatchConvTranspose3d(_PatchTransposedConvMixin, nn.ConvTranspose3d):
    """``nn.ConvTranspose3d(in, out, k, stride=k)``: (B, in, *S) -> (B, out, *(S * k)), channels-last."""

    def __init__(self, input_channels: int, output_channels: int, kernel_size: int = 2, bias: bool = True) -> None:
        super().__init__(input_channels, output_channels, kernel_size, stride=kernel_size, bias=bias)
        self._check_patch_geometry()


class PatchConvTranspose2d(_PatchTransposedConvMixin, nn.ConvTranspose2d):
    """``nn.ConvTranspose2d(in, out, k, stride=k)``: (N, in, H, W) -> (N, out, H*k, W*k), channels-last."""

    def __init__(self, input_channels: int, output_channels: int, kernel_size: int = 2, bias: bool = True) -> None:
        super().__init__(input_channels, output_channels, kernel_size, stride=kernel_size, bias=bias)
        self._check_patch_geometry()


# ----------------------------------------------------------------------------------------------------------
# activation checkpointing
# ----------------------------------------------------------------------------------------------------------
def maybe_checkpoint(module: nn.Module, *inputs: torch.Tensor, enabled: bool) -> torch.Tensor:
    """``module(*inputs)``; with ``enabled`` while autograd records, the module's activations are recomputed in
    the backward pass instead of kept (activation checkpointing: less memory for about one more forward)."""
    if enabled and torch.is_grad_enabled():
        return checkpoint(module, *inputs, use_reentrant=False)
    return module(*inputs)


# ----------------------------------------------------------------------------------------------------------
# normalisation
# ----------------------------------------------------------------------------------------------------------
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


# ----------------------------------------------------------------------------------------------------------
# convolution stacks (dynamic-network-architectures)
# ----------------------------------------------------------------------------------------------------------
def conv_norm_act_stack(
    conv_op: Type[nn.Module],
    input_channels: int,
    output_channels: int,
    norm_op: Type[nn.Module],
    norm_op_kwargs: dict,
    nonlin: Type[nn.Module],
    nonlin_kwargs: dict,
    num_convs: int = 2,
) -> StackedConvBlocks:
    """``num_convs`` x (conv k3 p1 with bias -> norm -> nonlin); the first conv maps in->out."""
    return StackedConvBlocks(
        num_convs, conv_op, input_channels, output_channels, 3, 1, conv_bias=True,
        norm_op=norm_op, norm_op_kwargs=norm_op_kwargs, nonlin=nonlin, nonlin_kwargs=nonlin_kwargs,
    )


def residual_block_3d(input_channels: int, output_channels: int) -> BasicBlockD:
    """MONAI ``UnetResBlock`` semantics: conv3-IN-LReLU(0.01)-conv3-IN, 1x1 conv+IN shortcut if in != out, add, LReLU.

    Convolutions have no bias; InstanceNorm has no affine parameters.
    """
    return BasicBlockD(
        nn.Conv3d, input_channels, output_channels, kernel_size=3, stride=1, conv_bias=False,
        norm_op=FastInstanceNorm3d, norm_op_kwargs={"eps": 1e-5, "affine": False},
        nonlin=nn.LeakyReLU, nonlin_kwargs={"negative_slope": 0.01, "inplace": True},
    )


# ----------------------------------------------------------------------------------------------------------
# 3D UX-Net block
# ----------------------------------------------------------------------------------------------------------
class DropPath(nn.Module):
    """Stochastic depth per sample; identity at rate 0 or in eval mode."""

    def __init__(self, rate: float = 0.0) -> None:
        super().__init__()
        self.rate = rate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.rate == 0.0 or not self.training:
            return x
        keep = 1.0 - self.rate
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep


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


# ----------------------------------------------------------------------------------------------------------
# decoder pieces
# ----------------------------------------------------------------------------------------------------------
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


# ----------------------------------------------------------------------------------------------------------
# ----------------------------------------------------------------------------------------------------------
def pad_end_to_match(x: torch.Tensor, reference: torch.Tensor, mode: str = "replicate") -> torch.Tensor:
    """Pad ``x`` by one voxel at the END of each spatial axis where ``reference`` is larger (uC 3-D rule)."""
    pads = []
    for size, target in zip(reversed(x.shape[2:]), reversed(reference.shape[2:])):
        pads += [0, 1 if target > size else 0]
    return F.pad(x, pads, mode=mode) if any(pads) else x


def pad_centred_to_match(x: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Zero-pad ``x`` centred (left = floor(diff/2)) to the spatial size of ``reference`` (uC 2-D rule)."""
    pads = []
    for size, target in zip(reversed(x.shape[2:]), reversed(reference.shape[2:])):
        diff = target - size
        pads += [diff // 2, diff - diff // 2]
    return F.pad(x, pads) if any(pads) else x


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

    def forward(self, up: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        if _fast_path(up):
            return self._forward_one_gemm(up, skip)
        gate = torch.sigmoid(self.gate_up(up) + self.gate_skip(skip))
        return self.fuse(torch.cat([up, skip], dim=1)) * gate

    def _forward_one_gemm(self, up: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        """All three 1x1 convs read cat[F1, F2]: one GEMM yields the c fused channels and the gate logit."""
        c = self.fuse.out_channels
        gate_weight = torch.cat([self.gate_up.weight.flatten(1), self.gate_skip.weight.flatten(1)], dim=1)
        weight = torch.cat([self.fuse.weight.flatten(1), gate_weight])  # (c + 1, 2c)
        bias = torch.cat([self.gate_up.bias.new_zeros(c), self.gate_up.bias + self.gate_skip.bias])
        y = F.linear(torch.movedim(torch.cat([up, skip], dim=1), 1, -1), weight, bias)  # (B, *spatial, c + 1)
        return torch.movedim(y[..., :c] * torch.sigmoid(y[..., c:]), -1, 1)


# ----------------------------------------------------------------------------------------------------------
# uC: the 2-D U-Net that replaces a 3-D skip connection
# ----------------------------------------------------------------------------------------------------------
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
        y = self.unet(planes).permute(0, 2, 3, 1).reshape(b, s, p0, p1, c)
        inverse = sorted(range(5), key=order.__getitem__)
        return y.permute(inverse).contiguous(memory_format=torch.channels_last_3d)
