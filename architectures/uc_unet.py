"""uC connections on nnU-Net's self-configured U-Nets, with nnU-Net's deep supervision.

``UCPlainConvUNet`` and ``UCResidualEncoderUNet`` take the arch_kwargs of an nnU-Net plan for
``PlainConvUNet`` / ``ResidualEncoderUNet`` unchanged, plus the uC entries, and build that plan's encoder and
decoder (dynamic-network-architectures' ``PlainConvEncoder`` / ``ResidualEncoder`` and ``UNetDecoder``). The
skips of the ``uc_stages`` pass through a uC (one shared 2-D U-Net over every in-plane slice) fused with the
upsampled map by DFi (spec/architectures.md sections 2.2-2.3). ``uc_fusion`` says how the result enters the
decoder stage:

    "residual" (what ``uc_arch_kwargs`` plans):
        skip' = skip + gamma * (DFi(up, uC(skip)) - skip)   gamma: one scale per channel, zero at initialisation
        that decoder stage reads cat[up, skip'] with nnU-Net's 2 * features_per_stage[s] input channels
    At initialisation gamma = 0, so the network computes exactly nnU-Net's network of the same plan (its
    parameters keep nnU-Net's names and shapes; a plain checkpoint loads with only the uC parameters missing).
    gamma = 1 is the paper's "replace" below; training moves each channel between the two. gamma =
    uc_residual_gain * residual_scale: at the planned gain 0.1, under nnU-Net's SGD recipe it reached the Dice of
    nnU-Net's network on the evidence data (two seeds); at gain 1 it learned far more slowly (README "uC on nnU-Net's
    own network").

    "replace" (plans written before ``uc_fusion`` existed; the key absent means this):
        fused = DFi(up, uC(skip)) replaces cat[up, skip]; that decoder stage's convs take features_per_stage[s]
        channels. Under nnU-Net's SGD (momentum 0.99) this version collapsed to background on the evidence data
        (README "uC on nnU-Net's own network"): every loss-carrying head reads a map gated by a sigmoid, with no
        path around it.

Where both differ from the paper's ``UC3DUNet`` (uc3dunet.py): the paper fuses by DFi on its levels 1-3 and
concatenates at level 0, on its own fixed 5-level encoder; here every uC level fuses by DFi on the topology
nnU-Net planned (its strides, widths, kernels and depth), and the levels are those whose in-plane map is large
enough. Every other part is nnU-Net's: transposed-conv upsampling, stage convs, one segmentation layer per
decoder stage, deep supervision (``decoder.deep_supervision``, which nnU-Net's trainer toggles), He init.

Tensors are (B, C, D0, D1, D2), nnU-Net's (z, y, x) with the coarsest-spacing axis first. With
``uc_slice_axis="first"`` the 2-D U-Nets run on the (D1, D2) in-plane slices.

The entries a plan adds to arch_kwargs (``nnunetv2_uc.planning.uc_plans.uc_arch_kwargs`` derives them from the
planned patch):
    uc_stages      encoder stages whose skip passes through a uC (0 = full resolution; the last stage, the
                   bottleneck, has no skip). Default: every stage whose in-plane map is >= 16 voxels.
    uc_depths      poolings of each of those uC's 2-D U-Net: the most that keep the smaller in-plane side
                   >= 4 voxels at the planned patch. Its widths start at features_per_stage[s] and double per
                   level, capped at max(features_per_stage).
    uc_slice_axis  "first" (default: in-plane slices of nnU-Net's tensors) or "last" (the original's fold).
    uc_fusion      "residual" (planned) or "replace" (absent: plans written before it existed).
    uc_residual_gain  residual only: gamma = gain * residual_scale; planned 0.1 (absent: 1.0, residual plans
                   written before it existed).

A plan then names ``nnunetv2_uc.architectures.uc_unet.UCPlainConvUNet`` (or ``UCResidualEncoderUNet``) as its
``network_class_name``; nnU-Net's ``get_network_from_plans`` builds and He-initialises it.
"""
from __future__ import annotations

import math
from typing import Sequence, Type, Union

