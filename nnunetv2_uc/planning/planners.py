"""nnU-Net's planners, with patch and batch chosen for one of our networks.

``network_planner_class(base, network)`` subclasses an nnU-Net planner (ExperimentPlanner or a ResEnc preset):
fingerprint, target spacing, transpose, normalisation, resampling and the 3d_lowres decision stay the base
planner's; for every 3-D configuration it lets the base planner plan nnU-Net's own U-Net first (that network
calibrates the memory budget and is printed for comparison), then searches patch and batch for our network
with nnU-Net's algorithm (``search_patch_and_batch``, below) against the budget, with the memory model
(both in ``memory.py``) under the precision nnU-Net trains with on a GPU (fp16 autocast). The ``architecture`` block
names our class, so nnU-Net's ``get_network_from_plans`` builds it.

The planner's view of a network (``PlannableNetwork``, ``get_network``): how ``nnunetv2_uc plan`` treats each
network the registry marks plannable.

The facts about a network (class, defaults, input rule, plans suffix, how its trainer trains) live on its registry
entry (architectures/registry.py); ``get_network`` turns them into what the planner calls: a paper network
(``planned_topology="own"``) has its own fixed topology, while uC on nnU-Net's U-Net (``"nnunet"``) takes the
topology of the configuration nnU-Net planned and adds uC connections that depend on the patch.

The search: patch and batch size by nnU-Net's algorithm (``ExperimentPlanner.get_plans_for_configuration``),
for any network given its shape rule and memory model, in pure functions (no nnU-Net, no files), as nnU-Net keeps
its search inside its planner.

nnU-Net's algorithm: start from the median image at the target spacing (at most a 256^3-voxel patch shaped by
the spacing), made valid for the network; while the network does not fit the memory budget at the minimum
batch size, shrink the axis that is largest relative to the median image by one step; then fill what remains
with batch, capped so that one step sees at most ``max_dataset_covered`` of the dataset, and at least the
minimum batch size.
"""
from __future__ import annotations

import inspect
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import nnunetv2
import numpy as np
import torch
from nnunetv2.experiment_planning.experiment_planners.default_experiment_planner import ExperimentPlanner
from nnunetv2.experiment_planning.experiment_planners.residual_unets.residual_encoder_unet_planners import (
    nnUNetPlannerResEncL, nnUNetPlannerResEncM, nnUNetPlannerResEncXL)
from nnunetv2.utilities.find_class_by_name import recursive_find_python_class
from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
from nnunetv2.utilities.json_export import recursive_fix_for_json_export

from nnunetv2_uc.architectures.registry import ADAMW_SLOTS, NETWORKS, SGD_SLOTS, NetworkEntry, plannable_networks
from nnunetv2_uc.architectures.uc_unet import UCPlanError
from nnunetv2_uc.errors import UserError
from nnunetv2_uc.planning.memory import (CUDA_FP16_AUTOCAST, GIB, MemoryBudget, MemoryModels, NnUNetReference,
                                         Precision, TrainingMemoryModel, nnunet_configuration_budget)
from nnunetv2_uc.planning.uc_plans import with_uc_connections

#: nnU-Net's cap on the starting patch: the volume of 256^3 voxels, shaped by the spacing
INITIAL_PATCH_VOXELS = 256 ** 3
#: nnU-Net's minimum batch size (ExperimentPlanner.UNet_min_batch_size)
MIN_BATCH_SIZE = 2

MemoryFn = Callable[[tuple[int, ...], int], int]          # (patch, batch size) -> bytes
ShapeProblemsFn = Callable[[Sequence[int]], list[str]]     # patch -> why the network cannot take it ([] if it can)


class NoValidPatch(ValueError):
    """The network takes no patch near the start (e.g. uC levels that need a larger in-plane map)."""


class NoPatchFits(Exception):
    """Even the smallest patch the network takes needs more than the budget at the minimum batch size."""

    def __init__(self, patch: tuple[int, ...], batch_size: int, needed_bytes: int, budget_bytes: int) -> None:
        super().__init__(f"patch {list(patch)} at batch size {batch_size} needs {needed_bytes} bytes, budget "
                         f"{budget_bytes}")
        self.patch, self.batch_size = patch, batch_size
        self.needed_bytes, self.budget_bytes = needed_bytes, budget_bytes


