"""Evaluate a folder of predictions against a folder of references (``evaluate_folders``), and the case files it
works on: finding, matching, reading and validating GT / prediction case files (nnU-Net's reader classes).
"""
from __future__ import annotations

import json
import multiprocessing
import os
from dataclasses import dataclass, field

import numpy as np
from nnunetv2.imageio.reader_writer_registry import (LIST_OF_IO_CLASSES, determine_reader_writer_from_file_ending,
                                                     recursive_find_reader_writer_by_name)

from nnunetv2_uc.errors import UserError
from nnunetv2_uc.evaluation.metrics import STATUS_FALSE_POSITIVE, CaseMetrics, EmptyMaskPolicy, evaluate_label_maps
from nnunetv2_uc.evaluation.report import summarize

#: relative tolerance when comparing GT and prediction spacings (headers round-trip through float32)
SPACING_RTOL = 1e-4


class EvaluationInputError(UserError):
    """A user-facing problem with the evaluation inputs (message names the file and the fix; exit code 2)."""


@dataclass
class CasePair:
    """One case to evaluate: file paths of the reference and the prediction."""

    name: str
    gt_path: str
    pred_path: str


@dataclass
class LabelInfo:
    """Foreground labels (id -> name), the ignore label (or None) and the file ending, from dataset.json or CLI."""

    labels: dict[int, str] | None
    ignore_label: int | None = None
    file_ending: str | None = None
    reader_writer: str | None = None  # dataset.json's overwrite_image_reader_writer
    source: str = "inferred from the ground truth"
    names: dict[int, str] = field(default_factory=dict)


def supported_file_endings() -> list[str]:
    """Every file ending one of nnU-Net's reader/writer classes can read, longest first."""
    endings = {e.lower() for io in LIST_OF_IO_CLASSES for e in io.supported_file_endings}
    return sorted(endings, key=len, reverse=True)


def split_case_name(filename: str, endings: list[str]) -> tuple[str, str] | None:
    """(case name, ending) if ``filename`` has a supported ending, else None."""
    lower = filename.lower()
    for ending in endings:
        if lower.endswith(ending):
            return filename[: -len(ending)], ending
    return None


def list_cases(folder: str, file_ending: str | None) -> dict[str, str]:
    """Case name -> path of every readable segmentation file in ``folder`` (non-recursive).

    With ``file_ending`` None the most common supported ending in the folder is used.
    """
    if not os.path.isdir(folder):
        raise EvaluationInputError(f"{folder}: not a directory; pass the folder holding the segmentation files")
    endings = [file_ending.lower()] if file_ending else supported_file_endings()
    found: dict[str, dict[str, str]] = {}
    for entry in sorted(os.listdir(folder)):
        path = os.path.join(folder, entry)
        split = split_case_name(entry, endings)
        if split is not None and os.path.isfile(path):
            found.setdefault(split[1], {})[split[0]] = path
    if not found:
        wanted = file_ending or ", ".join(endings)
        raise EvaluationInputError(f"{folder}: no segmentation files ending in {wanted}; check the folder "
                                   f"(or --dataset-json's file_ending)")
    most_common = max(found, key=lambda e: len(found[e]))
    return found[most_common]


def match_cases(gt_files: dict[str, str], pred_files: dict[str, str]
                ) -> tuple[list[CasePair], list[str], list[str]]:
    """Pairs of files present in both folders, plus GT-only and prediction-only case names."""
    pairs = [CasePair(name, gt_files[name], pred_files[name]) for name in sorted(gt_files) if name in pred_files]
    return pairs, sorted(set(gt_files) - set(pred_files)), sorted(set(pred_files) - set(gt_files))


def load_label_info(dataset_json: str | None, labels: list[int] | None) -> LabelInfo:
    """Labels from ``--labels`` (wins), else from dataset.json's "labels" (background and "ignore" dropped)."""
    content: dict = {}
    if dataset_json is not None:
        try:
            with open(dataset_json) as handle:
                content = json.load(handle)
        except (OSError, json.JSONDecodeError) as error:
            raise EvaluationInputError(f"{dataset_json}: cannot read dataset.json ({error}); fix the path or file")
    names: dict[int, str] = {}
    ignore_label = None
    for name, value in content.get("labels", {}).items():
        if isinstance(value, (list, tuple)):
            raise EvaluationInputError(f"{dataset_json}: label {name!r} is a region {value}; region-based "
                                       f"datasets are not supported, pass the exported label ids with --labels")
        if name == "ignore":
            ignore_label = int(value)
        elif int(value) != 0:
            names[int(value)] = name
    if labels is not None:
        bad = [label for label in labels if label <= 0]
        if bad:
            raise EvaluationInputError(f"--labels {bad}: foreground labels must be positive integers "
                                       f"(background 0 is never evaluated)")
        chosen = {label: names.get(label, str(label)) for label in sorted(set(labels))}
        source = "--labels"
    elif names:
        chosen, source = dict(sorted(names.items())), dataset_json
    else:
        chosen, source = None, "inferred from the ground truth"
    return LabelInfo(labels=chosen, ignore_label=ignore_label, file_ending=content.get("file_ending"),
                     reader_writer=content.get("overwrite_image_reader_writer"), source=source,
                     names=names)