import numpy as np
import torch
from dynamic_network_architectures.architectures.abstract_arch import AbstractDynamicNetworkArchitectures
from dynamic_network_architectures.architectures.unet import PlainConvUNet, ResidualEncoderUNet
from dynamic_network_architectures.building_blocks.helper import convert_conv_op_to_dim
from dynamic_network_architectures.building_blocks.plain_conv_encoder import PlainConvEncoder
from dynamic_network_architectures.building_blocks.residual import BasicBlockD, BottleneckD
from dynamic_network_architectures.building_blocks.residual_encoders import ResidualEncoder
from dynamic_network_architectures.building_blocks.simple_conv_blocks import StackedConvBlocks
from dynamic_network_architectures.building_blocks.unet_decoder import UNetDecoder
from torch import nn
from torch.nn.modules.conv import _ConvNd
from torch.nn.modules.dropout import _DropoutNd

from nnunetv2_uc.architectures.building_blocks.u_connection import SLICE_AXES, DFi, UShapedConnection
from nnunetv2_uc.errors import UserError

MIN_POOLED_PLANE = 4  # a uC's 2-D U-Net pools while the smaller in-plane side stays >= 4 voxels
UC_FUSIONS = ("residual", "replace")  # how a uC skip enters its decoder stage (module docstring)
PLANNED_FUSION = "residual"  # what new plans get
LEGACY_FUSION = "replace"  # what plans without uc_fusion (written before it existed) build
# residual: gamma = gain * residual_scale. Under SGD the gain scales gamma's step by gain^2 (gain under Adam), so at
# 0.1 the uC path opens ~10x more slowly than at 1 (measured: norm 0.026 vs 0.33 after 150 SGD steps), while the
# uC modules it scales learn. 1.0: plans written before uc_residual_gain existed (2026-12-04).
PLANNED_RESIDUAL_GAIN = 0.1
LEGACY_RESIDUAL_GAIN = 1.0

IntOrSeq = Union[int, Sequence[int]]


class UCPlanError(UserError, ValueError):
    """A plan (arch_kwargs, patch_size) the uC network cannot take; the message names the entry and the fix."""


# ----------------------------------------------------------------------------------------------------------
# geometry: where the uC modules go and how deep their 2-D U-Nets are
# ----------------------------------------------------------------------------------------------------------
def in_plane_axes(slice_axis: str) -> tuple[int, int]:
    """The two spatial axes a uC's 2-D U-Net runs on (the other one is folded into the batch)."""
    return (1, 2) if slice_axis == "first" else (0, 1)


