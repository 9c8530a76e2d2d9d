"""``nnunetv2_uc plan``: nnU-Net's experiment planning for one of our networks, one plans file per dataset.

Validates everything first (network, planner, configurations, datasets, fingerprints, existing plans), plans
every dataset, and only then writes the plans files (atomically), so bad input writes nothing.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from nnunetv2.experiment_planning.plan_and_preprocess_api import plan_experiment_dataset
from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

from nnunetv2_uc.errors import OverwriteRefused, UserError
from nnunetv2_uc.files import atomic_write_json
from nnunetv2_uc.planning.memory import GIB
from nnunetv2_uc.planning.planners import (PLANNING_KEY, base_plans_name, default_plans_name, get_base_planner,
                                           get_network, network_planner_class)

PLANNABLE_CONFIGURATIONS = ("3d_fullres", "3d_lowres", "3d_cascade_fullres")
#: what a configuration's preprocessed data depends on (plans level / configuration level)
_PLANS_PREPROCESSING_KEYS = ("transpose_forward", "image_reader_writer", "foreground_intensity_properties_per_channel")
_CONFIGURATION_PREPROCESSING_KEYS = (
    "preprocessor_name", "spacing", "normalization_schemes", "use_mask_for_norm", "resampling_fn_data",
    "resampling_fn_seg", "resampling_fn_data_kwargs", "resampling_fn_seg_kwargs",
)
_NOT_PLANS = ("dataset.json", "dataset_fingerprint.json", "splits_final.json")


@dataclass(frozen=True)
class ConfigurationDecision:
    """What was planned for one configuration, next to nnU-Net's own plan for its U-Net."""

    configuration: str
    patch_size: tuple[int, ...]
    batch_size: int
    estimated_bytes: int
    budget_bytes: int
    batch_limited_by: str
    median_shape: tuple[float, ...]
    spacing: tuple[float, ...]
    nnunet_patch_size: tuple[int, ...]
    nnunet_batch_size: int
    nnunet_estimated_bytes: int
    data_identifier: str


@dataclass
class DatasetPlans:
    """One dataset's plans file and what it needs next."""

    dataset_name: str
    network: str
    plans_name: str
    plans_file: Path
    planner: str
    gpu_memory_target_gb: float
    precision: str
    decisions: list[ConfigurationDecision] = field(default_factory=list)
    to_preprocess: list[str] = field(default_factory=list)   # configurations whose data does not exist yet
    reused_data: dict[str, Path] = field(default_factory=dict)  # configuration -> existing preprocessed data
    notes: list[str] = field(default_factory=list)

    @property
    def dataset_id(self) -> int:
        return int(self.dataset_name[len("Dataset"):len("Dataset") + 3])

    def preprocess_command(self) -> str | None:
        if not self.to_preprocess:
            return None
        return (f"nnUNetv2_preprocess -d {self.dataset_id} -plans_name {self.plans_name} "
                f"-c {' '.join(self.to_preprocess)}")


def _preprocessed_root() -> Path:
    root = os.environ.get("nnUNet_preprocessed")
    if not root:
        raise UserError("nnUNet_preprocessed is not set; export nnUNet_raw and nnUNet_preprocessed as for the "
                        "nnUNetv2_* commands")
    return Path(root)


def _check_configurations(configurations: Sequence[str]) -> tuple[str, ...]:
    if not configurations:
        raise UserError(f"no configuration given (-c); choose from {', '.join(PLANNABLE_CONFIGURATIONS)}")
    for c in configurations:
        if c == "2d":
            raise UserError("-c 2d: uC 3DU-Net, 3D UX-Net and uC connections are 3-D networks; plan 3d_fullres (or 3d_lowres)")
        if c not in PLANNABLE_CONFIGURATIONS:
            raise UserError(f"unknown configuration {c!r} (-c); choose from {', '.join(PLANNABLE_CONFIGURATIONS)}")
    if "3d_cascade_fullres" in configurations and not {"3d_fullres", "3d_lowres"} <= set(configurations):
        raise UserError("-c 3d_cascade_fullres needs 3d_lowres and 3d_fullres in the same plans: "
                        "-c 3d_fullres 3d_lowres 3d_cascade_fullres")
    return tuple(dict.fromkeys(configurations))


