"""Is this installation ready for nnU-Net training and prediction with this plugin? (`nnunetv2_uc doctor`)

Each check is a small function that returns a ``Check`` (name, status, detail, fix); ``run_checks`` (here) runs
them all and ``checks.blocking`` says whether one failed. The checks take what they inspect as arguments (the
environment, the CUDA facts gathered by ``cuda.cuda_facts``, a compiler probe, ...), so every branch is testable
without a GPU. One module per concern, and the report here (every check in report order, the text and JSON report):

    checks.py        the ``Check`` record, its statuses, running one check safely
    environment.py   the installed packages: Python, nnU-Net, dependencies, the torch/torchvision pair, disk space
    cuda.py          the GPU: device, driver, cuDNN, bf16, and the C compiler torch.compile needs
    nnunet_setup.py  nnU-Net's folders, nnUNet_extTrainer and its -tr trainer lookup
    model_folder.py  a trained model folder: files, record, network and checkpoints

torch, torchvision and nnU-Net are imported inside the checks, never at the top: the doctor has to report a
broken install, not crash on it.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict
from typing import Mapping

from nnunetv2_uc.doctor.checks import FAIL, OK, SKIP, WARN, Check, blocking, guarded
from nnunetv2_uc.doctor.cuda import cuda_checks
from nnunetv2_uc.doctor.environment import (
    check_dependencies, check_disk, check_nnunetv2, check_python, check_torch_torchvision,
)
from nnunetv2_uc.doctor.model_folder import check_model_folder
from nnunetv2_uc.doctor.nnunet_setup import (
    EXT_TRAINER_VAR, NNUNET_PATHS, check_ext_trainer, check_nnunet_path, check_trainer_lookup,
)


def run_checks(model_folder: str | os.PathLike | None = None, environ: Mapping[str, str] | None = None
               ) -> list[Check]:
    """Every check, in report order; with ``model_folder`` also the trained model's."""
    environ = os.environ if environ is None else environ
    checks = [*guarded("python", check_python), *guarded("torch+torchvision", check_torch_torchvision),
              *guarded("nnunetv2", check_nnunetv2), *guarded("dependencies", check_dependencies)]
    for variable in NNUNET_PATHS:
        checks += guarded(variable, check_nnunet_path, variable, environ)
    checks += guarded(EXT_TRAINER_VAR, check_ext_trainer, environ)
    checks += guarded("trainer lookup", check_trainer_lookup)
    checks += guarded("cuda", cuda_checks, environ)
    checks += guarded("disk", check_disk, environ)
    if model_folder is not None:
        checks += guarded("model", check_model_folder, model_folder)
    return checks


LABELS = {OK: "[ ok ]", WARN: "[warn]", FAIL: "[FAIL]", SKIP: "[skip]"}


def format_line(check: Check) -> str:
    fix = f" -- fix: {check.fix}" if check.fix and check.status in (WARN, FAIL) else ""
    return f"{LABELS[check.status]} {check.name}: {check.detail}{fix}"


def format_report(checks: list[Check]) -> str:
    counts = {s: sum(c.status == s for c in checks) for s in (OK, WARN, FAIL, SKIP)}
    verdict = (f"{counts[FAIL]} check(s) failed: fix them before training or predicting" if counts[FAIL]
               else "nothing blocks")
    summary = (f"doctor: {counts[OK]} ok, {counts[WARN]} warning(s), {counts[FAIL]} failed, {counts[SKIP]} skipped; "
               f"{verdict}")
    return "\n".join([*(format_line(c) for c in checks), summary])


def report_json(checks: list[Check]) -> str:
    return json.dumps({"blocking": blocking(checks), "checks": [asdict(c) for c in checks]}, indent=2)


__all__ = ["Check", "FAIL", "OK", "SKIP", "WARN", "blocking", "format_report", "report_json", "run_checks"]
