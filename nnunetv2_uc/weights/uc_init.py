"""Start uC on nnU-Net's network from a trained nnU-Net model (``nnunetv2_uc uc-init``).

An nnU-Net checkpoint (``fold_X/checkpoint_final.pth`` of ``PlainConvUNet`` / ``ResidualEncoderUNet`` plans) plus
uC plans of the same topology give ``{"network_weights": ...}`` for the STOCK
``nnUNetv2_train D C F -p UC_PLANS -pretrained_weights FILE``: every parameter of nnU-Net's network comes from the
checkpoint, the uC parameters are the uC network's own initialisation (``uc_fusion="residual"``: scale zero), so
the fine-tuning starts from the trained network's function. nnU-Net's loader checks that every key of the model is
in the file with the same shape and skips the segmentation layers (it re-initialises them).

Where the uC plans file does not exist yet, it is written from the plans the checkpoint was trained with (its
``init_args``): the same configuration with uC connections, same patch, batch and preprocessed data.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from nnunetv2_uc.architectures.original_checkpoints import CheckpointError
from nnunetv2_uc.architectures.uc_unet import PLANNED_FUSION
from nnunetv2_uc.errors import OverwriteRefused, UserError
from nnunetv2_uc.files import atomic_torch_save, atomic_write_json
from nnunetv2_uc.weights.original import read_state_dict
from nnunetv2_uc.planning.uc_plans import UC_VERSION, has_uc_connections, uc_plans_from, without_uc_connections

UC_KEY_PREFIX = "decoder.uc_fusions."  # the state-dict keys only the uC version has


@dataclass
class UCInitResult:
    output: Path
    plans_path: Path
    plans_written: bool  # the uC plans were made from the checkpoint's plans by this call
    from_checkpoint: int  # tensors taken from the checkpoint
    initialised: int  # uC tensors at the uC network's initialisation
    network_class: str
    configuration: str


def _numpy_scalar_globals() -> list:
    """What nnU-Net's checkpoints pickle besides tensors and plain containers: numpy scalars (its logged metrics)
    and their dtypes. Allowing these keeps ``torch.load(weights_only=True)``: they build values, not code."""
    import numpy as np

    scalars = [getattr(module, "scalar") for module in (_submodule("numpy._core.multiarray"),
                                                        _submodule("numpy.core.multiarray")) if module is not None]
    dtypes = [getattr(np.dtypes, name) for name in dir(np.dtypes) if name.endswith("DType")]
    return scalars + [np.dtype] + dtypes


def _submodule(name: str):
    import importlib

    try:
        return importlib.import_module(name)
    except ImportError:
        return None


def _read_checkpoint(path: Path, trust_pickle: bool) -> dict:
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist; give an nnU-Net checkpoint, e.g. "
                        f"$nnUNet_results/DatasetX/nnUNetTrainer__nnUNetPlans__3d_fullres/fold_0/checkpoint_final.pth")
    try:
        with torch.serialization.safe_globals(_numpy_scalar_globals()):
            return torch.load(path, map_location="cpu", weights_only=not trust_pickle)
    except Exception as error:  # torch raises several unpickling error types
        hint = (" The file pickles Python objects besides tensors and numpy scalars; if you trust its origin, pass "
                "--trust-pickle") if not trust_pickle else ""
        raise UserError(f"cannot read checkpoint {path}: {error}.{hint}") from error


def _checkpoint_architecture(checkpoint: Any, configuration: str) -> tuple[dict | None, str, dict | None]:
    """(plans, configuration, architecture block) the checkpoint was trained with, from nnU-Net's ``init_args``
    ((None, ``configuration``, None) for a bare state dict)."""
    init_args = checkpoint.get("init_args") if isinstance(checkpoint, dict) else None
    if not isinstance(init_args, dict) or "plans" not in init_args:
        return None, configuration, None
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    plans = init_args["plans"]
    trained = init_args.get("configuration", configuration)
    return plans, trained, PlansManager(plans).get_configuration(trained).configuration["architecture"]


def _topology_differences(trained: dict, planned: dict) -> list[str]:
    """What differs between the trained network's architecture block and nnU-Net's network under the uC plans."""
    differences = []
    if trained["network_class_name"] != planned["network_class_name"]:
        differences.append(f"network_class_name {trained['network_class_name']} vs {planned['network_class_name']}")
    for key in sorted(set(trained["arch_kwargs"]) | set(planned["arch_kwargs"])):
        a, b = trained["arch_kwargs"].get(key), planned["arch_kwargs"].get(key)
        if json.dumps(a) != json.dumps(b):
            differences.append(f"arch_kwargs {key}: {a} vs {b}")
    return differences


def _uc_plans(folder: Path, plans_name: str, configuration: str, trained_plans: dict | None,
              trained_configuration: str) -> tuple[dict, Path, bool]:
    """(uC plans, their path, whether they were written now). Missing plans are made from the checkpoint's plans."""
    path = folder / f"{plans_name}.json"
    if path.is_file():
        return json.loads(path.read_text()), path, False
    if trained_plans is None:
        raise UserError(f"{path}: no such file, and the checkpoint holds no plans to make it from (a bare state "
                        f"dict); make uC plans first, e.g. nnunetv2_uc plan -d {folder.name} --network uc_nnunet")
    if trained_configuration != configuration:
        raise UserError(f"the checkpoint was trained on configuration {trained_configuration!r}, not {configuration!r}; "
                        f"pass -c {trained_configuration}")
    return uc_plans_from(trained_plans, plans_name, [configuration]), path, True


