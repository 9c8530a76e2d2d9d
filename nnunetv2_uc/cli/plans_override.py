"""Add a preset configuration (e.g. 3d_fullres_paper96) to a dataset's nnUNetPlans.json, without re-preprocessing.

Usage: nnunetv2_uc plans-override DATASET --preset 3d_fullres_paper96 [-p nnUNetPlans] [--force]

The preset configuration inherits from 3d_fullres (same data_identifier, so the preprocessed data is reused)
and sets its own patch and batch size. Then train with the stock command, e.g.
  nnUNetv2_train DATASET 3d_fullres_paper96 0 -tr nnUNetTrainerUXNet
Presets are JSON files shipped in nnunetv2_uc/plans_overrides/ (--list shows them). Running it again with the
same preset changes nothing; a different configuration of the same name is only replaced with --force (exit
code 3 without it).
"""
from __future__ import annotations

import argparse

from nnunetv2_uc.errors import UserError
from nnunetv2_uc.planning.overrides import add_preset, available_presets


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dataset", nargs="?", help="dataset id (e.g. 4) or name (Dataset004_Hippocampus)")
    parser.add_argument("--preset", help="preset name, e.g. 3d_fullres_paper96 (see --list)")
    parser.add_argument("-p", "--plans", default="nnUNetPlans", help="plans identifier (default: nnUNetPlans)")
    parser.add_argument("--force", action="store_true",
                        help="replace an existing, different configuration of the same name")
    parser.add_argument("--list", action="store_true", help="list the presets and exit")


def run(args: argparse.Namespace) -> int:
    if args.list:
        for name, preset in sorted(available_presets().items()):
            print(f"{name}: {preset.get('description', '')}")
        return 0
    if not args.dataset or not args.preset:
        raise UserError("give a DATASET and --preset NAME (or --list)")
    path, message = add_preset(dataset=args.dataset, preset_name=args.preset, plans_identifier=args.plans,
                               force=args.force)
    print(f"{path}: {message}")
    return 0
