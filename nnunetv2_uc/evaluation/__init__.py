"""Evaluation with the uC papers' metrics: ``evaluate_folders(gt_dir, pred_dir, ...)`` returns the result dict.

Submodules: ``metrics`` (per-case numbers from label maps), ``cases`` (files, readers, validation),
``folders`` (evaluate_folders), ``aggregate`` (JSON structure), ``report`` (JSON / markdown / CSV),
``plots`` (box plots, overlays), ``nnunet_results`` (cross-validation folders); the command line is
``nnunetv2_uc.cli.evaluate``.
"""
from __future__ import annotations

from nnunetv2_uc.evaluation.cases import EvaluationInputError
from nnunetv2_uc.evaluation.folders import EvaluationFailed, evaluate_folders

__all__ = ["evaluate_folders", "EvaluationFailed", "EvaluationInputError"]
