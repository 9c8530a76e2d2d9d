"""Locate an nnU-Net training's cross-validation predictions and the matching preprocessed ground truth."""
from __future__ import annotations

import os
import re
from dataclasses import dataclass

from nnunetv2_uc.evaluation.cases import EvaluationInputError, list_cases, load_label_info, match_cases
from nnunetv2_uc.evaluation.folders import CaseSelection, evaluate_pairs


@dataclass
class TrainingFolders:
    """Where one trained configuration's cross-validation outputs and its references live."""

    dataset_name: str
    model_dir: str              # $nnUNet_results/DatasetXXX/TRAINER__PLANS__CONFIG
    gt_dir: str                 # $nnUNet_preprocessed/DatasetXXX/gt_segmentations
    dataset_json: str
    validation_dirs: dict[str, str]  # fold name -> fold_k/validation


def _available_folds(model_dir: str) -> list[str]:
    folds = [entry[len("fold_"):] for entry in os.listdir(model_dir)
             if re.fullmatch(r"fold_(\d+|all)", entry) and os.path.isdir(os.path.join(model_dir, entry, "validation"))]
    return sorted(folds, key=lambda f: (not f.isdigit(), int(f) if f.isdigit() else 0))


def locate_training(dataset: str, trainer: str, configuration: str, plans: str = "nnUNetPlans",
                    folds: list[str] | None = None) -> TrainingFolders:
    """Resolve the folders from nnU-Net's environment variables; every missing piece is a clear error."""
    # imported here, not at the top: nnunetv2.paths reads the nnUNet_* variables when it is first imported
    from nnunetv2.paths import nnUNet_preprocessed
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name
    from nnunetv2.utilities.file_path_utilities import get_output_folder

    for variable in ("nnUNet_results", "nnUNet_preprocessed"):
        if not os.environ.get(variable):
            raise EvaluationInputError(f"${variable} is not set; export it to the folder nnU-Net trained with")
    try:
        dataset_name = maybe_convert_to_dataset_name(dataset)
    except RuntimeError as error:
        raise EvaluationInputError(f"dataset {dataset!r}: {error}")
    model_dir = get_output_folder(dataset_name, trainer, plans, configuration)
    if not os.path.isdir(model_dir):
        raise EvaluationInputError(f"{model_dir}: no such training output; check TRAINER, CONFIG and -p/--plans "
                                   f"(folder name is TRAINER__PLANS__CONFIG)")
    chosen = folds or _available_folds(model_dir)
    if not chosen:
        raise EvaluationInputError(f"{model_dir}: no fold_*/validation folder; run nnUNetv2_train (it predicts the "
                                   f"validation cases at the end) or nnUNetv2_train --val")
    validation_dirs = {}
    for fold in chosen:
        folder = os.path.join(model_dir, f"fold_{fold}", "validation")
        if not os.path.isdir(folder):
            raise EvaluationInputError(f"{folder}: missing; fold {fold} has no validation predictions "
                                       f"(run nnUNetv2_train ... {fold} --val)")
        validation_dirs[str(fold)] = folder
    preprocessed = os.path.join(os.fspath(nnUNet_preprocessed), dataset_name)
    gt_dir = os.path.join(preprocessed, "gt_segmentations")
    if not os.path.isdir(gt_dir):
        raise EvaluationInputError(f"{gt_dir}: missing; run nnUNetv2_plan_and_preprocess for {dataset_name}")
    dataset_json = os.path.join(model_dir, "dataset.json")
    if not os.path.isfile(dataset_json):
        dataset_json = os.path.join(preprocessed, "dataset.json")
    return TrainingFolders(dataset_name, model_dir, gt_dir, dataset_json, validation_dirs)


def evaluate_training(training: TrainingFolders, num_processes: int = 1, empty_policy: str = "worst",
                      skip_bad: bool = False, labels: list[int] | None = None) -> dict:
    """Pool the validation predictions of all chosen folds into one cross-validation evaluation."""
    info = load_label_info(training.dataset_json, labels)
    gt_files = list_cases(training.gt_dir, info.file_ending)
    pairs, pred_only, fold_of_case = [], [], {}
    for fold, folder in training.validation_dirs.items():
        fold_pairs, _, fold_pred_only = match_cases(gt_files, list_cases(folder, info.file_ending))
        pairs += fold_pairs
        pred_only += fold_pred_only
        fold_of_case.update({pair.name: fold for pair in fold_pairs})
    duplicated = len(pairs) - len(fold_of_case)
    if duplicated:
        raise EvaluationInputError(f"{training.model_dir}: {duplicated} case(s) are predicted in more than one of "
                                   f"folds {sorted(training.validation_dirs)}; evaluate those folds separately")
    summary = evaluate_pairs(CaseSelection(pairs, [], pred_only), info, empty_policy, num_processes, skip_bad)
    summary["inputs"] = {"model_dir": training.model_dir, "gt_dir": training.gt_dir,
                         "dataset_json": training.dataset_json, "labels_source": info.source,
                         "folds": sorted(training.validation_dirs), "fold_of_case": fold_of_case}
    return summary
