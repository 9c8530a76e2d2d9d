"""The record of the code that trained a model (plans.json) and the "install this" messages of `nnunetv2_uc predict`
and `nnunetv2_uc doctor -m` when a shared model's trainer or network does not resolve here."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

import nnunetv2_uc
from helpers.paths import FIXTURES
from nnunetv2_uc import registration
from nnunetv2_uc.architectures.registry import network_entry
from nnunetv2_uc.doctor.checks import FAIL, OK, SKIP, WARN
from nnunetv2_uc.doctor.model_folder import check_model_folder
from nnunetv2_uc.errors import UserError
from nnunetv2_uc.inference.predict import predict_from_model_folder
from nnunetv2_uc.registration import RECORD_KEY, Record, shim_directory
from nnunetv2_uc.trainers import TRAINER_NAMES, nnUNetTrainerUC_tiny, nnUNetTrainerUXNet

LEGACY = FIXTURES / "legacy_results_0.1.0"
LEGACY_MODEL = LEGACY / "Dataset901_LegacyUC" / "nnUNetTrainerUC_tiny__nnUNetPlans__3d_fullres"
FUTURE = "9.9.0"  # a version of this package that does not exist here
UC_UNET_V9 = "nnunetv2_uc.architectures.uc_unet.UCPlainConvUNetV9"  # a network class the installed code lacks


@pytest.fixture(autouse=True)
def plugin_on_ext_trainer(monkeypatch):
    """nnUNet_extTrainer as after `eval "$(nnunetv2_uc env)"`; restored afterwards (the predictor sets it too)."""
    monkeypatch.setenv("nnUNet_extTrainer", shim_directory())


def model_copy(tmp_path: Path, trainer: str) -> Path:
    """The legacy 0.1.0 results folder under $nnUNet_results, renamed for ``trainer`` (checkpoint included)."""
    folder = tmp_path / "results" / "Dataset901_LegacyUC" / f"{trainer}__nnUNetPlans__3d_fullres"
    shutil.copytree(LEGACY_MODEL, folder)
    checkpoint_path = folder / "fold_0" / "checkpoint_final.pth"
    checkpoint = torch.load(checkpoint_path, map_location="cpu", weights_only=False)
    checkpoint["trainer_name"] = trainer
    torch.save(checkpoint, checkpoint_path)
    return folder


def edit_plans(folder: Path, edit) -> None:
    plans = json.loads((folder / "plans.json").read_text())
    edit(plans)
    (folder / "plans.json").write_text(json.dumps(plans, indent=2))


def future_record(trainer: str = "nnUNetTrainerUC_bf16", module: str = "nnunetv2_uc.trainers.paper_trainers") -> dict:
    return Record(FUTURE, trainer, module, "uc3dunet", "nnunetv2_uc.architectures.uc3dunet.UC3DUNet").to_json()


# ------------------------------------------------------------------------------------------------ record

def test_record_names_package_version_trainer_and_network():
    plans = {"configurations": {}}
    registration.stamp(plans, nnUNetTrainerUC_tiny, network_entry("uc3dunet").import_path)
    assert json.loads(json.dumps(plans))[RECORD_KEY] == {
        "distribution": "nnunetv2-uc", "version": nnunetv2_uc.__version__,
        "trainer": {"class": "nnUNetTrainerUC_tiny", "module": "nnunetv2_uc.trainers.paper_trainers"},
        "network": {"name": "uc3dunet", "import_path": "nnunetv2_uc.architectures.uc3dunet.UC3DUNet"}}
    assert registration.read_record(plans) == Record(nnunetv2_uc.__version__, "nnUNetTrainerUC_tiny",
                                                   "nnunetv2_uc.trainers.paper_trainers", "uc3dunet",
                                                   "nnunetv2_uc.architectures.uc3dunet.UC3DUNet")
    registration.stamp(plans, nnUNetTrainerUXNet, network_entry("uxnet").import_path)  # a later training replaces it
    assert registration.read_record(plans).network_import_path == "nnunetv2_uc.architectures.uxnet.UXNet"


def test_record_read_back_from_a_model_folder(tmp_path):
    folder = model_copy(tmp_path, "nnUNetTrainerUC_tiny")
    assert registration.load_record(folder) is None  # 0.1.0 wrote no record
    edit_plans(folder, lambda p: p.update({RECORD_KEY: future_record()}))
    assert registration.load_record(folder).version == FUTURE
    edit_plans(folder, lambda p: p.update({RECORD_KEY: "hand-edited"}))
    assert registration.load_record(folder) is None
    assert registration.load_record(tmp_path / "no such folder") is None


def test_installed_trainer_names_are_what_the_shim_exports():
    names = registration.installed_trainer_names()
    assert set(TRAINER_NAMES) | {"nnUNetTrainerUC_demo", "nnUNetTrainerUXNet_demo"} <= names
    assert "nnUNetTrainer" not in names


# ---------------------------------------------------------------------------------------------- messages

def test_missing_trainer_with_a_record_names_class_version_install_command_and_env_line():
    record = Record.from_json(future_record())
    message = registration.missing_trainer_message("nnUNetTrainerUC_bf16", record)
    assert "nnUNetTrainerUC_bf16" in message and "nnunetv2_uc.trainers.paper_trainers" in message
    assert f"nnunetv2-uc {FUTURE} trained this model" in message
    assert f"this environment has nnunetv2-uc {nnunetv2_uc.__version__}" in message
    assert f'pip install "nnunetv2-uc=={FUTURE}"' in message
    assert f"nnunetv2_uc-{FUTURE}-py3-none-any.whl" in message
    assert "nnunetv2_uc predict" in message and 'eval "$(nnunetv2_uc env)"' in message
    assert f"export nnUNet_extTrainer={shim_directory()}" in message


def test_missing_trainer_of_another_package_built_on_ours():
    record = Record.from_json(future_record("LabTrainerUC", "mylab.trainers"))
    message = registration.missing_trainer_message("LabTrainerUC", record)
    assert "mylab.trainers" in message and "not part of nnunetv2-uc" in message
    assert "nnUNet_extTrainer" in message and f'pip install "nnunetv2-uc=={FUTURE}"' in message


@pytest.mark.parametrize("trainer, expected", [
    ("nnUNetTrainerUC_bf16", ["another nnunetv2-uc version", "pip show nnunetv2-uc",
                              "pip install --upgrade nnunetv2-uc", "nnunetv2_uc predict"]),
    ("nnUNetTrainerSomeoneElses", ["neither nnU-Net's nor a trainer of nnunetv2-uc", "nnUNet_extTrainer"]),
    ("nnUNetTrainerUC_tiny", ["is a trainer of the installed nnunetv2-uc", "nnunetv2_uc doctor"]),
])
def test_missing_trainer_without_a_record_is_still_clear(trainer, expected):
    message = registration.missing_trainer_message(trainer, None)
    assert trainer in message
    for text in expected:
        assert text in message, (text, message)


def test_missing_network_of_a_stock_trainer_names_the_class_and_package():
    message = registration.missing_network_message(UC_UNET_V9, "3d_fullres", None, "ImportError: not found")
    assert UC_UNET_V9 in message and "comes from nnunetv2-uc" in message
    assert "records no nnunetv2-uc version" in message and "pip install --upgrade nnunetv2-uc" in message
    assert registration.missing_network_message("mylab.nets.Net", "3d_fullres", None, "ImportError") is None
    recorded = registration.missing_network_message(UC_UNET_V9, "3d_fullres", Record(FUTURE), "TypeError: x")
    assert f'pip install "nnunetv2-uc=={FUTURE}"' in recorded and "TypeError: x" in recorded
    same = registration.missing_network_message(UC_UNET_V9, "3d_fullres", Record(nnunetv2_uc.__version__), "E")
    assert "the version is not why it fails" in same


# ---------------------------------------------------------------------- nnunetv2_uc predict on such models

def predict(tmp_path: Path, trainer: str) -> None:
    """The model fails to load before any input is read, so the input folder stays empty."""
    (tmp_path / "images").mkdir()
    predict_from_model_folder(str(tmp_path / "images"), str(tmp_path / "out"), "Dataset901_LegacyUC",
                              "3d_fullres", trainer=trainer, folds=[0], device="cpu", progress_bar=False)


def test_predict_with_a_trainer_that_does_not_resolve_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setenv("nnUNet_results", str(tmp_path / "results"))
    folder = model_copy(tmp_path, "nnUNetTrainerUC_bf16")
    edit_plans(folder, lambda p: p.update({RECORD_KEY: future_record()}))
    with pytest.raises(UserError) as caught:
        predict(tmp_path, "nnUNetTrainerUC_bf16")
    message = str(caught.value)
    assert "nnUNetTrainerUC_bf16, which nnU-Net cannot find here" in message
    assert f'pip install "nnunetv2-uc=={FUTURE}"' in message and "export nnUNet_extTrainer=" in message
    assert not any((tmp_path / "out").iterdir())


def test_predict_with_a_stock_trainer_and_a_network_class_we_lack_names_the_package(tmp_path, monkeypatch):
    """nnU-Net's own trainer, plans naming a uC class of a newer version: the trainer resolves, the class does not."""
    monkeypatch.setenv("nnUNet_results", str(tmp_path / "results"))
    folder = model_copy(tmp_path, "nnUNetTrainer")
    edit_plans(folder, lambda p: p["configurations"]["3d_fullres"]["architecture"].update(network_class_name=UC_UNET_V9))
    with pytest.raises(UserError) as caught:
        predict(tmp_path, "nnUNetTrainer")
    message = str(caught.value)
    assert f"the network class {UC_UNET_V9} (plans.json configuration 3d_fullres) comes from nnunetv2-uc" in message
    assert "pip install --upgrade nnunetv2-uc" in message