def _dataset_name(dataset_id) -> str:
    try:
        return maybe_convert_to_dataset_name(dataset_id)
    except RuntimeError:
        raise UserError(f"dataset {dataset_id} not found in nnUNet_raw ({os.environ.get('nnUNet_raw')}) or "
                        f"nnUNet_preprocessed ({os.environ.get('nnUNet_preprocessed')}); check -d and the "
                        f"environment variables") from None


def _check_dataset(dataset_name: str, dataset_id, plans_name: str, overwrite: bool) -> Path:
    folder = _preprocessed_root() / dataset_name
    raw = os.environ.get("nnUNet_raw")
    if not raw or not (Path(raw) / dataset_name / "dataset.json").is_file():
        raise UserError(f"{dataset_name}: no dataset.json in nnUNet_raw ({raw}); planning reads the raw "
                        f"dataset.json, as nnUNetv2_plan_experiment does")
    if not (folder / "dataset_fingerprint.json").is_file():
        raise UserError(f"{dataset_name} has no fingerprint ({folder / 'dataset_fingerprint.json'}). Fix: "
                        f"nnUNetv2_extract_fingerprint -d {dataset_id}")
    plans_file = folder / f"{plans_name}.json"
    if plans_file.exists() and not overwrite:
        raise OverwriteRefused(f"{plans_file} exists; it is left as it is. Use --overwrite to replace it, or "
                               f"-overwrite_plans_name to write other plans")
    return plans_file


def _preprocessing_of(plans: dict, configuration: str) -> dict:
    resolved = PlansManager(plans).get_configuration(configuration).configuration
    return {**{k: plans.get(k) for k in _PLANS_PREPROCESSING_KEYS},
            **{k: resolved.get(k) for k in _CONFIGURATION_PREPROCESSING_KEYS}}


def _same(a, b) -> bool:
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def _plans_with_data(folder: Path, data_identifier: str, skip: Path) -> list[tuple[Path, dict, str]]:
    """(plans file, plans, configuration) of every other plans file in ``folder`` whose configuration uses
    ``data_identifier``."""
    found = []
    for path in sorted(folder.glob("*.json")):
        if path.name in _NOT_PLANS or path == skip:
            continue
        try:
            plans = json.loads(path.read_text())
            manager = PlansManager(plans)
            for name in manager.available_configurations:
                if manager.get_configuration(name).data_identifier == data_identifier:
                    found.append((path, plans, name))
        except (ValueError, KeyError, TypeError, AssertionError):
            continue  # not a plans file
    return found


def _settle_data_identifiers(plans: dict, result: DatasetPlans, folder: Path) -> None:
    """Keep the base planner's data identifier where the preprocessed data would be identical (and say
    whether that data exists); where another plans file uses it with different preprocessing, use our own."""
    for name, configuration in plans["configurations"].items():
        if "data_identifier" not in configuration:
            continue  # inherits (3d_cascade_fullres)
        ours = _preprocessing_of(plans, name)
        identifier = configuration["data_identifier"]
        others = _plans_with_data(folder, identifier, result.plans_file)
        conflicting = [p for p, other, c in others if not _same(_preprocessing_of(other, c), ours)]
        if conflicting:
            configuration["data_identifier"] = f"{result.plans_name}_{name}"
            result.notes.append(f"{name}: {conflicting[0].name} preprocesses {identifier} differently; these plans "
                                f"get their own data ({configuration['data_identifier']})")
        data = folder / configuration["data_identifier"]
        if not conflicting and others and data.is_dir() and any(data.iterdir()):
            result.reused_data[name] = data
        else:
            result.to_preprocess.append(name)


def _keep_configurations(plans: dict, configurations: Sequence[str], dataset_name: str, notes: list[str]) -> dict:
    kept = {}
    for name in configurations:
        if name in plans["configurations"]:
            kept[name] = plans["configurations"][name]
        else:
            notes.append(f"{dataset_name}: nnU-Net's planner made no {name} configuration for this dataset "
                         f"(the full-resolution patch covers enough of the median image); skipped")
    if "3d_lowres" in kept and "3d_cascade_fullres" not in kept:
        kept["3d_lowres"] = {k: v for k, v in kept["3d_lowres"].items() if k != "next_stage"}
    return {**plans, "configurations": kept}


