"""The uC padding rules that let odd sizes through the 3-D and 2-D U-Nets."""
from __future__ import annotations

import torch
import torch.nn.functional as F


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
