"""Evaluation with the uC papers' metrics: ``evaluate_folders(gt_dir, pred_dir, ...)`` returns the result dict.

Submodules: ``metrics`` (per-case numbers from label maps), ``cases`` (files, readers, validation),
``folders`` (evaluate_folders), ``aggregate`` (JSON structure), ``report`` (JSON / markdown / CSV),
``plots`` (box plots, overlays), ``nnunet_results`` (cross-validation folders), ``cli`` (``nnunetv2_uc evaluate``).
"""
from __future__ import annotations


def __getattr__(name: str):
    # lazy, so that `nnunetv2_uc --help` does not import numpy/scipy/nnU-Net through the CLI module
    if name in ("evaluate_folders", "EvaluationFailed"):
        from nnunetv2_uc.evaluation import folders

        return getattr(folders, name)
    if name == "EvaluationInputError":
        from nnunetv2_uc.evaluation.cases import EvaluationInputError

        return EvaluationInputError
    raise AttributeError(f"module 'nnunetv2_uc.evaluation' has no attribute {name!r}")


__all__ = ["evaluate_folders", "EvaluationFailed", "EvaluationInputError"]
