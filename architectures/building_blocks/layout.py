"""Memory layout of a module's weights and of the networks' maps."""
from __future__ import annotations

import torch
from torch import nn

from nnunetv2_uc.architectures.building_blocks import switches


def map_format() -> torch.memory_format:
    """Memory format of UX-Net's and uC's 3-D maps: channels_last_3d unless NNUNETV2_UC_LAYOUT=contiguous."""
    return torch.channels_last_3d if switches.LAYOUT == "channels_last" else torch.contiguous_format


def to_network_layout(module: nn.Module) -> nn.Module:
    """``to_channels_last(module)`` unless NNUNETV2_UC_LAYOUT=contiguous (``switches``); returns ``module``."""
    return to_channels_last(module) if switches.LAYOUT == "channels_last" else module


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
