"""uC on nnU-Net's own network end to end with the STOCK commands and no plugin trainer (CPU, a few minutes).

Tiny anisotropic dataset (tests/e2e_data.py, 6 training + 2 held-out cases) -> nnUNetv2_plan_and_preprocess ->
`nnunetv2_uc plan -d D --network uc_nnunet` (nnUNetPlans_UCUNet, reusing the preprocessed data) ->
`nnUNetv2_train D 3d_fullres 0 -p nnUNetPlans_UCUNet -tr nnUNetTrainer_1epoch -device cpu` (nnU-Net's SGD and deep
supervision) -> `nnUNetv2_predict -p nnUNetPlans_UCUNet -tr nnUNetTrainer_1epoch`, all with nnUNet_extTrainer unset.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from helpers.e2e_data import SHAPE_ZYX, nnunet_env, write_raw_dataset
from helpers.paths import FIXTURES
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
    run_cli(["nnunetv2_uc", "plan", "-d", str(DATASET_ID), "--network", "uc_nnunet"], planning_env,
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
    assert added == {"uc_stages": [0], "uc_depths": [2], "uc_slice_axis": "first",  # 28x28 in-plane: 28->14->7
                     "uc_fusion": "residual", "uc_residual_gain": 0.1}
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


# ---- uc-init: start uC from a trained nnU-Net model, fine-tune with the stock -pretrained_weights -------------
INIT_PLANS = "nnUNetPlans_UCInit"
INIT_TRAINER = "nnUNetTrainer_1epoch_25its"  # nnUNetTrainer, 25 iterations (tests/fixtures/short_trainers)


@pytest.fixture(scope="module")
def uc_init(pipeline):
    """nnU-Net's network trained (nnU-Net's recipe, 25 iterations) -> `nnunetv2_uc uc-init` (its uC plans made from
    the checkpoint's plans) -> stock nnUNetv2_train -p INIT_PLANS -pretrained_weights with nnU-Net's recipe. Returns
    (root, plain checkpoint, init file)."""
    root, _ = pipeline
    env = nnunet_env(root)
    env["nnUNet_extTrainer"] = str(FIXTURES / "short_trainers")  # nnU-Net's trainer, shortened; no plugin trainer
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    run_cli(["nnUNetv2_train", str(DATASET_ID), "3d_fullres", "0", "-tr", INIT_TRAINER, "-device", "cpu"], env,
            root / "train_plain.log")
    plain = root / "results" / DATASET / f"{INIT_TRAINER}__nnUNetPlans__3d_fullres" / "fold_0" / "checkpoint_final.pth"
    init = root / "uc_init.pth"
    run_cli(["nnunetv2_uc", "uc-init", "--checkpoint", str(plain), "-d", str(DATASET_ID), "-p", INIT_PLANS,
             "-o", str(init)], env, root / "uc_init.log")
    run_cli(["nnUNetv2_train", str(DATASET_ID), "3d_fullres", "0", "-p", INIT_PLANS, "-tr", INIT_TRAINER, "-device",
             "cpu", "-pretrained_weights", str(init)], env, root / "train_uc_init.log")
    return root, plain, init


def _plans_network(plans: dict, dataset_json: dict):
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    manager = PlansManager(plans)
    configuration = manager.get_configuration("3d_fullres")
    return nnUNetTrainer.build_network_architecture(manager, configuration, 1, 3, enable_deep_supervision=False)


def test_uc_init_starts_from_the_trained_network_and_the_stock_trainer_accepts_it(uc_init):
    import torch

    root, plain_path, init_path = uc_init
    folder = root / "preprocessed" / DATASET
    dataset_json = json.loads((folder / "dataset.json").read_text())
    uc_plans = json.loads((folder / f"{INIT_PLANS}.json").read_text())
    base = json.loads((folder / "nnUNetPlans.json").read_text())["configurations"]["3d_fullres"]
    assert uc_plans["configurations"]["3d_fullres"]["patch_size"] == base["patch_size"]
    assert uc_plans["configurations"]["3d_fullres"]["architecture"]["arch_kwargs"]["uc_fusion"] == "residual"
    assert "wrote" in (root / "uc_init.log").read_text() and "uC tensors initialised" in (root / "uc_init.log").read_text()

    checkpoint = torch.load(plain_path, map_location="cpu", weights_only=False)
    plain = _plans_network(checkpoint["init_args"]["plans"], dataset_json)
    plain.load_state_dict(checkpoint["network_weights"])
    uc = _plans_network(uc_plans, dataset_json)
    uc.load_state_dict(torch.load(init_path, map_location="cpu")["network_weights"], strict=True)
    x = torch.randn(1, 1, *base["patch_size"])
    with torch.no_grad():
        assert (uc.eval()(x) - plain.eval()(x)).abs().max().item() <= 1e-5  # the uC network starts as the trained one

    log = (root / "train_uc_init.log").read_text()
    assert "Loading pretrained weights from file" in log and "Could not find" not in log
    fold = root / "results" / DATASET / f"{INIT_TRAINER}__{INIT_PLANS}__3d_fullres" / "fold_0"
    weights = torch.load(fold / "checkpoint_final.pth", map_location="cpu", weights_only=False)["network_weights"]
    scales = [v for k, v in weights.items() if k.endswith("residual_scale")]
    assert scales and any(torch.any(v != 0) for v in scales)  # fine-tuning opened the uC path


def test_uc_init_refuses_plans_of_another_topology_and_writes_nothing(uc_init, tmp_path):
    import subprocess
    import sys

    root, plain_path, _ = uc_init
    folder = root / "preprocessed" / DATASET
    other = json.loads((folder / f"{INIT_PLANS}.json").read_text())
    other["configurations"]["3d_fullres"]["architecture"]["arch_kwargs"]["features_per_stage"][0] = 16
    (folder / "nnUNetPlans_UCOther.json").write_text(json.dumps(other))
    output = tmp_path / "refused.pth"
    result = subprocess.run([sys.executable, "-m", "nnunetv2_uc", "uc-init", "--checkpoint", str(plain_path), "-d",
                             str(DATASET_ID), "-p", "nnUNetPlans_UCOther", "-o", str(output)],
                            env=nnunet_env(root), capture_output=True, text=True)
    assert result.returncode == 2
    assert "do not share the topology" in result.stderr and "features_per_stage" in result.stderr
    assert "nnUNetPlans_UCOther.json" in result.stderr
    assert not output.exists()
