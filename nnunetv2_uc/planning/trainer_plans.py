"""What a plugin trainer does with the plans *before* nnU-Net's trainer creates its results folder.

A trainer calls :func:`prepare_plans` first thing in ``__init__``: every user error (missing configuration,
2-D plans, too few cases for 5 folds, a patch that cannot fit) raises here with the fix in the message, so
nothing is written to ``nnUNet_results``. On success the configuration in the plans dict names the network
that will be trained in its ``architecture`` block (class import path + kwargs), with the patch and batch it
trains with; the trainer saves that dict as ``plans.json`` in ``on_train_start``, so nnU-Net's own
``get_network_from_plans`` rebuilds the trained network from the results folder.

Three kinds of plans come in:
- plans from ``nnunetv2_uc plan`` (the architecture names a plugin network): used as planned;
- nnU-Net's default plans (the architecture names nnU-Net's U-Net): the trainer's network replaces it, and
  patch and batch are adapted with the planner's code (``adapt_configuration``, below);
- plans of results folders trained by 0.1.x (nnU-Net's U-Net in the architecture block, the network's kwargs
  under ``uc3dunet_kwargs`` / ``uxnet_kwargs``): those kwargs are the network's (see ``trained_architecture``).

Adapting a configuration nnU-Net planned for its own U-Net to one of our networks (``adapt_configuration``):
:func:`prepare_plans` calls it when the trainer is given nnU-Net's default plans (no ``-p`` from ``nnunetv2_uc
plan``). It uses the planner's pieces (memory model, budget, shrink sequence), starting from the planned patch instead of
the median image: the budget is what nnU-Net's planner allowed its own U-Net (the planner's reference at its
default target) or, if more, what that U-Net needs at the planned patch x batch (plans made for a larger
``-gpu_memory_target`` carry that in their patch x batch). Under DDP each GPU holds its share of the batch.
Then, while our network does not fit: first lower the batch toward the minimum (2), then shrink the patch by
nnU-Net's rule (the axis largest relative to the median first).
"""
from __future__ import annotations

import contextlib
import dataclasses
import io
import math
import os
from dataclasses import dataclass, field
from typing import Any, Sequence

from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

from nnunetv2_uc.architectures.registry import NETWORKS, SGD_SLOTS, NetworkEntry
from nnunetv2_uc.planning.memory import (CUDA_FP16_AUTOCAST, GIB, MemoryBudget, MemoryModels, NnUNetReference,
                                         Precision, TrainingMemoryModel, nnunet_configuration_budget)
from nnunetv2_uc.planning.planners import (MIN_BATCH_SIZE, NoValidPatch, PlannableNetwork, first_that_fits,
                                           largest_batch_that_fits, paper_network, planner_reference, round_up,
                                           shrink_sequence, valid_start)
from nnunetv2_uc.planning.uc_plans import has_uc_connections
from nnunetv2_uc.registration import PLUGIN_MODULE_PREFIX


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


#: configuration keys this plugin reads (all optional)
FIXED_PATCH_KEY = "uc_fixed_patch"            # true: take patch_size/batch_size as given, only check the shape
BUDGET_KEY = "uc_memory_budget_gib"          # explicit budget in GiB of the memory model (overrides the target)
GPU_TARGET_KEY = "uc_gpu_memory_target_gb"   # nnU-Net's -gpu_memory_target (default: the planner's)
NUM_FOLDS = 5


class PlansError(ValueError):
    """The plans cannot be trained with this trainer; the message says why and how to fix it."""


@dataclass
class PreparedPlans:
    """What the trainer trains: the architecture block written into the plans, and how patch/batch came about."""

    architecture: dict
    patch_size: tuple[int, ...]
    batch_size: int
    deep_supervision: bool
    adaptation: Adaptation | None = None      # None: patch and batch as the plans give them
    notes: list[str] = field(default_factory=list)


def names_plugin_network(architecture: dict) -> bool:
    """Whether a plans ``architecture`` block names one of this plugin's networks (not nnU-Net's)."""
    return str(architecture.get("network_class_name", "")).startswith(PLUGIN_MODULE_PREFIX)


