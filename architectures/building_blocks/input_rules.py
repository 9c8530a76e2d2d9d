"""Which spatial sizes a network accepts, checked before any compute, with messages that say how to fix an input."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch


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


@dataclass(frozen=True)
class InputRule:
    """Spatial sizes that pass a network pooling ``total_stride`` times over (in every axis).

    ``every_axis_multiple``: every axis must be a multiple of ``total_stride`` (3D UX-Net); otherwise only
    ``>= total_stride`` (uC 3DU-Net, whose pad rules handle the rest). Either way the map at 1/total_stride must
    hold more than one voxel in total (InstanceNorm rejects a 1x1x1 map).
    """

    total_stride: int = 16
    every_axis_multiple: bool = True

    def problems(self, spatial: Sequence[int]) -> list[str]:
        """Why ``spatial`` cannot go through the network; empty if it can."""
        stride, problems = self.total_stride, []
        for axis, size in enumerate(spatial):
            if self.every_axis_multiple and size % stride:
                nearest = " or ".join(map(str, _nearest_multiples(size, stride)))
                problems.append(f"axis {axis} has size {size}, which is not a multiple of {stride} "
                                f"(nearest valid: {nearest})")
            elif size < stride:
                problems.append(f"axis {axis} has size {size} < {stride}; the network pools to 1/{stride} "
                                f"(nearest valid: {stride})")
        if not problems and math.prod([s // stride for s in spatial]) <= 1:  # a list: dynamo traces it
            problems.append(
                f"spatial size {tuple(spatial)} leaves a single voxel at 1/{stride} resolution, which InstanceNorm "
                f"rejects; make at least one axis >= {2 * stride}"
            )
        return problems

    def check(self, spatial: Sequence[int], network: str) -> None:
        problems = self.problems(spatial)
        if problems:
            raise ValueError(f"{network} cannot take spatial size {tuple(spatial)}: " + "; ".join(problems))

    def round_up(self, spatial: Sequence[int]) -> tuple[int, ...]:
        """Each axis up to the next multiple of the total stride (at least one stride)."""
        stride = self.total_stride
        return tuple(max(stride, math.ceil(s / stride) * stride) for s in spatial)