def stage_sizes(patch_size: Sequence[int], strides: Sequence[Sequence[int]]) -> list[list[int]]:
    """Spatial size of every encoder stage's output for ``patch_size`` (patch // cumprod(strides))."""
    sizes, size = [], list(patch_size)
    for stride in strides:
        size = [n // s for n, s in zip(size, stride)]
        sizes.append(size)
    return sizes


def uc_widths(stage_width: int, depth: int, max_width: int) -> list[int]:
    """A uC's 2-D U-Net widths: the stage's width, doubling per 2-D level, capped at ``max_width``."""
    return [min(stage_width * 2 ** level, max_width) for level in range(depth + 1)]


def check_uc_stages(uc_stages: Sequence[int], n_stages: int) -> None:
    skip_stages = list(range(n_stages - 1))
    if any(not isinstance(s, int) or s not in skip_stages for s in uc_stages) or len(set(uc_stages)) != len(uc_stages):
        raise UCPlanError(f"uc_stages {list(uc_stages)} must be distinct skip stages among {skip_stages} "
                          f"(n_stages is {n_stages}; the last stage is the bottleneck and has no skip)")


# ----------------------------------------------------------------------------------------------------------
# plan checks: what nnU-Net's networks assert, as errors that name the arch_kwargs entry
# ----------------------------------------------------------------------------------------------------------
def _per_stage(value: IntOrSeq, expected: int, entry: str, network: str, what: str = "n_stages") -> list:
    values = [value] * expected if isinstance(value, int) else list(value)
    if len(values) != expected:
        raise UCPlanError(f"{network}: arch_kwargs {entry} has {len(values)} entries but needs {expected} "
                          f"({what}); give one entry per stage")
    return values


def _check_3d(conv_op: Type[_ConvNd], kernel_sizes: list, strides: list, network: str) -> None:
    if convert_conv_op_to_dim(conv_op) != 3:
        raise UCPlanError(f"{network} needs a 3-D configuration: arch_kwargs conv_op is {conv_op.__module__}."
                          f"{conv_op.__name__}, but uC folds 3-D maps into 2-D slices. Use the plan's 3d_fullres "
                          f"or 3d_lowres configuration, not 2d")
    for entry, values in (("kernel_sizes", kernel_sizes), ("strides", strides)):
        for s, value in enumerate(values):
            if not isinstance(value, int) and len(value) != 3:
                raise UCPlanError(f"{network}: arch_kwargs {entry}[{s}] = {list(value)} is not 3-D; use the "
                                  f"entries of a 3-D configuration")


def _check_uc_kwargs(uc_stages, uc_depths, uc_slice_axis: str, uc_fusion: str, uc_residual_gain: float,
                     n_stages: int, network: str) -> None:
    if uc_stages is None or uc_depths is None:
        raise UCPlanError(f"{network} needs arch_kwargs uc_stages and uc_depths; add them to the plan's "
                          f"arch_kwargs with nnunetv2_uc.planning.uc_plans.uc_arch_kwargs(patch_size, strides)")
    check_uc_stages(uc_stages, n_stages)
    if len(uc_depths) != len(uc_stages) or any(not isinstance(d, int) or d < 1 for d in uc_depths):
        raise UCPlanError(f"{network}: arch_kwargs uc_depths {list(uc_depths)} needs one 2-D pooling count >= 1 per "
                          f"entry of uc_stages {list(uc_stages)}; derive both with uc_arch_kwargs(patch_size, strides)")
    if uc_slice_axis not in SLICE_AXES:
        raise UCPlanError(f"{network}: arch_kwargs uc_slice_axis must be one of {SLICE_AXES}, got {uc_slice_axis!r}")
    if uc_fusion not in UC_FUSIONS:
        raise UCPlanError(f"{network}: arch_kwargs uc_fusion must be one of {UC_FUSIONS}, got {uc_fusion!r} "
                          f"(\"{PLANNED_FUSION}\" is what uc_arch_kwargs plans)")
    if isinstance(uc_residual_gain, bool) or not isinstance(uc_residual_gain, (int, float)) or uc_residual_gain <= 0:
        raise UCPlanError(f"{network}: arch_kwargs uc_residual_gain must be a number > 0, got {uc_residual_gain!r} "
                          f"({PLANNED_RESIDUAL_GAIN} is what uc_arch_kwargs plans)")


# ----------------------------------------------------------------------------------------------------------
# the decoder
# ----------------------------------------------------------------------------------------------------------
class UShapedSkipFusion(nn.Module):
    """``uc_fusion="replace"``: (up, skip), both (B, C, D0, D1, D2) -> DFi(up, uC(skip)), (B, C, D0, D1, D2), which
    replaces cat[up, skip] as the decoder stage's input."""

    maps_per_voxel = 1  # full-size maps besides the 2-D U-Net's, per channel: the fused map

    def __init__(self, channels: int, widths_2d: Sequence[int], slice_axis: str) -> None:
        super().__init__()
        self.u_connection = UShapedConnection(widths_2d, slice_axis)
        self.fusion = DFi(channels)
        self.record_gate = False  # diagnostics: keep the gate's statistics of the last forward pass
        self.gate_statistics: dict[str, float] | None = None

    def fused(self, up: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        """DFi(up, uC(skip)), (B, C, D0, D1, D2)."""
        connected = self.u_connection(skip)
        if self.record_gate:
            self.gate_statistics = gate_statistics(self.fusion.gate(up, connected))
        return self.fusion(up, connected)

    def forward(self, up: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.fused(up, skip)

    def compute_conv_feature_map_size(self, size: Sequence[int]) -> int:
        """The 2-D maps of every slice plus the full-size maps, for a (D0, D1, D2) skip of ``size``."""
        axes = in_plane_axes(self.u_connection.slice_axis)
        slices = math.prod(n for a, n in enumerate(size) if a not in axes)
        plane = [size[a] for a in axes]
        full_size = self.maps_per_voxel * self.fusion.fuse.out_channels * math.prod(size)
        return slices * self.u_connection.unet.compute_conv_feature_map_size(plane) + full_size


class ResidualUShapedSkip(UShapedSkipFusion):
    """``uc_fusion="residual"``: (up, skip), both (B, C, D0, D1, D2) -> cat[up, skip'], (B, 2C, D0, D1, D2), with

        skip' = skip + gamma * (DFi(up, uC(skip)) - skip),   gamma = gain * residual_scale

    ``residual_scale`` (1, C, 1, 1, 1) starts at zero (ReZero / LayerScale): the output is then exactly
    nnU-Net's cat[up, skip], and the scale's gradient is not zero, so training opens the uC path as far as it
    helps; a channel at gamma 1 is the paper's "replace". The uC and DFi parameters get gradients once the scale
    moves off zero (after the first optimiser step). ``gain`` (a constant) sets how fast an optimiser opens it.
    """

    maps_per_voxel = 2  # the fused map and the blended skip

    def __init__(self, channels: int, widths_2d: Sequence[int], slice_axis: str,
                 gain: float = LEGACY_RESIDUAL_GAIN) -> None:
        super().__init__(channels, widths_2d, slice_axis)
        self.residual_scale = nn.Parameter(torch.zeros(1, channels, 1, 1, 1))
        self.gain = float(gain)

    def gamma(self) -> torch.Tensor:
        """The effective per-channel scale (1, C, 1, 1, 1): gain * residual_scale."""
        return self.gain * self.residual_scale

    def forward(self, up: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        blended = skip + self.gamma() * (self.fused(up, skip) - skip)  # (lerp needs one dtype under AMP)
        return torch.cat((up, blended), 1)


def gate_statistics(gate: torch.Tensor) -> dict[str, float]:
    """A DFi gate map (B, 1, *spatial) in (0, 1): its mean and the share of values below 0.01 (a closed gate)."""
    gate = gate.detach().float()
    return {"gate_mean": gate.mean().item(), "gate_below_0.01": (gate < 0.01).float().mean().item()}


SKIP_MODULES = {"residual": ResidualUShapedSkip, "replace": UShapedSkipFusion}


class UCUNetDecoder(UNetDecoder):
    """nnU-Net's ``UNetDecoder`` whose skips from ``uc_stages`` pass through a uC and fuse by DFi.

    ``forward(skips)`` takes the encoder's skips (full resolution first, bottleneck last) and returns, like
    ``UNetDecoder``, a list of logits (highest resolution first, one per decoder stage) when
    ``deep_supervision`` is set, else the full-resolution logits. Parameters do not depend on the flag.
    """

    def __init__(self, encoder: Union[PlainConvEncoder, ResidualEncoder], num_classes: int,
                 n_conv_per_stage: IntOrSeq, deep_supervision: bool, uc_stages: Sequence[int],
                 uc_depths: Sequence[int], slice_axis: str = "first", nonlin_first: bool = False,
                 fusion: str = LEGACY_FUSION, residual_gain: float = LEGACY_RESIDUAL_GAIN) -> None:
        super().__init__(encoder, num_classes, n_conv_per_stage, deep_supervision, nonlin_first=nonlin_first)
        widths = list(encoder.output_channels)
        self.uc_fusions = nn.ModuleDict()
        # residual: built on a forked random stream, so that under one seed nnU-Net's parts are initialised with
        # the numbers nnU-Net's network gets (the uC modules come last in module order, also for He init)
        module_kwargs = {"gain": residual_gain} if fusion == "residual" else {}
        with torch.random.fork_rng(devices=[], enabled=fusion == "residual"):
            for stage, depth in zip(uc_stages, uc_depths):
                channels = widths[stage]
                self.uc_fusions[str(stage)] = SKIP_MODULES[fusion](
                    channels, uc_widths(channels, depth, max(widths)), slice_axis, **module_kwargs)
        if fusion == "residual":
            return
        for stage in uc_stages:
            # replace: the fused map has `channels` channels, not the 2 * channels of the concatenation
            channels = widths[stage]
            index = self._decoder_index(stage)
            self.stages[index] = StackedConvBlocks(
                len(self.stages[index].convs), encoder.conv_op, channels, channels, encoder.kernel_sizes[stage], 1,
                encoder.conv_bias, encoder.norm_op, encoder.norm_op_kwargs, encoder.dropout_op,
                encoder.dropout_op_kwargs, encoder.nonlin, encoder.nonlin_kwargs, nonlin_first)

    def _decoder_index(self, encoder_stage: int) -> int:
        """Decoder stages run from the bottleneck up: decoder stage i consumes the skip of encoder stage n-2-i."""
        return len(self.stages) - 1 - encoder_stage

    def forward(self, skips: list[torch.Tensor]) -> Union[torch.Tensor, list[torch.Tensor]]:
        x = skips[-1]
        seg_outputs = []
        for index in range(len(self.stages)):
            stage = len(self.stages) - 1 - index
            up = self.transpconvs[index](x)
            if str(stage) in self.uc_fusions:
                x = self.uc_fusions[str(stage)](up, skips[stage])
            else:
                x = torch.cat((up, skips[stage]), 1)
            x = self.stages[index](x)
            if self.deep_supervision:
                seg_outputs.append(self.seg_layers[index](x))
            elif index == len(self.stages) - 1:
                seg_outputs.append(self.seg_layers[-1](x))
        seg_outputs = seg_outputs[::-1]  # highest resolution first
        return seg_outputs if self.deep_supervision else seg_outputs[0]

    def compute_conv_feature_map_size(self, input_size: Sequence[int]) -> np.int64:
        """``UNetDecoder``'s count (input_size is the encoder's input size) plus the uC maps and fused maps."""
        sizes = stage_sizes(input_size, self.encoder.strides)
        output = super().compute_conv_feature_map_size(input_size)
        for stage, module in self.uc_fusions.items():
            output += module.compute_conv_feature_map_size(sizes[int(stage)])
        return output


# ----------------------------------------------------------------------------------------------------------
# the networks
# ----------------------------------------------------------------------------------------------------------
class _UCUNet(AbstractDynamicNetworkArchitectures):
    """What both uC networks share: the uC decoder, forward, input check and feature-map count."""

    encoder: Union[PlainConvEncoder, ResidualEncoder]
    decoder: UCUNetDecoder

    def _checked_plan(self, n_stages: int, features_per_stage: IntOrSeq, conv_op: Type[_ConvNd],
                      kernel_sizes: Union[int, Sequence], strides: Union[int, Sequence], blocks: tuple[str, IntOrSeq],
                      n_conv_per_stage_decoder: IntOrSeq, uc_stages, uc_depths, uc_slice_axis: str,
                      uc_fusion: str, uc_residual_gain: float) -> tuple:
        """The per-stage arch_kwargs as lists, checked as nnU-Net's networks assert them (errors name the entry):
        (features_per_stage, kernel_sizes, strides, blocks per stage, n_conv_per_stage_decoder)."""
        name = type(self).__name__
        per_stage = [_per_stage(value, n_stages, entry, name)
                     for entry, value in (("features_per_stage", features_per_stage), ("kernel_sizes", kernel_sizes),
                                          ("strides", strides), blocks)]
        decoder = _per_stage(n_conv_per_stage_decoder, n_stages - 1, "n_conv_per_stage_decoder", name, "n_stages - 1")
        _check_3d(conv_op, per_stage[1], per_stage[2], name)
        _check_uc_kwargs(uc_stages, uc_depths, uc_slice_axis, uc_fusion, uc_residual_gain, n_stages, name)
        return (*per_stage, decoder)

    def _build_decoder(self, num_classes: int, n_conv_per_stage_decoder: list, deep_supervision: bool,
                       uc_stages: Sequence[int], uc_depths: Sequence[int], uc_slice_axis: str, uc_fusion: str,
                       uc_residual_gain: float, nonlin_first: bool = False) -> None:
        self.decoder = UCUNetDecoder(self.encoder, num_classes, n_conv_per_stage_decoder, deep_supervision,
                                     uc_stages, uc_depths, uc_slice_axis, nonlin_first=nonlin_first, fusion=uc_fusion,
                                     residual_gain=uc_residual_gain)
        self.uc_stages, self.uc_depths, self.uc_slice_axis = list(uc_stages), list(uc_depths), uc_slice_axis
        self.uc_fusion = uc_fusion
        self._min_plane = self._smallest_input_plane()

    def _smallest_input_plane(self) -> tuple[int, int]:
        """Smallest input side on each in-plane axis that leaves every uC's deepest 2-D map >= 1 voxel."""
        axes = in_plane_axes(self.uc_slice_axis)
        cumulative = np.cumprod(np.array(self.encoder.strides), axis=0)
        return tuple(max([int(cumulative[s][a]) * 2 ** d for s, d in zip(self.uc_stages, self.uc_depths)], default=1)
                     for a in axes)

    def check_input(self, x: torch.Tensor) -> None:
        axes = in_plane_axes(self.uc_slice_axis)
        if x.ndim != 5 or any(x.shape[2 + a] < m for a, m in zip(axes, self._min_plane)):
            raise ValueError(f"{type(self).__name__} expects (B, C, D0, D1, D2) with in-plane axes {axes} of at least "
                             f"{list(self._min_plane)} voxels for its uC stages {self.uc_stages} (2-D depths "
                             f"{self.uc_depths}); got shape {tuple(x.shape)}. Use the plan's patch_size")

    def forward(self, x: torch.Tensor) -> Union[torch.Tensor, list[torch.Tensor]]:
        """(B, input_channels, D0, D1, D2) -> logits (B, num_classes, D0, D1, D2), or with deep supervision one
        logit map per decoder stage, highest resolution first (nnU-Net's scales)."""
        self.check_input(x)
        return self.decoder(self.encoder(x))

    def record_uc_gates(self, enabled: bool = True) -> None:
        """Diagnostics: keep each uC level's DFi gate statistics of the next forward passes (off by default; one
        more gate computation per level while on)."""
        for module in self.decoder.uc_fusions.values():
            module.record_gate = enabled
            module.gate_statistics = None

    def uc_diagnostics(self) -> list[dict]:
        """Per uC level: the stage, its gate statistics of the last recorded forward pass (``gate_mean``,
        ``gate_below_0.01``: share of gate values below 0.01; None before ``record_uc_gates``) and, for
        ``uc_fusion="residual"``, the L2 norm of its effective scale gamma (0 at initialisation)."""
        levels = []
        for stage, module in self.decoder.uc_fusions.items():
            gamma = module.gamma() if isinstance(module, ResidualUShapedSkip) else None
            levels.append({"stage": int(stage), **(module.gate_statistics or {"gate_mean": None, "gate_below_0.01": None}),
                           "residual_scale_norm": None if gamma is None else gamma.detach().norm().item()})
        return levels

    def compute_conv_feature_map_size(self, input_size: Sequence[int]) -> np.int64:
        """Elements of all conv outputs per sample for a (D0, D1, D2) input (nnU-Net's VRAM proxy)."""
        if len(input_size) != 3:
            raise ValueError(f"give the spatial input size (D0, D1, D2), got {tuple(input_size)}")
        return self.encoder.compute_conv_feature_map_size(input_size) + self.decoder.compute_conv_feature_map_size(
            input_size)


class UCPlainConvUNet(_UCUNet):
    """nnU-Net's ``PlainConvUNet`` (same arguments, same encoder and decoder) with uC skips on ``uc_stages``.

    Args: those of ``PlainConvUNet`` (a plan's arch_kwargs, plus ``input_channels``, ``num_classes`` and
    ``deep_supervision`` from nnU-Net), and:
        uc_stages: encoder stages whose skip passes through a uC (``uc_arch_kwargs`` gives the default).
        uc_depths: 2-D poolings of each uC's 2-D U-Net, one per entry of ``uc_stages``.
        uc_slice_axis: "first" folds D0 (2-D U-Nets on the (D1, D2) slices); "last" folds D2.
        uc_fusion: "residual" (zero-initialised scale: starts as ``PlainConvUNet``) or "replace" (the default, so
            that plans written before this entry existed build the network they trained).
        uc_residual_gain: residual only, gamma = gain * residual_scale (``uc_arch_kwargs`` plans 0.1; the default
            1.0 is what residual plans written before this entry existed trained with).
    """

    initialize = staticmethod(PlainConvUNet.initialize)

    def __init__(self, input_channels: int, n_stages: int, features_per_stage: IntOrSeq,
                 conv_op: Type[_ConvNd], kernel_sizes: Union[int, Sequence], strides: Union[int, Sequence],
                 n_conv_per_stage: IntOrSeq, num_classes: int, n_conv_per_stage_decoder: IntOrSeq,
                 conv_bias: bool = False, norm_op: Union[None, Type[nn.Module]] = None, norm_op_kwargs: dict = None,
                 dropout_op: Union[None, Type[_DropoutNd]] = None, dropout_op_kwargs: dict = None,
                 nonlin: Union[None, Type[nn.Module]] = None, nonlin_kwargs: dict = None,
                 deep_supervision: bool = False, nonlin_first: bool = False,
                 uc_stages: Sequence[int] | None = None, uc_depths: Sequence[int] | None = None,
                 uc_slice_axis: str = "first", uc_fusion: str = LEGACY_FUSION,
                 uc_residual_gain: float = LEGACY_RESIDUAL_GAIN) -> None:
        super().__init__()
        features_per_stage, kernel_sizes, strides, n_conv_per_stage, n_conv_per_stage_decoder = self._checked_plan(
            n_stages, features_per_stage, conv_op, kernel_sizes, strides, ("n_conv_per_stage", n_conv_per_stage),
            n_conv_per_stage_decoder, uc_stages, uc_depths, uc_slice_axis, uc_fusion, uc_residual_gain)
        self.key_to_encoder = "encoder.stages"
        self.key_to_stem = "encoder.stages.0"
        self.keys_to_in_proj = ("encoder.stages.0.0.convs.0.all_modules.0", "encoder.stages.0.0.convs.0.conv")
        self.encoder = PlainConvEncoder(
            input_channels, n_stages, features_per_stage, conv_op, kernel_sizes, strides, n_conv_per_stage,
            conv_bias, norm_op, norm_op_kwargs, dropout_op, dropout_op_kwargs, nonlin, nonlin_kwargs,
            return_skips=True, nonlin_first=nonlin_first)
        self._build_decoder(num_classes, n_conv_per_stage_decoder, deep_supervision, uc_stages, uc_depths,
                            uc_slice_axis, uc_fusion, uc_residual_gain, nonlin_first=nonlin_first)


class UCResidualEncoderUNet(_UCUNet):
    """nnU-Net's ``ResidualEncoderUNet`` (ResEnc M/L/XL plans; same arguments, encoder and decoder) with uC skips.

    Args: those of ``ResidualEncoderUNet`` plus ``uc_stages``, ``uc_depths``, ``uc_slice_axis``, ``uc_fusion`` as in
    ``UCPlainConvUNet``.
    """

    initialize = staticmethod(ResidualEncoderUNet.initialize)

    def __init__(self, input_channels: int, n_stages: int, features_per_stage: IntOrSeq,
                 conv_op: Type[_ConvNd], kernel_sizes: Union[int, Sequence], strides: Union[int, Sequence],
                 n_blocks_per_stage: IntOrSeq, num_classes: int, n_conv_per_stage_decoder: IntOrSeq,
                 conv_bias: bool = False, norm_op: Union[None, Type[nn.Module]] = None, norm_op_kwargs: dict = None,
                 dropout_op: Union[None, Type[_DropoutNd]] = None, dropout_op_kwargs: dict = None,
                 nonlin: Union[None, Type[nn.Module]] = None, nonlin_kwargs: dict = None,
                 deep_supervision: bool = False, block: Union[Type[BasicBlockD], Type[BottleneckD]] = BasicBlockD,
                 bottleneck_channels: IntOrSeq = None, stem_channels: int = None,
                 uc_stages: Sequence[int] | None = None, uc_depths: Sequence[int] | None = None,
                 uc_slice_axis: str = "first", uc_fusion: str = LEGACY_FUSION,
                 uc_residual_gain: float = LEGACY_RESIDUAL_GAIN) -> None:
        super().__init__()
        features_per_stage, kernel_sizes, strides, n_blocks_per_stage, n_conv_per_stage_decoder = self._checked_plan(
            n_stages, features_per_stage, conv_op, kernel_sizes, strides, ("n_blocks_per_stage", n_blocks_per_stage),
            n_conv_per_stage_decoder, uc_stages, uc_depths, uc_slice_axis, uc_fusion, uc_residual_gain)
        self.key_to_encoder = "encoder.stages"
        self.key_to_stem = "encoder.stem"
        self.keys_to_in_proj = ("encoder.stem.convs.0.conv", "encoder.stem.convs.0.all_modules.0")
        self.encoder = ResidualEncoder(
            input_channels, n_stages, features_per_stage, conv_op, kernel_sizes, strides, n_blocks_per_stage,
            conv_bias, norm_op, norm_op_kwargs, dropout_op, dropout_op_kwargs, nonlin, nonlin_kwargs, block,
            bottleneck_channels, return_skips=True, disable_default_stem=False, stem_channels=stem_channels)
        self._build_decoder(num_classes, n_conv_per_stage_decoder, deep_supervision, uc_stages, uc_depths,
                            uc_slice_axis, uc_fusion, uc_residual_gain)
