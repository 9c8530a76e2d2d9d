"""Evaluate predictions with the uC papers' metrics (mIoU, Dice, VOE, HD95 in both conventions, ASSD, ARI).

Two modes:
  nnunetv2_uc evaluate --gt GT_DIR --pred PRED_DIR -o OUT.json [--table OUT.md] [--csv OUT.csv] [--plots DIR]
  nnunetv2_uc evaluate --nnunet-results DATASET MODEL[,MODEL2,...] CONFIG [-p PLANS] [--folds 0 1 2 3 4]
      MODEL: TRAINER (trained with -p PLANS) or TRAINER__PLANS (nnU-Net's folder-name separator), so models
      trained with different plans can be compared; the comparison table has #Params, GMACs and training time

Files are matched by case name and read with nnU-Net's reader classes on the reference's native grid and spacing.
Exit codes: 0 success, 2 bad input (one message per problem; --skip-bad evaluates the rest and lists the skipped
cases in the JSON), 3 an output file exists (pass --overwrite).
"""
from __future__ import annotations

import argparse
import os
import sys

from nnunetv2_uc.errors import OverwriteRefused, UserError
from nnunetv2_uc.evaluation.folders import evaluate_folders
from nnunetv2_uc.evaluation.metrics import EmptyMaskPolicy
from nnunetv2_uc.evaluation.nnunet_results import describe_training, evaluate_training, locate_training
from nnunetv2_uc.evaluation.plots import write_plots
from nnunetv2_uc.evaluation.report import comparison_table, csv_text, json_text, markdown_table
from nnunetv2_uc.files import atomic_write_text


def add_arguments(parser: argparse.ArgumentParser) -> None:
    inputs = parser.add_argument_group("folders mode")
    inputs.add_argument("--gt", metavar="GT_DIR", help="folder with the reference segmentations")
    inputs.add_argument("--pred", metavar="PRED_DIR", help="folder with the predicted segmentations (same names)")
    inputs.add_argument("--dataset-json", metavar="FILE",
                        help="dataset.json giving labels, names and file_ending (default: one found in PRED_DIR, "
                             "GT_DIR or GT_DIR/..; otherwise labels are the values present in the references)")
    nnunet = parser.add_argument_group("nnU-Net results mode")
    nnunet.add_argument("--nnunet-results", nargs=3, metavar=("DATASET", "TRAINER", "CONFIG"),
                        help="evaluate $nnUNet_results/DATASET/TRAINER__PLANS__CONFIG/fold_*/validation against "
                             "$nnUNet_preprocessed/DATASET/gt_segmentations and print the paper table; TRAINER may be "
                             "TRAINER__PLANS; several comma-separated ones add a comparison table with #Params, "
                             "GMACs and training time (-o/--csv then get the model name before the extension, "
                             "--plots a sub-folder per model)")
    nnunet.add_argument("-p", "--plans", default="nnUNetPlans",
                        help="plans identifier of the models given without __PLANS (default: nnUNetPlans)")
    nnunet.add_argument("--folds", nargs="+", metavar="FOLD",
                        help="folds to pool (default: every fold_k with a validation folder)")
    parser.add_argument("--labels", nargs="+", type=int, metavar="ID", help="foreground label ids to evaluate")
    parser.add_argument("-o", "--output", metavar="OUT.json", help="result JSON (required in folders mode)")
    parser.add_argument("--table", metavar="OUT.md", help="write the paper-layout markdown table here")
    parser.add_argument("--csv", metavar="OUT.csv", help="write one row per case and class here")
    parser.add_argument("--plots", metavar="DIR",
                        help="write per-class box plots of Dice and HD95 and one overlay PNG per case here")
    parser.add_argument("-j", "--processes", type=int, default=1, metavar="N", help="cases evaluated in parallel")
    parser.add_argument("--empty-policy", default="worst", metavar="POLICY",
                        help="distance metrics when a class is empty on exactly one side: 'worst' (image diagonal, "
                             "default), 'nan' (excluded, counted) or 'value:<x>'")
    parser.add_argument("--skip-bad", action="store_true",
                        help="evaluate the good cases and list the bad ones instead of failing")
    parser.add_argument("--overwrite", action="store_true", help="replace existing output files")


def _check_arguments(args) -> list[str]:
    errors = []
    if args.nnunet_results is None:
        for flag, value in (("--gt", args.gt), ("--pred", args.pred), ("-o/--output", args.output)):
            if not value:
                errors.append(f"{flag} is required (or use --nnunet-results DATASET TRAINER CONFIG)")
    elif args.gt or args.pred:
        errors.append("--gt/--pred and --nnunet-results are exclusive; use one mode")
    else:
        try:
            _models(args)
        except UserError as error:
            errors.append(str(error))
    if args.processes < 1:
        errors.append(f"-j {args.processes}: must be at least 1")
    try:
        EmptyMaskPolicy.parse(args.empty_policy)
    except ValueError as error:
        errors.append(f"--empty-policy: {error}")
    return errors


