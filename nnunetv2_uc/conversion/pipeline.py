"""The conversion pipeline shared by every dataset.

discovery (dataset module) -> validation of every case, collecting all problems -> parallel per-case writing
into a hidden temporary folder next to the target -> dataset.json and splits -> atomic move into place
(:mod:`nnunetv2_uc.conversion.raw_dataset`). Nothing is visible under ``$nnUNet_raw`` until every case has been written.

At the end, the helpers the dataset modules use to find a release's folders and files (``input_folder``,
``find_subfolder``, ``nifti_files``, ``match_files``, ...).
"""
from __future__ import annotations

import json
import multiprocessing
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, TypeVar

from tqdm import tqdm

from nnunetv2_uc.conversion.cases import TEST, TRAIN, CaseOutcome, CaseSource, Inspection
from nnunetv2_uc.conversion.raw_dataset import FILE_ENDING, RawDatasetTarget, dataset_folder_name, write_dataset_json
from nnunetv2_uc.conversion.splits import SplitPlan, check_split_consistency
from nnunetv2_uc.errors import OverwriteRefused, UserError
from nnunetv2_uc.files import atomic_write_json

SPLITS_FILE = "splits_final.json"
_T = TypeVar("_T")
_R = TypeVar("_R")


class ConversionError(UserError):
    """The conversion was refused for bad input (exit code 2); ``problems`` lists every problem found."""

    def __init__(self, problems: list[str], headline: str = "conversion refused"):
        self.problems = problems
        super().__init__(f"{headline}: {len(problems)} problem(s)\n" + "\n".join(f"  - {p}" for p in problems))


class ConversionOverwriteRefused(ConversionError, OverwriteRefused):
    """The only reason to refuse: an existing dataset (or placed split) would be replaced without --overwrite
    (exit code 3)."""


@dataclass
class DatasetPlan:
    """Everything a dataset module discovered; the pipeline turns it into a dataset folder."""

    dataset_id: int
    name: str
    channel_names: dict[str, str]
    labels: dict[str, int] | None  # None: inferred from the written masks (uC layout without --labels)
    cases: list[CaseSource]
    split: SplitPlan | None
    reference: str
    licence: str
    description: str
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    extra_json: dict = field(default_factory=dict)
    extra_files: dict[str, str] = field(default_factory=dict)  # file name in the dataset folder -> text

    @property
    def folder_name(self) -> str:
        return dataset_folder_name(self.dataset_id, self.name)


@dataclass
class ConversionResult:
    dataset_dir: Path
    splits_files: list[Path]
    num_training: int
    num_test: int
    header_repaired: list[str]
    warnings: list[str]
    notes: list[str]


def _environment_folder(variable: str) -> Path | None:
    value = os.environ.get(variable)
    return Path(value) if value else None


def _map(function: Callable[[_T], _R], items: list[_T], processes: int, description: str) -> list[_R]:
    """Apply ``function`` to every item with a progress bar, in ``processes`` worker processes.

    Each worker handles one case at a time, so memory stays at one case per worker.
    """
    progress = dict(total=len(items), desc=description, unit="case", file=sys.stderr, leave=True)
    if processes <= 1 or len(items) <= 1:
        return [function(item) for item in tqdm(items, **progress)]
    # spawn: SimpleITK keeps a thread pool, which does not survive fork() reliably
    with multiprocessing.get_context("spawn").Pool(min(processes, len(items))) as pool:
        return list(tqdm(pool.imap(function, items, chunksize=1), **progress))


def _inspect(case: CaseSource) -> Inspection:
    return case.inspect()


def _write(job: tuple[CaseSource, Path]) -> CaseOutcome:
    case, dataset_dir = job
    image_path = dataset_dir / f"images{case.subset}" / f"{case.case_id}_0000{FILE_ENDING}"
    label_path = dataset_dir / f"labels{case.subset}" / f"{case.case_id}{FILE_ENDING}" if case.has_label else None
    return case.write(image_path, label_path)


def _check_plan(plan: DatasetPlan) -> list[str]:
    """Problems of the cases visible without opening any file: duplicates, missing labels, split consistency."""
    problems = []
    seen: dict[str, int] = {}
    for case in plan.cases:
        seen[case.case_id] = seen.get(case.case_id, 0) + 1
    duplicates = sorted(case_id for case_id, count in seen.items() if count > 1)
    if duplicates:
        problems.append(f"case ids found more than once (same case in two folders?): {duplicates}")
    training = [c for c in plan.cases if c.subset == TRAIN]
    unlabelled = sorted(c.case_id for c in training if not c.has_label)
    if unlabelled:
        problems.append(f"training cases without a label: {unlabelled}")
    if not training:
        problems.append("no labelled training case was found; check --input")
    if plan.split is not None and plan.split.folds is not None:
        problems.extend(check_split_consistency(plan.split.folds, {c.case_id for c in training}))
    return problems


