"""nnUNetv2_predict with several sliding-window tiles per network call (same flags, plus -patches_per_batch), and
with the network run by onnxruntime or OpenVINO (--backend, on the CPU by default the fastest one installed; -m takes
a folder written by `nnunetv2_uc export-onnx`) in fp32 or bf16 (--precision).

nnU-Net's predictor runs one tile at a time (times 8 with mirroring). Batching tiles keeps a GPU busier; the
result is nnU-Net's: the same tiles, Gaussian weights, mirroring and accumulation order. Trained models are found
exactly as nnUNetv2_predict finds them; this plugin's trainers resolve without `eval "$(nnunetv2_uc env)"`.

    nnunetv2_uc predict -i imagesTs -o pred -d 501 -c 3d_fullres -tr nnUNetTrainerUC -f 0 1 2 3 4 -patches_per_batch 4
    nnunetv2_uc predict -i imagesTs -o pred -m Dataset501_onnx --backend onnxruntime
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from nnunetv2_uc.errors import UserError
from nnunetv2_uc.inference import runtimes
from nnunetv2_uc.inference.onnx_export import cached_export, predict_from_export_folder
from nnunetv2_uc.inference.predict import find_model_folder, predict_from_model_folder
from nnunetv2_uc.registration import register_trainers, registry_name


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-i", required=True, help="input folder (files named CASE_0000.nii.gz etc., as for training)")
    parser.add_argument("-o", required=True, help="output folder (created if missing)")
    parser.add_argument("-d", default=None, help="dataset name or id (with -c; or -m)")
    parser.add_argument("-m", default=None, help="a folder written by nnunetv2_uc export-onnx, instead of "
                                                 "-d/-c/-tr/-p (run by onnxruntime or openvino)")
    parser.add_argument("--backend", default="auto", choices=("auto", *runtimes.BACKENDS),
                        help="what runs the network: torch, or onnxruntime / openvino on the CPU (with -d/-c/-tr/-p "
                             "the folds are exported and self-checked once into the export cache, "
                             "$NNUNETV2_UC_CACHE or ~/.cache/nnunetv2_uc; needs pip install \"nnunetv2-uc[onnx]\", "
                             "and [openvino] for openvino). auto (default): torch on cuda/mps; on the CPU the "
                             "fastest runtime installed (openvino, then onnxruntime except for UX-Net, as measured in "
                             "BENCHMARKS.md), else torch")
    parser.add_argument("--precision", default="fp32", choices=runtimes.PRECISIONS,
                        help="number format of the network on the CPU: fp32 (default; nnU-Net's results) or bf16 "
                             "(torch autocast / OpenVINO's bf16 hint, not onnxruntime; on a CPU with native bf16 "
                             "1.6-6.7x faster per tile than fp32, with the stock labels on >= 99.95%% of the voxels "
                             "of the trained models in BENCHMARKS.md)")
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


def _checked_precision(args: argparse.Namespace) -> str:
    if args.precision == "bf16":
        if args.m is None and args.backend in ("auto", "torch") and args.device != "cpu":
            raise UserError(f"--precision bf16 is for the CPU (-device cpu); on {args.device} nnU-Net's predictor "
                            f"already runs the network under autocast")
        if not runtimes.native_bf16():
            print("[nnunetv2_uc predict] warning: this CPU has no native bf16 (AVX512_BF16 / AMX); bf16 is emulated "
                  "and slower than fp32 here", file=sys.stderr, flush=True)
    return args.precision


def chosen_backend(args: argparse.Namespace) -> str:
    """--backend, with auto resolved (see its help)."""
    if args.backend != "auto":
        return args.backend
    if args.m is not None:
        backend = runtimes.fastest_installed_runtime(args.precision)
        if backend is None:
            raise UserError(f"-m needs a runtime: pip install \"nnunetv2-uc[openvino]\" (or [onnx]); none of "
                            f"{', '.join(runtimes.FASTEST_FIRST)} is installed")
        return backend
    if args.device != "cpu":
        return "torch"
    return runtimes.fastest_installed_runtime(args.precision, for_export=True, network=_network_name(args)) or "torch"


def _network_name(args: argparse.Namespace) -> str | None:
    """The registry's name of the trained model's network (from its plans.json), or None where that cannot be read
    or the registry does not list it: the prediction itself then says what is wrong with the model."""
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    try:
        plans = Path(find_model_folder(args.d, args.tr, args.p, args.c)) / "plans.json"
        configuration = PlansManager(json.loads(plans.read_text())).get_configuration(args.c)
        return registry_name(configuration.network_arch_class_name)
    except Exception:  # a missing dataset or folder, unreadable plans: auto must not fail where predict explains it
        return None


def _predict_with_runtime(args: argparse.Namespace, backend: str, folds: list[str], common: dict) -> bool:
    """Predict the trained model's cached export (exported first if needed) with ``backend``. False when
    --backend auto could not export it (the warning says why): the caller predicts with torch instead."""
    register_trainers()
    model_folder = find_model_folder(args.d, args.tr, args.p, args.c)
    try:
        export_folder = cached_export(model_folder, folds, args.chk)
    except Exception as error:  # the exporter's own errors too: auto must never fail where torch would work
        if args.backend != "auto":
            raise
        print(f"[nnunetv2_uc predict] warning: --backend auto could not export the model for {backend} ({error}); "
              f"predicting with torch", file=sys.stderr, flush=True)
        return False
    predict_from_export_folder(export_folder=str(export_folder), folds=folds, backend=backend, threads=args.threads,
                               **common)
    return True


def run(args: argparse.Namespace) -> int:
    common = dict(input_folder=args.i, output_folder=args.o, patches_per_batch=args.patches_per_batch,
                  step_size=args.step_size, mirroring=not args.disable_tta, save_probabilities=args.save_probabilities,
                  overwrite=not args.continue_prediction, preprocessing_processes=args.npp,
                  export_processes=args.nps, previous_stage_predictions=args.prev_stage_predictions,
                  verbose=args.verbose, progress_bar=not args.disable_progress_bar,
                  precision=_checked_precision(args))
    backend = chosen_backend(args)
    if args.m is not None:
        if args.d is not None or args.c is not None:
            raise UserError("-m replaces -d/-c/-tr/-p: give one or the other")
        if backend == "torch":
            raise UserError("-m takes a folder written by nnunetv2_uc export-onnx: use --backend onnxruntime or "
                            "openvino (or auto); for a trained model use -d/-c/-tr/-p")
        predict_from_export_folder(export_folder=args.m, folds=args.f, backend=backend, threads=args.threads,
                                   **common)
        return 0
    if args.d is None or args.c is None:
        raise UserError("give -d and -c (with -tr/-p) for a trained model, or -m for an export-onnx folder")
    folds = args.f or ["0", "1", "2", "3", "4"]
    if backend != "torch" and _predict_with_runtime(args, backend, folds, common):
        return 0
    predict_from_model_folder(dataset=args.d, configuration=args.c, trainer=args.tr, plans=args.p, folds=folds,
                              checkpoint=args.chk, device=args.device, on_device=not args.not_on_device, **common)
    return 0
