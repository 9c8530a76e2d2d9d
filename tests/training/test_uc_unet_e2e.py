"""uC on nnU-Net's own network end to end with the STOCK commands and no plugin trainer (CPU, a few minutes).

Tiny anisotropic dataset (tests/e2e_data.py, 6 training + 2 held-out cases) -> nnUNetv2_plan_and_preprocess ->
`nnunetv2_uc plan -d D --network uc-nnunet` (nnUNetPlans_UCUNet, reusing the preprocessed data) ->
`nnUNetv2_train D 3d_fullres 0 -p nnUNetPlans_UCUNet -tr nnUNetTrainer_1epoch -device cpu` (nnU-Net's SGD and deep
supervision) -> `nnUNetv2_predict -p nnUNetPlans_UCUNet -tr nnUNetTrainer_1epoch`, all with nnUNet_extTrainer unset.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from helpers.e2e_data import SHAPE_ZYX, nnunet_env, write_raw_dataset
from test_e2e_stock_cli import chance_dice, check_held_out_predictions, read_nifti, run_cli

pytestmark = pytest.mark.slow

DATASET_ID = 902
DATASET = "Dataset902_UCUNet"
UC_PLANS = "nnUNetPlans_UCUNet"
TRAINER = "nnUNetTrainer_1epoch"
N_TRAIN, N_TEST = 6, 2
UC_CLASS = "nnunetv2_uc.architectures.uc_unet.UCPlainConvUNet"


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    """Plan, uC plans (the plugin's planner), train fold 0, predict the held-out cases. Returns (root, raw folder)."""
    root = tmp_path_factory.mktemp("uc_e2e")
    env = nnunet_env(root)
    env.pop("nnUNet_extTrainer", None)
    # nnU-Net trains on CPU with 2 threads; spinning OpenMP waits burn a shared machine's cores (docs/demo_schedule.md)
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    raw = write_raw_dataset(root / "raw", DATASET_ID, "UCUNet", N_TRAIN, N_TEST, seed=1)
    planning_env = {k: v for k, v in env.items() if k != "nnUNet_n_proc_DA"}  # 0 crashes nnU-Net's planning
    run_cli(["nnUNetv2_plan_and_preprocess", "-d", str(DATASET_ID), "-c", "3d_fullres", "-np", "1"], planning_env,
            root / "plan.log")
    run_cli(["nnunetv2_uc", "plan", "-d", str(DATASET_ID), "--network", "uc-nnunet"], planning_env,
            root / "uc_plan.log")

    assert "nnUNet_extTrainer" not in env  # only nnU-Net's own trainers can be found
    run_cli(["nnUNetv2_train", str(DATASET_ID), "3d_fullres", "0", "-p", UC_PLANS, "-tr", TRAINER, "-device", "cpu"],
            env, root / "train.log")
    run_cli(["nnUNetv2_predict", "-i", str(raw / "imagesTs"), "-o", str(root / "pred"), "-d", str(DATASET_ID),
             "-c", "3d_fullres", "-p", UC_PLANS, "-tr", TRAINER, "-f", "0", "-device", "cpu", "-npp", "1",
             "-nps", "1"], env, root / "predict.log")
    return root, raw


def _fold_dir(root: Path) -> Path:
    return root / "results" / DATASET / f"{TRAINER}__{UC_PLANS}__3d_fullres" / "fold_0"


def test_uc_plans_keep_nnunets_topology_and_data(pipeline):
    root, _ = pipeline
    folder = root / "preprocessed" / DATASET
    base = json.loads((folder / "nnUNetPlans.json").read_text())["configurations"]["3d_fullres"]
    uc = json.loads((folder / f"{UC_PLANS}.json").read_text())["configurations"]["3d_fullres"]
    assert uc["architecture"]["network_class_name"] == UC_CLASS
    assert uc["patch_size"] == base["patch_size"] == list(SHAPE_ZYX)  # the whole (tiny) image, as nnU-Net plans
    added = {k: v for k, v in uc["architecture"]["arch_kwargs"].items()
             if k not in base["architecture"]["arch_kwargs"]}
    assert added == {"uc_stages": [0], "uc_depths": [2], "uc_slice_axis": "first"}  # 28x28 in-plane: 28->14->7
    assert {k: uc["architecture"]["arch_kwargs"][k] for k in base["architecture"]["arch_kwargs"]} == \
        base["architecture"]["arch_kwargs"]
    assert uc["data_identifier"] == base["data_identifier"] and uc["spacing"] == base["spacing"]
    assert "reuses the preprocessed data" in (root / "uc_plan.log").read_text()


def test_stock_trainer_trains_the_uc_network_with_deep_supervision_and_sgd(pipeline):
    import torch

    root, _ = pipeline
    fold = _fold_dir(root)
    checkpoint = torch.load(fold / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    assert checkpoint["trainer_name"] == TRAINER
    weights = checkpoint["network_weights"]
    uc_keys = [k for k in weights if k.startswith("decoder.uc_fusions.0.")]
    assert any(".u_connection." in k for k in uc_keys) and any(".fusion." in k for k in uc_keys), sorted(weights)[:20]
    n_stages = len(json.loads((fold.parent / "plans.json").read_text())["configurations"]["3d_fullres"]
                   ["architecture"]["arch_kwargs"]["strides"])
    heads = {k.split(".")[2] for k in weights if k.startswith("decoder.seg_layers.")}
    assert heads == {str(i) for i in range(n_stages - 1)}  # one head per decoder stage, as nnU-Net's decoder
    # nnUNetTrainer's own record (debug.json): deep supervision on, its loss wrapped for it, SGD
    debug = json.loads((fold / "debug.json").read_text())
    assert debug["enable_deep_supervision"] == "True"
    assert debug["loss"].startswith("DeepSupervisionWrapper(")
    assert debug["optimizer"].startswith("SGD (")
    assert debug["network"] == "UCPlainConvUNet"
    used_plans = json.loads((fold.parent / "plans.json").read_text())
    assert used_plans["plans_name"] == UC_PLANS
    assert used_plans["configurations"]["3d_fullres"]["architecture"]["network_class_name"] == UC_CLASS
    assert "Could not find" not in (root / "train.log").read_text()


def test_validation_dice_above_chance(pipeline):
    root, raw = pipeline
    summary = json.loads((_fold_dir(root) / "validation" / "summary.json").read_text())
    reference = np.concatenate([read_nifti(p)[0].ravel() for p in (raw / "labelsTr").glob("*.nii.gz")])
    for label in ("1", "2"):
        assert summary["mean"][label]["Dice"] > 3 * chance_dice(reference, int(label)), summary["mean"]


def test_stock_predictor_predicts_held_out_cases(pipeline):
    root, raw = pipeline
    check_held_out_predictions(root / "pred", raw, N_TEST)
    assert "nnUNet_extTrainer" not in (root / "predict.log").read_text()