@dataclass(frozen=True)
class PatchAndBatch:
    """The search's result: patch (voxels per axis), batch size, estimated bytes, and how it got there."""

    patch: tuple[int, ...]
    batch_size: int
    estimated_bytes: int
    start: tuple[int, ...]    # the valid patch the search started from
    batch_limited_by: str     # "memory", "dataset share" or "minimum batch size"


def nnunet_initial_patch(spacing: Sequence[float], median_shape: Sequence[float]) -> tuple[float, ...]:
    """nnU-Net's starting patch: 256^3 voxels with the aspect ratio of 1/spacing, clipped to the median image."""
    inverse = 1 / np.asarray(spacing, dtype=float)
    scaled = inverse * (INITIAL_PATCH_VOXELS / np.prod(inverse)) ** (1 / len(spacing))
    return tuple(min(round(float(s)), float(m)) for s, m in zip(scaled, median_shape))


def round_up(patch: Sequence[float], divisors: Sequence[int]) -> tuple[int, ...]:
    """Each axis up to the next multiple of its divisor (at least one divisor)."""
    return tuple(max(d, math.ceil(s / d) * d) for s, d in zip(patch, divisors))


def valid_start(patch: tuple[int, ...], median_shape: Sequence[float], divisors: Sequence[int],
                 problems: ShapeProblemsFn) -> tuple[int, ...]:
    """Grow the axes of the largest median extent (one step each) until the network takes the patch, e.g.
    16^3 -> 32x16x16 for a network that needs more than one voxel at its coarsest resolution."""
    order = sorted(range(len(patch)), key=lambda a: median_shape[a] / patch[a], reverse=True)
    for _ in range(64):
        if not problems(patch):
            return patch
        axis = order[0]
        patch = tuple(s + divisors[a] if a == axis else s for a, s in enumerate(patch))
        order = sorted(range(len(patch)), key=lambda a: median_shape[a] / patch[a], reverse=True)
    raise NoValidPatch(f"no valid patch near {list(patch)}: {'; '.join(problems(patch))}")


def _shrink_order(patch: tuple[int, ...], median_shape: Sequence[float]) -> list[int]:
    """Axes by patch/median, largest first; ties go to the last axis, as nnU-Net's ``np.argsort(...)[-1]``."""
    ratios = [p / m for p, m in zip(patch, median_shape)]
    return list(np.argsort(ratios, kind="stable")[::-1])


def _one_step_smaller(patch: tuple[int, ...], median_shape: Sequence[float], divisors: Sequence[int],
                      problems: ShapeProblemsFn) -> tuple[int, ...] | None:
    for axis in _shrink_order(patch, median_shape):
        if patch[axis] - divisors[axis] < divisors[axis]:
            continue
        smaller = tuple(s - divisors[axis] if a == axis else s for a, s in enumerate(patch))
        if not problems(smaller):
            return smaller
    return None


def shrink_sequence(start: tuple[int, ...], median_shape: Sequence[float], divisors: Sequence[int],
                    problems: ShapeProblemsFn) -> list[tuple[int, ...]]:
    """Every patch nnU-Net's shrink loop visits from ``start`` down to the smallest valid one, in order.

    The order depends on shapes only (not on memory), so the loop "shrink while it does not fit" stops at
    the first patch of this sequence that fits.
    """
    sequence = [start]
    while (smaller := _one_step_smaller(sequence[-1], median_shape, divisors, problems)) is not None:
        sequence.append(smaller)
    return sequence


def first_that_fits(sequence: list[tuple[int, ...]], fits: Callable[[tuple[int, ...]], bool]) -> int | None:
    """Index of the first patch that fits (memory falls along the sequence: binary search), None if none."""
    if not fits(sequence[-1]):
        return None
    low, high = 0, len(sequence) - 1  # sequence[high] fits
    while low < high:
        middle = (low + high) // 2
        if fits(sequence[middle]):
            high = middle
        else:
            low = middle + 1
    return high


