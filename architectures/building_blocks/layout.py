"""Memory layout of a module's weights."""
from __future__ import annotations

import torch
from torch import nn


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
