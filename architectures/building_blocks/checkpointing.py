"""Activation checkpointing of one network segment."""
from __future__ import annotations

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint


def maybe_checkpoint(module: nn.Module, *inputs: torch.Tensor, enabled: bool) -> torch.Tensor:
    """``module(*inputs)``; with ``enabled`` while autograd records, the module's activations are recomputed in
    the backward pass instead of kept (activation checkpointing: less memory for about one more forward)."""
    if enabled and torch.is_grad_enabled():
        return checkpoint(module, *inputs, use_reentrant=False)
    return module(*inputs)
