"""Checks and patch adaptation that run on the plans *before* nnU-Net's trainer creates its results folder.

A trainer calls :func:`prepare_plans` first thing in ``__init__``: every user error (missing configuration,
2-D plans, too few cases for 5 folds, a patch that cannot fit) raises here with the fix in the message, so
nothing is written to ``nnUNet_results``. On success the plans dict is updated in place (patch size and
network kwargs of the configuration); the trainer saves that dict as ``plans.json`` in ``on_train_start``,
which is what ``nnUNetv2_predict`` and the validation read.
"""
from __future__ import annotations

import os
from typing import Any, Callable

from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
from torch import nn

from nnunetv2_uc.architectures.registry import NetworkEntry
from nnunetv2_uc.trainers.patch_planning import (
    GIB, NNUNET_REFERENCE_GB, PLANNER_GPU_TARGET_GB, PatchAdaptationError, PatchDecision, adapt_patch_size,
    gpu_target_budget_bytes, training_bytes_estimator,
)

#: configuration keys this plugin reads (all optional)
FIXED_PATCH_KEY = "uc_fixed_patch"            # true: take patch_size/batch_size as given, only check the shape
BUDGET_KEY = "uc_memory_budget_gib"          # explicit budget in estimator GiB (overrides the GPU target)
GPU_TARGET_KEY = "uc_gpu_memory_target_gb"   # nnU-Net's -gpu_memory_target (default: the planner's, 8 GB)
NUM_FOLDS = 5


def resolved_kwargs(network: NetworkEntry, configuration: dict) -> dict[str, Any]:
    """The network's defaults overlaid with what the configuration already stores (a preset or an earlier run)."""
    return {**network.default_kwargs(), **configuration.get(network.legacy_kwargs_key, {})}


def network_builder(network: NetworkEntry, kwargs: dict[str, Any], input_channels: int, num_classes: int
                    ) -> Callable[[], nn.Module]:
    return lambda: network.network_class(input_channels, num_classes, deep_supervision=False, **kwargs)


def _check_configuration(plans: dict, configuration: str, trainer_name: str) -> None:
    available = sorted(plans.get("configurations", {}))
    if configuration not in available:
        raise ValueError(
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
        raise ValueError(
            f"{trainer_name}: the dataset has {n_cases} training case(s), too few for nnU-Net's {NUM_FOLDS}-fold "
            f"cross-validation split. Fix: add cases (at least {NUM_FOLDS}), train with fold `all`, or write your "
            f"own splits_final.json into {preprocessed_base or 'nnUNet_preprocessed/DatasetXXX'}"
        )


def _fixed_patch_decision(network: NetworkEntry, config: dict, estimate: Callable, batch_size: int
                          ) -> PatchDecision:
    patch = tuple(int(s) for s in config["patch_size"])
    problems = network.input_problems(patch)
    if problems:
        raise PatchAdaptationError(
            f"{network.network_class.__name__}: the configuration sets {FIXED_PATCH_KEY}=true but its patch_size {list(patch)} is not "
            f"valid: {'; '.join(problems)}. Fix patch_size in the plans (multiples of 16)"
        )
    return PatchDecision(patch, patch, batch_size, estimate(patch), None,
                         [f"{FIXED_PATCH_KEY}=true: using the configured patch and batch size as given"])


def _gpu_target_gb(plans: dict, config: dict) -> float:
    """The GPU memory target the plans were made for: explicit key, else by planner, else nnU-Net's 8 GB."""
    if config.get(GPU_TARGET_KEY) is not None:
        return float(config[GPU_TARGET_KEY])
    return PLANNER_GPU_TARGET_GB.get(plans.get("experiment_planner_used", ""), NNUNET_REFERENCE_GB)


def prepare_plans(plans: dict, configuration: str, fold: int | str, dataset_json: dict, network: NetworkEntry,
                  optimizer_slots: int, trainer_name: str, preprocessed_base: str | None) -> PatchDecision:
    """Validate the request and write the network's patch size and kwargs into ``plans`` (in place)."""
    name = network.network_class.__name__
    _check_configuration(plans, configuration, trainer_name)
    plans_manager = PlansManager(plans)
    configuration_manager = plans_manager.get_configuration(configuration)
    config = configuration_manager.configuration  # resolved (inherits_from applied)
    if len(config["patch_size"]) != 3:
        raise ValueError(
            f"{trainer_name}: configuration {configuration!r} is {len(config['patch_size'])}-D (patch "
            f"{config['patch_size']}); {name} is a 3-D network. Use 3d_fullres (or another 3-D configuration)"
        )
    _check_folds(fold, dataset_json, preprocessed_base, trainer_name)

    kwargs = resolved_kwargs(network, config)
    input_channels = determine_num_input_channels(plans_manager, configuration_manager, dataset_json)
    num_classes = plans_manager.get_label_manager(dataset_json).num_segmentation_heads
    batch_size = int(config["batch_size"])
    try:
        estimate = training_bytes_estimator(network_builder(network, kwargs, input_channels, num_classes),
                                            input_channels,
                                            batch_size, optimizer_slots)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{trainer_name}: invalid {network.legacy_kwargs_key} {kwargs} in configuration "
                         f"{configuration!r}: {e}") from e

    if config.get(FIXED_PATCH_KEY, False):
        decision = _fixed_patch_decision(network, config, estimate, batch_size)
    else:
        if config.get(BUDGET_KEY) is not None:
            budget = int(float(config[BUDGET_KEY]) * GIB)
        else:
            budget = gpu_target_budget_bytes(config, input_channels, num_classes, _gpu_target_gb(plans, config))
        decision = adapt_patch_size(config["patch_size"], config.get("median_image_size_in_voxels", config["patch_size"]),
                                    batch_size, estimate, budget, name)

    own = plans["configurations"][configuration]
    own["patch_size"] = list(decision.patch)
    own[network.legacy_kwargs_key] = kwargs
    return decision
