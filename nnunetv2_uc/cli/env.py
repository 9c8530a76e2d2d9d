"""Print the shell line that lets the stock nnUNetv2_* commands find this plugin's trainers.

Usage: eval "$(nnunetv2_uc env)"   (or: eval "$(python -m nnunetv2_uc env)")

It prints `export nnUNet_extTrainer=...` with this package's shim directory appended to any existing value
(never dropping it; unchanged if the directory is already listed). nnU-Net then resolves
`-tr nnUNetTrainerUC`, `-tr nnUNetTrainerUXNet` and their variants in nnUNetv2_train and nnUNetv2_predict.
"""
from __future__ import annotations

import argparse
import os

from nnunetv2_uc.registration import ENV_VAR, export_line, shim_directory


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--print-dir", action="store_true",
                        help="print only the shim directory (for other shells or job scripts)")


def run(args: argparse.Namespace) -> int:
    print(shim_directory() if args.print_dir else export_line(os.environ.get(ENV_VAR)))
    return 0
