"""What a trained nnU-Net model costs, for the comparison table of ``nnunetv2_uc evaluate --nnunet-results``.

- Parameters and MACs of the network exactly as ``nnUNetv2_predict`` builds it from the results folder: the
  trainer class (found by name, this plugin's trainers included) and its static ``build_network_architecture``
  on the folder's ``plans.json`` and ``dataset.json``, deep supervision off; MACs of one patch of the plans'
  ``patch_size`` (``nnunetv2_uc.measure.cost`` conventions), counted on the meta device.
- Training time: the sum of nnU-Net's epoch durations (``epoch_end - epoch_start`` timestamps in each fold's
  ``checkpoint_final.pth``), so time between a killed run and its ``--c`` resume and the final validation are not
  counted.
"""
from __future__ import annotations

import json
import os

import torch

from nnunetv2_uc.measure.cost import network_cost, plans_network
from nnunetv2_uc.registration import find_trainer_class

CHECKPOINT = "checkpoint_final.pth"


def network_cost_of_training(model_dir: str, trainer: str, configuration: str) -> dict:
    """{"network_class", "patch_size", "input_channels", "parameters", "gmacs"} of the network the predictor
    builds from ``model_dir``; raises ValueError with the reason when it cannot be built."""
    files = {name: os.path.join(model_dir, name) for name in ("plans.json", "dataset.json")}
    missing = [name for name, path in files.items() if not os.path.isfile(path)]
    if missing:
        raise ValueError(f"no {' or '.join(missing)} in the results folder (nnUNetv2_train writes them there)")
    try:
        trainer_class = find_trainer_class(trainer)
    except RuntimeError:
        raise ValueError(f"trainer {trainer} not found by nnU-Net (nor among this plugin's trainers); add its "
                         f"folder to nnUNet_extTrainer") from None
    with open(files["plans.json"]) as f:
        plans = json.load(f)
    with open(files["dataset.json"]) as f:
        dataset_json = json.load(f)
    try:
        network, input_channels, patch = plans_network(plans, configuration, dataset_json, trainer_class)
        cost = network_cost(network, input_channels, patch)
    except (KeyError, RuntimeError, TypeError, ValueError, ImportError) as error:
        raise ValueError(f"{trainer}.build_network_architecture failed on plans.json ({configuration}): "
                         f"{type(error).__name__}: {error}") from error
    return {"network_class": f"{type(network).__module__}.{type(network).__qualname__}", "patch_size": patch,
            "input_channels": input_channels, **cost}


def epoch_seconds(checkpoint_path: str) -> list[float]:
    """Duration of every epoch logged in an nnU-Net checkpoint (its logger's start/end timestamps)."""
    try:
        checkpoint = torch.load(checkpoint_path, map_location="cpu", weights_only=False, mmap=True)
    except RuntimeError:  # a checkpoint not in torch's zip format cannot be memory-mapped
        checkpoint = torch.load(checkpoint_path, map_location="cpu", weights_only=False)
    logging = checkpoint.get("logging", {})
    return [float(end - start) for start, end in zip(logging.get("epoch_start_timestamps", []),
                                                     logging.get("epoch_end_timestamps", []))]


def describe_training(model_dir: str, trainer: str, configuration: str, folds: list[str]) -> dict:
    """Network cost and training time of one trained configuration; ``problems`` says what could not be found.

    Returns {"network_class", "patch_size", "input_channels", "parameters", "gmacs" (None when the network cannot
    be built), "train_seconds" (fold -> seconds, folds without checkpoint_final.pth left out), "epochs" (fold ->
    logged epochs), "problems"}.
    """
    info: dict = {"network_class": None, "patch_size": None, "input_channels": None, "parameters": None,
                  "gmacs": None, "train_seconds": {}, "epochs": {}, "problems": []}
    try:
        info.update(network_cost_of_training(model_dir, trainer, configuration))
    except ValueError as error:
        info["problems"].append(f"#Params/GMACs: {error}")
    for fold in folds:
        name = f"fold_{fold}/{CHECKPOINT}"
        path = os.path.join(model_dir, name)
        if not os.path.isfile(path):
            info["problems"].append(f"training time: no {name}")
            continue
        durations = epoch_seconds(path)
        if not durations:
            info["problems"].append(f"training time: {name} logs no epoch timestamps")
            continue
        info["train_seconds"][fold] = sum(durations)
        info["epochs"][fold] = len(durations)
    return info
