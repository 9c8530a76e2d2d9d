"""A folder written by `nnunetv2_uc export-onnx`, checked before anything is predicted, nnU-Net's predictor on it
(`nnunetv2_uc predict --backend onnxruntime|openvino`), and the export cache.

The predictor is nnU-Net's (preprocessing, tiling, Gaussian weighting, mirroring, fold ensembling, resampling,
export), with ``patches_per_batch`` tiles per call as in ``nnunetv2_uc predict``; only the network is replaced by
one runtime session per fold (``runtimes.FoldSwitch``). Needs no checkpoint and no network code. A trained model
(-d/-c/-tr/-p) is exported (and self-checked) once into the export cache (``$NNUNETV2_UC_CACHE``, default
``~/.cache/nnunetv2_uc``, a folder per checkpoint, plans, dataset.json and exporter version) and predicted from there.
The runtimes run on the CPU.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch

from nnunetv2_uc import __version__
from nnunetv2_uc.errors import UserError
from nnunetv2_uc.inference.onnx_export import (DEFAULT_TOLERANCE, FORMAT, FORMAT_VERSION, MANIFEST, OPSET,
                                               export_model, sha256)
from nnunetv2_uc.inference.predict import BatchedSlidingWindowPredictor
from nnunetv2_uc.inference.runtimes import RUNNERS, FoldSwitch

_REEXPORT = "export the model again with nnunetv2_uc export-onnx"


@dataclass(frozen=True)
class ExportedModel:
    """A checked export folder: its manifest, plans and dataset.json, and the ONNX file of each chosen fold."""

    folder: Path
    manifest: dict
    plans: dict
    dataset_json: dict
    files: dict[str, Path]  # fold -> fold_F.onnx

    @property
    def tile_shape(self) -> tuple[int, ...]:
        """(C, *patch) of one tile."""
        return tuple(self.manifest["tile_shape"])


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError as error:
        raise UserError(f"{path} is missing; {_REEXPORT}") from error
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise UserError(f"{path} is not valid JSON ({error}); {_REEXPORT}") from error


def _check_unchanged(path: Path, expected: str, what: str) -> None:
    if sha256(path) != expected:
        raise UserError(f"{path} is not the {what} that export-onnx wrote (its SHA-256 differs from the one in "
                        f"{MANIFEST}: a file from another export, or a corrupted copy); {_REEXPORT}")


def load_exported_model(folder: str | os.PathLike, folds: Sequence[str | int] | None = None) -> ExportedModel:
    """Check ``folder`` (manifest, checksums of plans.json, dataset.json and the chosen folds' ONNX files, the tile
    shape against the plans) and return it; ``folds`` None: every exported fold. Any problem is a UserError that
    names the file and the fix."""
    folder = Path(folder)
    if not (folder / MANIFEST).is_file():
        raise UserError(f"{folder} has no {MANIFEST}: -m with --backend onnxruntime/openvino takes a folder written "
                        f"by nnunetv2_uc export-onnx (for a trained model folder use -d/-c/-tr/-p)")
    manifest = _read_json(folder / MANIFEST)
    if manifest.get("format") != FORMAT:
        raise UserError(f"{folder / MANIFEST} is not an export-onnx manifest; {_REEXPORT}")
    for name in ("plans.json", "dataset.json"):
        _check_unchanged(folder / name, manifest["sha256"][name], f"{name} of the exported model")
    plans, dataset_json = _read_json(folder / "plans.json"), _read_json(folder / "dataset.json")
    planned = plans.get("configurations", {}).get(manifest["configuration"], {}).get("patch_size")
    if planned is not None and list(planned) != list(manifest["patch_size"]):
        raise UserError(f"{folder / 'plans.json'} plans patch {planned} for {manifest['configuration']} but the ONNX "
                        f"files take tiles of {manifest['patch_size']}; {_REEXPORT}")
    exported = [str(f) for f in manifest["folds"]]
    chosen = exported if folds is None else [str(f) for f in folds]
    missing = [f for f in chosen if f not in exported]
    if missing:
        raise UserError(f"fold(s) {', '.join(missing)} were not exported to {folder} (it has folds "
                        f"{', '.join(exported)}): choose -f among those, or export them with nnunetv2_uc export-onnx "
                        f"-f {' '.join(chosen)}")
    files = {}
    for fold in chosen:
        path = folder / manifest["files"][fold]
        if not path.is_file():
            raise UserError(f"{path} is missing; {_REEXPORT}")
        _check_unchanged(path, manifest["sha256"]["onnx"][fold], f"ONNX file of fold {fold}")
        files[fold] = path
    return ExportedModel(folder, manifest, plans, dataset_json, files)


class ExportedModelPredictor(BatchedSlidingWindowPredictor):
    """``BatchedSlidingWindowPredictor`` whose network is one runtime session per exported fold."""

    def initialize_from_export_folder(self, model: ExportedModel, backend: str, threads: int | None = None,
                                      precision: str = "fp32") -> None:
        """Set up nnU-Net's predictor from the export's plans, dataset.json and manifest (nnU-Net's
        ``manual_initialization``), with the folds' sessions (in ``precision``) as the "parameters" its fold loop
        loads."""
        from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

        if backend not in RUNNERS:
            raise UserError(f"--backend {backend} cannot run an export folder; choose {' or '.join(RUNNERS)}")
        runners = [RUNNERS[backend](path, model.tile_shape, threads, precision) for path in model.files.values()]
        plans_manager = PlansManager(model.plans)
        mirroring = model.manifest["inference_allowed_mirroring_axes"]
        switch = FoldSwitch(runners)
        self.manual_initialization(switch, plans_manager,
                                   plans_manager.get_configuration(model.manifest["configuration"]), runners,
                                   model.dataset_json, model.manifest["trainer"],
                                   tuple(mirroring) if mirroring is not None else None)
        self.network = switch  # nnUNet_compile=t would have wrapped it in torch.compile, which has nothing to do here


def predictor_for_export(model: ExportedModel, backend: str, step_size: float = 0.5, mirroring: bool = True,
                         patches_per_batch: int = 1, verbose: bool = False, progress_bar: bool = True,
                         threads: int | None = None, precision: str = "fp32") -> ExportedModelPredictor:
    """An ``ExportedModelPredictor`` on the CPU, initialized from ``model``, its network run in ``precision``."""
    predictor = ExportedModelPredictor(tile_step_size=step_size, use_gaussian=True, use_mirroring=mirroring,
                                       perform_everything_on_device=False, device=torch.device("cpu"),
                                       verbose=verbose, allow_tqdm=progress_bar, patches_per_batch=patches_per_batch)
    predictor.initialize_from_export_folder(model, backend, threads, precision)
    return predictor


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