def largest_batch_that_fits(memory: MemoryFn, patch: tuple[int, ...], budget_bytes: int) -> int:
    """The largest batch whose ``memory(patch, batch)`` (affine in the batch) stays within the budget."""
    fixed = memory(patch, 0)
    return int((budget_bytes - fixed) // (memory(patch, 1) - fixed))


def search_patch_and_batch(spacing: Sequence[float], median_shape: Sequence[float], divisors: Sequence[int],
                           problems: ShapeProblemsFn, memory: MemoryFn, budget_bytes: int,
                           dataset_voxels: float, max_dataset_covered: float, min_batch_size: int = MIN_BATCH_SIZE
                           ) -> PatchAndBatch:
    """nnU-Net's patch/batch search with ``memory(patch, batch)`` against ``budget_bytes``.

    ``memory`` must be affine in the batch size (fixed bytes + per-sample bytes): the batch is the largest that
    fits; and it must not grow when the patch shrinks (so the shrink loop can be a binary search over the
    patches it would visit). ``dataset_voxels`` is nnU-Net's ``approximate_n_voxels_dataset`` (median image
    voxels x cases). Raises NoPatchFits when the smallest patch does not fit at ``min_batch_size``.
    """
    median_shape = [float(m) for m in median_shape]
    start = valid_start(round_up(nnunet_initial_patch(spacing, median_shape), divisors), median_shape,
                         divisors, problems)
    sequence = shrink_sequence(start, median_shape, divisors, problems)
    index = first_that_fits(sequence, lambda patch: memory(patch, min_batch_size) <= budget_bytes)
    if index is None:
        smallest = sequence[-1]
        raise NoPatchFits(smallest, min_batch_size, memory(smallest, min_batch_size), budget_bytes)
    patch = sequence[index]
    by_memory = largest_batch_that_fits(memory, patch, budget_bytes)
    by_dataset = round(dataset_voxels * max_dataset_covered / float(np.prod(patch, dtype=np.float64)))
    batch = max(min(by_memory, by_dataset), min_batch_size)
    limited_by = ("minimum batch size" if batch == min_batch_size and min(by_memory, by_dataset) < min_batch_size
                  else "dataset share" if by_dataset < by_memory else "memory")
    return PatchAndBatch(patch, batch, memory(patch, batch), start, limited_by)


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


BASE_PLANNERS: dict[str, type[ExperimentPlanner]] = {
    cls.__name__: cls for cls in (ExperimentPlanner, nnUNetPlannerResEncM, nnUNetPlannerResEncL, nnUNetPlannerResEncXL)
}
#: configuration key with the planning decision (budget, estimate, nnU-Net's own plan); nnU-Net ignores it
PLANNING_KEY = "uc_planning"
NNUNET_OPTIMIZER_SLOTS = SGD_SLOTS  # nnU-Net's own network trains with SGD with momentum


class TargetTooSmall(UserError):
    """The GPU memory target cannot hold the network at its smallest patch and the minimum batch size."""


def get_base_planner(name: str) -> type[ExperimentPlanner]:
    if name not in BASE_PLANNERS:
        raise UserError(f"unknown planner {name!r} (-pl); choose one of {', '.join(BASE_PLANNERS)}")
    return BASE_PLANNERS[name]


def planner_reference(planner_name: str, dataset_name_or_id) -> tuple[NnUNetReference, float]:
    """(memory reference, default GPU memory target in GB) of the nnU-Net planner named in a plans file's
    ``experiment_planner_used``, for a dataset. nnU-Net sets both in the planner's ``__init__``, which reads
    the dataset's raw dataset.json and fingerprint, so the planner is instantiated for the dataset."""
    base = BASE_PLANNERS.get(planner_name) or recursive_find_python_class(
        str(Path(nnunetv2.__path__[0]) / "experiment_planning"), planner_name,
        current_module="nnunetv2.experiment_planning")
    if base is None:
        raise UserError(f"unknown planner {planner_name!r} (experiment_planner_used of the plans)")
    planner = base(dataset_name_or_id)
    return NnUNetReference.of_planner(planner), float(planner.UNet_vram_target_GB)


def base_plans_name(base: type[ExperimentPlanner]) -> str:
    """The plans name the base planner writes by default (nnUNetPlans, nnUNetResEncUNetLPlans, ...)."""
    return inspect.signature(base.__init__).parameters["plans_name"].default


def default_plans_name(base: type[ExperimentPlanner], network: PlannableNetwork) -> str:
    return f"{base_plans_name(base)}_{network.plans_suffix}"


def _required_target_gb(needed_bytes: int, budget: MemoryBudget) -> float:
    """The smallest GPU memory target whose budget holds ``needed_bytes`` (the budget is affine in it)."""
    per_gb = budget.nnunet_bytes_per_element * budget.reference.elements_3d / budget.reference.gb
    return (needed_bytes - budget.nnunet_fixed_bytes) / per_gb


def network_planner_class(base: type[ExperimentPlanner], network: PlannableNetwork,
                          configurations: Sequence[str] = ("3d_fullres",),
                          precision: Precision = CUDA_FP16_AUTOCAST,
                          optimizer_slots: int | None = None) -> type[ExperimentPlanner]:
    """A subclass of ``base`` that plans ``network`` for ``configurations`` (3d_fullres and/or 3d_lowres);
    pass it to nnU-Net's ``plan_experiment_dataset``.

    The other configurations stay nnU-Net's plans (2d is not planned at all). It does not write the plans
    file (``save_plans`` only makes them JSON-ready): the caller gets them from ``plan_experiment`` and writes
    them once everything is validated. ``optimizer_slots`` None: those of the trainer meant for the network.
    """
    optimizer_slots = network.optimizer_slots if optimizer_slots is None else optimizer_slots

    class NetworkPlanner(base):
        def __init__(self, dataset_name_or_id, *args, plans_name: str | None = None, **kwargs):
            super().__init__(dataset_name_or_id, *args, plans_name=plans_name or default_plans_name(base, network),
                             **kwargs)
            self._memory_models: MemoryModels | None = None

        @staticmethod
        def static_estimate_VRAM_usage(patch_size, input_channels, output_channels, arch_class_name, arch_kwargs,
                                       arch_kwargs_req_import):
            # nnU-Net's own estimate (feature-map elements, computed from shapes alone), with the network on the
            # meta device (no weight initialisation: several times faster) and without nnU-Net's
            # torch.set_num_threads, which crashes with nnUNet_n_proc_DA=0
            with torch.device("meta"):
                net = get_network_from_plans(arch_class_name, arch_kwargs, arch_kwargs_req_import, input_channels,
                                             output_channels, allow_init=False)
            return net.compute_conv_feature_map_size(patch_size)

        def generate_data_identifier(self, configuration_name: str) -> str:
            """The base planner's data identifier under its default plans name: spacing and preprocessing are
            the base planner's, so its preprocessed data is ours too (unless spacing or preprocessor are
            overridden: then the data are these plans' own)."""
            if self.overwrite_target_spacing is not None or self.preprocessor_name != "DefaultPreprocessor":
                return f"{self.plans_identifier}_{configuration_name}"
            own = self.plans_identifier
            self.plans_identifier = base_plans_name(base)
            try:
                return super().generate_data_identifier(configuration_name)
            finally:
                self.plans_identifier = own

        def get_plans_for_configuration(self, spacing, median_shape, data_identifier: str,
                                        approximate_n_voxels_dataset: float, _cache: dict) -> dict:
            if len(spacing) != 3:  # 2d: our networks are 3-D and the caller drops it, so nnU-Net need not plan it
                return {"data_identifier": data_identifier, "not_planned": "3-D networks only"}
            nnunet = super().get_plans_for_configuration(spacing, median_shape, data_identifier,
                                                         approximate_n_voxels_dataset, _cache)
            if not any(data_identifier.endswith(f"_{c}") for c in configurations):
                return nnunet  # e.g. nnU-Net's search for a 3d_lowres nobody asked for: keep it nnU-Net's (fast)
            return self._plan_for_network(nnunet, spacing, median_shape, approximate_n_voxels_dataset)

        def save_plans(self, plans: dict) -> None:
            recursive_fix_for_json_export(plans)

        # ------------------------------------------------------------------------------------------------
        def _channels_and_classes(self) -> tuple[int, int]:
            channels = self.dataset_json.get("channel_names", self.dataset_json.get("modality", {}))
            return len(channels), len(self.dataset_json["labels"])

        def _memory_model(self, architecture: dict, deep_supervision: bool, slots: int) -> TrainingMemoryModel:
            if self._memory_models is None:
                self._memory_models = MemoryModels(*self._channels_and_classes(), precision)
            return self._memory_models(architecture, deep_supervision, slots)

        def _budget(self, nnunet: dict) -> MemoryBudget:
            theirs = self._memory_model(nnunet["architecture"], True, NNUNET_OPTIMIZER_SLOTS)
            return nnunet_configuration_budget(nnunet, theirs, NnUNetReference.of_planner(self),
                                               float(self.UNet_vram_target_GB))

        def _plan_for_network(self, nnunet: dict, spacing: Sequence[float], median_shape: Sequence[float],
                              approximate_n_voxels_dataset: float) -> dict:
            budget = self._budget(nnunet)

            def memory(patch: Sequence[int], batch_size: int) -> int:
                ours = self._memory_model(network.architecture(nnunet, patch), network.deep_supervision,
                                          optimizer_slots)
                return ours(patch, batch_size).total

            try:
                found = search_patch_and_batch(
                    spacing, median_shape, network.patch_divisors(nnunet),
                    lambda patch: network.patch_problems(nnunet, patch), memory, budget.bytes,
                    approximate_n_voxels_dataset, self.max_dataset_covered, self.UNet_min_batch_size)
            except NoPatchFits as e:
                raise TargetTooSmall(self._too_small_message(e, budget)) from None
            except NoValidPatch as e:
                raise UserError(f"{self.dataset_name}: {network.plans_suffix} cannot be planned on the "
                                f"configuration nnU-Net planned (patch_size {nnunet['patch_size']}, median image "
                                f"{[round(m) for m in median_shape]}): {e}") from None
            theirs = self._memory_model(nnunet["architecture"], True, NNUNET_OPTIMIZER_SLOTS)
            nnunet_bytes = theirs(nnunet["patch_size"], nnunet["batch_size"]).total
            plan = dict(nnunet)
            plan.update(patch_size=list(found.patch), batch_size=found.batch_size,
                        architecture=network.architecture(nnunet, found.patch))
            plan[PLANNING_KEY] = self._record(found, budget, nnunet, nnunet_bytes)
            return plan

        def _record(self, found: PatchAndBatch, budget: MemoryBudget, nnunet: dict, nnunet_bytes: int) -> dict:
            return {
                "network": network.name,
                "base_planner": base.__name__,
                "gpu_memory_target_gb": budget.gpu_target_gb,
                "precision": str(precision),
                "optimizer_slots": optimizer_slots,
                "budget_bytes": budget.bytes,
                "estimated_bytes": found.estimated_bytes,
                "batch_limited_by": found.batch_limited_by,
                "nnunet": {"network_class_name": nnunet["architecture"]["network_class_name"],
                           "patch_size": [int(s) for s in nnunet["patch_size"]],
                           "batch_size": int(nnunet["batch_size"]), "estimated_bytes": nnunet_bytes},
            }

        def _too_small_message(self, e: NoPatchFits, budget: MemoryBudget) -> str:
            needed_gb = _required_target_gb(e.needed_bytes, budget)
            return (f"{self.dataset_name}: {network.plans_suffix} needs an estimated {e.needed_bytes / GIB:.2f} GiB "
                    f"of GPU memory at its smallest patch {list(e.patch)} and batch size {e.batch_size} "
                    f"({precision}), but -gpu_memory_target {budget.gpu_target_gb:g} GB gives a budget of "
                    f"{budget.bytes / GIB:.2f} GiB. Fix: plan with -gpu_memory_target {math.ceil(needed_gb)} "
                    f"or more")

    NetworkPlanner.__name__ = NetworkPlanner.__qualname__ = f"{base.__name__}_{network.plans_suffix}"
    return NetworkPlanner
