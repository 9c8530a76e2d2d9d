"""`nnunetv2_uc export-onnx`: one self-checked ONNX file per fold of a trained model, next to its plans; and the
export folder read back: checked, predicted from with nnU-Net's predictor, and cached.

Each file takes one batch of sliding-window tiles, (B, C, *patch) float32 with B dynamic, and returns the logits of
the full-resolution head, (B, num_classes, *patch) (deep supervision off, as nnU-Net's predictor builds the network).
The network is exported from a contiguous copy whose layers run their plain torch forward (``export_friendly``):
the CPU fast paths of ``building_blocks.fast_layers`` and the channels-last layout are measurement choices of the
PyTorch path and would put GEMM/reshape emulations of ConvTranspose and InstanceNormalization into the graph.
Parameters and state-dict keys are those of the trained network.

After writing, every file is run with onnxruntime on seeded random tiles next to the PyTorch network as nnU-Net's
predictor runs it; the export is refused when ``max |onnx - torch| / (max - min of the torch logits)`` exceeds the
tolerance. Everything is written into a hidden folder next to the output folder and renamed into place at the end.

Reading an export folder back (`nnunetv2_uc predict --backend onnxruntime|openvino`): the folder is checked before
anything is predicted (manifest, checksums, folds, tile shape), then nnU-Net's predictor runs on it (preprocessing,
tiling, Gaussian weighting, mirroring, fold ensembling, resampling, export) with ``patches_per_batch`` tiles per call
as in ``nnunetv2_uc predict``; only the network is replaced by one runtime session per fold (``runtimes.FoldSwitch``).
It needs no checkpoint and no network code. A trained model (-d/-c/-tr/-p) is exported (and self-checked) once into
the export cache (``$NNUNETV2_UC_CACHE``, default ``~/.cache/nnunetv2_uc``, a folder per checkpoint, plans,
dataset.json and exporter version) and predicted from there. The runtimes run on the CPU.
"""
from __future__ import annotations

import copy
import hashlib
import json
import os
import re
import shutil
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import torch
from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
from torch import nn

from nnunetv2_uc import __version__
from nnunetv2_uc.architectures.building_blocks import switches
from nnunetv2_uc.errors import OverwriteRefused, UserError
from nnunetv2_uc.files import atomic_write_json, directory_in_the_making, replace_directory
from nnunetv2_uc.inference.predict import BatchedSlidingWindowPredictor, load_trained_model, parse_folds
from nnunetv2_uc.inference.runtimes import RUNNERS, FoldSwitch, onnxruntime_runner, require

MANIFEST = "export_manifest.json"
FORMAT = "nnunetv2_uc-onnx"
FORMAT_VERSION = 1
OPSET = 18
#: refuse an export whose max |onnx - torch| exceeds this fraction of the torch logits' range (measured: ~1e-6)
DEFAULT_TOLERANCE = 1e-4
CHECK_TILES = 2  # a batch of 2 also checks the dynamic batch axis
CHECK_SEED = 0
TOLERANCE_METRIC = "max |onnx - torch| / (max - min of the torch logits), over seeded N(0, 1) tiles"


def sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def onnx_name(fold: str | int) -> str:
    return f"fold_{fold}.onnx"


@contextmanager
def export_friendly() -> Iterator[None]:
    """The networks' layers run their plain torch forward on contiguous maps inside the block (see the module
    docstring); the switches are restored afterwards."""
    saved = switches.FAST_PATHS, switches.LAYOUT
    switches.FAST_PATHS, switches.LAYOUT = "none", "contiguous"
    try:
        yield
    finally:
        switches.FAST_PATHS, switches.LAYOUT = saved


def exportable_copy(network: nn.Module) -> nn.Module:
    """A deep copy in eval mode with every parameter and buffer stored contiguous (channels-last tensors do not
    export); the values and state-dict keys are the network's."""
    exportable = copy.deepcopy(getattr(network, "_orig_mod", network)).eval()  # unwrap torch.compile
    for tensor in [*exportable.parameters(), *exportable.buffers()]:
        tensor.data = tensor.data.contiguous()
    return exportable


