"""A trained model folder: its files, the record of the code that trained it, the network rebuilt from its plans and
a strict load of every checkpoint."""
from __future__ import annotations

import inspect
import json
import os
from pathlib import Path
from typing import Callable

from nnunetv2_uc.doctor.checks import FAIL, OK, SKIP, WARN, Check
from nnunetv2_uc.registration import (
    DIST, Record, find_trainer_class, load_record, missing_network_message, missing_trainer_message, needed_network,
    version_note,
)


def check_model_record(record: Record | None) -> Check:
    """The record of the code that trained the model (plans.json), against the installed version."""
    if record is None:
        return Check("model record", SKIP, f"plans.json names no {DIST} version (a model of nnU-Net's own trainers, "
                                           f"or of an {DIST} version that wrote no record)")
    if note := version_note(record):
        return Check("model record", WARN, f"trained with {record.describe()}", note)
    return Check("model record", OK, f"trained with {record.describe()}, the installed version")


def _network_fix(folder: Path, configuration: str, record: Record | None, error: str) -> str:
    network_path = needed_network(folder, configuration, record)
    return (missing_network_message(network_path, configuration, record, error)
            or f"{network_path} is not a class of {DIST}: the package that provides it may be another version "
               "than the one that trained the model")


def load_checkpoint(path: Path) -> dict:
    import torch

    return torch.load(path, map_location="cpu", weights_only=False)  # nnU-Net's checkpoints hold more than tensors


def build_network_from_folder(trainer_class, folder: Path, configuration: str):
    """The network as nnU-Net's predictor builds it: the trainer's static build_network_architecture on the
    folder's plans.json and dataset.json, deep supervision off."""
    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    plans_manager = PlansManager(json.loads((folder / "plans.json").read_text()))
    dataset_json = json.loads((folder / "dataset.json").read_text())
    config = plans_manager.get_configuration(configuration)
    channels_in = determine_num_input_channels(plans_manager, config, dataset_json)
    channels_out = plans_manager.get_label_manager(dataset_json).num_segmentation_heads
    if "plans_manager" in inspect.signature(trainer_class.build_network_architecture).parameters:
        return trainer_class.build_network_architecture(plans_manager, config, channels_in, channels_out,
                                                        enable_deep_supervision=False)
    return trainer_class.build_network_architecture(  # the signature of nnU-Net < 2.6
        config.network_arch_class_name, config.network_arch_init_kwargs, config.network_arch_init_kwargs_req_import,
        channels_in, channels_out, enable_deep_supervision=False)


def _state_dict_mismatch(error: Exception) -> str:
    text = str(error).strip().splitlines()
    return " ".join(line.strip() for line in text[:3])[:400]


def check_model_folder(folder: str | os.PathLike, find_trainer: Callable[[str], type] | None = None
                       ) -> list[Check]:
    """A trained model folder (…/DatasetXXX/TRAINER__PLANS__CONFIG): its files, the trainer class, the network
    rebuilt from its plans, and a strict load of every fold_*/checkpoint_*.pth."""
    folder = Path(folder)
    missing = [name for name in ("plans.json", "dataset.json") if not (folder / name).is_file()]
    checkpoints = sorted(folder.glob("fold_*/checkpoint_*.pth"))
    if missing or not checkpoints:
        lacking = missing + ([] if checkpoints else ["fold_*/checkpoint_*.pth"])
        return [Check("model files", FAIL, f"{folder} lacks {', '.join(lacking)}",
                      "give the folder nnUNetv2_train wrote: $nnUNet_results/DatasetXXX_Name/TRAINER__PLANS__CONFIG")]
    record = load_record(folder)
    results = [Check("model files", OK, f"{folder}: plans.json, dataset.json, {len(checkpoints)} checkpoint(s)"),
               check_model_record(record)]
    try:
        first = load_checkpoint(checkpoints[0])
        trainer_name, configuration = first["trainer_name"], first["init_args"]["configuration"]
    except Exception as error:
        return results + [Check("model checkpoint", FAIL, f"{checkpoints[0]} is not an nnU-Net checkpoint: "
                                                          f"{type(error).__name__}: {error}",
                                "copy the checkpoint again from where it was trained")]
    try:
        trainer_class = (find_trainer or find_trainer_class)(trainer_name)
    except Exception as error:
        return results + [Check("model trainer", FAIL, f"{trainer_name} does not resolve: {type(error).__name__}: "
                                                       f"{str(error)[:300]}",
                                missing_trainer_message(trainer_name, record))]
    results.append(Check("model trainer", OK, f"{trainer_name} ({trainer_class.__module__})"))
    try:
        network = build_network_from_folder(trainer_class, folder, configuration)
    except Exception as error:
        message = f"{type(error).__name__}: {error}"
        return results + [Check("model network", FAIL, f"{trainer_name} cannot build the network of plans.json "
                                                       f"configuration {configuration}: {message[:400]}",
                                _network_fix(folder, configuration, record, message[:400]))]
    n_params = sum(p.numel() for p in network.parameters())
    results.append(Check("model network", OK, f"{type(network).__name__} ({n_params:,} parameters) from plans.json "
                                              f"configuration {configuration}"))
    for path in checkpoints:
        name = f"model {path.parent.name}/{path.name}"
        try:
            weights = (first if path == checkpoints[0] else load_checkpoint(path))["network_weights"]
            network.load_state_dict(weights, strict=True)
        except Exception as error:
            results.append(Check(name, FAIL, f"does not load into the rebuilt network: {_state_dict_mismatch(error)}",
                                 f"the checkpoint comes from another network or {DIST} version: "
                                 + _network_fix(folder, configuration, record, _state_dict_mismatch(error))))
        else:
            results.append(Check(name, OK, f"{len(weights)} tensors, strict load"))
    return results
