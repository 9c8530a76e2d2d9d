"""nnUNetv2_predict with several sliding-window tiles per network call (same flags, plus -patches_per_batch).

nnU-Net's predictor runs one tile at a time (times 8 with mirroring). Batching tiles keeps a GPU busier; the
result is nnU-Net's: the same tiles, Gaussian weights, mirroring and accumulation order (each sample of a
batch is normalised on its own, so batching does not change a tile's logits beyond float rounding).
Trained models are found exactly as nnUNetv2_predict finds them; this plugin's trainers resolve without
`eval "$(nnunetv2_uc env)"`.

    nnunetv2_uc predict -i imagesTs -o pred -d 501 -c 3d_fullres -tr nnUNetTrainerUC -f 0 1 2 3 4 -patches_per_batch 4
"""
from __future__ import annotations

import os
import sys
from typing import Sequence

import torch
from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
from nnunetv2.inference.sliding_window_prediction import compute_gaussian
from nnunetv2.utilities.file_path_utilities import get_output_folder
from nnunetv2.utilities.helpers import empty_cache
from tqdm import tqdm

from nnunetv2_uc.errors import UserError
from nnunetv2_uc.registration import explain_load_failure, load_record, register_trainers, version_note

DEFAULT_PATCHES_PER_BATCH = {"cuda": 4, "cpu": 1, "mps": 1}
#: torch.OutOfMemoryError exists from torch 2.5; torch.cuda.OutOfMemoryError (the same class there) since 1.13
OUT_OF_MEMORY = torch.cuda.OutOfMemoryError


class BatchedSlidingWindowPredictor(nnUNetPredictor):
    """``nnUNetPredictor`` whose sliding window feeds ``patches_per_batch`` tiles to each network call.

    Everything else (tiling, Gaussian, mirroring, fp16 accumulation, the on-device / CPU fallback) is
    nnU-Net's; with ``patches_per_batch=1`` it computes exactly what nnU-Net computes. When a batch runs out
    of GPU memory, the batch is halved and the same tiles are tried again. ``cpu_precision="bf16"`` runs the network
    under bf16 autocast on the CPU (each call's logits back in fp32 before mirrored calls are summed).
    """

    def __init__(self, *args, patches_per_batch: int = 4, cpu_precision: str = "fp32", **kwargs) -> None:
        if patches_per_batch < 1:
            raise ValueError(f"patches_per_batch must be >= 1, got {patches_per_batch}")
        if cpu_precision not in ("fp32", "bf16"):
            raise ValueError(f"cpu_precision must be fp32 or bf16, got {cpu_precision}")
        super().__init__(*args, **kwargs)
        self.patches_per_batch = patches_per_batch
        self.cpu_precision = cpu_precision

    def _internal_maybe_mirror_and_predict(self, x: torch.Tensor) -> torch.Tensor:
        if self.cpu_precision == "fp32" or self.device.type != "cpu":
            return super()._internal_maybe_mirror_and_predict(x)
        network = self.network
        self.network = lambda tiles: bf16_autocast_call(network, tiles)
        try:
            return super()._internal_maybe_mirror_and_predict(x)
        finally:
            self.network = network

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
                except OUT_OF_MEMORY:
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


def bf16_autocast_call(network, tiles: torch.Tensor) -> torch.Tensor:
    """``network(tiles)`` under bf16 autocast on the CPU, the logits returned in fp32."""
    with torch.autocast("cpu", dtype=torch.bfloat16):
        return network(tiles).float()


def predict_from_model_folder(input_folder: str, output_folder: str, dataset: str, configuration: str,
                              trainer: str = "nnUNetTrainer", plans: str = "nnUNetPlans",
                              folds: Sequence[str | int] = (0, 1, 2, 3, 4), checkpoint: str = "checkpoint_final.pth",
                              device: str = "cuda", patches_per_batch: int | None = None, step_size: float = 0.5,
                              mirroring: bool = True, save_probabilities: bool = False, overwrite: bool = True,
                              preprocessing_processes: int = 3, export_processes: int = 3,
                              previous_stage_predictions: str | None = None, on_device: bool = True,
                              verbose: bool = False, progress_bar: bool = True, precision: str = "fp32") -> None:
    """What nnUNetv2_predict does for the model nnU-Net finds for (dataset, trainer, plans, configuration), with
    ``patches_per_batch`` tiles per network call (default 4 on CUDA, 1 elsewhere) and on the CPU the network in
    ``precision`` (fp32 or bf16). This plugin's trainers resolve without ``nnunetv2_uc env``."""
    register_trainers()
    patches = patches_per_batch or DEFAULT_PATCHES_PER_BATCH[device]
    if patches < 1:
        raise UserError(f"-patches_per_batch must be >= 1, got {patches}")
    if device == "cuda" and not torch.cuda.is_available():
        raise UserError("-device cuda but no CUDA device is visible; use -device cpu")
    model_folder = find_model_folder(dataset, trainer, plans, configuration)
    if device == "cpu":
        torch.set_num_threads(os.cpu_count() or 1)
    os.makedirs(output_folder, exist_ok=True)
    predictor = BatchedSlidingWindowPredictor(
        tile_step_size=step_size, use_gaussian=True, use_mirroring=mirroring,
        perform_everything_on_device=device == "cuda" and on_device, device=torch.device(device), verbose=verbose,
        allow_tqdm=progress_bar, patches_per_batch=patches, cpu_precision=precision,
    )
    load_trained_model(predictor, model_folder, folds, checkpoint, trainer, configuration)
    print(f"[nnunetv2_uc predict] {model_folder}: folds {list(folds)}, {patches} tile(s) per network call, "
          f"{precision if device == 'cpu' else 'nnU-Net autocast'}, "
          f"mirroring {'on' if mirroring else 'off'}", file=sys.stderr, flush=True)
    predictor.predict_from_files(input_folder, output_folder, save_probabilities=save_probabilities,
                                 overwrite=overwrite, num_processes_preprocessing=preprocessing_processes,
                                 num_processes_segmentation_export=export_processes,
                                 folder_with_segs_from_prev_stage=previous_stage_predictions)


def find_model_folder(dataset: str, trainer: str, plans: str, configuration: str) -> str:
    """The results folder nnU-Net uses for these -d/-tr/-p/-c flags; a UserError if there is none."""
    model_folder = get_output_folder(dataset, trainer, plans, configuration)
    if not os.path.isdir(model_folder):
        raise UserError(f"no trained model at {model_folder}: check -d/-tr/-p/-c and nnUNet_results")
    return model_folder


def load_trained_model(predictor: nnUNetPredictor, model_folder: str, folds: Sequence[str | int], checkpoint: str,
                       trainer: str, configuration: str, command: str = "predict") -> None:
    """``predictor.initialize_from_trained_model_folder`` with this plugin's trainers registered, a missing trainer
    or network class explained (UserError with the install command) and a warning when another version trained it."""
    register_trainers()
    try:
        predictor.initialize_from_trained_model_folder(model_folder, parse_folds(folds), checkpoint_name=checkpoint)
    except Exception as error:
        explanation = explain_load_failure(model_folder, trainer, configuration, error)
        if explanation is None:
            raise
        raise UserError(explanation) from error
    if note := version_note(load_record(model_folder)):
        print(f"[nnunetv2_uc {command}] warning: {note}", file=sys.stderr, flush=True)


def parse_folds(folds: Sequence[str | int]) -> list:
    return [f if f == "all" else int(f) for f in folds]
