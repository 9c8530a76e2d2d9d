"""nnU-Net's setup: its three folders, nnUNet_extTrainer, and whether its -tr lookup finds this plugin's trainers."""
from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Callable, Mapping

from nnunetv2_uc.doctor.checks import FAIL, OK, WARN, Check
from nnunetv2_uc.doctor.environment import torch_pair_command
from nnunetv2_uc.registration import ENV_VAR as EXT_TRAINER_VAR, export_line, find_trainer_class, shim_directory

NNUNET_PATHS = {
    "nnUNet_raw": "raw datasets, read by nnUNetv2_plan_and_preprocess",
    "nnUNet_preprocessed": "plans and preprocessed data, written by planning and read by training",
    "nnUNet_results": "trained models, written by nnUNetv2_train and read by nnUNetv2_predict",
}


def check_nnunet_path(variable: str, environ: Mapping[str, str]) -> Check:
    """``variable`` is set to an existing folder this user can write."""
    value = environ.get(variable)
    purpose = NNUNET_PATHS[variable]
    if not value:
        return Check(variable, FAIL, f"not set ({purpose})",
                     f"export {variable}=/path/to/{variable} and mkdir -p it "
                     "(nnU-Net's documentation/setting_up_paths.md)")
    path = Path(value)
    if not path.is_dir():
        state = "is not a folder" if path.exists() else "does not exist"
        return Check(variable, FAIL, f"{value} {state}", f"mkdir -p {value} (or point {variable} to a folder)")
    try:
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as error:
        return Check(variable, FAIL, f"{value} is not writable ({error.strerror})",
                     f"fix the permissions of {value} or point {variable} to a folder you can write")
    return Check(variable, OK, value)


def check_ext_trainer(environ: Mapping[str, str], shim: str | None = None) -> Check:
    """nnUNet_extTrainer lists this plugin's shim folder, so the stock nnUNetv2_* commands find its trainers."""
    shim = shim or shim_directory()
    existing = environ.get(EXT_TRAINER_VAR)
    entries = [e for e in (existing or "").split(os.pathsep) if e]
    if any(os.path.abspath(e) == shim for e in entries):
        return Check(EXT_TRAINER_VAR, OK, f"includes {shim}")
    return Check(EXT_TRAINER_VAR, WARN,
                 "does not include this plugin: the stock nnUNetv2_train/nnUNetv2_predict will not find "
                 "-tr nnUNetTrainerUC / nnUNetTrainerUXNet (nnunetv2_uc predict finds them anyway)",
                 f'eval "$(nnunetv2_uc env)"   (it runs: {export_line(existing)})')


def _lookup_fix(message: str) -> str:
    if "torchvision::nms" in message or "torchvision" in message:
        return f"install a torch/torchvision pair that imports together: {torch_pair_command(_torch_version())}"
    return "reinstall nnunetv2 and this plugin (make install); the error above names the module that failed"


def _torch_version() -> str | None:
    with contextlib.suppress(Exception):
        import torch
        return torch.__version__
    return None


def check_trainer_lookup(find_trainer: Callable[[str], type] | None = None,
                         trainer_name: str = "nnUNetTrainerUC") -> Check:
    """nnU-Net's -tr lookup (it imports every nnU-Net trainer module first) resolves this plugin's trainer."""
    try:
        trainer = (find_trainer or find_trainer_class)(trainer_name)
    except Exception as error:
        message = f"{type(error).__name__}: {error}"
        return Check("trainer lookup", FAIL, f"nnU-Net's -tr lookup of {trainer_name} fails: {message}",
                     _lookup_fix(message))
    return Check("trainer lookup", OK, f"nnU-Net's -tr lookup finds {trainer_name} ({trainer.__module__})")
