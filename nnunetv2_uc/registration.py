"""How the stock nnUNetv2_* commands find this plugin's trainers: ``nnUNet_extTrainer`` and the shim directory.

``nnunetv2_uc env`` prints `export nnUNet_extTrainer=...` with this package's shim directory appended to any existing value
(never dropping it; unchanged if the directory is already listed). nnU-Net then resolves
`-tr nnUNetTrainerUC`, `-tr nnUNetTrainerUXNet` and their _SGD/_tiny variants in nnUNetv2_train and
nnUNetv2_predict.
"""
from __future__ import annotations

import os
import shlex
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
