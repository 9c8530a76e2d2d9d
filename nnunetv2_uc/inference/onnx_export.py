"""`nnunetv2_uc export-onnx`: one self-checked ONNX file per fold of a trained model, next to its plans.

Each file takes one batch of sliding-window tiles, (B, C, *patch) float32 with B dynamic, and returns the logits of
the full-resolution head, (B, num_classes, *patch) (deep supervision off, as nnU-Net's predictor builds the network).
The network is exported from a contiguous copy whose layers run their plain torch forward (``export_friendly``):
the CPU fast paths of ``building_blocks.fast_layers`` and the channels-last layout are measurement choices of the
PyTorch path and would put GEMM/reshape emulations of ConvTranspose and InstanceNormalization into the graph.
Parameters and state-dict keys are those of the trained network.

After writing, every file is run with onnxruntime on seeded random tiles next to the PyTorch network as nnU-Net's
predictor runs it; the export is refused when ``max |onnx - torch| / (max - min of the torch logits)`` exceeds the
tolerance. Everything is written into a hidden folder next to the output folder and renamed into place at the end.
"""
from __future__ import annotations

import copy
import hashlib
import os
import re
import shutil
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Sequence

import torch
from torch import nn

from nnunetv2_uc import __version__
from nnunetv2_uc.architectures.building_blocks import switches
from nnunetv2_uc.errors import OverwriteRefused, UserError
from nnunetv2_uc.files import atomic_write_json, directory_in_the_making, replace_directory
from nnunetv2_uc.inference.runtimes import onnxruntime_runner, require

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
    # imported here: nnU-Net's predictor imports take seconds, and `nnunetv2_uc --help` imports this module's CLI
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
    from nnunetv2_uc.inference.predict import load_trained_model, parse_folds

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