def _split_overwrite_problems(plan: DatasetPlan, preprocessed_root: Path | None, overwrite: bool) -> list[str]:
    """A split placed in nnUNet_preprocessed earlier may only be replaced by a different one with --overwrite."""
    if preprocessed_root is None or plan.split is None or plan.split.folds is None:
        return []
    existing = preprocessed_root / plan.folder_name / SPLITS_FILE
    if existing.exists() and not overwrite and _load_json(existing) != plan.split.folds:
        return [f"{existing} exists with a different split; pass --overwrite to replace it"]
    return []


def _load_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _collect(outcomes: Iterable[CaseOutcome]) -> tuple[list[str], list[str]]:
    problems, warnings = [], []
    for outcome in sorted(outcomes, key=lambda o: o.case_id):
        problems.extend(outcome.problems)
        warnings.extend(outcome.warnings)
    return problems, warnings


def _infer_labels(outcomes: list[CaseOutcome]) -> tuple[dict[str, int], list[str]]:
    """Labels 0..max from the values found, for layouts that do not say which labels exist."""
    values = sorted({v for o in outcomes for v in o.label_values} | {0})
    if values != list(range(values[-1] + 1)):
        return {}, [f"label values found {values} are not consecutive 0..N; pass --labels to name them"]
    labels = {"background": 0} | {f"label_{v}": v for v in values[1:]}
    return labels, []


def _check_label_values(outcomes: list[CaseOutcome], labels: dict[str, int]) -> list[str]:
    allowed = set(labels.values())
    problems = []
    for outcome in sorted(outcomes, key=lambda o: o.case_id):
        unexpected = sorted(set(outcome.label_values) - allowed)
        if unexpected:
            problems.append(f"{outcome.case_id}: label values {unexpected} are not declared "
                            f"(declared: {sorted(allowed)})")
    return problems


def _dataset_json_extras(plan: DatasetPlan, repaired: list[str], resized: list[str]) -> dict:
    extras = dict(plan.extra_json)
    if plan.split is not None:
        extras["split_protocol"] = plan.split.protocol
        extras["split_source"] = plan.split.source
        extras["holdout_cases"] = sorted(plan.split.holdout)
    case_metadata = {c.case_id: dict(c.metadata) for c in sorted(plan.cases, key=lambda c: c.case_id)
                     if c.metadata}
    if case_metadata:
        extras["case_metadata"] = case_metadata
    if repaired:
        extras["header_repaired_cases"] = repaired
    if resized:
        extras["test_labels_on_original_grid"] = resized
    return extras


def _write_metadata(plan: DatasetPlan, work_dir: Path, labels: dict[str, int], num_training: int,
                    extras: dict) -> None:
    write_dataset_json(
        work_dir, channel_names=plan.channel_names, labels=labels, num_training_cases=num_training,
        dataset_name=plan.folder_name, reference=plan.reference, licence=plan.licence, description=plan.description,
        converted_by="nnunetv2_uc convert", **extras,
    )
    if plan.split is not None and plan.split.folds is not None:
        atomic_write_json(work_dir / SPLITS_FILE, plan.split.folds)
    for file_name, text in plan.extra_files.items():
        (work_dir / file_name).write_text(text)


def run_conversion(plan: DatasetPlan, processes: int = 1, overwrite: bool = False,
                   raw_root: Path | None = None, preprocessed_root: Path | None = None) -> ConversionResult:
    """Validate, write and move the dataset into place. Raises ConversionError listing every problem, or
    ConversionOverwriteRefused when replacing an existing dataset without ``overwrite`` is the only one."""
    raw_root = raw_root or _environment_folder("nnUNet_raw")
    preprocessed_root = preprocessed_root or _environment_folder("nnUNet_preprocessed")
    if raw_root is None:
        raise ConversionError(["the environment variable nnUNet_raw is not set; export nnUNet_raw=/path/to/raw"])
    target = RawDatasetTarget(raw_root, plan.dataset_id, plan.name, preprocessed_root)

    problems = plan.problems + target.naming_problems() + _check_plan(plan) + target.id_clash_problems()
    refusals = target.overwrite_problems(overwrite) + _split_overwrite_problems(plan, preprocessed_root, overwrite)
    inspections = _map(_inspect, plan.cases, processes, "checking")
    problems += [p for i in inspections for p in i.problems]
    warnings = [w for i in inspections for w in i.warnings]
    if problems:
        raise ConversionError(refusals + problems, f"{plan.folder_name}: nothing was written")
    if refusals:
        raise ConversionOverwriteRefused(refusals, f"{plan.folder_name}: nothing was written")

    with target.writing() as work_dir:
        written = _write_dataset(plan, work_dir, processes)
    return _place_splits(plan, target.path, preprocessed_root, written, warnings)


