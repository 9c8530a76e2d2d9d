"""Evaluate a folder of predictions against a folder of references: ``evaluate_folders``."""
from __future__ import annotations

import multiprocessing
import os
from dataclasses import dataclass

from nnunetv2_uc.evaluation.aggregate import summarize
from nnunetv2_uc.evaluation.cases import (CasePair, EvaluationInputError, EvaluationJob, LabelInfo, evaluate_job,
                                          list_cases, load_label_info, match_cases, reader_class_for,
                                          split_case_name, supported_file_endings)
from nnunetv2_uc.evaluation.metrics import STATUS_FALSE_POSITIVE, CaseMetrics, EmptyMaskPolicy


class EvaluationFailed(EvaluationInputError):
    """Bad input in one or more cases (exit code 2); ``problems`` holds one message per problem, and the message
    lists them all."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__(f"{len(problems)} problem(s); nothing written (use --skip-bad to evaluate the rest):\n"
                         + "\n".join(f"  {p}" for p in problems))


@dataclass
class CaseSelection:
    """Matched pairs plus the names found on one side only."""

    pairs: list[CasePair]
    gt_only: list[str]
    pred_only: list[str]


def find_dataset_json(gt_dir: str, pred_dir: str) -> str | None:
    """dataset.json next to the predictions (nnU-Net writes one there), in the GT folder or its parent."""
    for candidate in (os.path.join(pred_dir, "dataset.json"), os.path.join(gt_dir, "dataset.json"),
                      os.path.join(os.path.dirname(os.path.abspath(gt_dir)), "dataset.json")):
        if os.path.isfile(candidate):
            return candidate
    return None


def select_cases(gt_dir: str, pred_dir: str, file_ending: str | None, require_all_gt: bool) -> CaseSelection:
    """Match files by case name; with ``require_all_gt`` False, GT cases without a prediction are not problems."""
    gt_files = list_cases(gt_dir, file_ending)
    ending = file_ending or _ending_of(next(iter(gt_files.values())))
    pred_files = list_cases(pred_dir, ending)
    pairs, gt_only, pred_only = match_cases(gt_files, pred_files)
    return CaseSelection(pairs, gt_only if require_all_gt else [], pred_only)


def _ending_of(path: str) -> str:
    split = split_case_name(os.path.basename(path), supported_file_endings())
    return split[1] if split else os.path.splitext(path)[1]


def _run_jobs(jobs: list[EvaluationJob], num_processes: int) -> list[tuple[str, CaseMetrics | None, list[str]]]:
    """Evaluate every job, in a fork-based process pool when ``num_processes`` > 1 (order preserved)."""
    if num_processes <= 1 or len(jobs) <= 1:
        return [evaluate_job(job) for job in jobs]
    context = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn")
    with context.Pool(min(num_processes, len(jobs))) as pool:
        return pool.map(evaluate_job, jobs, chunksize=1)


def _infer_labels(results: list[tuple[str, CaseMetrics | None, list[str]]]) -> dict[int, str]:
    """Foreground labels present in at least one reference (classes found only in predictions are not labels)."""
    labels = set()
    for _, metrics, _ in results:
        if metrics is not None:
            labels |= {label for label, status in metrics.status.items() if status != STATUS_FALSE_POSITIVE}
    return {label: str(label) for label in sorted(labels)}


def _prediction_only_problems(results, labels: dict[int, str]) -> list[tuple[str, str]]:
    """(case, message) for predictions holding values that no reference holds (inferred-label mode)."""
    problems = []
    for name, metrics, _ in results:
        if metrics is not None:
            extra = sorted(set(metrics.per_class) - set(labels))
            if extra:
                problems.append((name, f"case {name}: prediction contains label values {extra} that no reference "
                                       f"file contains; pass --labels or --dataset-json to evaluate them"))
    return problems


def evaluate_folders(gt_dir: str, pred_dir: str, labels: list[int] | None = None, num_processes: int = 1,
                     dataset_json: str | None = None, empty_policy: str | EmptyMaskPolicy = "worst",
                     skip_bad: bool = False, require_all_gt: bool = True) -> dict:
    """Evaluate every prediction in ``pred_dir`` against the same-named reference in ``gt_dir``.

    Returns the JSON structure of issue 5 (NaN as float NaN; use ``aggregate.to_json_compatible`` before dumping),
    with ``skipped`` (case, problems), ``unmatched`` and ``inputs`` added. Raises ``EvaluationFailed`` listing every
    problem (missing/unreadable files, shape/spacing mismatch, unknown label values) unless ``skip_bad``, in which
    case bad cases are left out and listed. ``labels``: foreground label ids (default: dataset.json found next to
    the predictions or the references, else every value present in the references).
    """
    dataset_json = dataset_json or find_dataset_json(gt_dir, pred_dir)
    info = load_label_info(dataset_json, labels)
    selection = select_cases(gt_dir, pred_dir, info.file_ending, require_all_gt)
    summary = evaluate_pairs(selection, info, empty_policy, num_processes, skip_bad)
    summary["inputs"] = {"gt_dir": os.path.abspath(gt_dir), "pred_dir": os.path.abspath(pred_dir),
                         "dataset_json": dataset_json, "labels_source": info.source}
    return summary


def evaluate_pairs(selection: CaseSelection, info: LabelInfo, empty_policy: str | EmptyMaskPolicy = "worst",
                   num_processes: int = 1, skip_bad: bool = False) -> dict:
    """Evaluate matched case pairs (see ``evaluate_folders``); unmatched names in ``selection`` are problems."""
    policy = empty_policy if isinstance(empty_policy, EmptyMaskPolicy) else EmptyMaskPolicy.parse(empty_policy)
    problems: list[tuple[str, str]] = [
        (name, f"case {name}: prediction missing (no prediction file named {name}); predict it or use --skip-bad")
        for name in selection.gt_only] + [
        (name, f"case {name}: prediction has no reference file of the same name; remove it or use --skip-bad")
        for name in selection.pred_only]
    if not selection.pairs:
        raise EvaluationFailed([p for _, p in problems] + ["no prediction file matches a reference file by name"])
    ending = info.file_ending or _ending_of(selection.pairs[0].gt_path)
    threads = max(1, (os.cpu_count() or 1) // max(1, num_processes))
    reader_class = reader_class_for([pair.gt_path for pair in selection.pairs], ending, info.reader_writer)
    jobs = [EvaluationJob(pair, reader_class, sorted(info.labels) if info.labels else None,
                          info.ignore_label, policy, threads) for pair in selection.pairs]
    results = _run_jobs(jobs, num_processes)
    problems += [(name, message) for name, _, messages in results for message in messages]
    label_names = info.labels if info.labels is not None else _infer_labels(results)
    if info.labels is None:
        problems += _prediction_only_problems(results, label_names)
    if problems and not skip_bad:
        raise EvaluationFailed([message for _, message in problems])
    bad_cases = {name for name, _ in problems}
    good = [(name, metrics) for name, metrics, _ in results if metrics is not None and name not in bad_cases]
    if not good:
        raise EvaluationFailed([message for _, message in problems] + ["no case could be evaluated"])
    summary = summarize(good, label_names, policy)
    summary["skipped"] = [{"case": name, "problems": [m for n, m in problems if n == name]}
                          for name in sorted(bad_cases)]
    summary["unmatched"] = {"gt_only": selection.gt_only, "pred_only": selection.pred_only}
    evaluated = {name for name, _ in good}
    summary["files"] = {"file_ending": ending, "reader_writer": reader_class.__name__,
                        "cases": {pair.name: {"gt": os.path.abspath(pair.gt_path),
                                              "pred": os.path.abspath(pair.pred_path)}
                                  for pair in selection.pairs if pair.name in evaluated}}
    return summary
