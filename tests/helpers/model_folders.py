"""Tiny "trained" nnU-Net results folders, written in-process in seconds (no nnUNetv2_train run).

A folder holds what nnU-Net's predictor reads: plans.json (e2e_data.tiny_plans with the network's architecture
block), dataset.json and fold_F/checkpoint_final.pth (network weights, trainer name, configuration, mirroring axes).
The weights are the trainer's network at tiny widths after ``train_steps`` Adam steps on e2e_data cases (0: the
initialisation), seeded per fold.
"""
from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from helpers.e2e_data import DATASET_JSON, make_case, tiny_plans

DATASET = "Dataset901_Aniso"


#: nnU-Net 2.8.1's resampling entries of a 3d_fullres configuration (read when predictions are exported)
RESAMPLING = {
    "resampling_fn_data": "resample_data_or_seg_to_shape", "resampling_fn_seg": "resample_data_or_seg_to_shape",
    "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
    "resampling_fn_data_kwargs": {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None},
    "resampling_fn_seg_kwargs": {"is_seg": True, "order": 1, "order_z": 0, "force_separate_z": None},
    "resampling_fn_probabilities_kwargs": {"is_seg": False, "order": 1, "order_z": 0, "force_separate_z": None},
}


def _plain_architecture(residual: bool) -> dict:
    architecture = copy.deepcopy(tiny_plans()["configurations"]["3d_fullres"]["architecture"])
    kwargs = architecture["arch_kwargs"]
    kwargs["features_per_stage"] = [4, 8, 16]
    if residual:
        architecture["network_class_name"] = "dynamic_network_architectures.architectures.unet.ResidualEncoderUNet"
        kwargs["n_blocks_per_stage"] = kwargs.pop("n_conv_per_stage")
        kwargs["n_conv_per_stage_decoder"] = [1, 1]
    return architecture


def tiny_model(network: str) -> tuple[str, dict, list[int]]:
    """(trainer, architecture block, patch) of a tiny model of ``network``: a registry name (uc3dunet, uxnet,
    uc_nnunet) or nnU-Net's plainunet / resenc."""
    from nnunetv2_uc.architectures.registry import network_entry
    from nnunetv2_uc.planning.uc_plans import with_uc_connections

    if network == "uc3dunet":
        return "nnUNetTrainerUC", network_entry("uc3dunet").plans_architecture(features=[4, 8, 16, 32, 64, 4]), \
            [16, 32, 32]
    if network == "uxnet":
        return "nnUNetTrainerUXNet", network_entry("uxnet").plans_architecture(
            feature_sizes=[4, 8, 16, 32], depths=[1, 1, 1, 1], hidden_size=32), [16, 32, 32]
    if network == "uc_nnunet":
        return "nnUNetTrainer", with_uc_connections(_plain_architecture(False), [16, 32, 32]), [16, 32, 32]
    if network in ("plainunet", "resenc"):
        return "nnUNetTrainer", _plain_architecture(network == "resenc"), [12, 28, 28]
    raise ValueError(network)


def _train(network: torch.nn.Module, patch: Sequence[int], steps: int, seed: int) -> None:
    """``steps`` Adam steps of cross-entropy on the full-resolution output, one padded e2e_data case each."""
    rng = np.random.default_rng(seed)
    optimizer = torch.optim.Adam(network.parameters(), lr=1e-2)
    network.train()
    for _ in range(steps):
        image, label = make_case(rng)
        pad = [(0, p - s) for p, s in zip(patch, image.shape)]
        x = torch.from_numpy(np.pad(image, pad))[None, None]
        y = torch.from_numpy(np.pad(label, pad)).long()[None]
        output = network(x)
        output = output[0] if isinstance(output, (list, tuple)) else output
        loss = torch.nn.functional.cross_entropy(output, y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    network.eval()


def write_model_folder(results: Path, network: str, folds: Sequence[int] = (0,), train_steps: int = 0,
                       plans_name: str = "nnUNetPlans") -> Path:
    """$nnUNet_results/Dataset901_Aniso/TRAINER__PLANS__3d_fullres for a tiny ``network``; returns the folder."""
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
    from nnunetv2_uc.registration import register_trainers
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunetv2_uc.trainers import nnUNetTrainerUC, nnUNetTrainerUXNet

    register_trainers()
    trainer, architecture, patch = tiny_model(network)
    trainer_class = {"nnUNetTrainer": nnUNetTrainer, "nnUNetTrainerUC": nnUNetTrainerUC,
                     "nnUNetTrainerUXNet": nnUNetTrainerUXNet}[trainer]
    plans = tiny_plans(patch=patch)
    plans["plans_name"] = plans_name
    # read by nnU-Net's preprocessor for every scheme (only CT normalisation uses the values)
    plans["foreground_intensity_properties_per_channel"] = {"0": {
        "max": 8.0, "mean": 0.0, "median": 0.0, "min": -8.0, "percentile_00_5": -3.0, "percentile_99_5": 3.0,
        "std": 1.0}}
    plans["configurations"]["3d_fullres"]["architecture"] = architecture
    plans["configurations"]["3d_fullres"].update(RESAMPLING)  # tiny_plans leaves out what only prediction reads
    folder = Path(results) / DATASET / f"{trainer}__{plans_name}__3d_fullres"
    folder.mkdir(parents=True)
    (folder / "plans.json").write_text(json.dumps(plans, indent=2))
    (folder / "dataset.json").write_text(json.dumps(DATASET_JSON, indent=2))
    manager = PlansManager(plans)
    for fold in folds:
        torch.manual_seed(fold)
        net = trainer_class.build_network_architecture(manager, manager.get_configuration("3d_fullres"), 1, 3,
                                                       enable_deep_supervision=False)
        _train(net, patch, train_steps, seed=fold)
        (folder / f"fold_{fold}").mkdir()
        torch.save({"network_weights": net.state_dict(), "trainer_name": trainer,
                    "init_args": {"configuration": "3d_fullres", "fold": fold, "plans": plans,
                                  "dataset_json": DATASET_JSON},
                    "inference_allowed_mirroring_axes": (0, 1, 2)},
                   folder / f"fold_{fold}" / "checkpoint_final.pth")
    return folder
