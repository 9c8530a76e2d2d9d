"""An nnU-Net training for ``nnunetv2_uc evaluate --nnunet-results``: its cross-validation predictions with the
matching preprocessed ground truth, and what the trained model costs, for the comparison table.

- Parameters and MACs of the network exactly as ``nnUNetv2_predict`` builds it from the results folder: the
  trainer class (found by name, this plugin's trainers included) and its static ``build_network_architecture``
  on the folder's ``plans.json`` and ``dataset.json``, deep supervision off; MACs of one patch of the plans'
  ``patch_size`` (``nnunetv2_uc.measure.cost`` conventions), counted on the meta device.
- Training time: the sum of nnU-Net's epoch durations (``epoch_end - epoch_start`` timestamps in each fold's
  ``checkpoint_final.pth``), so time between a killed run and its ``--c`` resume and the final validation are not
  counted.

torch and the networks are imported only when the cost is asked for: evaluating folders does not need them.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass

from nnunetv2_uc.evaluation.folders import (CaseSelection, EvaluationInputError, evaluate_pairs, list_cases,
                                            load_label_info, match_cases)


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


CHECKPOINT = "checkpoint_final.pth"


def network_cost_of_training(model_dir: str, trainer: str, configuration: str) -> dict:
    """{"network_class", "patch_size", "input_channels", "parameters", "gmacs"} of the network the predictor
    builds from ``model_dir``; raises ValueError with the reason when it cannot be built."""
    files = {name: os.path.join(model_dir, name) for name in ("plans.json", "dataset.json")}
    missing = [name for name, path in files.items() if not os.path.isfile(path)]
    if missing:
        raise ValueError(f"no {' or '.join(missing)} in the results folder (nnUNetv2_train writes them there)")
    from nnunetv2_uc.measure.cost import network_cost, plans_network  # torch: only when a table is asked for
    from nnunetv2_uc.registration import find_trainer_class

    try:
        trainer_class = find_trainer_class(trainer)
    except RuntimeError:
        raise ValueError(f"trainer {trainer} not found by nnU-Net (nor among this plugin's trainers); add its "
                         f"folder to nnUNet_extTrainer") from None
    with open(files["plans.json"]) as f:
        plans = json.load(f)
    with open(files["dataset.json"]) as f:
        dataset_json = json.load(f)
    try:
        network, input_channels, patch = plans_network(plans, configuration, dataset_json, trainer_class)
        cost = network_cost(network, input_channels, patch)
    except (KeyError, RuntimeError, TypeError, ValueError, ImportError) as error:
        raise ValueError(f"{trainer}.build_network_architecture failed on plans.json ({configuration}): "
                         f"{type(error).__name__}: {error}") from error
    return {"network_class": f"{type(network).__module__}.{type(network).__qualname__}", "patch_size": patch,
            "input_channels": input_channels, **cost}


def epoch_seconds(checkpoint_path: str) -> list[float]:
    """Duration of every epoch logged in an nnU-Net checkpoint (its logger's start/end timestamps)."""
    import torch

    try:
        checkpoint = torch.load(checkpoint_path, map_location="cpu", weights_only=False, mmap=True)
    except RuntimeError:  # a checkpoint not in torch's zip format cannot be memory-mapped
        checkpoint = torch.load(checkpoint_path, map_location="cpu", weights_only=False)
    logging = checkpoint.get("logging", {})
    return [float(end - start) for start, end in zip(logging.get("epoch_start_timestamps", []),
                                                     logging.get("epoch_end_timestamps", []))]


def describe_training(model_dir: str, trainer: str, configuration: str, folds: list[str]) -> dict:
    """Network cost and training time of one trained configuration; ``problems`` says what could not be found.

    Returns {"network_class", "patch_size", "input_channels", "parameters", "gmacs" (None when the network cannot
    be built), "train_seconds" (fold -> seconds, folds without checkpoint_final.pth left out), "epochs" (fold ->
    logged epochs), "problems"}.
    """
    info: dict = {"network_class": None, "patch_size": None, "input_channels": None, "parameters": None,
                  "gmacs": None, "train_seconds": {}, "epochs": {}, "problems": []}
    try:
        info.update(network_cost_of_training(model_dir, trainer, configuration))
    except ValueError as error:
        info["problems"].append(f"#Params/GMACs: {error}")
    for fold in folds:
        name = f"fold_{fold}/{CHECKPOINT}"
        path = os.path.join(model_dir, name)
        if not os.path.isfile(path):
            info["problems"].append(f"training time: no {name}")
            continue
        durations = epoch_seconds(path)
        if not durations:
            info["problems"].append(f"training time: {name} logs no epoch timestamps")
            continue
        info["train_seconds"][fold] = sum(durations)
        info["epochs"][fold] = len(durations)
    return info
