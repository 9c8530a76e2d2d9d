"""Patch-size adaptation for the paper networks, within the memory budget of nnU-Net's plans.

nnU-Net's planner sizes ``patch_size`` x ``batch_size`` so that its own U-Net fits the GPU memory target.
The paper networks need every patch axis to be a multiple of 16 and cost a different amount of memory per
voxel, so the trainers (1) round the planned patch to multiples of 16 and (2) shrink it until this
network's estimated training memory is no larger than the estimate for the network the plans were made for.

Memory is estimated the same way for both networks: one forward pass on PyTorch's ``meta`` device (no
compute, no allocation) counting the bytes of every tensor autograd saves for the backward pass, plus
weights, gradients and optimizer state. It is an fp32 estimate used for *comparison*; mixed precision on
CUDA scales both sides alike.
"""
from __future__ import annotations

import pydoc
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
from torch import nn

from nnunetv2_uc.architectures.building_blocks.input_rules import InputRule

GIB = 2 ** 30
#: patches are planned in multiples of 16 on every axis: UX-Net needs it, and uC avoids its padding paths with it
PATCH_RULE = InputRule(total_stride=16, every_axis_multiple=True)
MIN_AXIS = PATCH_RULE.total_stride
BYTES_FP32 = 4


class PatchAdaptationError(ValueError):
    """The planned patch cannot be turned into one the network accepts within the memory budget."""


@dataclass
class PatchDecision:
    """What the trainer will train with, and why."""

    planned: tuple[int, ...]
    patch: tuple[int, ...]
    batch_size: int
    estimate_bytes: int
    budget_bytes: int | None
    reasons: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return self.planned != self.patch


def saved_activation_bytes(network: nn.Module, input_shape: Sequence[int]) -> int:
    """Bytes autograd keeps for backward in one forward pass of a meta-device ``network``, plus the output.

    Tensors saved twice (same object) are counted once. With activation checkpointing on, autograd keeps only
    the segments' inputs, and the backward pass recomputes one segment at a time: the largest segment's own
    activations are added.
    """
    kept = _saved_bytes(network, input_shape)
    if not getattr(network, "activation_checkpointing", False):
        return kept
    return kept + _largest_checkpoint_segment_bytes(network, input_shape)


