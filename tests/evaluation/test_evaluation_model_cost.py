"""`nnunetv2_uc evaluate --nnunet-results` comparisons: #Params, GMACs and training time of each model, built from
its results folder as nnUNetv2_predict builds it, and models trained with different plans (TRAINER__PLANS)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

from helpers.e2e_data import write_raw_dataset
from helpers.paths import FIXTURES
from nnunetv2_uc.architectures.uc3dunet import UC3DUNet
from nnunetv2_uc.cli import main
from nnunetv2_uc.measure.cost import count_macs, count_parameters
from nnunetv2_uc.planning.uc_plans import with_uc_connections

FIXTURE = FIXTURES / "legacy_results_0.1.0"
DATASET = "Dataset901_LegacyUC"
LEGACY_MODEL = "nnUNetTrainerUC_tiny__nnUNetPlans__3d_fullres"
PATCH = [16, 32, 32]
CASES = ("case_006", "case_007")


@pytest.fixture()
def results(tmp_path, monkeypatch) -> Path:
    """Three fold-0 trainings of Dataset901 in $nnUNet_results:
    - nnUNetTrainerUC_tiny (the committed 0.1.0 model: UC3DUNet, widths 2..32; its predictions as validation),
    - nnUNetTrainer with nnUNetPlans (PlainConvUNet), perfect validation, no checkpoint,
    - nnUNetTrainer with nnUNetPlans_UCUNet (the uC version of that plan), perfect validation, no checkpoint.
    References: the fixture's held-out labels, regenerated with its seed (tests/e2e_data.py)."""
    raw = write_raw_dataset(tmp_path / "raw", 901, "LegacyUC", n_train=6, n_test=2, seed=0)
    gt = tmp_path / "preprocessed" / DATASET / "gt_segmentations"
    gt.mkdir(parents=True)
    for case in CASES:
        shutil.copy(raw / "labelsTs" / f"{case}.nii.gz", gt)
    shutil.copy(raw / "dataset.json", gt.parent / "dataset.json")

    dataset_dir = tmp_path / "results" / DATASET
    legacy = dataset_dir / LEGACY_MODEL
    shutil.copytree(FIXTURE / DATASET / LEGACY_MODEL, legacy)
    shutil.copytree(FIXTURE / "predictions", legacy / "fold_0" / "validation")
    plans = json.loads((legacy / "plans.json").read_text())
    for plans_name in ("nnUNetPlans", "nnUNetPlans_UCUNet"):
        model = dataset_dir / f"nnUNetTrainer__{plans_name}__3d_fullres"
        shutil.copytree(gt, model / "fold_0" / "validation")
        shutil.copy(legacy / "dataset.json", model / "dataset.json")
        if plans_name.endswith("UCUNet"):
            config = plans["configurations"]["3d_fullres"]
            config["architecture"] = with_uc_connections(config["architecture"], config["patch_size"])
        (model / "plans.json").write_text(json.dumps({**plans, "plans_name": plans_name}))
    for variable in ("nnUNet_preprocessed", "nnUNet_raw", "nnUNet_results"):
        monkeypatch.setenv(variable, str(tmp_path / variable.split("_")[1]))
    monkeypatch.delenv("nnUNet_extTrainer", raising=False)  # evaluate registers the plugin's trainers itself
    return dataset_dir


def _arch(results: Path, plans_name: str) -> dict:
    plans = json.loads((results / f"nnUNetTrainer__{plans_name}__3d_fullres" / "plans.json").read_text())
    return plans["configurations"]["3d_fullres"]["architecture"]