def trained_architecture(network: NetworkEntry, configuration: dict, overrides: dict | None = None) -> dict:
    """The architecture block a (resolved) configuration trains and predicts with, for a trainer of ``network``.

    Plans that name a plugin network keep it; otherwise ``network`` with its defaults, overlaid by the kwargs
    of a 0.1.x results folder (``network.legacy_kwargs_key``) and by ``overrides`` (the trainer variant's).
    """
    architecture = configuration.get("architecture", {})
    if names_plugin_network(architecture):
        return architecture
    legacy = configuration.get(network.legacy_kwargs_key, {}) if network.legacy_kwargs_key else {}
    return network.plans_architecture(**{**legacy, **(overrides or {})})


def _check_configuration(plans: dict, configuration: str, trainer_name: str) -> None:
    available = sorted(plans.get("configurations", {}))
    if configuration not in available:
        raise PlansError(
            f"{trainer_name}: the plans ({plans.get('plans_name', '?')}) of {plans.get('dataset_name', '?')} have "
            f"no configuration {configuration!r} (available: {', '.join(available) or 'none'}). These trainers "
            f"need a 3-D configuration: run `nnUNetv2_plan_and_preprocess -d ID -c 3d_fullres` on 3-D images, or "
            f"pick one of the available configurations"
        )


def _check_folds(fold: int | str, dataset_json: dict, preprocessed_base: str | None, trainer_name: str) -> None:
    """nnU-Net's automatic 5-fold split needs at least 5 training cases (unless splits_final.json exists)."""
    if fold == "all":
        return
    if preprocessed_base is not None and os.path.isfile(os.path.join(preprocessed_base, "splits_final.json")):
        return
    n_cases = int(dataset_json.get("numTraining", 0))
    if n_cases < NUM_FOLDS:
        raise PlansError(
            f"{trainer_name}: the dataset has {n_cases} training case(s), too few for nnU-Net's {NUM_FOLDS}-fold "
            f"cross-validation split. Fix: add cases (at least {NUM_FOLDS}), train with fold `all`, or write your "
            f"own splits_final.json into {preprocessed_base or 'nnUNet_preprocessed/DatasetXXX'}"
        )


def _check_planned_network(architecture: dict, network: NetworkEntry, overrides: dict, trainer_name: str) -> None:
    """Plans from ``nnunetv2_uc plan`` for another paper network, or a variant option the planned network lacks."""
    class_name = architecture["network_class_name"]
    other = next((e for e in NETWORKS.values() if e.import_path == class_name and e.trainer and e is not network),
                 None)
    if other is not None:
        raise PlansError(f"{trainer_name}: these plans name {class_name} in their architecture block; train them "
                         f"with -tr {other.trainer}, or plan for this trainer's network with `nnunetv2_uc plan -d D "
                         f"--network {network.name}`")
    unknown = sorted(set(overrides) - set(architecture["arch_kwargs"]))
    if class_name != network.import_path and unknown:
        raise PlansError(f"{trainer_name} sets {unknown} for {network.network_class.__name__}, but these plans "
                         f"train {class_name}, which has no such option; use the trainer without the variant suffix")


def _planner_calibration(plans: dict) -> tuple[Any, float | None, str | None]:
    """(reference, default target GB, why not) of the planner that made the plans; it needs the raw dataset.json."""
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            reference, target = planner_reference(plans.get("experiment_planner_used", "ExperimentPlanner"),
                                                  plans["dataset_name"])
        return reference, target, None
    except Exception as e:  # noqa: BLE001 - any failure means: fall back to the plans' own patch x batch
        return None, None, f"the planner's memory reference could not be read ({type(e).__name__}: {e})"


def _adapt(plans: dict, config: dict, network: NetworkEntry, architecture: dict, input_channels: int,
           num_classes: int, optimizer_slots: int, world_size: int) -> tuple[Adaptation, list[str]]:
    reference, target, problem = _planner_calibration(plans)
    notes = [f"{problem}; the budget is what nnU-Net's network needs at the planned patch x batch"] if problem else []
    if config.get(GPU_TARGET_KEY) is not None:
        target = float(config[GPU_TARGET_KEY])
    budget = int(float(config[BUDGET_KEY]) * GIB) if config.get(BUDGET_KEY) is not None else None
    with_these_kwargs = dataclasses.replace(paper_network(network),
                                            architecture=lambda configuration, patch: architecture)
    adaptation = adapt_configuration(config, with_these_kwargs, input_channels, num_classes, reference, target,
                                     world_size, budget, optimizer_slots)
    return adaptation, notes