def _forward_on_meta(network: nn.Module, input_shape: Sequence[int], on_saved) -> torch.Tensor:
    """One forward pass on the meta device, calling ``on_saved(tensor)`` for every tensor autograd saves."""
    def pack(t: torch.Tensor) -> torch.Tensor:
        on_saved(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        return network(torch.zeros(tuple(input_shape), device="meta"))


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def _saved_bytes(network: nn.Module, input_shape: Sequence[int]) -> int:
    saved: dict[int, int] = {}
    out = _forward_on_meta(network, input_shape, lambda t: saved.__setitem__(id(t), _nbytes(t)))
    outputs = out if isinstance(out, (list, tuple)) else [out]
    return sum(saved.values()) + sum(_nbytes(o) for o in outputs)


def _largest_checkpoint_segment_bytes(network: nn.Module, input_shape: Sequence[int]) -> int:
    """Bytes one checkpointed segment saves when it runs normally (the peak its recomputation adds)."""
    per_segment: list[dict[int, int]] = []
    active: list[dict[int, int]] = []

    def record(t: torch.Tensor) -> None:
        if active:
            active[-1][id(t)] = _nbytes(t)

    hooks = [h for segment in network.checkpoint_segments()
             for h in (segment.register_forward_pre_hook(lambda module, inputs: active.append({})),
                       segment.register_forward_hook(lambda module, inputs, output: per_segment.append(active.pop())))]
    network.activation_checkpointing = False
    try:
        _forward_on_meta(network, input_shape, record)
    finally:
        network.activation_checkpointing = True
        for hook in hooks:
            hook.remove()
    return max((sum(saved.values()) for saved in per_segment), default=0)


def parameter_bytes(network: nn.Module, optimizer_slots: int) -> int:
    """Weights + gradients + ``optimizer_slots`` state tensors per parameter (SGD momentum 1, Adam 2), fp32."""
    n = sum(p.numel() for p in network.parameters())
    return n * BYTES_FP32 * (2 + optimizer_slots)


def training_bytes_estimator(build: Callable[[], nn.Module], input_channels: int, batch_size: int,
                             optimizer_slots: int) -> Callable[[Sequence[int]], int]:
    """patch -> estimated training memory (bytes) of the network made by ``build``, at ``batch_size``.

    The network is built once, on the meta device.
    """
    with torch.device("meta"):
        network = build()
    fixed = parameter_bytes(network, optimizer_slots)

    def estimate(patch: Sequence[int]) -> int:
        return saved_activation_bytes(network, (batch_size, input_channels, *patch)) + fixed

    return estimate


#: nnU-Net's ExperimentPlanner: a 3-D U-Net whose conv feature maps total this many elements per sample
#: fits 8 GB of GPU memory at batch size 2 (``UNet_reference_val_3d`` / ``UNet_reference_val_corresp_GB``).
NNUNET_REFERENCE_ELEMENTS_3D = 560_000_000
NNUNET_REFERENCE_GB = 8.0
#: nnU-Net planners and the GPU memory target they plan for (``-gpu_memory_target`` changes it).
PLANNER_GPU_TARGET_GB = {"nnUNetPlannerResEncM": 8.0, "nnUNetPlannerResEncL": 24.0, "nnUNetPlannerResEncXL": 40.0}


def _plans_network(configuration: dict, input_channels: int, num_classes: int) -> nn.Module:
    """The network the plans were made for (nnU-Net's U-Net), built on the meta device."""
    arch = configuration["architecture"]
    network_class = pydoc.locate(arch["network_class_name"])
    if network_class is None:
        raise PatchAdaptationError(
            f"cannot import the plans' network class {arch['network_class_name']!r} to size the memory budget; "
            f"set 'uc_memory_budget_gib' in the configuration to give the budget explicitly"
        )
    kwargs = dict(arch["arch_kwargs"])
    for key in arch.get("_kw_requires_import", []):
        if kwargs.get(key) is not None:
            kwargs[key] = pydoc.locate(kwargs[key])
    with torch.device("meta"):
        return network_class(input_channels=input_channels, num_classes=num_classes, deep_supervision=True,
                             **kwargs)


def gpu_target_budget_bytes(configuration: dict, input_channels: int, num_classes: int, gpu_target_gb: float
                            ) -> int:
    """nnU-Net's GPU memory target expressed in this module's estimator bytes.

    nnU-Net sizes plans with ``compute_conv_feature_map_size`` (elements; 560e6 per sample <-> 8 GB at batch
    size 2). Measuring the plans' own U-Net with both yields bytes per element; the budget is the reference
    in those bytes, scaled to ``gpu_target_gb``, plus the U-Net's weights, gradients and SGD momentum.
    """
    network = _plans_network(configuration, input_channels, num_classes)
    if not hasattr(network, "compute_conv_feature_map_size"):
        raise PatchAdaptationError(
            f"the plans' network {type(network).__name__} cannot report its feature-map size, so the memory "
            f"budget is unknown; set 'uc_memory_budget_gib' in the configuration"
        )
    patch = [int(s) for s in configuration["patch_size"]]
    elements = float(network.compute_conv_feature_map_size(patch))
    activation_bytes_b2 = saved_activation_bytes(network, (2, input_channels, *patch))
    reference = NNUNET_REFERENCE_ELEMENTS_3D * gpu_target_gb / NNUNET_REFERENCE_GB
    return int(activation_bytes_b2 / elements * reference) + parameter_bytes(network, optimizer_slots=1)


def round_to_16(patch: Sequence[int]) -> tuple[int, ...]:
    """Each axis up to the next multiple of 16 (at least 16), so the patch still covers what nnU-Net planned
    (nnU-Net pads images smaller than the patch); the memory check may shrink it afterwards."""
    return PATCH_RULE.round_up(patch)


def _shrink_candidates(patch: tuple[int, ...], median_shape: Sequence[float]) -> list[tuple[int, ...]]:
    """Patches one step (16 voxels) smaller on one axis, best first.

    Like nnU-Net's planner, the axis that is largest relative to the median image shape goes first.
    """
    order = sorted(range(len(patch)), key=lambda a: patch[a] / max(float(median_shape[a]), 1.0), reverse=True)
    candidates = []
    for axis in order:
        if patch[axis] - MIN_AXIS >= MIN_AXIS:
            smaller = list(patch)
            smaller[axis] -= MIN_AXIS
            if not PATCH_RULE.problems(smaller):
                candidates.append(tuple(smaller))
    return candidates


def adapt_patch_size(planned: Sequence[int], median_shape: Sequence[float], batch_size: int,
                     estimate: Callable[[tuple[int, ...]], int], budget_bytes: int, network_name: str
                     ) -> PatchDecision:
    """Round ``planned`` to multiples of 16, then shrink until ``estimate(patch) <= budget_bytes``.

    Raises PatchAdaptationError when no valid patch (every axis >= 16, more than one voxel at 1/16) fits.
    """
    planned = tuple(int(s) for s in planned)
    patch = round_to_16(planned)
    reasons = []
    if patch != planned:
        reasons.append(f"{network_name} needs every patch axis to be a multiple of 16: rounded {list(planned)} up "
                       f"to {list(patch)}")
    problems = PATCH_RULE.problems(patch)
    if problems:  # e.g. 16x16x16 leaves one voxel at 1/16; grow the largest axis
        axis = max(range(len(patch)), key=lambda a: median_shape[a])
        patch = tuple(s + MIN_AXIS if a == axis else s for a, s in enumerate(patch))
        reasons.append(f"grew axis {axis} to {patch[axis]}: {'; '.join(problems)}")
    need = estimate(patch)
    start = patch
    while need > budget_bytes:
        candidates = _shrink_candidates(patch, median_shape)
        if not candidates:
            raise PatchAdaptationError(
                f"{network_name}: even the smallest valid patch {list(patch)} at batch size {batch_size} needs an "
                f"estimated {need / GIB:.2f} GiB, above the plans' memory budget of {budget_bytes / GIB:.2f} GiB "
                f"(planned patch {list(planned)}). Fix: plan for more GPU memory (nnUNetv2_plan_experiment "
                f"-gpu_memory_target GB, then nnUNetv2_preprocess), or set a larger 'uc_memory_budget_gib' (or "
                f"'uc_fixed_patch': true with your own patch_size/batch_size) in the configuration, e.g. with "
                f"`nnunetv2_uc plans-override D --preset 3d_fullres_paper96`"
            )
        patch = candidates[0]
        need = estimate(patch)
    if patch != start:
        reasons.append(f"shrank {list(start)} to {list(patch)} so that {network_name}'s estimated training memory "
                       f"({need / GIB:.2f} GiB at batch size {batch_size}) stays within the plans' budget "
                       f"({budget_bytes / GIB:.2f} GiB)")
    return PatchDecision(planned, patch, batch_size, need, budget_bytes, reasons)