def _uc_network(plans: dict, configuration: str, dataset_json: dict) -> nn.Module:
    """The network nnU-Net's trainer builds for these plans (He init, deep supervision on: the keys do not depend
    on it)."""
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    manager = PlansManager(plans)
    configuration_manager = manager.get_configuration(configuration)
    channels = determine_num_input_channels(manager, configuration_manager, dataset_json)
    outputs = manager.get_label_manager(dataset_json).num_segmentation_heads
    return nnUNetTrainer.build_network_architecture(manager, configuration_manager, channels, outputs,
                                                    enable_deep_supervision=True)


def _check_uc_configuration(plans: dict, plans_path: Path, configuration: str) -> dict:
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    available = sorted(plans.get("configurations", {}))
    if configuration not in available:
        raise UserError(f"{plans_path} has no configuration {configuration!r} (available: {', '.join(available)}); "
                        f"choose one with -c")
    architecture = PlansManager(plans).get_configuration(configuration).configuration["architecture"]
    if not has_uc_connections(architecture):
        raise UserError(f"{plans_path}, configurations[{configuration!r}] names {architecture['network_class_name']}, "
                        f"not a uC version of nnU-Net's U-Net ({', '.join(UC_VERSION.values())}); give uC plans "
                        f"with -p, or a plans name that does not exist yet to make them from the checkpoint's plans")
    fusion = architecture["arch_kwargs"].get("uc_fusion", "replace")
    if fusion != PLANNED_FUSION:
        raise UserError(f"{plans_path}, configurations[{configuration!r}]: uc_fusion is {fusion!r} (plans written "
                        f"before uc_fusion existed), whose decoder stages differ from nnU-Net's, so a trained nnU-Net "
                        f"model cannot start it; give a new plans name with -p (uc-init makes those plans from the "
                        f"checkpoint's), or set arch_kwargs uc_fusion to \"{PLANNED_FUSION}\"")
    return architecture


def _merged_weights(network: nn.Module, trained: dict[str, torch.Tensor], checkpoint_path: Path) -> tuple[dict, int]:
    """The uC network's state dict with every key nnU-Net's network has taken from ``trained``; (weights, taken)."""
    weights = network.state_dict()
    problems = []
    taken = 0
    for key, value in weights.items():
        if key.startswith(UC_KEY_PREFIX):
            continue
        if key not in trained:
            problems.append(f"{key} missing")
        elif trained[key].shape != value.shape:
            problems.append(f"{key}: {tuple(trained[key].shape)} in the checkpoint, {tuple(value.shape)} in the plans")
        else:
            weights[key] = trained[key].to(value.dtype)
            taken += 1
    unused = sorted(set(trained) - set(weights))
    if problems or unused:
        listed = problems[:8] + [f"{key} not in the uC network" for key in unused[:8]]
        raise UserError(f"checkpoint {checkpoint_path} does not fit the uC plans' network ({len(problems)} key(s) "
                        f"missing or of another shape, {len(unused)} unused): " + "; ".join(listed))
    return weights, taken


