"""Export a trained model to ONNX, one self-checked file per fold, for `nnunetv2_uc predict --backend onnxruntime`
or any ONNX runtime.

Each fold_F.onnx takes a batch of sliding-window tiles (B, C, *patch_size) (B dynamic) and returns the logits of
the full-resolution head; plans.json, dataset.json and export_manifest.json (network class, folds, patch size,
opset, versions, SHA-256 of checkpoints and ONNX files, the self-check's tolerance and measured deviation) sit next
to them. Each file is compared with the PyTorch network on seeded random tiles (onnxruntime); beyond --tolerance
of the logit range the export is refused and nothing is written.

    nnunetv2_uc export-onnx -d 501 -c 3d_fullres -tr nnUNetTrainerUC -f 0 1 2 3 4 -o Dataset501_onnx
    nnunetv2_uc export-onnx -m $nnUNet_results/Dataset501_FLARE2021/nnUNetTrainerUC__nnUNetPlans__3d_fullres -f 0 -o onnx0
"""
from __future__ import annotations

import argparse

from nnunetv2_uc.errors import UserError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-d", default=None, help="dataset name or id (with -c, -tr, -p; or -m)")
    parser.add_argument("-c", default=None, help="configuration, e.g. 3d_fullres")
    parser.add_argument("-tr", default="nnUNetTrainer", help="trainer class used for training (default nnUNetTrainer)")
    parser.add_argument("-p", default="nnUNetPlans", help="plans identifier (default nnUNetPlans)")
    parser.add_argument("-m", default=None, help="the trained model folder (TRAINER__PLANS__CONFIGURATION), "
                                                 "instead of -d/-c/-tr/-p")
    parser.add_argument("-f", nargs="+", default=["0", "1", "2", "3", "4"], help="folds (default 0 1 2 3 4)")
    parser.add_argument("-chk", default="checkpoint_final.pth", help="checkpoint name (default checkpoint_final.pth)")
    parser.add_argument("-o", required=True, help="output folder (must not exist, unless --overwrite)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    parser.add_argument("--tolerance", type=float, default=None,
                        help="refuse when max |onnx - torch| exceeds this fraction of the torch logits' range "
                             "(default 1e-4)")
    parser.add_argument("--opset", type=int, default=None, help="ONNX opset (default 18)")


def run(args: argparse.Namespace) -> int:
    from nnunetv2_uc.inference.onnx_export import DEFAULT_TOLERANCE, OPSET, export_model
    from nnunetv2_uc.inference.predict import find_model_folder

    if args.m is not None and args.d is not None:
        raise UserError("-m replaces -d/-c/-tr/-p: give one or the other")
    if args.m is None and (args.d is None or args.c is None):
        raise UserError("give -d and -c (with -tr/-p) or -m MODEL_FOLDER")
    model_folder = args.m if args.m is not None else find_model_folder(args.d, args.tr, args.p, args.c)
    export_model(model_folder=model_folder, output_folder=args.o, folds=args.f, checkpoint=args.chk,
                 tolerance=DEFAULT_TOLERANCE if args.tolerance is None else args.tolerance,
                 overwrite=args.overwrite, opset=OPSET if args.opset is None else args.opset)
    return 0
