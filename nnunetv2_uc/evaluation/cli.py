"""Evaluate predictions with the uC papers' metrics (mIoU, Dice, VOE, HD95 in both conventions, ASSD, ARI).

Two modes:
  nnunetv2_uc evaluate --gt GT_DIR --pred PRED_DIR -o OUT.json [--table OUT.md] [--csv OUT.csv] [--plots DIR]
  nnunetv2_uc evaluate --nnunet-results DATASET TRAINER CONFIG [-p PLANS] [--folds 0 1 2 3 4] [-o OUT.json]

Files are matched by case name and read with nnU-Net's reader classes on the reference's native grid and spacing.
Exit codes: 0 success, 2 bad input (one message per problem; --skip-bad evaluates the rest and lists the skipped
cases in the JSON), 3 an output file exists (pass --overwrite).
"""
from __future__ import annotations

import argparse
import os
import sys

EXIT_BAD_INPUT = 2
EXIT_OUTPUT_EXISTS = 3


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
                             "$nnUNet_preprocessed/DATASET/gt_segmentations and print the paper table")
    nnunet.add_argument("-p", "--plans", default="nnUNetPlans", help="plans identifier (default: nnUNetPlans)")
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
    if args.processes < 1:
        errors.append(f"-j {args.processes}: must be at least 1")
    from nnunetv2_uc.evaluation.metrics import EmptyMaskPolicy

    try:
        EmptyMaskPolicy.parse(args.empty_policy)
    except ValueError as error:
        errors.append(f"--empty-policy: {error}")
    return errors


def _existing_outputs(args) -> list[str]:
    existing = [path for path in (args.output, args.table, args.csv) if path and os.path.exists(path)]
    if args.plots and os.path.isdir(args.plots) and os.listdir(args.plots):
        existing.append(args.plots)
    return existing


def _evaluate(args) -> tuple[dict, str]:
    """Run the chosen mode; returns (summary, table title)."""
    if args.nnunet_results:
        from nnunetv2_uc.evaluation.nnunet_results import evaluate_training, locate_training

        dataset, trainer, configuration = args.nnunet_results
        training = locate_training(dataset, trainer, configuration, args.plans, args.folds)
        summary = evaluate_training(training, args.processes, args.empty_policy, args.skip_bad, args.labels)
        title = (f"{training.dataset_name}: {trainer}__{args.plans}__{configuration}, cross-validation folds "
                 f"{', '.join(summary['inputs']['folds'])}")
        return summary, title
    from nnunetv2_uc.evaluation.folders import evaluate_folders

    summary = evaluate_folders(args.gt, args.pred, args.labels, args.processes, args.dataset_json,
                               args.empty_policy, args.skip_bad)
    return summary, f"{os.path.basename(os.path.abspath(args.pred))} vs {os.path.basename(os.path.abspath(args.gt))}"


def run(args) -> int:
    errors = _check_arguments(args)
    if errors:
        print("\n".join(f"error: {e}" for e in errors), file=sys.stderr)
        return EXIT_BAD_INPUT
    existing = _existing_outputs(args)
    if existing and not args.overwrite:
        print(f"error: output exists: {', '.join(existing)}; pass --overwrite or choose another path",
              file=sys.stderr)
        return EXIT_OUTPUT_EXISTS

    from nnunetv2_uc.evaluation.cases import EvaluationInputError
    from nnunetv2_uc.evaluation.folders import EvaluationFailed
    from nnunetv2_uc.evaluation.report import csv_text, json_text, markdown_table, write_atomically

    try:
        summary, title = _evaluate(args)
    except EvaluationFailed as failure:
        print(f"error: {len(failure.problems)} problem(s); nothing written (use --skip-bad to evaluate the rest):",
              file=sys.stderr)
        print("\n".join(f"  {p}" for p in failure.problems), file=sys.stderr)
        return EXIT_BAD_INPUT
    except EvaluationInputError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT

    table = markdown_table(summary, title)
    if args.output:
        write_atomically(args.output, json_text(summary))
    if args.table:
        write_atomically(args.table, table)
    if args.csv:
        write_atomically(args.csv, csv_text(summary))
    if args.plots:
        from nnunetv2_uc.evaluation.plots import write_plots

        write_plots(summary, args.plots)
    print(table)
    for item in summary["skipped"]:
        print(f"warning: skipped {item['case']}: {'; '.join(item['problems'])}", file=sys.stderr)
    return 0
