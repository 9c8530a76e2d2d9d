"""nnUNetv2_predict with several sliding-window tiles per network call (same flags, plus -patches_per_batch).

nnU-Net's predictor runs one tile at a time (times 8 with mirroring). Batching tiles keeps a GPU busier; the
result is nnU-Net's: the same tiles, Gaussian weights, mirroring and accumulation order (each sample of a
batch is normalised on its own, so batching does not change a tile's logits beyond float rounding).
Trained models are found exactly as nnUNetv2_predict finds them; this plugin's trainers resolve without
`eval "$(nnunetv2_uc env)"`.

    nnunetv2_uc predict -i imagesTs -o pred -d 501 -c 3d_fullres -tr nnUNetTrainerUC -f 0 1 2 3 4 -patches_per_batch 4
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Sequence

DEFAULT_PATCHES_PER_BATCH = {"cuda": 4, "cpu": 1, "mps": 1}


def batched_predictor_class():
    """The predictor class (built lazily: importing nnU-Net is slow and the CLI imports this module early)."""
    import torch
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunetv2.inference.sliding_window_prediction import compute_gaussian
    from nnunetv2.utilities.helpers import empty_cache
    from tqdm import tqdm

    class BatchedSlidingWindowPredictor(nnUNetPredictor):
        """``nnUNetPredictor`` whose sliding window feeds ``patches_per_batch`` tiles to each network call.

        Everything else (tiling, Gaussian, mirroring, fp16 accumulation, the on-device / CPU fallback) is
        nnU-Net's; with ``patches_per_batch=1`` it computes exactly what nnU-Net computes. When a batch runs out
        of GPU memory, the batch is halved and the same tiles are tried again.
        """

        def __init__(self, *args, patches_per_batch: int = 4, **kwargs) -> None:
            if patches_per_batch < 1:
                raise ValueError(f"patches_per_batch must be >= 1, got {patches_per_batch}")
            super().__init__(*args, **kwargs)
            self.patches_per_batch = patches_per_batch

        @torch.inference_mode()
        def _internal_predict_sliding_window_return_logits(self, data: torch.Tensor, slicers,
                                                           do_on_device: bool = True) -> torch.Tensor:
            results_device = self.device if do_on_device else torch.device("cpu")
            data = data.to(results_device)
            logits = torch.zeros((self.label_manager.num_segmentation_heads, *data.shape[1:]), dtype=torch.half,
                                 device=results_device)
            weights = torch.zeros(data.shape[1:], dtype=torch.half, device=results_device)
            gaussian = (compute_gaussian(tuple(self.configuration_manager.patch_size), sigma_scale=1. / 8,
                                         value_scaling_factor=10, device=results_device)
                        if self.use_gaussian else 1)
            slicers = list(slicers)
            done = 0
            with tqdm(total=len(slicers), disable=not self.allow_tqdm) as progress:
                while done < len(slicers):
                    group = slicers[done:done + self.patches_per_batch]
                    try:
                        tiles = torch.stack([data[sl] for sl in group]).to(self.device)
                        predictions = self._internal_maybe_mirror_and_predict(tiles).to(results_device)
                    except torch.cuda.OutOfMemoryError:  # torch >= 1.13; torch.OutOfMemoryError is 2.5+
                        if self.patches_per_batch == 1:
                            raise
                        tiles = None  # drop the failed batch before freeing the cache
                        self._fewer_patches_per_batch()
                        continue
                    for sl, prediction in zip(group, predictions):
                        logits[sl] += prediction * gaussian if self.use_gaussian else prediction
                        weights[sl[1:]] += gaussian
                    done += len(group)
                    progress.update(len(group))
            torch.div(logits, weights, out=logits)
            if torch.isinf(logits).any():
                raise RuntimeError("inf in the accumulated fp16 logits (as nnUNetv2_predict would hit: the network's "
                                   "logits overflow fp16 after Gaussian weighting)")
            return logits

        def _fewer_patches_per_batch(self) -> None:
            empty_cache(self.device)
            self.patches_per_batch = max(1, self.patches_per_batch // 2)
            print(f"[nnunetv2_uc predict] out of GPU memory; continuing with {self.patches_per_batch} tile(s) per "
                  f"network call", file=sys.stderr, flush=True)

    return BatchedSlidingWindowPredictor


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


def parse_folds(folds: Sequence[str]) -> list:
    return [f if f == "all" else int(f) for f in folds]


def run(args: argparse.Namespace) -> int:
    from nnunetv2_uc.registration import ENV_VAR, ext_trainer_value

    os.environ[ENV_VAR] = ext_trainer_value(os.environ.get(ENV_VAR))
    import torch
    from nnunetv2.utilities.file_path_utilities import get_output_folder

    patches = args.patches_per_batch or DEFAULT_PATCHES_PER_BATCH[args.device]
    if patches < 1:
        print(f"error: -patches_per_batch must be >= 1, got {patches}", file=sys.stderr)
        return 2
    if args.device == "cuda" and not torch.cuda.is_available():
        print("error: -device cuda but no CUDA device is visible; use -device cpu", file=sys.stderr)
        return 2
    model_folder = get_output_folder(args.d, args.tr, args.p, args.c)
    if not os.path.isdir(model_folder):
        print(f"error: no trained model at {model_folder}: check -d/-tr/-p/-c and nnUNet_results", file=sys.stderr)
        return 2
    if args.device == "cpu":
        torch.set_num_threads(os.cpu_count() or 1)
    os.makedirs(args.o, exist_ok=True)
    predictor = batched_predictor_class()(
        tile_step_size=args.step_size, use_gaussian=True, use_mirroring=not args.disable_tta,
        perform_everything_on_device=args.device == "cuda" and not args.not_on_device,
        device=torch.device(args.device), verbose=args.verbose, allow_tqdm=not args.disable_progress_bar,
        patches_per_batch=patches,
    )
    predictor.initialize_from_trained_model_folder(model_folder, parse_folds(args.f), checkpoint_name=args.chk)
    print(f"[nnunetv2_uc predict] {model_folder}: folds {args.f}, {patches} tile(s) per network call, "
          f"mirroring {'off' if args.disable_tta else 'on'}", file=sys.stderr, flush=True)
    predictor.predict_from_files(args.i, args.o, save_probabilities=args.save_probabilities,
                                 overwrite=not args.continue_prediction, num_processes_preprocessing=args.npp,
                                 num_processes_segmentation_export=args.nps,
                                 folder_with_segs_from_prev_stage=args.prev_stage_predictions)
    return 0
