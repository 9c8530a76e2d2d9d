"""Finding, matching, reading and validating GT / prediction case files (nnU-Net's reader classes)."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from nnunetv2.imageio.reader_writer_registry import (LIST_OF_IO_CLASSES, determine_reader_writer_from_file_ending,
                                                     recursive_find_reader_writer_by_name)

from nnunetv2_uc.errors import UserError
from nnunetv2_uc.evaluation.metrics import CaseMetrics, EmptyMaskPolicy, evaluate_label_maps

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
