"""Shape checks that run before any compute, with messages that say how to fix the input."""
from __future__ import annotations

import math
from typing import Sequence

import torch

TOTAL_STRIDE = 16  # both networks pool four times


def check_input_tensor(x: torch.Tensor, input_channels: int, network: str) -> None:
    """x must be (B, input_channels, D0, D1, D2)."""
    if x.ndim != 5:
        raise ValueError(f"{network} expects a 5-D tensor (B, C, D0, D1, D2), got shape {tuple(x.shape)}")
    if x.shape[1] != input_channels:
        raise ValueError(
            f"{network} was built for {input_channels} input channel(s) but the input has {x.shape[1]} "
            f"(shape {tuple(x.shape)}); rebuild the network with input_channels={x.shape[1]} or fix the data"
        )


def _nearest_multiples(size: int, multiple: int) -> list[int]:
    below = max(multiple, (size // multiple) * multiple)
    above = max(multiple, math.ceil(size / multiple) * multiple)
    return sorted({below, above})


def spatial_shape_problems(spatial: Sequence[int], multiple_of_16: bool) -> list[str]:
    """Why a spatial size cannot go through a stride-16 network; empty if it can.

    ``multiple_of_16``: every axis must be a multiple of 16 (3D UX-Net); otherwise only >= 16 (uC 3DU-Net).
    Both need more than one voxel in total at 1/16 (InstanceNorm rejects a 1x1x1 map).
    """
    problems = []
    for axis, size in enumerate(spatial):
        if multiple_of_16 and size % TOTAL_STRIDE:
            nearest = " or ".join(map(str, _nearest_multiples(size, TOTAL_STRIDE)))
            problems.append(f"axis {axis} has size {size}, which is not a multiple of 16 (nearest valid: {nearest})")
        elif size < TOTAL_STRIDE:
            problems.append(f"axis {axis} has size {size} < 16; the network pools 4 times (nearest valid: 16)")
    if not problems and math.prod([s // TOTAL_STRIDE for s in spatial]) <= 1:  # a list: dynamo traces it
        problems.append(
            f"spatial size {tuple(spatial)} leaves a single voxel at 1/16 resolution, which InstanceNorm "
            f"rejects; make at least one axis >= 32"
        )
    return problems


def check_spatial_shape(spatial: Sequence[int], multiple_of_16: bool, network: str) -> None:
    problems = spatial_shape_problems(spatial, multiple_of_16)
    if problems:
        raise ValueError(f"{network} cannot take spatial size {tuple(spatial)}: " + "; ".join(problems))
