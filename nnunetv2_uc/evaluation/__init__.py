"""Evaluation with the uC papers' metrics: ``evaluate_folders(gt_dir, pred_dir, ...)`` returns the result dict.

Submodules: ``metrics`` (per-case numbers from label maps), ``folders`` (evaluate_folders, and the case files:
finding, reading, validation), ``report`` (the result's JSON structure; JSON / markdown / CSV), ``plots`` (box
plots, overlays), ``nnunet_results`` (an nnU-Net training's cross-validation folders and its model's cost); the
command line is ``nnunetv2_uc.cli.evaluate``.
"""
from __future__ import annotations

from nnunetv2_uc.evaluation.folders import EvaluationFailed, EvaluationInputError, evaluate_folders

__all__ = ["evaluate_folders", "EvaluationFailed", "EvaluationInputError"]
