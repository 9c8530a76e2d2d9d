"""How a network file describes the authors' checkpoints: key rules and constructor-argument translation.

Each network file defines its own ``ORIGINAL_CHECKPOINT`` (as timm keeps ``checkpoint_filter_fn`` next to the
model); ``nnunetv2_uc.weights.original`` reads checkpoints and applies it.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from nnunetv2_uc.errors import UserError

#: (regex over our parameter name, function of the match giving the original key)
KeyRule = tuple[str, Callable[[re.Match], str]]


class CheckpointError(UserError):
    """A checkpoint that does not fit the requested architecture; the message lists every problem."""


@dataclass(frozen=True)
class OriginalCheckpoint:
    """The original code a network reproduces, and how its checkpoints map onto ours.

    ``key_rules`` map each of our parameter names to the original state-dict key; ``our_kwargs(original_kwargs,
    state)`` turns the original constructor's keyword arguments (widths not given are read off the state dict)
    into ours, including ``input_channels`` and ``num_classes``.
    """

    source: str
    key_rules: Sequence[KeyRule]
    our_kwargs: Callable[[dict, dict], dict]

    def original_key(self, name: str) -> str:
        """The original state-dict key of our parameter ``name``."""
        for pattern, to_original in self.key_rules:
            match = re.fullmatch(pattern, name)
            if match:
                return to_original(match)
        raise KeyError(f"no original key known for parameter {name!r} ({self.source})")


def take(kwargs: dict, name: str, default: Any) -> Any:
    """``kwargs.pop(name)`` if present, else ``default``."""
    return kwargs.pop(name) if name in kwargs else default


def first_dim(state: dict, key: str, fallback: int) -> int:
    """Size of dimension 0 of ``state[key]`` (a width read off a checkpoint), or ``fallback``."""
    return int(state[key].shape[0]) if key in state else fallback


def check_fixed_arguments(remaining: dict, fixed: dict, original_name: str) -> None:
    """Original arguments we accept only at their paper value; anything else is listed in one error."""
    problems = []
    for name, value in remaining.items():
        if name not in fixed:
            problems.append(f"unknown argument {name!r}")
        elif value != fixed[name]:
            problems.append(f"{name}={value!r} is not supported (only {fixed[name]!r}, as in the papers)")
    if problems:
        raise CheckpointError(f"{original_name} arguments: " + "; ".join(problems))
