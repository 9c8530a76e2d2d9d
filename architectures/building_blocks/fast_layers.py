"""Drop-in subclasses of torch layers: same parameters, state-dict keys and values, faster CPU kernels.

The fast paths were measured on CPU only (BENCHMARKS.md); on other devices the torch layer runs unchanged
(``NNUNETV2_UC_FAST_PATHS`` in ``switches`` takes them everywhere or nowhere, for measurements).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from nnunetv2_uc.architectures.building_blocks import switches


def use_fast_path(x: torch.Tensor) -> bool:
    """Whether a layer on ``x`` takes its fast path: on CPU, where they were measured (see ``switches``)."""
    return switches.FAST_PATHS == "all" or (switches.FAST_PATHS == "cpu" and x.device.type == "cpu")


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
        if not use_fast_path(x) or x.ndim != 5:
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
        if not use_fast_path(x):
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
        if output_size is not None or not use_fast_path(x):
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