def first_output(output: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
    """The full-resolution logits of a network that returns deep-supervision outputs as a list."""
    return output[0] if isinstance(output, (list, tuple)) else output


def export_network(network: nn.Module, tile_shape: Sequence[int], path: Path, opset: int = OPSET) -> None:
    """Write ``network`` (tiles (B, *tile_shape) -> logits) to ``path`` with torch.onnx.export (dynamo exporter,
    batch axis dynamic) and check it with onnx.checker."""
    onnx = require("onnx")
    require("onnxscript")
    exportable = exportable_copy(network)
    example = torch.zeros(CHECK_TILES, *tile_shape)
    with export_friendly(), torch.no_grad():
        torch.onnx.export(exportable, (example,), str(path), dynamo=True, opset_version=opset, verbose=False,
                          input_names=["tiles"], output_names=["logits"],
                          dynamic_shapes=({0: torch.export.Dim("batch", min=1)},), external_data=False)
    onnx.checker.check_model(str(path), full_check=True)


def check_against_torch(network: nn.Module, path: Path, tile_shape: Sequence[int], tolerance: float,
                        seed: int = CHECK_SEED) -> float:
    """Run ``path`` (onnxruntime) and ``network`` (PyTorch, as the predictor runs it) on the same seeded tiles;
    returns the measured deviation (``TOLERANCE_METRIC``), a UserError when it exceeds ``tolerance``."""
    generator = torch.Generator().manual_seed(seed)
    tiles = torch.randn((CHECK_TILES, *tile_shape), generator=generator)
    with torch.no_grad():
        expected = first_output(network.eval()(tiles)).float()
    got = onnxruntime_runner(path, tile_shape)(tiles)
    if got.shape != expected.shape:
        raise UserError(f"{path.name}: the ONNX graph returns {tuple(got.shape)}, the network {tuple(expected.shape)}")
    spread = float(expected.max() - expected.min()) or 1.0
    deviation = float((got - expected).abs().max()) / spread
    if not deviation <= tolerance:  # also refuses NaN
        raise UserError(f"{path.name} differs from the PyTorch network by {deviation:.3g} of the logit range "
                        f"(tolerance {tolerance:g}; {TOLERANCE_METRIC}); nothing was written. Report this with the "
                        f"network class, or pass a larger --tolerance if the difference is acceptable")
    return deviation


def model_name_parts(model_folder: str | os.PathLike) -> tuple[str, str]:
    """(trainer, configuration) from nnU-Net's results folder name TRAINER__PLANS__CONFIGURATION ('?' if other)."""
    match = re.fullmatch(r"(.+)__(.+)__(.+)", Path(model_folder).resolve().name)
    return (match[1], match[3]) if match else ("?", "?")


def trained_configuration(checkpoint: Path) -> str:
    """The configuration name a checkpoint was trained with (nnU-Net's predictor reads it there too)."""
    return torch.load(checkpoint, map_location="cpu", weights_only=False)["init_args"]["configuration"]


def _versions() -> dict:
    onnx, ort, onnxscript = require("onnx"), require("onnxruntime"), require("onnxscript")
    return {"nnunetv2_uc": __version__, "torch": torch.__version__, "onnx": onnx.__version__,
            "onnxscript": onnxscript.__version__, "onnxruntime": ort.__version__}


def export_model(model_folder: str | os.PathLike, output_folder: str | os.PathLike,
                 folds: Sequence[str | int] = (0, 1, 2, 3, 4), checkpoint: str = "checkpoint_final.pth",
                 tolerance: float = DEFAULT_TOLERANCE, overwrite: bool = False, opset: int = OPSET) -> dict:
    """Export ``folds`` of the trained model in ``model_folder`` to ``output_folder`` (fold_F.onnx, plans.json,
    dataset.json, export_manifest.json); returns the manifest. Refuses an existing ``output_folder`` unless
    ``overwrite``; a failed self-check leaves nothing behind."""
    model_folder, output_folder = Path(model_folder), Path(output_folder).absolute()
    if output_folder.exists() and not overwrite:
        raise OverwriteRefused(f"{output_folder} exists; choose another -o or pass --overwrite to replace it")
    if not tolerance > 0:
        raise UserError(f"--tolerance must be > 0, got {tolerance}")
    versions = _versions()
    folds = parse_folds(folds)
    trainer, configuration = model_name_parts(model_folder)
    predictor = nnUNetPredictor(use_mirroring=False, perform_everything_on_device=False,
                                device=torch.device("cpu"), allow_tqdm=False)
    load_trained_model(predictor, str(model_folder), folds, checkpoint, trainer, configuration, command="export-onnx")
    network = getattr(predictor.network, "_orig_mod", predictor.network)
    patch = [int(s) for s in predictor.configuration_manager.patch_size]
    channels = determine_num_input_channels(predictor.plans_manager, predictor.configuration_manager,
                                            predictor.dataset_json)
    tile_shape = (channels, *patch)
    deviations, onnx_sums = {}, {}
    with directory_in_the_making(output_folder.parent, output_folder.name) as work:
        for fold, parameters in zip(folds, predictor.list_of_parameters):
            network.load_state_dict(parameters)
            path = work / onnx_name(fold)
            export_network(network, tile_shape, path, opset)
            deviations[str(fold)] = check_against_torch(network, path, tile_shape, tolerance)
            onnx_sums[str(fold)] = sha256(path)
            print(f"[nnunetv2_uc export-onnx] fold {fold}: {path.name}, deviation {deviations[str(fold)]:.2e} of the "
                  f"logit range (tolerance {tolerance:g})", file=sys.stderr, flush=True)
        for name in ("plans.json", "dataset.json"):
            shutil.copyfile(model_folder / name, work / name)
        manifest = {
            "format": FORMAT, "format_version": FORMAT_VERSION,
            "network_class": f"{type(network).__module__}.{type(network).__qualname__}",
            "trainer": predictor.trainer_name,
            "configuration": trained_configuration(model_folder / f"fold_{folds[0]}" / checkpoint),
            "folds": [str(f) for f in folds], "files": {str(f): onnx_name(f) for f in folds},
            "tile_shape": list(tile_shape), "patch_size": patch, "input_channels": channels,
            "num_classes": int(predictor.label_manager.num_segmentation_heads),
            "inference_allowed_mirroring_axes": (list(predictor.allowed_mirroring_axes)
                                                 if predictor.allowed_mirroring_axes is not None else None),
            "input": "tiles: (batch, channels, *patch_size) float32, batch dynamic",
            "output": "logits: (batch, num_classes, *patch_size) float32, full-resolution head only",
            "opset": opset, "exporter": "torch.onnx.export(dynamo=True)", "versions": versions,
            "checkpoint": checkpoint, "model_folder": str(model_folder.absolute()),
            "sha256": {"checkpoints": {str(f): sha256(model_folder / f"fold_{f}" / checkpoint) for f in folds},
                       "onnx": onnx_sums, "plans.json": sha256(work / "plans.json"),
                       "dataset.json": sha256(work / "dataset.json")},
            "self_check": {"tolerance": tolerance, "metric": TOLERANCE_METRIC, "tiles": CHECK_TILES,
                           "seed": CHECK_SEED, "runtime": "onnxruntime CPUExecutionProvider",
                           "deviation": deviations},
        }
        atomic_write_json(work / MANIFEST, manifest)
        replace_directory(work, output_folder)
    return manifest


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
