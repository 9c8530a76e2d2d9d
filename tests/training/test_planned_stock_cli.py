"""Truthful plans with the stock nnU-Net commands (subprocesses, CPU, minutes):

- `nnunetv2_uc plan` -> `nnUNetv2_train -p` -> `nnUNetv2_predict -p` (issue 11's end-to-end check): the results
  folder's plans.json names the trained network, nnU-Net's `get_network_from_plans` rebuilds it and the final
  checkpoint loads strictly;
- a results folder trained by 0.1.0 (tests/fixtures/legacy_results_0.1.0: nnU-Net's U-Net in plans.json, the uC
  kwargs in `uc3dunet_kwargs`) still predicts the segmentations 0.1.0 predicted, and resumes with `--c`.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers.e2e_data import nnunet_env, write_raw_dataset
from helpers.paths import FIXTURES
from test_e2e_stock_cli import read_nifti, run_cli

pytestmark = pytest.mark.slow

LEGACY = FIXTURES / "legacy_results_0.1.0"
LEGACY_TRAINER_FOLDER = "nnUNetTrainerUC_tiny__nnUNetPlans__3d_fullres"
UC_CLASS = "nnunetv2_uc.architectures.uc3dunet.UC3DUNet"


def _registered(env: dict, log_dir: Path) -> dict:
    export = run_cli(["nnunetv2_uc", "env"], env, log_dir / "env.log").stdout.strip()
    return {**env, "nnUNet_extTrainer": export.split("=", 1)[1].strip("'")}


def _strict_load(model_folder: Path, fold: int = 0) -> torch.nn.Module:
    """Rebuild the network from the results folder's plans with nnU-Net's own builder; load strictly."""
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

    plans = json.loads((model_folder / "plans.json").read_text())
    dataset = json.loads((model_folder / "dataset.json").read_text())
    arch = plans["configurations"]["3d_fullres"]["architecture"]
    network = get_network_from_plans(arch["network_class_name"], arch["arch_kwargs"], arch["_kw_requires_import"],
                                     len(dataset["channel_names"]), len(dataset["labels"]), deep_supervision=False)
    checkpoint = torch.load(model_folder / f"fold_{fold}" / "checkpoint_final.pth", map_location="cpu",
                            weights_only=False)
    network.load_state_dict(checkpoint["network_weights"], strict=True)
    return network


def test_plan_then_stock_train_and_predict_with_the_plans_name(tmp_path):
    env = _registered(nnunet_env(tmp_path), tmp_path)
    planning_env = {k: v for k, v in env.items() if k != "nnUNet_n_proc_DA"}  # planning rejects 0 threads
    raw = write_raw_dataset(tmp_path / "raw", 903, "PlannedUC", n_train=6, n_test=1, seed=3)
    run_cli(["nnUNetv2_plan_and_preprocess", "-d", "903", "-c", "3d_fullres", "-np", "1"], planning_env,
            tmp_path / "nnunet_plan.log")
    out = run_cli(["nnunetv2_uc", "plan", "-d", "903", "--network", "uc3dunet", "-overwrite_plans_name", "UCPlans"],
                  planning_env, tmp_path / "plan.log").stdout
    assert "reuses the preprocessed data" in out  # same spacing and preprocessing as nnUNetPlans: no second run
    plans = json.loads((tmp_path / "preprocessed" / "Dataset903_PlannedUC" / "UCPlans.json").read_text())
    planned = plans["configurations"]["3d_fullres"]
    assert planned["architecture"]["network_class_name"] == UC_CLASS
    # narrower network: CI trains it on 2 cores
    planned["architecture"]["arch_kwargs"]["features"] = [4, 8, 16, 32, 64, 4]
    (tmp_path / "preprocessed" / "Dataset903_PlannedUC" / "UCPlans.json").write_text(json.dumps(plans, indent=2))

    run_cli(["nnUNetv2_train", "903", "3d_fullres", "0", "-tr", "nnUNetTrainerUC_tiny", "-p", "UCPlans",
             "-device", "cpu"], env, tmp_path / "train.log")
    model = tmp_path / "results" / "Dataset903_PlannedUC" / "nnUNetTrainerUC_tiny__UCPlans__3d_fullres"
    trained = json.loads((model / "plans.json").read_text())["configurations"]["3d_fullres"]
    assert trained["architecture"] == planned["architecture"]
    assert (trained["patch_size"], trained["batch_size"]) == (planned["patch_size"], planned["batch_size"])
    assert type(_strict_load(model)).__name__ == "UC3DUNet"

    run_cli(["nnUNetv2_predict", "-i", str(raw / "imagesTs"), "-o", str(tmp_path / "pred"), "-d", "903", "-c",
             "3d_fullres", "-f", "0", "-tr", "nnUNetTrainerUC_tiny", "-p", "UCPlans", "-device", "cpu", "-npp", "1",
             "-nps", "1"], env, tmp_path / "predict.log")
    [prediction] = sorted((tmp_path / "pred").glob("*.nii.gz"))
    reference, _ = read_nifti(next((raw / "imagesTs").glob("*.nii.gz")))
    segmentation, _ = read_nifti(prediction)
    assert segmentation.shape == reference.shape and set(np.unique(segmentation)) <= {0, 1, 2}


@pytest.fixture
def legacy(tmp_path) -> tuple[dict, Path, Path]:
    """The 0.1.0 results folder in a fresh nnUNet_results, with the raw dataset it was trained on."""
    env = _registered(nnunet_env(tmp_path), tmp_path)
    raw = write_raw_dataset(tmp_path / "raw", 901, "LegacyUC", n_train=6, n_test=2, seed=0)
    shutil.copytree(LEGACY / "Dataset901_LegacyUC", tmp_path / "results" / "Dataset901_LegacyUC")
    return env, raw, tmp_path / "results" / "Dataset901_LegacyUC" / LEGACY_TRAINER_FOLDER


def test_a_results_folder_of_0_1_0_predicts_what_0_1_0_predicted(legacy, tmp_path):
    env, raw, model = legacy
    plans = json.loads((model / "plans.json").read_text())["configurations"]["3d_fullres"]
    assert plans["architecture"]["network_class_name"].endswith("PlainConvUNet") and "uc3dunet_kwargs" in plans
    run_cli(["nnUNetv2_predict", "-i", str(raw / "imagesTs"), "-o", str(tmp_path / "pred"), "-d", "901", "-c",
             "3d_fullres", "-f", "0", "-tr", "nnUNetTrainerUC_tiny", "-device", "cpu", "-npp", "1", "-nps", "1"],
            env, tmp_path / "predict.log")
    for case in ("case_006", "case_007"):
        now, _ = read_nifti(tmp_path / "pred" / f"{case}.nii.gz")
        then, _ = read_nifti(LEGACY / "predictions" / f"{case}.nii.gz")
        np.testing.assert_array_equal(now, then)


def test_a_results_folder_of_0_1_0_resumes_and_then_names_its_network(legacy, tmp_path):
    env, raw, model = legacy
    planning_env = {k: v for k, v in env.items() if k != "nnUNet_n_proc_DA"}
    run_cli(["nnUNetv2_plan_and_preprocess", "-d", "901", "-c", "3d_fullres", "-np", "1"], planning_env,
            tmp_path / "nnunet_plan.log")
    # 0.1.0 read the network's kwargs from the preprocessed plans (as the fixture was made)
    plans_file = tmp_path / "preprocessed" / "Dataset901_LegacyUC" / "nnUNetPlans.json"
    plans = json.loads(plans_file.read_text())
    plans["configurations"]["3d_fullres"]["uc3dunet_kwargs"] = {"features": [2, 4, 8, 16, 32, 2]}
    plans_file.write_text(json.dumps(plans, indent=2))
    run_cli(["nnUNetv2_train", "901", "3d_fullres", "0", "-tr", "nnUNetTrainerUC_tiny", "--c", "-device", "cpu"],
            env, tmp_path / "resume.log")
    resumed = json.loads((model / "plans.json").read_text())["configurations"]["3d_fullres"]
    assert resumed["architecture"]["network_class_name"] == UC_CLASS
    assert resumed["architecture"]["arch_kwargs"]["features"] == [2, 4, 8, 16, 32, 2]
    assert "uc3dunet_kwargs" not in resumed
    _strict_load(model)
