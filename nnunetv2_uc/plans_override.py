"""Add a preset configuration (e.g. 3d_fullres_paper96) to a dataset's nnUNetPlans.json, without re-preprocessing.

Usage: nnunetv2_uc plans-override DATASET --preset 3d_fullres_paper96 [-p nnUNetPlans] [--force]

The preset configuration inherits from 3d_fullres (same data_identifier, so the preprocessed data is reused)
and sets its own patch and batch size. Then train with the stock command, e.g.
  nnUNetv2_train DATASET 3d_fullres_paper96 0 -tr nnUNetTrainerUXNet
Presets are JSON files shipped in nnunetv2_uc/plans_overrides/ (--list shows them). Running it again with the
same preset changes nothing; a different configuration of the same name is only replaced with --force.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from importlib import resources
from pathlib import Path


class PlansOverrideError(Exception):
    """A user error: the message says what is wrong and how to fix it."""


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
        raise PlansOverrideError(f"unknown preset {name!r}; available: {', '.join(sorted(presets))}")
    return presets[name]


def plans_path(dataset: str, plans_identifier: str) -> Path:
    """nnUNet_preprocessed/DatasetXXX_Name/<plans>.json for a dataset id or name."""
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name

    if not os.environ.get("nnUNet_preprocessed"):
        raise PlansOverrideError("nnUNet_preprocessed is not set; export it as for the nnUNetv2_* commands")
    try:
        name = maybe_convert_to_dataset_name(int(dataset) if dataset.isdigit() else dataset)
    except RuntimeError as e:
        raise PlansOverrideError(f"{e} Run nnUNetv2_plan_and_preprocess -d {dataset} first") from e
    path = Path(os.environ["nnUNet_preprocessed"]) / name / f"{plans_identifier}.json"
    if not path.is_file():
        raise PlansOverrideError(f"{path} does not exist; run nnUNetv2_plan_and_preprocess -d {dataset} first "
                                 f"(or pass the right -p PLANS)")
    return path


def apply_preset(plans: dict, preset: dict, force: bool) -> tuple[dict, str]:
    """Plans with the preset configuration added; returns (new plans, what happened). Does not write."""
    name, configuration = preset["configuration_name"], preset["configuration"]
    configurations = plans.get("configurations", {})
    parent = configuration.get("inherits_from")
    if parent is not None and parent not in configurations:
        raise PlansOverrideError(
            f"the plans have no {parent!r} configuration to inherit from (available: "
            f"{', '.join(sorted(configurations)) or 'none'}); the preset needs 3-D plans from "
            f"nnUNetv2_plan_and_preprocess"
        )
    existing = configurations.get(name)
    if existing == configuration:
        return plans, f"{name!r} is already in the plans, unchanged"
    if existing is not None and not force:
        raise PlansOverrideError(
            f"the plans already have a different configuration named {name!r}; it is left as it is. Use --force "
            f"to replace it with the preset"
        )
    new_plans = json.loads(json.dumps(plans))
    new_plans["configurations"][name] = configuration
    return new_plans, f"{'replaced' if existing is not None else 'added'} configuration {name!r}"


def write_json_atomically(data: dict, path: Path) -> None:
    """Write to a temporary file next to ``path`` and rename it over, so a failure leaves the old file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=4)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dataset", nargs="?", help="dataset id (e.g. 4) or name (Dataset004_Hippocampus)")
    parser.add_argument("--preset", help="preset name, e.g. 3d_fullres_paper96 (see --list)")
    parser.add_argument("-p", "--plans", default="nnUNetPlans", help="plans identifier (default: nnUNetPlans)")
    parser.add_argument("--force", action="store_true",
                        help="replace an existing, different configuration of the same name")
    parser.add_argument("--list", action="store_true", help="list the presets and exit")


def run(args: argparse.Namespace) -> int:
    try:
        if args.list:
            for name, preset in sorted(available_presets().items()):
                print(f"{name}: {preset.get('description', '')}")
            return 0
        if not args.dataset or not args.preset:
            raise PlansOverrideError("give a DATASET and --preset NAME (or --list)")
        preset = load_preset(args.preset)
        path = plans_path(args.dataset, args.plans)
        plans = json.loads(path.read_text())
        new_plans, message = apply_preset(plans, preset, args.force)
        if new_plans is not plans:
            write_json_atomically(new_plans, path)
        print(f"{path}: {message}")
        return 0
    except PlansOverrideError as e:
        print(f"nnunetv2_uc plans-override: error: {e}", file=sys.stderr)
        return 2
