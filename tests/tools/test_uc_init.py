"""`nnunetv2_uc uc-init` (nnunetv2_uc/weights/uc_init.py) on hand-made plans and checkpoints: the weights it writes start the
uC network as the trained one, the uC plans it makes keep the topology, and bad input names the file and the fix,
writing nothing. The stock `nnUNetv2_train -pretrained_weights` run is in tests/training/test_uc_unet_e2e.py."""
from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from helpers.paths import fixture_path
from nnunetv2_uc.errors import OverwriteRefused, UserError
from nnunetv2_uc.weights.uc_init import write_uc_init
from nnunetv2_uc.planning.uc_plans import uc_plans_from

DATASET = "Dataset950_UCInit"
PLAIN = "dynamic_network_architectures.architectures.unet.PlainConvUNet"
UC_KEYS = ("uc_stages", "uc_depths", "uc_slice_axis")


def _plain_plans() -> dict:
    """nnU-Net plans of a tiny PlainConvUNet (the arch_kwargs of the uC fixture without its uC entries)."""
    arch_kwargs = {k: v for k, v in torch.load(fixture_path("uc_unet_replace_2b79b8d.pt"))["UCPlainConvUNet"][
        "arch_kwargs"].items() if k not in UC_KEYS}
    configuration = {
        "data_identifier": "nnUNetPlans_3d_fullres", "preprocessor_name": "DefaultPreprocessor", "batch_size": 2,
        "patch_size": [8, 32, 32], "median_image_size_in_voxels": [8, 32, 32], "spacing": [3.0, 1.0, 1.0],
        "normalization_schemes": ["ZScoreNormalization"], "use_mask_for_norm": [False],
        "architecture": {"network_class_name": PLAIN, "arch_kwargs": arch_kwargs,
                         "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"]},
        "batch_dice": False,
    }
    return {"dataset_name": DATASET, "plans_name": "nnUNetPlans", "configurations": {"3d_fullres": configuration},
            "label_manager": "LabelManager", "transpose_forward": [0, 1, 2], "transpose_backward": [0, 1, 2]}


@pytest.fixture
def dataset(tmp_path, monkeypatch) -> Path:
    folder = tmp_path / "preprocessed" / DATASET
    folder.mkdir(parents=True)
    (folder / "dataset.json").write_text(json.dumps({"channel_names": {"0": "MRI"}, "numTraining": 5,
                                                     "labels": {"background": 0, "a": 1, "b": 2},
                                                     "file_ending": ".nii.gz"}))
    (folder / "nnUNetPlans.json").write_text(json.dumps(_plain_plans()))
    monkeypatch.setenv("nnUNet_preprocessed", str(tmp_path / "preprocessed"))
    monkeypatch.setenv("nnUNet_raw", str(tmp_path / "raw"))
    monkeypatch.setenv("nnUNet_results", str(tmp_path / "results"))
    return folder


def _network(plans: dict) -> torch.nn.Module:
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    manager = PlansManager(plans)
    return nnUNetTrainer.build_network_architecture(manager, manager.get_configuration("3d_fullres"), 1, 3,
                                                    enable_deep_supervision=True)


def _trained_checkpoint(path: Path, plans: dict) -> torch.nn.Module:
    """A checkpoint as nnU-Net writes it (network_weights, init_args with the plans, numpy scalars in logging)."""
    import numpy as np

    network = _network(plans)
    with torch.no_grad():
        for p in network.parameters():
            p.add_(0.1 * torch.randn_like(p))
    torch.save({"network_weights": network.state_dict(), "logging": {"ema_fg_dice": [np.float64(0.5)]},
                "init_args": {"plans": plans, "configuration": "3d_fullres", "fold": 0}, "trainer_name": "nnUNetTrainer"},
               path)
    return network


def test_weights_start_the_uc_network_as_the_trained_one_and_plans_keep_the_topology(dataset, tmp_path):
    plain = _trained_checkpoint(tmp_path / "plain.pth", _plain_plans())
    result = write_uc_init(tmp_path / "plain.pth", DATASET, "nnUNetPlans_UCInit", tmp_path / "init.pth")
    assert result.plans_written and result.plans_path == dataset / "nnUNetPlans_UCInit.json"
    uc_plans = json.loads(result.plans_path.read_text())
    config, base = uc_plans["configurations"]["3d_fullres"], _plain_plans()["configurations"]["3d_fullres"]
    assert config["patch_size"] == base["patch_size"] and config["data_identifier"] == base["data_identifier"]
    assert config["architecture"]["arch_kwargs"]["uc_fusion"] == "residual"
    uc = _network(uc_plans)
    weights = torch.load(tmp_path / "init.pth")["network_weights"]
    uc.load_state_dict(weights, strict=True)
    assert result.initialised == len([k for k in weights if k.startswith("decoder.uc_fusions.")]) > 0
    x = torch.randn(1, 1, 8, 32, 32)
    with torch.no_grad():
        for a, b in zip(uc.eval()(x), plain.eval()(x)):
            assert (a - b).abs().max().item() <= 1e-5
    # existing uC plans of the same topology are used as they are (not rewritten)
    again = write_uc_init(tmp_path / "plain.pth", DATASET, "nnUNetPlans_UCInit", tmp_path / "again.pth")
    assert not again.plans_written