def prepare_plans(plans: dict, configuration: str, fold: int | str, dataset_json: dict, network: NetworkEntry,
                  optimizer_slots: int, trainer_name: str, preprocessed_base: str | None, world_size: int = 1,
                  overrides: dict | None = None) -> PreparedPlans:
    """Validate the request; write the trained network's architecture block, patch and batch into ``plans``."""
    overrides = overrides or {}
    _check_configuration(plans, configuration, trainer_name)
    plans_manager = PlansManager(plans)
    configuration_manager = plans_manager.get_configuration(configuration)
    config = configuration_manager.configuration  # resolved (inherits_from applied)
    if len(config["patch_size"]) != 3:
        raise PlansError(
            f"{trainer_name}: configuration {configuration!r} is {len(config['patch_size'])}-D (patch "
            f"{config['patch_size']}); {network.network_class.__name__} is a 3-D network. Use 3d_fullres (or another "
            f"3-D configuration)"
        )
    _check_folds(fold, dataset_json, preprocessed_base, trainer_name)
    input_channels = determine_num_input_channels(plans_manager, configuration_manager, dataset_json)
    num_classes = plans_manager.get_label_manager(dataset_json).num_segmentation_heads

    planned_by_plugin = names_plugin_network(config["architecture"])
    if planned_by_plugin:
        _check_planned_network(config["architecture"], network, overrides, trainer_name)
        architecture = dict(config["architecture"])
        if config["architecture"]["network_class_name"] == network.import_path:
            architecture["arch_kwargs"] = {**architecture["arch_kwargs"], **overrides}
    else:
        architecture = trained_architecture(network, config, overrides)
    try:
        prepared = _prepare_patch(plans, config, network, architecture, input_channels, num_classes,
                                  optimizer_slots, world_size, planned_by_plugin)
    except (TypeError, ValueError) as e:
        if isinstance(e, PlansError):
            raise
        raise PlansError(f"{trainer_name}: configuration {configuration!r}: {e}") from e

    own = plans["configurations"][configuration]
    own["architecture"] = prepared.architecture
    own["patch_size"] = list(prepared.patch_size)
    own["batch_size"] = prepared.batch_size
    if network.legacy_kwargs_key:
        own.pop(network.legacy_kwargs_key, None)  # now in the architecture block
    return prepared


def _prepare_patch(plans: dict, config: dict, network: NetworkEntry, architecture: dict, input_channels: int,
                   num_classes: int, optimizer_slots: int, world_size: int, planned_by_plugin: bool) -> PreparedPlans:
    patch = tuple(int(s) for s in config["patch_size"])
    batch = int(config["batch_size"])
    deep_supervision = has_uc_connections(architecture)
    if planned_by_plugin or config.get(FIXED_PATCH_KEY, False):
        if architecture["network_class_name"] == network.import_path:
            problems = network.input_problems(patch)
            if problems:
                raise PlansError(f"{network.network_class.__name__} cannot take patch_size {list(patch)} of the "
                                 f"plans: {'; '.join(problems)}. Fix patch_size in the plans (multiples of 16)")
        why = "uc_fixed_patch" if config.get(FIXED_PATCH_KEY, False) else "planned by nnunetv2_uc plan"
        return PreparedPlans(architecture, patch, batch, deep_supervision,
                             notes=[f"patch {list(patch)} and batch size {batch} as the plans give them ({why})"])
    try:
        adaptation, notes = _adapt(plans, config, network, architecture, input_channels, num_classes,
                                   optimizer_slots, world_size)
    except AdaptationError as e:
        raise PlansError(str(e)) from None
    notes.append(f"nnU-Net's plans were made for {config['architecture']['network_class_name'].rsplit('.', 1)[-1]}; "
                 f"for plans made for {network.network_class.__name__} (patch and batch from the median image, as "
                 f"nnU-Net plans its own network) run `nnunetv2_uc plan -d {_dataset_id(plans)} "
                 f"--network {network.name}` and train with -p {_suggested_plans_name(plans, network)}")
    return PreparedPlans(architecture, adaptation.patch, adaptation.batch_size, deep_supervision, adaptation,
                         notes)


def _dataset_id(plans: dict) -> str:
    name = str(plans.get("dataset_name", ""))
    return str(int(name[7:10])) if name.startswith("Dataset") and name[7:10].isdigit() else "D"


def _suggested_plans_name(plans: dict, network: NetworkEntry) -> str:
    return f"{plans.get('plans_name', 'nnUNetPlans')}_{network.network_class.__name__}"