def reader_class_for(example_files: list[str], file_ending: str, reader_writer: str | None) -> type:
    """The nnU-Net reader/writer class for these files: dataset.json's override, else the first class that reads
    one of ``example_files`` (nnU-Net's own rule; a few examples so one broken file does not decide)."""
    if reader_writer and reader_writer != "None":
        return recursive_find_reader_writer_by_name(reader_writer)
    errors = []
    for example in example_files[:3]:
        try:
            return determine_reader_writer_from_file_ending(file_ending, example, verbose=False)
        except Exception as error:  # nnU-Net raises a bare RuntimeError when no class can read the example
            errors.append(f"{example}: {error}")
    raise EvaluationInputError(f"no nnU-Net reader can read the {file_ending} files ({'; '.join(errors)}); "
                               f"check that they are valid segmentations")


def read_label_map(reader, path: str) -> tuple[np.ndarray, np.ndarray]:
    """(integer label map with nnU-Net's spatial axes, spacing in mm in the same order) of one file."""
    if not os.path.isfile(path):
        raise EvaluationInputError(f"{path}: file missing")
    try:
        seg, properties = reader.read_seg(path)
    except Exception as error:  # readers raise anything from RuntimeError to nibabel's ImageFileError
        raise EvaluationInputError(f"{path}: unreadable ({type(error).__name__}: {error}); re-export the file")
    seg = np.asarray(seg)[0]
    if seg.size and (seg.min() < 0 or (seg.dtype.kind == "f" and np.any(seg != np.round(seg)))):
        raise EvaluationInputError(f"{path}: not a label map (negative or non-integer values); "
                                   f"pass segmentations, not probabilities or images")
    dtype = np.uint8 if seg.max(initial=0) < 256 else np.int32
    return seg.astype(dtype, copy=False), np.asarray(properties["spacing"], dtype=np.float64)


@dataclass
class EvaluationJob:
    """Everything a worker process needs to evaluate one case (picklable)."""

    pair: CasePair
    reader_class: type
    labels: list[int] | None
    ignore_label: int | None
    policy: EmptyMaskPolicy
    workers: int = 1


def label_values(seg: np.ndarray) -> set[int]:
    """Distinct values of a non-negative integer label map (bincount: much faster than np.unique for uint8)."""
    if seg.dtype == np.uint8:
        return set(np.flatnonzero(np.bincount(seg.ravel(), minlength=256)).tolist())
    return set(np.unique(seg).tolist())


def check_pair(name: str, gt: np.ndarray, gt_spacing: np.ndarray, pred: np.ndarray, pred_spacing: np.ndarray,
               labels: list[int] | None, ignore_label: int | None) -> list[str]:
    """Every problem of one GT/prediction pair, as messages naming the case."""
    problems = []
    if gt.shape != pred.shape:
        problems.append(f"case {name}: shape mismatch, GT {tuple(gt.shape)} vs prediction {tuple(pred.shape)}; "
                        f"predictions must be exported on the reference grid")
    if gt_spacing.shape != pred_spacing.shape or not np.allclose(gt_spacing, pred_spacing, rtol=SPACING_RTOL):
        problems.append(f"case {name}: spacing mismatch, GT {tuple(np.round(gt_spacing, 6).tolist())} vs "
                        f"prediction {tuple(np.round(pred_spacing, 6).tolist())}; resample the prediction to the "
                        f"reference grid")
    if labels is not None:
        allowed_pred = set(labels) | {0}
        allowed_gt = allowed_pred | ({ignore_label} if ignore_label is not None else set())
        for side, seg, allowed in (("GT", gt, allowed_gt), ("prediction", pred, allowed_pred)):
            extra = sorted(label_values(seg) - allowed)
            if extra:
                problems.append(f"case {name}: {side} contains label values {extra} not in the label list "
                                f"{sorted(labels)}; fix the file or pass --labels / --dataset-json")
    return problems


def evaluate_job(job: EvaluationJob) -> tuple[str, CaseMetrics | None, list[str]]:
    """Read, validate and evaluate one case: (case name, metrics or None, problems)."""
    reader = job.reader_class()
    try:
        gt, gt_spacing = read_label_map(reader, job.pair.gt_path)
        pred, pred_spacing = read_label_map(reader, job.pair.pred_path)
    except EvaluationInputError as error:
        return job.pair.name, None, [f"case {job.pair.name}: {error}"]
    problems = check_pair(job.pair.name, gt, gt_spacing, pred, pred_spacing, job.labels, job.ignore_label)
    if problems:
        return job.pair.name, None, problems
    ignore_mask = (gt == job.ignore_label) if job.ignore_label is not None else None
    metrics = evaluate_label_maps(gt, pred, gt_spacing, job.labels, job.policy, job.workers, ignore_mask)
    return job.pair.name, metrics, []


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
