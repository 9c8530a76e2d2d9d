"""Convert a dataset release (FLARE2021, OIMHS, FeTA2021, AbdomenCT-1K, BTCV, uC layout) to nnU-Net raw format.

Writes $nnUNet_raw/DatasetNNN_Name/ (imagesTr, labelsTr, imagesTs, labelsTs where test labels exist) with
dataset.json, and for --split paper a splits_final.json, also placed into $nnUNet_preprocessed/DatasetNNN_Name/
when that variable is set. Nothing is written unless every case converts; an existing dataset is replaced
only with --overwrite. Run `nnunetv2_uc convert DATASET --help` for each dataset's layout and options.
Exit codes: 0 success, 2 bad input (every problem listed), 3 the dataset exists (pass --overwrite).
"""
from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Callable

from nnunetv2_uc.conversion import abdomenct1k, btcv, feta2021, flare2021, oimhs, uc_layout
from nnunetv2_uc.conversion.pipeline import ConversionResult, DatasetPlan, run_conversion
from nnunetv2_uc.errors import UserError


def _no_options(parser: argparse.ArgumentParser) -> None:
    """FLARE2021 needs no options beyond the common ones."""


def _holdout_fraction_option(parser: argparse.ArgumentParser, held_out: str) -> None:
    parser.add_argument("--holdout-fraction", type=float, default=0.0,
                        help=f"with --split paper, a seeded (12345) fraction of the {held_out} held out to "
                             "imagesTs/labelsTs, e.g. 0.2 (default: %(default)s = none)")


def _oimhs_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--spacing", type=float, nargs=3, default=oimhs.NOMINAL_SPACING, metavar=("X", "Y", "Z"),
                        help="voxel spacing in mm: X along a B-scan row, Y along depth (rows), Z between B-scans "
                             "(default: nominal 1 1 1, the release gives none)")
    parser.add_argument("--label-scheme", choices=tuple(oimhs.LABEL_SCHEMES), default="uc",
                        help="label ids: uc = hole 1, edema 2, choroid 3, retina 4; torch-em = choroid 1, "
                             "retina 2, edema 3, hole 4 (default: %(default)s)")
    parser.add_argument("--max-unknown-colour-pixels", type=int, default=0, metavar="N",
                        help="per B-scan, mask pixels of no known colour tolerated (set to background) before "
                             "the conversion is refused (default: %(default)s)")
    parser.add_argument("--patient-map", metavar="FILE",
                        help="CSV/TSV/XLSX with an 'Eye ID' and a 'Patient' column for patient-grouped folds "
                             "(default: the release's *Demographics*.xlsx if readable)")
    _holdout_fraction_option(parser, "patients")


def _feta2021_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sub011", choices=feta2021.SUB011_CHOICES, default="pool",
                        help="sub-011 (UX-Net's orphan FeTA_010): put it into the training pool, or leave it out "
                             "of the dataset (default: %(default)s)")


def _abdomenct1k_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--masks", metavar="DIR", help="mask folder if it is not <input>/Mask")
    parser.add_argument("--unlabelled", choices=abdomenct1k.UNLABELLED_CHOICES, default="skip",
                        help="images without a mask: skip them (counted) or copy them to imagesTs "
                             "(default: %(default)s)")
    _holdout_fraction_option(parser, "labelled cases")


def _btcv_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--protocol", choices=btcv.PROTOCOLS, default="monai",
                        help="which published split --split paper writes (default: %(default)s)")


def _uc_layout_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--like", choices=tuple(uc_layout.LIKE),
                        help="take labels and channel name from this dataset")
    parser.add_argument("--labels", metavar="JSON", help='label names -> ids, e.g. \'{"background": 0, "liver": 1}\' '
                                                         "or a .json file")
    parser.add_argument("--channel-name", metavar="NAME",
                        help="channel name written to dataset.json: CT (CT normalisation), or e.g. T2/OCT (z-score)")


@dataclass(frozen=True)
class Converter:
    """A dataset's library module (DEFAULT_ID, DEFAULT_NAME, build_plan), its own options and their mapping to
    build_plan's keyword arguments."""

    module: ModuleType
    add_options: Callable[[argparse.ArgumentParser], None]
    keyword_arguments: Callable[[argparse.Namespace], dict[str, Any]]


DATASETS: dict[str, Converter] = {
    "flare2021": Converter(flare2021, _no_options, lambda args: {}),
    "oimhs": Converter(oimhs, _oimhs_options, lambda args: dict(
        spacing=tuple(args.spacing), label_scheme=args.label_scheme,
        max_unknown_colour_pixels=args.max_unknown_colour_pixels, patient_map=args.patient_map,
        holdout_fraction=args.holdout_fraction)),
    "feta2021": Converter(feta2021, _feta2021_options, lambda args: dict(sub011=args.sub011)),
    "abdomenct1k": Converter(abdomenct1k, _abdomenct1k_options, lambda args: dict(
        masks=args.masks, unlabelled=args.unlabelled, holdout_fraction=args.holdout_fraction)),
    "btcv": Converter(btcv, _btcv_options, lambda args: dict(protocol=args.protocol)),
    "uc-layout": Converter(uc_layout, _uc_layout_options, lambda args: dict(
        like=args.like, labels=args.labels, channel_name=args.channel_name)),
}


def _add_common_arguments(parser: argparse.ArgumentParser, module: ModuleType) -> None:
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
    for name, converter in DATASETS.items():
        doc = converter.module.__doc__ or ""
        sub = datasets.add_parser(name, help=doc.strip().splitlines()[0], description=doc,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
        _add_common_arguments(sub, converter.module)
        converter.add_options(sub)


def _print_summary(result: ConversionResult, plan: DatasetPlan) -> None:
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
    if args.processes < 1:
        raise UserError("-j/--processes must be at least 1")
    converter = DATASETS[args.dataset]
    plan = converter.module.build_plan(args.input, args.dataset_id, args.name, args.split,
                                       **converter.keyword_arguments(args))
    result = run_conversion(plan, processes=args.processes, overwrite=args.overwrite)
    _print_summary(result, plan)
    return 0
