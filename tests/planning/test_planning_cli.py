"""`nnunetv2_uc plan` end to end on a tiny raw dataset (nnU-Net's fingerprint extraction, the plans file that
nnU-Net reads and builds our network from, reuse of nnU-Net's preprocessed data) and its bad-input cases."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from helpers.e2e_data import write_raw_dataset
from nnunetv2_uc.cli import main

DATASET_ID, NAME = 951, "PlanTiny"
DATASET = f"Dataset{DATASET_ID:03d}_{NAME}"


@pytest.fixture(scope="module")
def fingerprinted(tmp_path_factory) -> Path:
    """raw + preprocessed folders with the tiny dataset (4 cases of 12x28x28 at 3x1x1 mm) and its fingerprint
    from nnU-Net's extractor (made once, copied per test)."""
    from nnunetv2.experiment_planning.plan_and_preprocess_api import extract_fingerprint_dataset

    root = tmp_path_factory.mktemp("fingerprinted")
    with pytest.MonkeyPatch.context() as mp:
        for key in ("raw", "preprocessed"):
            (root / key).mkdir()
            mp.setenv(f"nnUNet_{key}", str(root / key))
        write_raw_dataset(root / "raw", DATASET_ID, NAME, n_train=4)
        extract_fingerprint_dataset(DATASET_ID, num_processes=1, verbose=False, show_progress_bar=False)
    return root


@pytest.fixture
def nnunet(fingerprinted, tmp_path, monkeypatch) -> Path:
    """A fresh copy of ``fingerprinted`` as this test's nnU-Net folders."""
    for key in ("raw", "preprocessed", "results"):
        if (fingerprinted / key).is_dir():
            shutil.copytree(fingerprinted / key, tmp_path / key)
        else:
            (tmp_path / key).mkdir()
        monkeypatch.setenv(f"nnUNet_{key}", str(tmp_path / key))
    monkeypatch.delenv("nnUNet_n_proc_DA", raising=False)
    return tmp_path


def files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted((root / "preprocessed").rglob("*")) if p.is_file()}


def test_plan_writes_plans_that_nnunet_reads_and_builds_our_network_from(nnunet, capsys):
    from nnunetv2.experiment_planning.plan_and_preprocess_api import preprocess_dataset
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from nnunetv2_uc.architectures import UC3DUNet

    assert main(["plan", "-d", str(DATASET_ID), "--network", "uc3dunet", "-c", "3d_fullres", "3d_lowres"]) == 0
    out = capsys.readouterr().out
    plans_file = nnunet / "preprocessed" / DATASET / "nnUNetPlans_UC3DUNet.json"
    assert f"-> {plans_file}" in out
    assert "3d_fullres: patch [16, 32, 32], batch 2" in out  # 12x28x28 rounded up to multiples of 16
    assert "nnU-Net's own U-Net: patch [12, 28, 28]" in out
    assert "made no 3d_lowres configuration" in out
    assert (f"preprocess next: nnUNetv2_preprocess -d {DATASET_ID} -plans_name nnUNetPlans_UC3DUNet -c 3d_fullres"
            in out)

    manager = PlansManager(str(plans_file))
    assert manager.plans_name == "nnUNetPlans_UC3DUNet" and manager.available_configurations == ["3d_fullres"]
    configuration = manager.get_configuration("3d_fullres")
    assert configuration.patch_size == [16, 32, 32] and configuration.batch_size == 2
    assert configuration.data_identifier == "nnUNetPlans_3d_fullres"
    network = get_network_from_plans(configuration.network_arch_class_name, configuration.network_arch_init_kwargs,
                                     configuration.network_arch_init_kwargs_req_import, 1, 3, allow_init=True,
                                     deep_supervision=False)
    assert isinstance(network, UC3DUNet) and network.uc_slice_axis == "first"
    with torch.no_grad():
        assert network(torch.zeros(1, 1, *configuration.patch_size)).shape == (1, 3, 16, 32, 32)

    # the printed preprocessing command works on these plans (nnUNetv2_preprocess's API)
    preprocess_dataset(DATASET_ID, "nnUNetPlans_UC3DUNet", ["3d_fullres"], [1])
    assert len(list((nnunet / "preprocessed" / DATASET / "nnUNetPlans_3d_fullres").glob("*.pkl"))) == 4


