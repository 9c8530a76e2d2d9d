"""nnU-Net's planners, with patch and batch chosen for one of our networks.

``network_planner_class(base, network)`` subclasses an nnU-Net planner (ExperimentPlanner or a ResEnc preset):
fingerprint, target spacing, transpose, normalisation, resampling and the 3d_lowres decision stay the base
planner's; for every 3-D configuration it lets the base planner plan nnU-Net's own U-Net first (that network
calibrates the memory budget and is printed for comparison), then searches patch and batch for our network
with nnU-Net's algorithm (``search.py``) against the budget (``budget.py``), with the memory model
(``memory.py``) under the precision nnU-Net trains with on a GPU (fp16 autocast). The ``architecture`` block
names our class, so nnU-Net's ``get_network_from_plans`` builds it.
"""
from __future__ import annotations

import inspect
import json
import math
from typing import Sequence

from nnunetv2.experiment_planning.experiment_planners.default_experiment_planner import ExperimentPlanner
from nnunetv2.experiment_planning.experiment_planners.residual_unets.residual_encoder_unet_planners import (
    nnUNetPlannerResEncL, nnUNetPlannerResEncM, nnUNetPlannerResEncXL,
)
from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
from nnunetv2.utilities.json_export import recursive_fix_for_json_export

from nnunetv2_uc.errors import UserError
from nnunetv2_uc.planning.budget import MemoryBudget, NnUNetReference, memory_budget
from nnunetv2_uc.planning.memory import GIB, CUDA_FP16_AUTOCAST, Precision, TrainingMemoryModel
from nnunetv2_uc.planning.networks import PlannableNetwork
from nnunetv2_uc.planning.search import NoPatchFits, PatchAndBatch, search_patch_and_batch

BASE_PLANNERS: dict[str, type[ExperimentPlanner]] = {
    cls.__name__: cls for cls in (ExperimentPlanner, nnUNetPlannerResEncM, nnUNetPlannerResEncL, nnUNetPlannerResEncXL)
}
#: configuration key with the planning decision (budget, estimate, nnU-Net's own plan); nnU-Net ignores it
PLANNING_KEY = "uc_planning"
#: optimizer state tensors per parameter the plugin trainers' default recipe keeps (AdamW)
DEFAULT_OPTIMIZER_SLOTS = 2
NNUNET_OPTIMIZER_SLOTS = 1  # nnU-Net's SGD with momentum


class TargetTooSmall(UserError):
    """The GPU memory target cannot hold the network at its smallest patch and the minimum batch size."""


def get_base_planner(name: str) -> type[ExperimentPlanner]:
    if name not in BASE_PLANNERS:
        raise UserError(f"unknown planner {name!r} (-pl); choose one of {', '.join(BASE_PLANNERS)}")
    return BASE_PLANNERS[name]


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
                          precision: Precision = CUDA_FP16_AUTOCAST,
                          optimizer_slots: int = DEFAULT_OPTIMIZER_SLOTS) -> type[ExperimentPlanner]:
    """A subclass of ``base`` that plans ``network``; pass it to nnU-Net's ``plan_experiment_dataset``.

    It does not write the plans file: ``save_plans`` keeps the plans in ``plans_to_write`` (the caller
    validates and writes them atomically).
    """

    class NetworkPlanner(base):
        def __init__(self, dataset_name_or_id, *args, plans_name: str | None = None, **kwargs):
            super().__init__(dataset_name_or_id, *args, plans_name=plans_name or default_plans_name(base, network),
                             **kwargs)
            self.plans_to_write: dict | None = None
            self._memory_models: dict[str, TrainingMemoryModel] = {}

        @staticmethod
        def static_estimate_VRAM_usage(patch_size, input_channels, output_channels, arch_class_name, arch_kwargs,
                                       arch_kwargs_req_import):
            # nnU-Net's own estimate (feature-map elements), without its torch.set_num_threads, which crashes
            # with nnUNet_n_proc_DA=0
            net = get_network_from_plans(arch_class_name, arch_kwargs, arch_kwargs_req_import, input_channels,
                                         output_channels, allow_init=False)
            return net.compute_conv_feature_map_size(patch_size)

        def generate_data_identifier(self, configuration_name: str) -> str:
            """The base planner's data identifier under its default plans name: spacing and preprocessing are
            the base planner's, so its preprocessed data is ours too."""
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
            return self._plan_for_network(nnunet, spacing, median_shape, approximate_n_voxels_dataset)

        def save_plans(self, plans: dict) -> None:
            recursive_fix_for_json_export(plans)
            self.plans_to_write = plans

        # ------------------------------------------------------------------------------------------------
        def _channels_and_classes(self) -> tuple[int, int]:
            channels = self.dataset_json.get("channel_names", self.dataset_json.get("modality", {}))
            return len(channels), len(self.dataset_json["labels"])

        def _memory_model(self, architecture: dict, deep_supervision: bool, slots: int) -> TrainingMemoryModel:
            key = json.dumps([architecture, deep_supervision, slots], sort_keys=True, default=str)
            if key not in self._memory_models:
                channels, classes = self._channels_and_classes()
                build = lambda: get_network_from_plans(
                    architecture["network_class_name"], architecture["arch_kwargs"],
                    architecture["_kw_requires_import"], channels, classes, allow_init=False,
                    deep_supervision=deep_supervision)
                self._memory_models[key] = TrainingMemoryModel(build, channels, precision, slots)
            return self._memory_models[key]

        def _budget(self, nnunet: dict) -> MemoryBudget:
            theirs = self._memory_model(nnunet["architecture"], True, NNUNET_OPTIMIZER_SLOTS)
            patch = [int(s) for s in nnunet["patch_size"]]
            elements = float(theirs.network.compute_conv_feature_map_size(patch))
            return memory_budget(NnUNetReference.of_planner(self), float(self.UNet_vram_target_GB), theirs, patch,
                                 elements)

        def _plan_for_network(self, nnunet: dict, spacing: Sequence[float], median_shape: Sequence[float],
                              approximate_n_voxels_dataset: float) -> dict:
            architecture = network.architecture(nnunet)
            ours = self._memory_model(architecture, False, optimizer_slots)
            budget = self._budget(nnunet)
            try:
                found = search_patch_and_batch(
                    spacing, median_shape, network.patch_divisors(architecture), network.patch_problems,
                    lambda patch, batch: ours(patch, batch).total, budget.bytes, approximate_n_voxels_dataset,
                    self.max_dataset_covered, self.UNet_min_batch_size)
            except NoPatchFits as e:
                raise TargetTooSmall(self._too_small_message(e, budget)) from None
            theirs = self._memory_model(nnunet["architecture"], True, NNUNET_OPTIMIZER_SLOTS)
            nnunet_bytes = theirs(nnunet["patch_size"], nnunet["batch_size"]).total
            plan = dict(nnunet)
            plan.update(patch_size=list(found.patch), batch_size=found.batch_size, architecture=architecture)
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
