"""The planner's view of a network: how ``nnunetv2_uc plan`` treats each network the registry marks plannable.

The facts about a network (class, defaults, input rule, plans suffix, how its trainer trains) live on its registry
entry (architectures/registry.py); this module turns them into what the planner calls: a paper network
(``planned_topology="own"``) has its own fixed topology, while uC on nnU-Net's U-Net (``"nnunet"``) takes the
topology of the configuration nnU-Net planned and adds uC connections that depend on the patch.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

from nnunetv2_uc.architectures.registry import ADAMW_SLOTS, NETWORKS, NetworkEntry, plannable_networks
from nnunetv2_uc.architectures.uc_unet import UCPlanError
from nnunetv2_uc.errors import UserError
from nnunetv2_uc.planning.uc_plans import with_uc_connections


@dataclass(frozen=True)
class PlannableNetwork:
    """How the planner treats one network.

    name: the ``--network`` value. plans_suffix: appended to the base planner's plans name.
    architecture: (nnU-Net's planned configuration, patch) -> the ``architecture`` block for the plans
        (``network_class_name`` import path, ``arch_kwargs``, ``_kw_requires_import``).
    patch_divisors: nnU-Net's planned configuration -> the per-axis multiple every patch axis must be.
    patch_problems: (nnU-Net's planned configuration, patch) -> why the network cannot take the patch ([] if it can).
    deep_supervision, optimizer_slots: how the trainer meant for it trains (memory depends on both).
    """

    name: str
    plans_suffix: str
    architecture: Callable[[dict, Sequence[int]], dict]
    patch_divisors: Callable[[dict], tuple[int, ...]]
    patch_problems: Callable[[dict, Sequence[int]], list[str]]
    deep_supervision: bool = False
    optimizer_slots: int = ADAMW_SLOTS


def paper_network(entry: NetworkEntry) -> PlannableNetwork:
    """A network with its own fixed topology (paper configuration): every patch axis a multiple of its total
    stride (16), trained by the plugin's trainer (AdamW, no deep supervision)."""
    stride = entry.network_class.input_rule.total_stride
    return PlannableNetwork(
        name=entry.name,
        plans_suffix=entry.plans_suffix,
        architecture=lambda configuration, patch: entry.plans_architecture(),
        patch_divisors=lambda configuration: (stride,) * 3,
        patch_problems=lambda configuration, patch: entry.input_problems(patch),
        deep_supervision=entry.deep_supervision,
        optimizer_slots=entry.optimizer_slots,
    )


def _total_strides(configuration: dict) -> tuple[int, ...]:
    strides = configuration["architecture"]["arch_kwargs"]["strides"]
    return tuple(math.prod(int(s[axis]) for s in strides) for axis in range(len(strides[0])))


def _uc_problems(configuration: dict, patch: Sequence[int]) -> list[str]:
    bottleneck = [size // stride for size, stride in zip(patch, _total_strides(configuration))]
    if math.prod(bottleneck) <= 1:  # InstanceNorm rejects a single voxel
        return [f"patch {list(patch)} leaves {bottleneck} voxels at the bottleneck; InstanceNorm needs more than one"]
    try:
        with_uc_connections(configuration["architecture"], patch)
    except UCPlanError as e:
        return [str(e)]
    return []


def on_nnunet_topology(entry: NetworkEntry) -> PlannableNetwork:
    """uC connections on the U-Net nnU-Net planned (plain or ResEnc): its topology unchanged, uC levels chosen for
    the patch."""
    return PlannableNetwork(
        name=entry.name,
        plans_suffix=entry.plans_suffix,
        architecture=lambda configuration, patch: with_uc_connections(configuration["architecture"], patch),
        patch_divisors=_total_strides,
        patch_problems=_uc_problems,
        deep_supervision=entry.deep_supervision,
        optimizer_slots=entry.optimizer_slots,
    )


_VIEWS = {"own": paper_network, "nnunet": on_nnunet_topology}


def get_network(name: str) -> PlannableNetwork:
    """The planner's view of the network called ``name``; a UserError lists the plannable ones."""
    entry = NETWORKS.get(name)
    if entry is None or entry.planned_topology is None:
        raise UserError(f"unknown network {name!r}; choose one of {', '.join(plannable_networks())} (--network)")
    return _VIEWS[entry.planned_topology](entry)
