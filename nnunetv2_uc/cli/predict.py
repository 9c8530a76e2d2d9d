"""nnUNetv2_predict with several sliding-window tiles per network call (same flags, plus -patches_per_batch), and
with the network run by onnxruntime or OpenVINO (--backend; -m takes a folder written by `nnunetv2_uc export-onnx`).

nnU-Net's predictor runs one tile at a time (times 8 with mirroring). Batching tiles keeps a GPU busier; the
result is nnU-Net's: the same tiles, Gaussian weights, mirroring and accumulation order. Trained models are found
exactly as nnUNetv2_predict finds them; this plugin's trainers resolve without `eval "$(nnunetv2_uc env)"`.

    nnunetv2_uc predict -i imagesTs -o pred -d 501 -c 3d_fullres -tr nnUNetTrainerUC -f 0 1 2 3 4 -patches_per_batch 4
    nnunetv2_uc predict -i imagesTs -o pred -m Dataset501_onnx --backend onnxruntime
"""
from __future__ import annotations

import argparse

from nnunetv2_uc.deploy.runtimes import BACKENDS
from nnunetv2_uc.errors import UserError
from nnunetv2_uc.inference.predict import predict_from_model_folder


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-i", required=True, help="input folder (files named CASE_0000.nii.gz etc., as for training)")
    parser.add_argument("-o", required=True, help="output folder (created if missing)")
    parser.add_argument("-d", default=None, help="dataset name or id (with -c; or -m)")
    parser.add_argument("-m", default=None, help="a folder written by nnunetv2_uc export-onnx, instead of "
                                                 "-d/-c/-tr/-p (with --backend onnxruntime or openvino)")
    parser.add_argument("--backend", default="torch", choices=BACKENDS,
                        help="what runs the network: torch (default), or onnxruntime / openvino on the CPU (with "
                             "-d/-c/-tr/-p the folds are exported and self-checked into a temporary folder first; "
                             "needs pip install \"nnunetv2-uc[onnx]\", and [openvino] for openvino)")
    parser.add_argument("--threads", type=int, default=None, help="onnxruntime/openvino threads (default: theirs)")
    parser.add_argument("-p", default="nnUNetPlans", help="plans identifier (default nnUNetPlans)")
    parser.add_argument("-tr", default="nnUNetTrainer", help="trainer class used for training (default nnUNetTrainer)")
    parser.add_argument("-c", default=None, help="configuration, e.g. 3d_fullres (with -d)")
    parser.add_argument("-f", nargs="+", default=None, help="folds (default 0 1 2 3 4; with -m: every exported fold)")
    parser.add_argument("-step_size", type=float, default=0.5, help="sliding-window step, fraction of the patch (0.5)")
    parser.add_argument("-patches_per_batch", type=int, default=None,
                        help="tiles per network call (default: 4 on cuda, halved automatically on out-of-memory; "
                             "1 on cpu, where batching gained at most ~10%% in BENCHMARKS.md)")
    parser.add_argument("--disable_tta", action="store_true", help="no mirroring test-time augmentation")
    parser.add_argument("--verbose", action="store_true")
    parser.add_argument("--save_probabilities", action="store_true", help="also write .npz probabilities (ensembling)")
    parser.add_argument("--continue_prediction", action="store_true", help="skip cases whose output exists")
    parser.add_argument("-chk", default="checkpoint_final.pth", help="checkpoint name (default checkpoint_final.pth)")
    parser.add_argument("-npp", type=int, default=3, help="preprocessing processes (default 3)")
    parser.add_argument("-nps", type=int, default=3, help="segmentation export processes (default 3)")
    parser.add_argument("-prev_stage_predictions", default=None, help="previous stage's predictions (cascade)")
    parser.add_argument("-device", default="cuda", choices=("cuda", "cpu", "mps"),
                        help="default cuda (--backend torch; onnxruntime and openvino run on the CPU)")
    parser.add_argument("--disable_progress_bar", action="store_true")
    parser.add_argument("--not_on_device", action="store_true", help="accumulate results in CPU memory")


def run(args: argparse.Namespace) -> int:
    common = dict(input_folder=args.i, output_folder=args.o, patches_per_batch=args.patches_per_batch,
                  step_size=args.step_size, mirroring=not args.disable_tta, save_probabilities=args.save_probabilities,
                  overwrite=not args.continue_prediction, preprocessing_processes=args.npp,
                  export_processes=args.nps, previous_stage_predictions=args.prev_stage_predictions,
                  verbose=args.verbose, progress_bar=not args.disable_progress_bar)
    if args.m is not None:
        if args.d is not None or args.c is not None:
            raise UserError("-m replaces -d/-c/-tr/-p: give one or the other")
        if args.backend == "torch":
            raise UserError("-m takes a folder written by nnunetv2_uc export-onnx: add --backend onnxruntime (or "
                            "openvino); for a trained model use -d/-c/-tr/-p")
        from nnunetv2_uc.deploy.predict import predict_from_export_folder

        predict_from_export_folder(export_folder=args.m, folds=args.f, backend=args.backend, threads=args.threads,
                                   **common)
        return 0
    if args.d is None or args.c is None:
        raise UserError("give -d and -c (with -tr/-p) for a trained model, or -m for an export-onnx folder")
    folds = args.f or ["0", "1", "2", "3", "4"]
    if args.backend != "torch":
        from nnunetv2_uc.deploy.predict import predict_trained_model_with_runtime
        from nnunetv2_uc.inference.predict import find_model_folder
        from nnunetv2_uc.registration import register_trainers

        register_trainers()
        predict_trained_model_with_runtime(model_folder=find_model_folder(args.d, args.tr, args.p, args.c),
                                           folds=folds, checkpoint=args.chk, backend=args.backend,
                                           threads=args.threads, **common)
        return 0
    predict_from_model_folder(dataset=args.d, configuration=args.c, trainer=args.tr, plans=args.p, folds=folds,
                              checkpoint=args.chk, device=args.device, on_device=not args.not_on_device, **common)
    return 0