# ------------------------------------------------------------------------------- nnunetv2_uc doctor -m

def test_doctor_reports_the_record_and_the_install_command(tmp_path):
    folder = model_copy(tmp_path, "nnUNetTrainerUC_bf16")
    edit_plans(folder, lambda p: p.update({RECORD_KEY: future_record()}))
    checks = {c.name: c for c in check_model_folder(folder)}
    assert checks["model record"].status == WARN and f"nnunetv2-uc {FUTURE}" in checks["model record"].detail
    assert f'pip install "nnunetv2-uc=={FUTURE}"' in checks["model record"].fix
    trainer = checks["model trainer"]
    assert trainer.status == FAIL and "nnUNetTrainerUC_bf16" in trainer.detail
    assert f'pip install "nnunetv2-uc=={FUTURE}"' in trainer.fix and "export nnUNet_extTrainer=" in trainer.fix


def test_doctor_on_a_stock_trainer_model_with_our_network_class_missing(tmp_path):
    folder = model_copy(tmp_path, "nnUNetTrainer")
    edit_plans(folder, lambda p: p["configurations"]["3d_fullres"]["architecture"].update(network_class_name=UC_UNET_V9))
    checks = {c.name: c for c in check_model_folder(folder)}
    assert checks["model record"].status == SKIP and checks["model trainer"].status == OK
    network = checks["model network"]
    assert network.status == FAIL and UC_UNET_V9 in network.fix and "comes from nnunetv2-uc" in network.fix


def test_doctor_with_a_current_record_is_ok(tmp_path):
    folder = model_copy(tmp_path, "nnUNetTrainerUC_tiny")
    edit_plans(folder, lambda p: registration.stamp(p, nnUNetTrainerUC_tiny, network_entry("uc3dunet").import_path))
    checks = check_model_folder(folder)
    assert [c.status for c in checks] == [OK] * len(checks)
    assert checks[1].detail.startswith(f"trained with nnunetv2-uc {nnunetv2_uc.__version__} (trainer "
                                       "nnUNetTrainerUC_tiny from nnunetv2_uc.trainers.paper_trainers")


def test_version_note_only_for_another_version():
    assert registration.version_note(None) is None
    assert registration.version_note(Record(nnunetv2_uc.__version__)) is None
    note = registration.version_note(Record(FUTURE))
    assert f"trained with nnunetv2-uc {FUTURE}" in note and f'pip install "nnunetv2-uc=={FUTURE}"' in note
