"""nnUNetv2_predict with several sliding-window tiles per network call (same flags, plus -patches_per_batch).

nnU-Net's predictor runs one tile at a time (times 8 with mirroring). Batching tiles keeps a GPU busier; the
result is nnU-Net's: the same tiles, Gaussian weights, mirroring and accumulation order. Trained models are found
exactly as nnUNetv2_predict finds them; this plugin's trainers resolve without `eval "$(nnunetv2_uc env)"`.

    nnunetv2_uc predict -i imagesTs -o pred -d 501 -c 3d_fullres -tr nnUNetTrainerUC -f 0 1 2 3 4 -patches_per_batch 4
"""
from __future__ import annotations

import argparse

from nnunetv2_uc.predict import predict_from_model_folder


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-i", required=True, help="input folder (files named CASE_0000.nii.gz etc., as for training)")
    parser.add_argument("-o", required=True, help="output folder (created if missing)")
    parser.add_argument("-d", required=True, help="dataset name or id")
    parser.add_argument("-p", default="nnUNetPlans", help="plans identifier (default nnUNetPlans)")
    parser.add_argument("-tr", default="nnUNetTrainer", help="trainer class used for training (default nnUNetTrainer)")
    parser.add_argument("-c", required=True, help="configuration, e.g. 3d_fullres")
    parser.add_argument("-f", nargs="+", default=["0", "1", "2", "3", "4"], help="folds (default 0 1 2 3 4)")
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
    parser.add_argument("-device", default="cuda", choices=("cuda", "cpu", "mps"), help="default cuda")
    parser.add_argument("--disable_progress_bar", action="store_true")
    parser.add_argument("--not_on_device", action="store_true", help="accumulate results in CPU memory")


def run(args: argparse.Namespace) -> int:
    predict_from_model_folder(
        input_folder=args.i, output_folder=args.o, dataset=args.d, configuration=args.c, trainer=args.tr,
        plans=args.p, folds=args.f, checkpoint=args.chk, device=args.device, patches_per_batch=args.patches_per_batch,
        step_size=args.step_size, mirroring=not args.disable_tta, save_probabilities=args.save_probabilities,
        overwrite=not args.continue_prediction, preprocessing_processes=args.npp, export_processes=args.nps,
        previous_stage_predictions=args.prev_stage_predictions, on_device=not args.not_on_device,
        verbose=args.verbose, progress_bar=not args.disable_progress_bar)
    return 0
