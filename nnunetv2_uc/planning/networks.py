"""The networks ``nnunetv2_uc plan`` can plan for, and what the planner needs to know about each.

One table (``NETWORKS``); the network registry (architectures/registry.py) will feed it. A network that takes
its topology from nnU-Net's plan (uC on nnU-Net's U-Net) is one more entry whose ``architecture`` hook reads
the planned configuration's ``architecture`` block and whose ``patch_divisors`` come from its strides.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Callable, Sequence

from torch import nn

from nnunetv2_uc.architectures import UC3DUNet, UXNet, spatial_shape_problems
from nnunetv2_uc.architectures.input_checks import TOTAL_STRIDE
from nnunetv2_uc.errors import UserError

#: constructor arguments that are not part of a network's configuration in the plans
_NOT_IN_PLANS = ("self", "input_channels", "num_classes", "deep_supervision", "activation_checkpointing")


@dataclass(frozen=True)
class PlannableNetwork:
    """How the planner treats one network.

    name: the ``--network`` value. plans_suffix: appended to the base planner's plans name.
    architecture: nnU-Net's planned configuration -> the ``architecture`` block for the plans
        (``network_class_name`` import path, ``arch_kwargs``, ``_kw_requires_import``).
    patch_divisors: architecture block -> per-axis multiple every patch axis must be.
    patch_problems: (architecture block, patch) -> why the network cannot take the patch (empty if it can).
    """

    name: str
    plans_suffix: str
    architecture: Callable[[dict], dict]
    patch_divisors: Callable[[dict], tuple[int, ...]]
    patch_problems: Callable[[dict, Sequence[int]], list[str]]


def class_path(network_class: type) -> str:
    return f"{network_class.__module__}.{network_class.__qualname__}"


def constructor_defaults(network_class: type[nn.Module]) -> dict:
    """The defaults of the network's constructor (its paper configuration), JSON-ready (tuples as lists)."""
    defaults = {}
    for name, parameter in inspect.signature(network_class.__init__).parameters.items():
        if name in _NOT_IN_PLANS or parameter.default is inspect.Parameter.empty:
            continue
        value = parameter.default
        defaults[name] = list(value) if isinstance(value, tuple) else value
    return defaults


def _paper_network(name: str, network_class: type[nn.Module]) -> PlannableNetwork:
    """A network with its own fixed topology (paper configuration): every patch axis a multiple of 16."""
    block = {"network_class_name": class_path(network_class), "arch_kwargs": constructor_defaults(network_class),
             "_kw_requires_import": []}
    return PlannableNetwork(
        name=name,
        plans_suffix=network_class.__name__,
        architecture=lambda configuration: {**block, "arch_kwargs": dict(block["arch_kwargs"])},
        patch_divisors=lambda architecture: (TOTAL_STRIDE,) * 3,
        patch_problems=lambda architecture, patch: spatial_shape_problems(patch, multiple_of_16=True),
    )


NETWORKS: dict[str, PlannableNetwork] = {
    network.name: network for network in (_paper_network("uc3dunet", UC3DUNet), _paper_network("uxnet", UXNet))
}


def get_network(name: str) -> PlannableNetwork:
    if name not in NETWORKS:
        raise UserError(f"unknown network {name!r}; choose one of {', '.join(NETWORKS)} (--network)")
    return NETWORKS[name]
