"""Add a preset configuration (e.g. 3d_fullres_paper96) to a dataset's nnUNetPlans.json, without re-preprocessing.

The preset configuration inherits from 3d_fullres (same data_identifier, so the preprocessed data is reused)
and sets its own patch and batch size. Then train with the stock command, e.g.
  nnUNetv2_train DATASET 3d_fullres_paper96 0 -tr nnUNetTrainerUXNet
Presets are JSON files shipped in nnunetv2_uc/plans_overrides/ (--list shows them). Running it again with the
same preset changes nothing; a different configuration of the same name is only replaced with --force.
"""
from __future__ import annotations

import json
import os
from importlib import resources
from pathlib import Path

from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name

from nnunetv2_uc.errors import OverwriteRefused, UserError
from nnunetv2_uc.files import atomic_write_json


def available_presets() -> dict[str, dict]:
    """Preset name -> preset dict, from the JSON files shipped in nnunetv2_uc.plans_overrides."""
    presets = {}
    for entry in resources.files("nnunetv2_uc.plans_overrides").iterdir():
        if entry.name.endswith(".json"):
            presets[entry.name[:-5]] = json.loads(entry.read_text())
    return presets


def load_preset(name: str) -> dict:
    presets = available_presets()
    if name not in presets:
        raise UserError(f"unknown preset {name!r}; available: {', '.join(sorted(presets))}")
    return presets[name]


def plans_path(dataset: str, plans_identifier: str) -> Path:
    """nnUNet_preprocessed/DatasetXXX_Name/<plans>.json for a dataset id or name."""
    if not os.environ.get("nnUNet_preprocessed"):
        raise UserError("nnUNet_preprocessed is not set; export it as for the nnUNetv2_* commands")
    try:
        name = maybe_convert_to_dataset_name(int(dataset) if dataset.isdigit() else dataset)
    except RuntimeError as e:
        raise UserError(f"{e} Run nnUNetv2_plan_and_preprocess -d {dataset} first") from e
    path = Path(os.environ["nnUNet_preprocessed"]) / name / f"{plans_identifier}.json"
    if not path.is_file():
        raise UserError(f"{path} does not exist; run nnUNetv2_plan_and_preprocess -d {dataset} first "
                                 f"(or pass the right -p PLANS)")
    return path


def apply_preset(plans: dict, preset: dict, force: bool) -> tuple[dict, str]:
    """Plans with the preset configuration added; returns (new plans, what happened). Does not write."""
    name, configuration = preset["configuration_name"], preset["configuration"]
    configurations = plans.get("configurations", {})
    parent = configuration.get("inherits_from")
    if parent is not None and parent not in configurations:
        raise UserError(
            f"the plans have no {parent!r} configuration to inherit from (available: "
            f"{', '.join(sorted(configurations)) or 'none'}); the preset needs 3-D plans from "
            f"nnUNetv2_plan_and_preprocess"
        )
    existing = configurations.get(name)
    if existing == configuration:
        return plans, f"{name!r} is already in the plans, unchanged"
    if existing is not None and not force:
        raise OverwriteRefused(
            f"the plans already have a different configuration named {name!r}; it is left as it is. Use --force "
            f"to replace it with the preset"
        )
    new_plans = json.loads(json.dumps(plans))
    new_plans["configurations"][name] = configuration
    return new_plans, f"{'replaced' if existing is not None else 'added'} configuration {name!r}"


def add_preset(dataset: str, preset_name: str, plans_identifier: str = "nnUNetPlans", force: bool = False
               ) -> tuple[Path, str]:
    """Add the preset configuration to the dataset's plans file (written atomically, only if it changes);
    returns (plans file, what happened)."""
    preset = load_preset(preset_name)
    path = plans_path(dataset, plans_identifier)
    plans = json.loads(path.read_text())
    new_plans, message = apply_preset(plans, preset, force)
    if new_plans is not plans:
        atomic_write_json(path, new_plans)
    return path, message
