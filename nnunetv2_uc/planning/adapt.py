"""A configuration nnU-Net planned for its own U-Net, adapted to one of our networks at training time.

The trainers call this when they are given nnU-Net's default plans (no ``-p`` from ``nnunetv2_uc plan``). It
uses the planner's pieces (memory model, budget, shrink sequence), starting from the planned patch instead of
the median image: the budget is what nnU-Net's planner allowed its own U-Net (the planner's reference at its
default target) or, if more, what that U-Net needs at the planned patch x batch (plans made for a larger
``-gpu_memory_target`` carry that in their patch x batch). Under DDP each GPU holds its share of the batch.
Then, while our network does not fit: first lower the batch toward the minimum (2), then shrink the patch by
nnU-Net's rule (the axis largest relative to the median first).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

from nnunetv2_uc.planning.budget import MemoryBudget, NnUNetReference, nnunet_configuration_budget
from nnunetv2_uc.planning.memory import GIB, CUDA_FP16_AUTOCAST, MemoryModels, Precision, TrainingMemoryModel
from nnunetv2_uc.architectures.registry import SGD_SLOTS
from nnunetv2_uc.planning.networks import PlannableNetwork
from nnunetv2_uc.planning.search import (
    MIN_BATCH_SIZE, NoValidPatch, first_that_fits, largest_batch_that_fits, round_up, shrink_sequence,
    valid_start,
)


class AdaptationError(ValueError):
    """Even the smallest patch the network takes does not fit the budget at the minimum batch size."""


@dataclass(frozen=True)
class Adaptation:
    """What the trainer trains with (patch, global batch size) and why."""

    planned_patch: tuple[int, ...]
    planned_batch_size: int
    patch: tuple[int, ...]
    batch_size: int              # global (all GPUs); nnU-Net splits it across DDP workers
    batch_size_per_gpu: int
    estimated_bytes: int         # one GPU, at batch_size_per_gpu
    budget_bytes: int
    budget_source: str
    reasons: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return (self.patch, self.batch_size) != (self.planned_patch, self.planned_batch_size)


def per_gpu_batch(batch_size: int, world_size: int) -> int:
    """The largest share of ``batch_size`` one of ``world_size`` DDP workers gets (nnU-Net's split)."""
    return math.ceil(batch_size / max(world_size, 1))


def training_budget(configuration: dict, nnunet_memory: TrainingMemoryModel, reference: NnUNetReference | None,
                    gpu_target_gb: float | None) -> tuple[int, str]:
    """(bytes one GPU may use, where the number comes from) for a configuration nnU-Net planned. nnU-Net plans
    the batch for one GPU, so the planned patch x batch is what one GPU holds, with or without DDP."""
    planned_patch = [int(s) for s in configuration["patch_size"]]
    needed = nnunet_memory(planned_patch, int(configuration["batch_size"])).total
    needed_source = (f"what nnU-Net's {_class_name(configuration)} needs at the planned patch x batch "
                     f"({needed / GIB:.2f} GiB)")
    if reference is None or gpu_target_gb is None:
        return needed, needed_source
    budget: MemoryBudget = nnunet_configuration_budget(configuration, nnunet_memory, reference, gpu_target_gb)
    if needed > budget.bytes:
        return needed, needed_source + f", more than the planner's {gpu_target_gb:g} GB target allows"
    return budget.bytes, f"the planner's target: {budget.describe()}"


def _class_name(configuration: dict) -> str:
    return configuration["architecture"]["network_class_name"].rsplit(".", 1)[-1]


def adapt_configuration(configuration: dict, network: PlannableNetwork, input_channels: int, num_classes: int,
                        reference: NnUNetReference | None, gpu_target_gb: float | None, world_size: int = 1,
                        budget_bytes: int | None = None, optimizer_slots: int | None = None,
                        precision: Precision = CUDA_FP16_AUTOCAST) -> Adaptation:
    """Patch and batch for ``network`` on a (resolved) configuration nnU-Net planned for its own U-Net.

    ``reference``/``gpu_target_gb``: the planner's calibration (None when the planner cannot be read: then
    the budget is what nnU-Net's network needs at the planned patch x batch). ``budget_bytes`` overrides the
    budget. Raises AdaptationError when nothing fits.
    """
    slots = network.optimizer_slots if optimizer_slots is None else optimizer_slots
    models = MemoryModels(input_channels, num_classes, precision)
    nnunet_memory = models(configuration["architecture"], True, SGD_SLOTS)
    if budget_bytes is None:
        budget_bytes, source = training_budget(configuration, nnunet_memory, reference, gpu_target_gb)
    else:
        source = f"given explicitly ({budget_bytes / GIB:.2f} GiB)"

    def memory(patch: Sequence[int], batch: int) -> int:
        ours = models(network.architecture(configuration, patch), network.deep_supervision, slots)
        return ours(patch, batch).total

    planned = tuple(int(s) for s in configuration["patch_size"])
    planned_batch = int(configuration["batch_size"])
    median = [float(m) for m in configuration.get("median_image_size_in_voxels", planned)]
    divisors = network.patch_divisors(configuration)
    problems = lambda patch: network.patch_problems(configuration, patch)  # noqa: E731
    reasons = []
    try:
        start = valid_start(round_up(planned, divisors), median, divisors, problems)
    except NoValidPatch as e:
        raise AdaptationError(f"{network.plans_suffix} cannot take the planned patch {list(planned)}: {e}") from None
    if start != planned:
        reasons.append(f"{network.plans_suffix} needs every patch axis to be a multiple of {list(divisors)}: "
                       f"{list(planned)} -> {list(start)}")
    wanted = per_gpu_batch(planned_batch, world_size)
    minimum = min(MIN_BATCH_SIZE, wanted)
    sequence = shrink_sequence(start, median, divisors, problems)
    index = first_that_fits(sequence, lambda patch: memory(patch, minimum) <= budget_bytes)
    if index is None:
        smallest = sequence[-1]
        raise AdaptationError(
            f"{network.plans_suffix}: even the smallest valid patch {list(smallest)} at batch size {minimum} needs "
            f"an estimated {memory(smallest, minimum) / GIB:.2f} GiB, above the budget of {budget_bytes / GIB:.2f} "
            f"GiB ({source}; planned patch {list(planned)}). Fix: plan for more GPU memory with `nnunetv2_uc plan "
            f"-d D --network {network.name} -gpu_memory_target GB`, or set 'uc_fixed_patch': true with your own "
            f"patch_size/batch_size in the configuration (`nnunetv2_uc plans-override`)")
    patch = sequence[index]
    per_gpu = max(minimum, min(wanted, largest_batch_that_fits(memory, patch, budget_bytes)))
    if per_gpu < wanted and patch == start:
        reasons.append(f"lowered the batch per GPU from {wanted} to {per_gpu} so that the planned patch fits")
    if patch != start:
        reasons.append(f"at batch {per_gpu} per GPU, shrank the patch {list(start)} -> {list(patch)} to fit")
    batch_size = planned_batch if per_gpu == wanted else per_gpu * max(world_size, 1)
    return Adaptation(planned, planned_batch, patch, batch_size, per_gpu,
                      memory(patch, per_gpu), int(budget_bytes), source, reasons)
