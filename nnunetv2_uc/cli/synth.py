"""Write a small synthetic abdominal-CT dataset (4 organs, HU, anisotropic) in nnU-Net raw format.

    nnunetv2_uc synth --dataset-id 990 --cases 24 --test-cases 6 --seed 0

Exit codes: 0 success, 2 bad input (also: the id is used by another dataset name), 3 the dataset exists (pass
--overwrite).
"""
from __future__ import annotations

import argparse
import os

from nnunetv2_uc.errors import UserError
from nnunetv2_uc.demo.synth import DEFAULT_NAME, generate_dataset


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset-id", type=int, required=True, help="nnU-Net dataset ID (1-999)")
    parser.add_argument("--cases", type=int, default=24, help="training cases in imagesTr/labelsTr (default 24)")
    parser.add_argument("--test-cases", type=int, default=6,
                        help="held-out cases in imagesTs/labelsTs (default 6)")
    parser.add_argument("--seed", type=int, default=0, help="random seed; same seed, same data (default 0)")
    parser.add_argument("--name", default=DEFAULT_NAME, help=f"dataset name (default {DEFAULT_NAME})")
    parser.add_argument("--raw-dir", default=None,
                        help="nnU-Net raw folder to write into (default: $nnUNet_raw)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing DatasetNNN_Name folder")


def run(args: argparse.Namespace) -> int:
    raw = args.raw_dir or os.environ.get("nnUNet_raw")
    if not raw:
        raise UserError("no output folder; set nnUNet_raw (e.g. `export nnUNet_raw=$PWD/nnUNet_raw`) or pass "
                        "--raw-dir")
    path = generate_dataset(raw, args.dataset_id, n_cases=args.cases, n_test=args.test_cases, seed=args.seed,
                            name=args.name, overwrite=args.overwrite,
                            preprocessed_root=os.environ.get("nnUNet_preprocessed") or None)
    print(f"synth: wrote {args.cases} training + {args.test_cases} test cases to {path}")
    return 0