def test_refusals_name_the_file_and_write_nothing(dataset, tmp_path):
    _trained_checkpoint(tmp_path / "plain.pth", _plain_plans())
    output = tmp_path / "init.pth"
    with pytest.raises(UserError, match=r"checkpoint .*missing.pth does not exist"):
        write_uc_init(tmp_path / "missing.pth", DATASET, "nnUNetPlans_UCInit", output)
    # uC plans of another topology
    other = uc_plans_from(_plain_plans(), "nnUNetPlans_UCOther")
    other["configurations"]["3d_fullres"]["architecture"]["arch_kwargs"]["features_per_stage"] = [4, 8, 16, 32]
    (dataset / "nnUNetPlans_UCOther.json").write_text(json.dumps(other))
    with pytest.raises(UserError, match=r"nnUNetPlans_UCOther.json do not share the topology: arch_kwargs "
                                        r"features_per_stage: \[4, 8, 16, 24\] vs \[4, 8, 16, 32\]"):
        write_uc_init(tmp_path / "plain.pth", DATASET, "nnUNetPlans_UCOther", output)
    # plans of the former "replace" fusion, and plans without uC connections
    replace = copy.deepcopy(other)
    replace["configurations"]["3d_fullres"]["architecture"]["arch_kwargs"].pop("uc_fusion")
    (dataset / "nnUNetPlans_UCReplace.json").write_text(json.dumps(replace))
    with pytest.raises(UserError, match=r"uc_fusion is 'replace'"):
        write_uc_init(tmp_path / "plain.pth", DATASET, "nnUNetPlans_UCReplace", output)
    with pytest.raises(UserError, match=r"nnUNetPlans.json, configurations\['3d_fullres'\] names .*PlainConvUNet, "
                                        r"not a uC version"):
        write_uc_init(tmp_path / "plain.pth", DATASET, "nnUNetPlans", output)
    # a bare state dict of another shape: every differing key listed
    state = torch.load(tmp_path / "plain.pth", weights_only=False)["network_weights"]
    state["encoder.stages.0.0.convs.0.conv.weight"] = torch.zeros(5, 1, 1, 3, 3)
    torch.save(state, tmp_path / "bare.pth")
    with pytest.raises(UserError, match=r"nnUNetPlans_UCInit_bare.json: no such file, and the checkpoint holds no "
                                        r"plans .*nnunetv2_uc plan -d Dataset950_UCInit --network uc_nnunet"):
        write_uc_init(tmp_path / "bare.pth", DATASET, "nnUNetPlans_UCInit_bare", output)
    assert not (dataset / "nnUNetPlans_UCInit_bare.json").exists()
    (dataset / "nnUNetPlans_UCSame.json").write_text(json.dumps(uc_plans_from(_plain_plans(), "nnUNetPlans_UCSame")))
    with pytest.raises(UserError, match=r"does not fit .*encoder.stages.0.0.convs.0.conv.weight: \(5, 1, 1, 3, 3\) in "
                                        r"the checkpoint, \(4, 1, 1, 3, 3\) in the plans"):
        write_uc_init(tmp_path / "bare.pth", DATASET, "nnUNetPlans_UCSame", output)
    assert not output.exists()
    # an existing output is kept without --overwrite
    output.write_text("keep")
    with pytest.raises(OverwriteRefused):
        write_uc_init(tmp_path / "plain.pth", DATASET, "nnUNetPlans_UCInit", output)
    assert output.read_text() == "keep"


def test_cli_exit_codes_and_message(dataset, tmp_path):
    _trained_checkpoint(tmp_path / "plain.pth", _plain_plans())
    command = [sys.executable, "-m", "nnunetv2_uc", "uc-init", "--checkpoint", str(tmp_path / "plain.pth"), "-d",
               DATASET, "-p", "nnUNetPlans_UCInit", "-o", str(tmp_path / "init.pth")]
    done = subprocess.run(command, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "-pretrained_weights" in done.stdout and "nnUNetv2_train Dataset950_UCInit 3d_fullres FOLD" in done.stdout
    refused = subprocess.run(command, capture_output=True, text=True)
    assert refused.returncode == 3 and "pass --overwrite" in refused.stderr