def write_uc_init(checkpoint: Path, dataset: str, plans_name: str, output: Path, configuration: str = "3d_fullres",
                  overwrite: bool = False, trust_pickle: bool = False) -> UCInitResult:
    """Write ``output`` = ``{"network_weights": ...}`` for ``nnUNetv2_train -p plans_name -pretrained_weights``.

    ``checkpoint``: an nnU-Net checkpoint of nnU-Net's own network (or a file holding its state dict).
    ``plans_name``: uC plans in $nnUNet_preprocessed/DATASET; made from the checkpoint's plans if missing.
    Raises UserError naming the file and the fix when the topologies differ; nothing is written then.
    """
    if output.exists() and not overwrite:
        raise OverwriteRefused(f"{output} exists; pass --overwrite to replace it")
    raw = _read_checkpoint(checkpoint, trust_pickle)
    try:
        trained_weights = read_state_dict(raw)
    except CheckpointError as error:
        raise UserError(f"checkpoint {checkpoint}: {error}") from error
    trained_plans, trained_configuration, trained_architecture = _checkpoint_architecture(raw, configuration)
    folder, dataset_json = _dataset_folder(dataset)
    if trained_plans is not None and trained_plans.get("dataset_name") != folder.name:
        raise UserError(f"checkpoint {checkpoint} was trained on {trained_plans.get('dataset_name')}, not "
                        f"{folder.name}; give -d {trained_plans.get('dataset_name')}")
    uc_plans, plans_path, plans_written = _uc_plans(folder, plans_name, configuration, trained_plans,
                                                    trained_configuration)
    architecture = _check_uc_configuration(uc_plans, plans_path, configuration)
    if trained_architecture is not None:
        differences = _topology_differences(trained_architecture, without_uc_connections(architecture))
        if differences:
            raise UserError(f"checkpoint {checkpoint} and {plans_path} do not share the topology: "
                            + "; ".join(differences) + f". Give a new plans name with -p: uc-init then makes uC "
                            f"plans with the checkpoint's own topology")
    network = _uc_network(uc_plans, configuration, dataset_json)
    weights, taken = _merged_weights(network, trained_weights, checkpoint)
    payload = {"network_weights": weights,
               "nnunetv2_uc": {"uc_init_from": str(checkpoint), "plans_name": plans_name,
                               "configuration": configuration,
                               "network_class_name": architecture["network_class_name"]}}
    atomic_torch_save(payload, output)
    if plans_written:
        atomic_write_json(plans_path, uc_plans)
    return UCInitResult(output, plans_path, plans_written, taken, len(weights) - taken,
                        architecture["network_class_name"], configuration)


def _dataset_folder(dataset: str) -> tuple[Path, dict]:
    """($nnUNet_preprocessed/DatasetX, its dataset.json)."""
    from nnunetv2_uc.measure.cost import preprocessed_dataset_folder

    folder = Path(preprocessed_dataset_folder(dataset))
    dataset_json = folder / "dataset.json"
    if not dataset_json.is_file():
        raise UserError(f"{dataset_json}: no such file; run nnUNetv2_plan_and_preprocess -d {dataset}")
    return folder, json.loads(dataset_json.read_text())


def describe(result: UCInitResult) -> str:
    plans = (f"wrote {result.plans_path} (the checkpoint's plans with uC connections: same patch, batch, topology "
             f"and preprocessed data)\n" if result.plans_written else "")
    dataset = result.plans_path.parent.name
    return (f"{plans}wrote {result.output}: {result.network_class}, {result.from_checkpoint} tensors from the "
            f"checkpoint, {result.initialised} uC tensors initialised (residual scales at zero: the network starts "
            f"as the trained one). Fine-tune with:\n"
            f"  nnUNetv2_train {dataset} {result.configuration} FOLD -p {result.plans_path.stem} -pretrained_weights {result.output}")
