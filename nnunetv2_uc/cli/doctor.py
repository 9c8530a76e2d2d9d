"""Check this installation for nnU-Net training and prediction with this plugin: one line per check.

Python; torch and torchvision importing together; nnunetv2 and the other dependencies within the supported
ranges; nnUNet_raw / nnUNet_preprocessed / nnUNet_results; nnUNet_extTrainer; nnU-Net's -tr lookup; the GPU,
the NVIDIA driver against the CUDA torch was built for, cuDNN, bf16; whether torch.compile can build its
kernels; free disk in nnUNet_preprocessed. With -m, also a trained model folder: its trainer class resolves,
the network rebuilds from its plans and every fold_*/checkpoint_*.pth loads.

Exit code 0 when nothing blocks (warnings and skipped checks allowed), 1 when a check failed.

    nnunetv2_uc doctor
    nnunetv2_uc doctor -m $nnUNet_results/Dataset501_FLARE2021/nnUNetTrainerUC__nnUNetPlans__3d_fullres --json
"""
from __future__ import annotations

import argparse
import os

from nnunetv2_uc.doctor import blocking, format_report, report_json, run_checks
from nnunetv2_uc.errors import UserError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-m", dest="model_folder", metavar="MODEL_FOLDER",
                        help="also check a trained model folder, e.g. "
                             "$nnUNet_results/DatasetXXX_Name/nnUNetTrainerUC__nnUNetPlans__3d_fullres")
    parser.add_argument("--json", action="store_true", help="print the checks as JSON instead of lines")


def run(args: argparse.Namespace) -> int:
    if args.model_folder is not None and not os.path.isdir(args.model_folder):
        raise UserError(f"-m {args.model_folder}: no such folder; give a trained model folder such as "
                        "$nnUNet_results/DatasetXXX_Name/nnUNetTrainerUC__nnUNetPlans__3d_fullres")
    checks = run_checks(model_folder=args.model_folder)
    print(report_json(checks) if args.json else format_report(checks))
    return 1 if blocking(checks) else 0
