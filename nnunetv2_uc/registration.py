"""How the stock nnUNetv2_* commands find this plugin's trainers: ``nnUNet_extTrainer`` and the shim directory.

``nnunetv2_uc env`` prints `export nnUNet_extTrainer=...` with this package's shim directory appended to any existing value
(never dropping it; unchanged if the directory is already listed). nnU-Net then resolves
`-tr nnUNetTrainerUC`, `-tr nnUNetTrainerUXNet` and their _SGD/_tiny variants in nnUNetv2_train and
nnUNetv2_predict.
"""
from __future__ import annotations

import contextlib
import io
import os
import shlex
import warnings
from pathlib import Path

ENV_VAR = "nnUNet_extTrainer"


def shim_directory() -> str:
    """Absolute path of the directory holding only the shim module (inside the installed package)."""
    return str((Path(__file__).resolve().parent / "ext_trainers"))


def ext_trainer_value(existing: str | None) -> str:
    """``existing`` with the shim directory appended (os.pathsep-separated), keeping every other entry."""
    shim = shim_directory()
    entries = [e for e in (existing or "").split(os.pathsep) if e]
    if any(os.path.abspath(e) == shim for e in entries):
        return os.pathsep.join(entries)
    return os.pathsep.join(entries + [shim])


def export_line(existing: str | None) -> str:
    return f"export {ENV_VAR}={shlex.quote(ext_trainer_value(existing))}"


def register_trainers() -> None:
    """Let nnU-Net's trainer lookup in this process (and its children) find this plugin's trainers."""
    os.environ[ENV_VAR] = ext_trainer_value(os.environ.get(ENV_VAR))


@contextlib.contextmanager
def plugin_trainers_findable():
    """nnUNet_extTrainer with this plugin's shim folder appended, for the duration (as nnunetv2_uc predict does)."""
    before = os.environ.get(ENV_VAR)
    os.environ[ENV_VAR] = ext_trainer_value(before)
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(ENV_VAR, None)
        else:
            os.environ[ENV_VAR] = before


def find_trainer_class(trainer_name: str):
    """nnU-Net's own trainer lookup (its search log silenced), with this plugin's trainers findable."""
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

    with plugin_trainers_findable(), contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # deprecation notes of modules the lookup imports
        return recursive_find_trainer_class_by_name(trainer_name)
