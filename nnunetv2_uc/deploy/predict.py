"""`nnunetv2_uc predict --backend onnxruntime|openvino`: nnU-Net's prediction with the network run by another runtime.

From an export-onnx folder (``-m``), or from a trained model (-d/-c/-tr/-p), which is exported (and self-checked)
into a temporary folder first. The runtimes run on the CPU.
"""
from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path
from typing import Sequence

from nnunetv2_uc.deploy.export import DEFAULT_TOLERANCE, export_model
from nnunetv2_uc.deploy.exported import load_exported_model, predictor_for_export
from nnunetv2_uc.errors import UserError


def predict_from_export_folder(input_folder: str, output_folder: str, export_folder: str,
                               folds: Sequence[str | int] | None = None, backend: str = "onnxruntime",
                               patches_per_batch: int | None = None, step_size: float = 0.5, mirroring: bool = True,
                               save_probabilities: bool = False, overwrite: bool = True,
                               preprocessing_processes: int = 3, export_processes: int = 3,
                               previous_stage_predictions: str | None = None, verbose: bool = False,
                               progress_bar: bool = True, threads: int | None = None) -> None:
    """What nnUNetv2_predict does, with the folds of ``export_folder`` run by ``backend``. The folder is checked
    (checksums, folds, tile shape) and the sessions created before anything is written to ``output_folder``."""
    patches = patches_per_batch or 1
    if patches < 1:
        raise UserError(f"-patches_per_batch must be >= 1, got {patches}")
    model = load_exported_model(export_folder, folds)
    predictor = predictor_for_export(model, backend, step_size, mirroring, patches, verbose, progress_bar, threads)
    print(f"[nnunetv2_uc predict] {export_folder}: {backend}, folds {list(model.files)}, {patches} tile(s) per "
          f"call, mirroring {'on' if mirroring else 'off'}", file=sys.stderr, flush=True)
    os.makedirs(output_folder, exist_ok=True)
    predictor.predict_from_files(input_folder, output_folder, save_probabilities=save_probabilities,
                                 overwrite=overwrite, num_processes_preprocessing=preprocessing_processes,
                                 num_processes_segmentation_export=export_processes,
                                 folder_with_segs_from_prev_stage=previous_stage_predictions)


def predict_trained_model_with_runtime(input_folder: str, output_folder: str, model_folder: str,
                                       folds: Sequence[str | int], checkpoint: str = "checkpoint_final.pth",
                                       backend: str = "onnxruntime", tolerance: float = DEFAULT_TOLERANCE,
                                       **predict_options) -> None:
    """Export ``folds`` of the trained model in ``model_folder`` to a temporary folder (self-checked), then
    ``predict_from_export_folder`` with ``predict_options``."""
    with tempfile.TemporaryDirectory(prefix="nnunetv2_uc-onnx-") as temporary:
        export_folder = Path(temporary) / "export"
        export_model(model_folder, export_folder, folds, checkpoint, tolerance)
        predict_from_export_folder(input_folder, output_folder, str(export_folder), None, backend,
                                   **predict_options)
