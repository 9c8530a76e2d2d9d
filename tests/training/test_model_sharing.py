"""A model that travels, with the STOCK nnU-Net commands as subprocesses (CPU, minutes).

The sender trains nnUNetTrainerUC_tiny on a tiny dataset, predicts two held-out cases from that results folder and
exports the model with nnUNetv2_export_model_to_zip. The receiver installs the zip into an EMPTY nnUNet_results with
nnUNetv2_install_pretrained_model_from_zip and predicts there twice: with the stock nnUNetv2_predict after the env
line, and with `nnunetv2_uc predict` in an environment without nnUNet_extTrainer. All three give the same
segmentations and probabilities; the record of the code that trained the model arrives inside plans.json.
"""
from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest

from helpers.e2e_data import nnunet_env, write_raw_dataset
from test_e2e_stock_cli import read_nifti, run_cli

pytestmark = pytest.mark.slow

DATASET_ID = 903
DATASET = "Dataset903_Travel"
TRAINER = "nnUNetTrainerUC_tiny"
MODEL = f"{DATASET}/{TRAINER}__nnUNetPlans__3d_fullres"
N_TRAIN, N_TEST = 5, 2  # nnU-Net's 5-fold split needs 5 cases; fold 0 validates one
NARROW = {"features": [4, 8, 16, 32, 64, 4]}  # uC 3DU-Net's topology at 1/6 of the paper's widths: a fast CPU run
PREDICTIONS = ("source", "installed_stock", "installed_uc")


def narrow_the_network(plans_file: Path) -> None:
    """Keep the trained model small: plans naming uC 3DU-Net at narrow widths (as `nnunetv2_uc plan --network
    uc3dunet` writes them, with a patch of multiples of 16), which the trainer trains as planned."""
    from nnunetv2_uc.architectures.registry import network_entry

    plans = json.loads(plans_file.read_text())
    configuration = plans["configurations"]["3d_fullres"]
    configuration["architecture"] = network_entry("uc3dunet").plans_architecture(**NARROW)
    configuration["patch_size"] = [16, 32, 32]
    plans_file.write_text(json.dumps(plans, indent=2))


def with_env_line(env: dict, line: str) -> dict:
    assert line.startswith("export nnUNet_extTrainer=")
    return {**env, "nnUNet_extTrainer": line.split("=", 1)[1].strip("'")}


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """Sender: plan, train, predict, export. Receiver: install into an empty nnUNet_results, predict twice."""
    root = tmp_path_factory.mktemp("travel")
    # both sides inherit the suite's nnUNet_def_n_proc (tests/conftest.py): nnU-Net's export sets torch's threads to
    # it while it turns logits into probabilities, and the thread count changes their float rounding (up to 6e-5
    # between 1 and 8 on a Xeon with AMX); the comparison below is of the model, not of the setting
    sender = nnunet_env(root / "sender")
    receiver = nnunet_env(root / "receiver")
    sender.pop("nnUNet_extTrainer", None)
    receiver.pop("nnUNet_extTrainer", None)
    raw = write_raw_dataset(root / "sender" / "raw", DATASET_ID, "Travel", N_TRAIN, N_TEST, seed=3)
    env_line = run_cli(["nnunetv2_uc", "env"], sender, root / "env.log").stdout.strip()
    sender = with_env_line(sender, env_line)

    # nnU-Net's planner calls torch.set_num_threads(nnUNet_n_proc_DA), which rejects 0
    run_cli(["nnUNetv2_plan_and_preprocess", "-d", str(DATASET_ID), "-c", "3d_fullres", "-np", "1"],
            {**sender, "nnUNet_n_proc_DA": "1"}, root / "plan.log")
    narrow_the_network(Path(sender["nnUNet_preprocessed"]) / DATASET / "nnUNetPlans.json")
    run_cli(["nnUNetv2_train", str(DATASET_ID), "3d_fullres", "0", "-tr", TRAINER, "-device", "cpu"], sender,
            root / "train.log")
    predict = ["-i", str(raw / "imagesTs"), "-d", str(DATASET_ID), "-c", "3d_fullres", "-tr", TRAINER, "-f", "0",
               "-device", "cpu", "--save_probabilities", "-npp", "1", "-nps", "1"]
    run_cli(["nnUNetv2_predict", *predict, "-o", str(root / "source")], sender, root / "predict_source.log")
    zip_file = root / "model.zip"
    run_cli(["nnUNetv2_export_model_to_zip", "-d", str(DATASET_ID), "-o", str(zip_file), "-c", "3d_fullres",
             "-tr", TRAINER, "-f", "0"], sender, root / "export.log")

    installed_before = sorted(Path(receiver["nnUNet_results"]).rglob("*"))
    run_cli(["nnUNetv2_install_pretrained_model_from_zip", str(zip_file)], receiver, root / "install.log")
    run_cli(["nnUNetv2_predict", *predict, "-o", str(root / "installed_stock")], with_env_line(receiver, env_line),
            root / "predict_installed_stock.log")
    without_line = run_cli(["nnUNetv2_predict", *predict, "-o", str(root / "installed_stock_no_env")], receiver,
                           root / "predict_installed_stock_no_env.log", check=False)
    run_cli(["nnunetv2_uc", "predict", *predict, "-o", str(root / "installed_uc"), "--backend", "torch",
             "--disable_progress_bar"],
            receiver, root / "predict_installed_uc.log")
    return {"root": root, "raw": raw, "zip": zip_file, "installed_before": installed_before,
            "sender_model": Path(sender["nnUNet_results"]) / MODEL,
            "receiver_model": Path(receiver["nnUNet_results"]) / MODEL, "without_line": without_line}