def _decision(name: str, configuration: dict) -> ConfigurationDecision:
    record = configuration[PLANNING_KEY]
    nnunet = record["nnunet"]
    return ConfigurationDecision(
        name, tuple(configuration["patch_size"]), int(configuration["batch_size"]), record["estimated_bytes"],
        record["budget_bytes"], record["batch_limited_by"], tuple(configuration["median_image_size_in_voxels"]),
        tuple(configuration["spacing"]), tuple(nnunet["patch_size"]), nnunet["batch_size"],
        nnunet["estimated_bytes"], configuration["data_identifier"])


def plan_datasets(dataset_ids: Sequence[int], network: str, planner: str = "ExperimentPlanner",
                  gpu_memory_target_gb: float | None = None, plans_name: str | None = None,
                  configurations: Sequence[str] = ("3d_fullres",), overwrite: bool = False,
                  preprocessor_name: str = "DefaultPreprocessor",
                  overwrite_target_spacing: Sequence[float] | None = None, verbose: bool = False
                  ) -> list[DatasetPlans]:
    """Plan ``network`` on each dataset with nnU-Net's ``planner``; write one plans file per dataset.

    Nothing is written unless every dataset plans without error. Returns what was planned, per dataset.
    """
    plannable = get_network(network)
    base = get_base_planner(planner)
    configurations = _check_configurations(configurations)
    if gpu_memory_target_gb is not None and gpu_memory_target_gb <= 0:
        raise UserError(f"-gpu_memory_target must be positive, got {gpu_memory_target_gb}")
    name = plans_name or default_plans_name(base, plannable)
    if name == base_plans_name(base):
        raise UserError(f"-overwrite_plans_name {name} is the base planner's own plans name; pick another name so "
                        f"nnU-Net's plans stay as they are")
    datasets = [(d, _dataset_name(d)) for d in dataset_ids]
    plans_files = [_check_dataset(dataset_name, d, name, overwrite) for d, dataset_name in datasets]

    planner_class = network_planner_class(base, plannable, configurations)
    results = []
    for (dataset_id, dataset_name), plans_file in zip(datasets, plans_files):
        chatter = io.StringIO()
        with contextlib.nullcontext() if verbose else contextlib.redirect_stdout(chatter):
            plans, identifier = plan_experiment_dataset(dataset_id, planner_class, gpu_memory_target_gb,
                                                        preprocessor_name, overwrite_target_spacing, name)
        notes: list[str] = []
        plans = _keep_configurations(plans, configurations, dataset_name, notes)
        if not plans["configurations"]:
            raise UserError(f"{dataset_name}: none of the configurations {', '.join(configurations)} could be "
                            f"planned; plan 3d_fullres")
        record = next(cfg[PLANNING_KEY] for cfg in plans["configurations"].values() if PLANNING_KEY in cfg)
        result = DatasetPlans(dataset_name, network, identifier, plans_file, planner,
                              record["gpu_memory_target_gb"], record["precision"], notes=notes)
        _settle_data_identifiers(plans, result, plans_file.parent)
        result.decisions = [_decision(c, cfg) for c, cfg in plans["configurations"].items() if PLANNING_KEY in cfg]
        results.append((result, plans))
    for result, plans in results:
        atomic_write_json(result.plans_file, plans)
    return [result for result, _ in results]


def _gib(n: int) -> str:
    return f"{n / GIB:.2f} GiB"


def describe(result: DatasetPlans) -> str:
    """The decision, for the terminal."""
    lines = [f"{result.dataset_name}: {result.network} planned with {result.planner} for "
             f"{result.gpu_memory_target_gb:g} GB ({result.precision}) -> {result.plans_file}"]
    for d in result.decisions:
        lines.append(
            f"  {d.configuration}: patch {list(d.patch_size)}, batch {d.batch_size} (limited by {d.batch_limited_by}); "
            f"estimated {_gib(d.estimated_bytes)} of a {_gib(d.budget_bytes)} budget. Median image "
            f"{[round(s) for s in d.median_shape]} at spacing {[round(s, 3) for s in d.spacing]}. nnU-Net's own U-Net: "
            f"patch {list(d.nnunet_patch_size)}, batch {d.nnunet_batch_size}, estimated {_gib(d.nnunet_estimated_bytes)}")
    lines += [f"  note: {note}" for note in result.notes]
    for configuration, data in result.reused_data.items():
        lines.append(f"  {configuration}: reuses the preprocessed data in {data} (same spacing and preprocessing)")
    command = result.preprocess_command()
    if command:
        lines.append(f"  preprocess next: {command}")
    return "\n".join(lines)
