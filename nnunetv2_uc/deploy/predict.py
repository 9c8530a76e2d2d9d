"""`nnunetv2_uc predict --backend onnxruntime|openvino`: nnU-Net's prediction with the network run by another runtime.

From an export-onnx folder (``-m``), or from a trained model (-d/-c/-tr/-p): that is exported (and self-checked)
once into the export cache (``$NNUNETV2_UC_CACHE``, default ``~/.cache/nnunetv2_uc``, a folder per checkpoint,
plans, dataset.json and exporter version) and predicted from there. The runtimes run on the CPU.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Sequence

import torch

from nnunetv2_uc import __version__
from nnunetv2_uc.deploy.export import DEFAULT_TOLERANCE, FORMAT_VERSION, OPSET, export_model, sha256
from nnunetv2_uc.deploy.exported import load_exported_model, predictor_for_export
from nnunetv2_uc.errors import UserError


def predict_from_export_folder(input_folder: str, output_folder: str, export_folder: str,
                               folds: Sequence[str | int] | None = None, backend: str = "onnxruntime",
                               patches_per_batch: int | None = None, step_size: float = 0.5, mirroring: bool = True,
                               save_probabilities: bool = False, overwrite: bool = True,
                               preprocessing_processes: int = 3, export_processes: int = 3,
                               previous_stage_predictions: str | None = None, verbose: bool = False,
                               progress_bar: bool = True, threads: int | None = None,
                               precision: str = "fp32") -> None:
    """What nnUNetv2_predict does, with the folds of ``export_folder`` run by ``backend``. The folder is checked
    (checksums, folds, tile shape) and the sessions created before anything is written to ``output_folder``."""
    patches = patches_per_batch or 1
    if patches < 1:
        raise UserError(f"-patches_per_batch must be >= 1, got {patches}")
    model = load_exported_model(export_folder, folds)
    predictor = predictor_for_export(model, backend, step_size, mirroring, patches, verbose, progress_bar, threads,
                                     precision)
    print(f"[nnunetv2_uc predict] {export_folder}: {backend} {precision}, folds {list(model.files)}, {patches} "
          f"tile(s) per call, mirroring {'on' if mirroring else 'off'}", file=sys.stderr, flush=True)
    os.makedirs(output_folder, exist_ok=True)
    predictor.predict_from_files(input_folder, output_folder, save_probabilities=save_probabilities,
                                 overwrite=overwrite, num_processes_preprocessing=preprocessing_processes,
                                 num_processes_segmentation_export=export_processes,
                                 folder_with_segs_from_prev_stage=previous_stage_predictions)


CACHE_ENV = "NNUNETV2_UC_CACHE"


def export_cache_root() -> Path:
    """Where exports of trained models are kept between runs: $NNUNETV2_UC_CACHE, else $XDG_CACHE_HOME/nnunetv2_uc
    (~/.cache/nnunetv2_uc)."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "nnunetv2_uc"


def export_cache_key(model_folder: Path, folds: Sequence[str | int], checkpoint: str, tolerance: float) -> str:
    """A name that changes with anything the export depends on: each fold's checkpoint, plans.json, dataset.json,
    the tolerance and the exporter (this package, torch, the ONNX opset, the folder format)."""
    facts = {"checkpoints": {str(f): sha256(model_folder / f"fold_{f}" / checkpoint) for f in folds},
             "plans.json": sha256(model_folder / "plans.json"), "dataset.json": sha256(model_folder / "dataset.json"),
             "tolerance": tolerance, "exporter": [__version__, torch.__version__, OPSET, FORMAT_VERSION]}
    return hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()[:24]


def cached_export(model_folder: str | os.PathLike, folds: Sequence[str | int],
                  checkpoint: str = "checkpoint_final.pth", tolerance: float = DEFAULT_TOLERANCE) -> Path:
    """The export-onnx folder of ``folds`` of the trained model in ``model_folder``, from the export cache; exported
    (and self-checked) into it the first time, and again when the cached folder fails its checks."""
    model_folder = Path(model_folder)
    missing = [f for f in folds if not (model_folder / f"fold_{f}" / checkpoint).is_file()]
    if missing:
        raise UserError(f"{model_folder} has no {checkpoint} for fold(s) {', '.join(map(str, missing))}: train "
                        f"them, or choose other folds with -f / another checkpoint with -chk")
    key = export_cache_key(model_folder, folds, checkpoint, tolerance)
    folder = export_cache_root() / "onnx" / f"{model_folder.name}-{key}"
    try:
        load_exported_model(folder, folds)
    except UserError:  # not exported yet, or a damaged copy: export (again)
        print(f"[nnunetv2_uc predict] exporting folds {list(folds)} to the cache ({folder}); later runs reuse it",
              file=sys.stderr, flush=True)
        export_model(model_folder, folder, folds, checkpoint, tolerance, overwrite=True)
    else:
        print(f"[nnunetv2_uc predict] using the export in {folder}", file=sys.stderr, flush=True)
    return folder
