"""Convert a dataset release (FLARE2021, OIMHS, FeTA2021, AbdomenCT-1K, BTCV, uC layout) to nnU-Net raw format.

Writes $nnUNet_raw/DatasetNNN_Name/ (imagesTr, labelsTr, imagesTs, labelsTs where test labels exist) with
dataset.json, and for --split paper a splits_final.json, also placed into $nnUNet_preprocessed/DatasetNNN_Name/
when that variable is set. Nothing is written unless every case converts; an existing dataset is replaced
only with --overwrite. Run `nnunetv2_uc convert DATASET --help` for each dataset's layout and options.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys

# sub-subcommand -> module with DEFAULT_ID, DEFAULT_NAME, add_arguments(parser) and build_plan(args)
DATASETS: dict[str, str] = {
    "flare2021": "nnunetv2_uc.conversion.flare2021",
    "oimhs": "nnunetv2_uc.conversion.oimhs",
    "feta2021": "nnunetv2_uc.conversion.feta2021",
    "abdomenct1k": "nnunetv2_uc.conversion.abdomenct1k",
    "btcv": "nnunetv2_uc.conversion.btcv",
    "uc-layout": "nnunetv2_uc.conversion.uc_layout",
}


def _add_common_arguments(parser: argparse.ArgumentParser, module) -> None:
    parser.add_argument("--input", "-i", required=True, metavar="RAW_DIR",
                        help="folder of the downloaded (and extracted) release, see the layout above")
    parser.add_argument("--dataset-id", "-d", type=int, default=module.DEFAULT_ID,
                        help="nnU-Net dataset id (default: %(default)s)")
    parser.add_argument("--name", default=module.DEFAULT_NAME,
                        help="dataset name, the folder becomes DatasetNNN_NAME (default: %(default)s)")
    parser.add_argument("--split", choices=("paper", "none"), default="paper",
                        help="paper: the papers' hold-out and folds where known, written to splits_final.json "
                             "(see the dataset's notes); none: every labelled case in imagesTr and no "
                             "splits_final.json, nnU-Net then makes its default 5 folds (default: %(default)s)")
    parser.add_argument("-j", "--processes", type=int, default=min(4, os.cpu_count() or 1),
                        help="parallel worker processes, each holding one case in memory (default: %(default)s)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing DatasetNNN_Name folder (and its placed splits_final.json)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    datasets = parser.add_subparsers(dest="dataset", metavar="DATASET", required=True)
    for name, module_name in DATASETS.items():
        module = importlib.import_module(module_name)
        doc = module.__doc__ or ""
        sub = datasets.add_parser(name, help=doc.strip().splitlines()[0], description=doc,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
        _add_common_arguments(sub, module)
        module.add_arguments(sub)
        sub.set_defaults(_dataset_module=module_name)


def _print_summary(result, plan) -> None:
    print(f"Wrote {result.dataset_dir}: {result.num_training} training case(s) in imagesTr, "
          f"{result.num_test} case(s) in imagesTs")
    if plan.split is None:
        print("Split: none written (--split none); nnU-Net will create its default 5 folds")
    else:
        print(f"Split: {plan.split.protocol} -- {plan.split.source}")
        if plan.split.holdout:
            print(f"  hold-out in imagesTs/labelsTs: {len(plan.split.holdout)} case(s)")
        for path in result.splits_files:
            print(f"  splits_final.json written to {path}")
        if plan.split.folds is not None and len(result.splits_files) == 1:
            print("  copy it to $nnUNet_preprocessed/<dataset>/ (set nnUNet_preprocessed to place it "
                  "automatically)")
    if result.header_repaired:
        print(f"Header repaired (non-orthonormal direction, image and mask given the same corrected geometry) "
              f"for {len(result.header_repaired)} case(s): {', '.join(result.header_repaired)}")
    for note in result.notes:
        print(f"Note: {note}")
    for warning in result.warnings:
        print(f"Warning: {warning}", file=sys.stderr)


def run(args: argparse.Namespace) -> int:
    from nnunetv2_uc.conversion.pipeline import ConversionError, run_conversion

    module = importlib.import_module(args._dataset_module)
    if args.processes < 1:
        print("error: -j/--processes must be at least 1", file=sys.stderr)
        return 2
    try:
        plan = module.build_plan(args)
        result = run_conversion(plan, processes=args.processes, overwrite=args.overwrite)
    except ConversionError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    _print_summary(result, plan)
    return 0