def test_comparison_has_the_cost_of_each_network_as_the_predictor_builds_it(results, tmp_path, capsys):
    models = "nnUNetTrainerUC_tiny,nnUNetTrainer,nnUNetTrainer__nnUNetPlans_UCUNet"
    table = tmp_path / "compare.md"
    assert main(["evaluate", "--nnunet-results", "901", models, "3d_fullres", "--folds", "0",
                 "-o", str(tmp_path / "cv.json"), "--table", str(table)]) == 0
    info = {name: json.loads((tmp_path / f"cv.{name}.json").read_text())["model"] for name in models.split(",")}

    # the 0.1.0 model: its plans.json names PlainConvUNet, but its trainer builds UC3DUNet from uc3dunet_kwargs
    checkpoint = torch.load(results / LEGACY_MODEL / "fold_0" / "checkpoint_final.pth", map_location="cpu",
                            weights_only=False)
    legacy = info["nnUNetTrainerUC_tiny"]
    assert legacy["network_class"] == "nnunetv2_uc.architectures.uc3dunet.UC3DUNet"
    uc3dunet = UC3DUNet(1, 3, features=[2, 4, 8, 16, 32, 2])
    uc3dunet.load_state_dict(checkpoint["network_weights"])  # strict: the checkpoint's network
    # parameters, not state-dict entries: uC's 2-D U-Nets are shared modules, listed more than once in a state dict
    assert legacy["parameters"] == count_parameters(uc3dunet) == 152_539
    assert legacy["gmacs"] == pytest.approx(count_macs(uc3dunet, 1, 3, PATCH) / 1e9, rel=1e-12)
    assert legacy["patch_size"] == PATCH
    logged = checkpoint["logging"]
    seconds = sum(e - s for s, e in zip(logged["epoch_start_timestamps"], logged["epoch_end_timestamps"]))
    assert legacy["train_seconds"] == {"0": pytest.approx(seconds)} and legacy["epochs"] == {"0": 2}

    # nnU-Net's network from -p's plans, and the same plan with uC connections
    for name, plans_name, class_name in (("nnUNetTrainer", "nnUNetPlans", "PlainConvUNet"),
                                         ("nnUNetTrainer__nnUNetPlans_UCUNet", "nnUNetPlans_UCUNet",
                                          "UCPlainConvUNet")):
        arch = _arch(results, plans_name)
        network = get_network_from_plans(arch["network_class_name"], arch["arch_kwargs"],
                                         arch["_kw_requires_import"], 1, 3, deep_supervision=False)
        assert info[name]["network_class"].endswith("." + class_name)
        assert info[name]["parameters"] == count_parameters(network)
        assert info[name]["gmacs"] == pytest.approx(count_macs(network, 1, 3, PATCH) / 1e9, rel=1e-12)
        assert info[name]["train_seconds"] == {}
        assert info[name]["problems"] == ["training time: no fold_0/checkpoint_final.pth"]
    assert info["nnUNetTrainer__nnUNetPlans_UCUNet"]["parameters"] > info["nnUNetTrainer"]["parameters"]

    comparison = table.read_text().split("models compared")[1]
    minutes = f"{seconds / 60:.1f}"
    assert (f"| nnUNetTrainerUC_tiny | 0.15 | {legacy['gmacs']:.3f} | {minutes} | class-first | 2 |"
            in comparison)
    uc = info["nnUNetTrainer__nnUNetPlans_UCUNet"]
    assert (f"| nnUNetTrainer__nnUNetPlans_UCUNet | {uc['parameters'] / 1e6:.2f} | {uc['gmacs']:.3f} | n/a | "
            f"class-first | 2 | 100.00 | 100.00 | 0.00 |") in comparison
    assert "nnUNetTrainer: training time: no fold_0/checkpoint_final.pth" in comparison
    printed = capsys.readouterr().out
    assert "Dataset901_LegacyUC: nnUNetTrainer__nnUNetPlans_UCUNet__3d_fullres, cross-validation folds 0" in printed
    assert "Searching in" not in printed  # nnU-Net's trainer search stays out of the tables


def test_model_items_take_plans_and_bad_items_are_clear_errors(results, tmp_path, capsys):
    # TRAINER__PLANS for every model, -p unused
    assert main(["evaluate", "--nnunet-results", "901",
                 "nnUNetTrainer__nnUNetPlans,nnUNetTrainer__nnUNetPlans_UCUNet", "3d_fullres"]) == 0
    assert "| nnUNetTrainer__nnUNetPlans | " in capsys.readouterr().out
    # -p is the plans of models without __PLANS
    assert main(["evaluate", "--nnunet-results", "901", "nnUNetTrainer", "3d_fullres", "-p", "nnUNetPlans_UCUNet",
                 "-o", str(tmp_path / "one.json")]) == 0
    assert json.loads((tmp_path / "one.json").read_text())["model"]["network_class"].endswith(".UCPlainConvUNet")
    capsys.readouterr()
    for models, message in (("nnUNetTrainer__nnUNetPlans__3d_fullres", "give TRAINER or TRAINER__PLANS"),
                            ("nnUNetTrainer__", "give TRAINER or TRAINER__PLANS"),
                            ("nnUNetTrainer,nnUNetTrainer__nnUNetPlans", "nnUNetTrainer__nnUNetPlans is listed twice"),
                            ("nnUNetTrainer__nnUNetPlansX", "no such training output")):
        assert main(["evaluate", "--nnunet-results", "901", models, "3d_fullres", "-o", str(tmp_path / "x.json")]) == 2
        assert message in capsys.readouterr().err
        assert not (tmp_path / "x.json").exists()


def test_a_model_whose_trainer_is_unknown_gets_no_cost_but_is_evaluated(results, tmp_path, capsys):
    renamed = results / "nnUNetTrainerGone__nnUNetPlans__3d_fullres"
    shutil.copytree(results / "nnUNetTrainer__nnUNetPlans__3d_fullres", renamed)
    assert main(["evaluate", "--nnunet-results", "901", "nnUNetTrainerGone,nnUNetTrainer", "3d_fullres"]) == 0
    out = capsys.readouterr().out
    assert "| nnUNetTrainerGone | n/a | n/a | n/a | class-first | 2 | 100.00 |" in out
    assert "trainer nnUNetTrainerGone not found by nnU-Net" in out