def test_the_zip_carries_the_record_of_the_code_that_trained_it(shared):
    import nnunetv2_uc
    from nnunetv2_uc.architectures.registry import network_entry

    with zipfile.ZipFile(shared["zip"]) as archive:
        names = set(archive.namelist())
        plans = json.loads(archive.read(f"{MODEL}/plans.json"))
    assert {f"{MODEL}/{name}" for name in ("plans.json", "dataset.json", "dataset_fingerprint.json",
                                           "fold_0/checkpoint_final.pth")} <= names
    assert not any(name.endswith(".py") for name in names)  # nnU-Net ships no code: the record says which to install
    assert plans["nnunetv2_uc"] == {
        "distribution": "nnunetv2-uc", "version": nnunetv2_uc.__version__,
        "trainer": {"class": TRAINER, "module": "nnunetv2_uc.trainers.paper_trainers"},
        "network": {"name": "uc3dunet", "import_path": network_entry("uc3dunet").import_path}}


def test_installed_into_an_empty_results_folder_is_the_trained_model(shared):
    assert shared["installed_before"] == []
    for name in ("plans.json", "dataset.json", "fold_0/checkpoint_final.pth"):
        assert (shared["receiver_model"] / name).read_bytes() == (shared["sender_model"] / name).read_bytes(), name


def test_stock_predict_without_the_env_line_does_not_find_the_trainer(shared):
    """The receiver's usual failure, which the env line (or `nnunetv2_uc predict`) avoids."""
    proc = shared["without_line"]
    assert proc.returncode != 0
    assert f"Could not find requested nnunet trainer {TRAINER}" in proc.stdout


def test_installed_model_predicts_what_the_source_folder_predicts(shared):
    raw, root = shared["raw"], shared["root"]
    cases = sorted(p.name.replace("_0000.nii.gz", "") for p in (raw / "imagesTs").glob("*.nii.gz"))
    assert len(cases) == N_TEST
    for case in cases:
        segmentations = {name: read_nifti(root / name / f"{case}.nii.gz")[0] for name in PREDICTIONS}
        probabilities = {name: np.load(root / name / f"{case}.npz")["probabilities"] for name in PREDICTIONS}
        reference = read_nifti(raw / "labelsTs" / f"{case}.nii.gz")[0]
        assert segmentations["source"].shape == reference.shape
        assert set(np.unique(segmentations["source"])) <= {0, 1, 2}
        for name in PREDICTIONS[1:]:
            np.testing.assert_array_equal(segmentations[name], segmentations["source"], err_msg=f"{case} {name}")
            # two runs of one predictor on a CPU with the same settings differ by float rounding (<= 1e-7)
            np.testing.assert_allclose(probabilities[name], probabilities["source"], rtol=0, atol=1e-6,
                                       err_msg=f"{case} {name}")


def test_doctor_passes_the_installed_model_and_reports_its_record(shared):
    import nnunetv2_uc
    from nnunetv2_uc.doctor.checks import OK
    from nnunetv2_uc.doctor.model_folder import check_model_folder

    checks = {c.name: c for c in check_model_folder(shared["receiver_model"])}
    assert all(c.status == OK for c in checks.values()), [c for c in checks.values() if c.status != OK]
    assert checks["model record"].detail.startswith(f"trained with nnunetv2-uc {nnunetv2_uc.__version__} "
                                                    f"(trainer {TRAINER} from nnunetv2_uc.trainers.paper_trainers")