@dataclass
class _Written:
    """What writing the cases found out, for the summary."""

    num_training: int
    header_repaired: list[str]
    resized: list[str]
    warnings: list[str]


def _write_dataset(plan: DatasetPlan, work_dir: Path, processes: int) -> _Written:
    subsets = {c.subset for c in plan.cases}
    for folder in ["imagesTr", "labelsTr"] + (["imagesTs"] if TEST in subsets else []) + \
            (["labelsTs"] if any(c.subset == TEST and c.has_label for c in plan.cases) else []):
        (work_dir / folder).mkdir()
    outcomes = _map(_write, [(c, work_dir) for c in plan.cases], processes, "converting")
    problems, case_warnings = _collect(outcomes)
    labels, label_problems = (plan.labels, []) if plan.labels is not None else _infer_labels(outcomes)
    problems += label_problems or _check_label_values(outcomes, labels)
    if problems:
        raise ConversionError(problems, f"{plan.folder_name}: nothing was written")

    repaired = sorted(o.case_id for o in outcomes if o.header_repaired)
    resized = sorted(o.case_id for o in outcomes if o.label_resampled_grid_differs)
    num_training = sum(c.subset == TRAIN for c in plan.cases)
    _write_metadata(plan, work_dir, labels, num_training, _dataset_json_extras(plan, repaired, resized))
    return _Written(num_training, repaired, resized, case_warnings)


def _place_splits(plan: DatasetPlan, dataset_dir: Path, preprocessed_root: Path | None, written: _Written,
                  warnings: list[str]) -> ConversionResult:
    """Copy splits_final.json to where nnU-Net reads it and sum up the conversion."""
    splits_files = []
    if plan.split is not None and plan.split.folds is not None:
        splits_files.append(dataset_dir / SPLITS_FILE)
        if preprocessed_root is not None:
            placed = preprocessed_root / plan.folder_name / SPLITS_FILE
            atomic_write_json(placed, plan.split.folds)
            splits_files.append(placed)
    notes = list(plan.notes) + (plan.split.notes if plan.split else [])
    if written.resized:
        notes.append(f"{len(written.resized)} test label(s) kept at their original grid (predictions must be "
                     f"resized nearest-neighbour before evaluation): {written.resized}")
    return ConversionResult(dataset_dir, splits_files, written.num_training,
                            sum(c.subset == TEST for c in plan.cases), written.header_repaired,
                            warnings + written.warnings, notes)


NIFTI_SUFFIXES = (".nii.gz", ".nii")


def input_folder(path: str) -> Path:
    """The --input folder, or a ConversionError naming it."""
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise ConversionError([f"--input {folder} is not a folder; point it at the extracted release"])
    return folder


def find_subfolder(root: Path, *names: str, depth: int = 2) -> Path | None:
    """First folder named like one of ``names`` (case-insensitive) at ``root`` or up to ``depth`` levels below."""
    wanted = [n.lower() for n in names]
    level = [root]
    for _ in range(depth + 1):
        for name in wanted:
            for folder in level:
                if folder.name.lower() == name:
                    return folder
        level = sorted(child for folder in level for child in folder.iterdir()
                       if child.is_dir() and not child.name.startswith("."))
    return None


def nifti_files(folder: Path) -> list[Path]:
    """The NIfTI files directly in ``folder``, sorted, hidden files ignored."""
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")
                  and p.name.endswith(NIFTI_SUFFIXES))


def nifti_stem(path: Path) -> str:
    """File name without .nii/.nii.gz."""
    for suffix in NIFTI_SUFFIXES:
        if path.name.endswith(suffix):
            return path.name[: -len(suffix)]
    return path.stem


def match_files(folder: Path, pattern: str) -> dict[str, Path]:
    """Files in ``folder`` whose stem fully matches ``pattern``, keyed by the pattern's first group."""
    regex = re.compile(pattern)
    found = {}
    for path in nifti_files(folder):
        match = regex.fullmatch(nifti_stem(path))
        if match:
            found[match.group(1)] = path
    return found


def unmatched_problems(images: dict[str, Path], labels: dict[str, Path], *, images_need_labels: bool = True
                       ) -> list[str]:
    """Problems for labels without an image and (optionally) images without a label."""
    problems = [f"label {labels[key]} has no matching image" for key in sorted(set(labels) - set(images))]
    if images_need_labels:
        problems += [f"image {images[key]} has no matching label" for key in sorted(set(images) - set(labels))]
    return problems