def test_plan_reuses_nnunets_preprocessed_data(nnunet, capsys):
    from nnunetv2.experiment_planning.plan_and_preprocess_api import plan_experiment_dataset, preprocess_dataset

    plan_experiment_dataset(DATASET_ID)
    preprocess_dataset(DATASET_ID, "nnUNetPlans", ["3d_fullres"], [1])
    capsys.readouterr()
    assert main(["plan", "-d", str(DATASET_ID), "--network", "uxnet"]) == 0
    out = capsys.readouterr().out
    data = nnunet / "preprocessed" / DATASET / "nnUNetPlans_3d_fullres"
    assert f"3d_fullres: reuses the preprocessed data in {data}" in out
    assert "preprocess next" not in out
    plans = json.loads((nnunet / "preprocessed" / DATASET / "nnUNetPlans_UXNet.json").read_text())
    config = plans["configurations"]["3d_fullres"]
    assert config["data_identifier"] == "nnUNetPlans_3d_fullres"
    assert config["architecture"]["network_class_name"] == "nnunetv2_uc.architectures.uxnet.UXNet"
    # the reused data is nnU-Net's: same spacing and normalisation in both plans
    nnunet_plans = json.loads((nnunet / "preprocessed" / DATASET / "nnUNetPlans.json").read_text())
    for key in ("spacing", "normalization_schemes", "use_mask_for_norm", "data_identifier"):
        assert config[key] == nnunet_plans["configurations"]["3d_fullres"][key]

    # another spacing: data of its own, and the command that makes it
    assert main(["plan", "-d", str(DATASET_ID), "--network", "uc3dunet", "-overwrite_target_spacing", "3", "2", "2",
                 "-overwrite_plans_name", "Coarse"]) == 0
    out = capsys.readouterr().out
    assert f"preprocess next: nnUNetv2_preprocess -d {DATASET_ID} -plans_name Coarse -c 3d_fullres" in out
    coarse = json.loads((nnunet / "preprocessed" / DATASET / "Coarse.json").read_text())["configurations"]["3d_fullres"]
    assert coarse["data_identifier"] == "Coarse_3d_fullres" and coarse["spacing"] == [3.0, 2.0, 2.0]


def test_uc_nnunet_plans_uc_connections_on_nnunets_own_network(nnunet, capsys):
    """`--network uc_nnunet`: nnU-Net's topology unchanged, uC connections added; the stock builder makes it with
    deep supervision, as nnU-Net's stock trainer will."""
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from nnunetv2_uc.architectures.uc_unet import UCPlainConvUNet

    assert main(["plan", "-d", str(DATASET_ID), "--network", "uc_nnunet"]) == 0
    out = capsys.readouterr().out
    plans = json.loads((nnunet / "preprocessed" / DATASET / "nnUNetPlans_UCUNet.json").read_text())
    ours = plans["configurations"]["3d_fullres"]
    nnunet_own = ours["uc_planning"]["nnunet"]
    assert ours["architecture"]["network_class_name"] == "nnunetv2_uc.architectures.uc_unet.UCPlainConvUNet"
    assert nnunet_own["network_class_name"].endswith(".PlainConvUNet")
    assert ours["architecture"]["arch_kwargs"]["uc_stages"] == [0]
    assert f"3d_fullres: patch {ours['patch_size']}, batch {ours['batch_size']}" in out
    configuration = PlansManager(plans).get_configuration("3d_fullres")
    network = get_network_from_plans(configuration.network_arch_class_name, configuration.network_arch_init_kwargs,
                                     configuration.network_arch_init_kwargs_req_import, 1, 3, deep_supervision=True)
    assert isinstance(network, UCPlainConvUNet)
    with torch.no_grad():
        outputs = network(torch.zeros(1, 1, *configuration.patch_size))
    assert len(outputs) == len(ours["architecture"]["arch_kwargs"]["strides"]) - 1  # nnU-Net's DS outputs


@pytest.mark.parametrize("args,code,message", [
    (["--network", "unet"], 2, "unknown network 'unet'; choose one of uxnet, uc3dunet, uc_nnunet"),
    (["--network", "uxnet", "-c", "2d"], 2, "-c 2d: uC 3DU-Net, 3D UX-Net and uC connections are 3-D networks"),
    (["--network", "uxnet", "-pl", "nnUNetPlannerResEncXXL"], 2, "unknown planner 'nnUNetPlannerResEncXXL'"),
    (["--network", "uc3dunet", "-gpu_memory_target", "0.05"], 2, "GiB of GPU memory at its smallest patch"),
], ids=["network", "2d", "planner", "too-small-target"])
def test_bad_input_exits_2_and_writes_nothing(nnunet, capsys, args, code, message):
    before = files(nnunet)
    assert main(["plan", "-d", str(DATASET_ID), *args]) == code
    err = capsys.readouterr().err
    assert err.startswith("nnunetv2_uc plan: error: ") and message in err
    assert files(nnunet) == before


def test_no_fingerprint_names_the_command_that_makes_it(nnunet, capsys):
    write_raw_dataset(nnunet / "raw", 952, "NoFingerprint", n_train=2)
    before = files(nnunet)
    assert main(["plan", "-d", "952", "--network", "uxnet"]) == 2
    assert "Fix: nnUNetv2_extract_fingerprint -d 952" in capsys.readouterr().err
    assert files(nnunet) == before


def test_existing_plans_are_replaced_only_with_overwrite(nnunet, capsys):
    assert main(["plan", "-d", str(DATASET_ID), "--network", "uxnet", "-overwrite_plans_name", "Mine"]) == 0
    plans_file = nnunet / "preprocessed" / DATASET / "Mine.json"
    plans_file.write_text(plans_file.read_text().replace('"batch_size": 2', '"batch_size": 7'))
    before = files(nnunet)
    assert main(["plan", "-d", str(DATASET_ID), "--network", "uxnet", "-overwrite_plans_name", "Mine"]) == 3
    assert "Mine.json exists; it is left as it is. Use --overwrite" in capsys.readouterr().err
    assert files(nnunet) == before
    assert main(["plan", "-d", str(DATASET_ID), "--network", "uxnet", "-overwrite_plans_name", "Mine",
                 "--overwrite"]) == 0
    assert json.loads(plans_file.read_text())["configurations"]["3d_fullres"]["batch_size"] == 2