def _models(args) -> dict[str, tuple[str, str]]:
    """--nnunet-results models as given (comma-separated TRAINER or TRAINER__PLANS) -> (trainer, plans); {} in
    folders mode. A model without __PLANS uses -p."""
    if not args.nnunet_results:
        return {}
    models: dict[str, tuple[str, str]] = {}
    for item in (m for m in args.nnunet_results[1].split(",") if m):
        parts = item.split("__")
        if len(parts) > 2 or not all(parts):
            raise UserError(f"--nnunet-results model {item!r}: give TRAINER or TRAINER__PLANS (the first two parts "
                            f"of nnU-Net's TRAINER__PLANS__CONFIG folder name)")
        trainer, plans = parts if len(parts) == 2 else (item, args.plans)
        if (trainer, plans) in models.values():
            raise UserError(f"--nnunet-results: {trainer}__{plans} is listed twice; list each model once")
        models[item] = (trainer, plans)
    if not models:
        raise UserError("--nnunet-results: no trainer given; e.g. nnUNetTrainer,nnUNetTrainerUC")
    return models


def output_paths(args) -> dict[str | None, dict[str, str | None]]:
    """Output files per evaluation: the given paths for one evaluation; with several models, JSON/CSV get the
    model inserted before the extension (``cv.json`` -> ``cv.MODEL.json``) and plots go to ``DIR/MODEL``."""
    trainers = list(_models(args))
    if len(trainers) <= 1:
        return {trainers[0] if trainers else None: {"output": args.output, "csv": args.csv, "plots": args.plots}}

    def derived(path: str | None, trainer: str) -> str | None:
        if not path:
            return None
        stem, extension = os.path.splitext(path)
        return f"{stem}.{trainer}{extension}"

    return {t: {"output": derived(args.output, t), "csv": derived(args.csv, t),
                "plots": os.path.join(args.plots, t) if args.plots else None} for t in trainers}


def _existing_outputs(args) -> list[str]:
    existing = [args.table] if args.table and os.path.exists(args.table) else []
    for paths in output_paths(args).values():
        existing += [paths[k] for k in ("output", "csv") if paths[k] and os.path.exists(paths[k])]
        if paths["plots"] and os.path.isdir(paths["plots"]) and os.listdir(paths["plots"]):
            existing.append(paths["plots"])
    return existing


def _evaluate(args) -> list[tuple[str | None, dict, str]]:
    """Run the chosen mode; returns (trainer or None, summary, table title) per evaluation."""
    if args.nnunet_results:
        dataset, _, configuration = args.nnunet_results
        evaluations = []
        for name, (trainer, plans) in _models(args).items():
            training = locate_training(dataset, trainer, configuration, plans, args.folds)
            summary = evaluate_training(training, args.processes, args.empty_policy, args.skip_bad, args.labels)
            summary["model"] = describe_training(training.model_dir, trainer, configuration,
                                                 summary["inputs"]["folds"])
            title = (f"{training.dataset_name}: {trainer}__{plans}__{configuration}, cross-validation folds "
                     f"{', '.join(summary['inputs']['folds'])}")
            evaluations.append((name, summary, title))
        return evaluations
    summary = evaluate_folders(args.gt, args.pred, args.labels, args.processes, args.dataset_json,
                               args.empty_policy, args.skip_bad)
    title = f"{os.path.basename(os.path.abspath(args.pred))} vs {os.path.basename(os.path.abspath(args.gt))}"
    return [(None, summary, title)]


def run(args) -> int:
    errors = _check_arguments(args)
    if errors:
        raise UserError("\n".join(errors))
    existing = _existing_outputs(args)
    if existing and not args.overwrite:
        raise OverwriteRefused(f"output exists: {', '.join(existing)}; pass --overwrite or choose another path")
    _write_outputs(args, _evaluate(args))  # EvaluationInputError / EvaluationFailed (every problem listed): exit 2
    return 0


def _write_outputs(args, evaluations: list[tuple[str | None, dict, str]]) -> None:
    """Every requested file, the tables on stdout and one warning per skipped case on stderr."""
    paths = output_paths(args)
    tables = []
    for trainer, summary, title in evaluations:
        tables.append(markdown_table(summary, title))
        if paths[trainer]["output"]:
            atomic_write_text(paths[trainer]["output"], json_text(summary))
        if paths[trainer]["csv"]:
            atomic_write_text(paths[trainer]["csv"], csv_text(summary))
        if paths[trainer]["plots"]:
            write_plots(summary, paths[trainer]["plots"])
        for item in summary["skipped"]:
            print(f"warning: skipped {item['case']}: {'; '.join(item['problems'])}", file=sys.stderr)
    if len(evaluations) > 1:
        tables.append(comparison_table({trainer: summary for trainer, summary, _ in evaluations},
                                       f"{evaluations[0][1]['inputs']['model_dir'].split(os.sep)[-2]}: "
                                       f"models compared"))
    text = "\n".join(tables)
    if args.table:
        atomic_write_text(args.table, text)
    print(text)
