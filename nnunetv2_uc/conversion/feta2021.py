"""FeTA2021 fetal brain MRI (T2w, 7 tissues, release feta_2.1) -> nnU-Net raw (default Dataset503_FeTA2021).

Layout of --input (feta_2.1/ or its parent): participants.tsv and sub-XXX/anat/sub-XXX_rec-<method>_T2w.nii.gz with
sub-XXX_rec-<method>_dseg.nii.gz (80 subjects; sub-001-040 rec-mial, sub-041-080 rec-irtk; any rec-* tag is
accepted, one per subject). Case ids are FeTA_<subject number> (sub-001 -> FeTA_001). Images are copied
unchanged; dseg masks are rounded to uint8 with the image geometry. The reconstruction method, pathology and
gestational age of every case are recorded in dataset.json ("case_metadata") so that stratified splits are
possible. channel_names {"0": "T2"} selects nnU-Net's per-image z-score normalisation.

--split paper: 3D UX-Net's dataset_FeTA.json test hold-out (18 cases: sub-061-071, 073-078, 080, assuming its
0-based FeTA_k is sub-(k+1)) goes to imagesTs/labelsTs and nnU-Net's default 5 folds are written over the rest.
UX-Net's JSON leaves FeTA_010 (sub-011) out of both lists; --sub011 decides whether it joins the training pool
(default) or is left out of the dataset.
"""
from __future__ import annotations

import csv
import re
from pathlib import Path

from nnunetv2_uc.conversion.cases import TEST, TRAIN, NiftiCase
from nnunetv2_uc.conversion.pipeline import DatasetPlan, input_folder
from nnunetv2_uc.conversion.splits import SplitPlan, nnunet_default_folds

DEFAULT_ID = 503
DEFAULT_NAME = "FeTA2021"
LABELS = {"background": 0, "external_csf": 1, "grey_matter": 2, "white_matter": 3, "ventricles": 4,
          "cerebellum": 5, "deep_grey_matter": 6, "brainstem": 7}
UXNET_TEST_SUBJECTS = (*range(61, 72), *range(73, 79), 80)
ORPHAN_SUBJECT = 11
T2W = re.compile(r"sub-(\d+)_rec-([A-Za-z0-9]+)_T2w\.nii(\.gz)?")
SUB011_CHOICES = ("pool", "drop")  # where UX-Net's orphan sub-011 goes


def _release_folder(root: Path) -> Path:
    """--input may be feta_2.1/ itself or a folder containing one feta_* release."""
    if any(root.glob("sub-*")):
        return root
    releases = sorted(p for p in root.glob("feta*") if p.is_dir())
    return releases[-1] if releases else root


def read_participants(release: Path) -> tuple[dict[str, dict], list[str]]:
    """participant_id -> {pathology, gestational_age} from participants.tsv (column names matched loosely)."""
    path = release / "participants.tsv"
    if not path.is_file():
        return {}, [f"{path} not found: pathology and gestational age are not recorded"]
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t"))
    if not rows or "participant_id" not in rows[0]:
        return {}, [f"{path} has no participant_id column: pathology and gestational age are not recorded"]
    pathology = next((k for k in rows[0] if "patholog" in k.lower()), None)
    age = next((k for k in rows[0] if "gestational" in k.lower() or k.lower() in ("ga", "age")), None)
    info = {}
    for row in rows:
        entry = {}
        if pathology:
            entry["pathology"] = row[pathology]
        if age:
            try:
                entry["gestational_age"] = float(row[age])
            except (TypeError, ValueError):
                entry["gestational_age"] = row[age]
        info[row["participant_id"]] = entry
    return info, []


def _find_subject_case(subject_dir: Path) -> tuple[Path | None, Path | None, str | None, list[str]]:
    """(T2w, dseg, method, problems) of one subject folder; exactly one reconstruction is expected."""
    anat = subject_dir / "anat" if (subject_dir / "anat").is_dir() else subject_dir
    t2ws = sorted(p for p in anat.iterdir() if T2W.fullmatch(p.name))
    if len(t2ws) != 1:
        what = "no" if not t2ws else f"{len(t2ws)}"
        return None, None, None, [f"{anat}: {what} sub-*_rec-*_T2w.nii.gz file(s) found, expected exactly one"]
    t2w = t2ws[0]
    method = T2W.fullmatch(t2w.name).group(2)
    dseg = t2w.with_name(t2w.name.replace("_T2w.", "_dseg."))
    if not dseg.is_file():
        return t2w, None, method, [f"{t2w} has no segmentation {dseg.name}"]
    return t2w, dseg, method, []


def build_plan(input_dir: str | Path, dataset_id: int = DEFAULT_ID, name: str = DEFAULT_NAME,
               split: str = "paper", *, sub011: str = "pool") -> DatasetPlan:
    release = _release_folder(input_folder(input_dir))
    participants, notes = read_participants(release)
    problems: list[str] = []
    subjects = sorted(p for p in release.glob("sub-*") if p.is_dir())
    if not subjects:
        problems.append(f"{release}: no sub-XXX folders; point --input at the extracted feta_2.1 folder")
    found = []
    for subject_dir in subjects:
        t2w, dseg, method, subject_problems = _find_subject_case(subject_dir)
        problems += subject_problems
        if t2w is not None and dseg is not None:
            number = int(subject_dir.name.split("-", 1)[1])
            if number == ORPHAN_SUBJECT and sub011 == "drop":
                notes.append("sub-011 (UX-Net's orphan FeTA_010) left out (--sub011 drop)")
                continue
            metadata = {"subject": subject_dir.name, "reconstruction": method} | participants.get(subject_dir.name, {})
            found.append((f"FeTA_{number:03d}", number, t2w, dseg, metadata))

    holdout = {case_id for case_id, number, *_ in found if number in UXNET_TEST_SUBJECTS} \
        if split == "paper" else set()
    cases = [NiftiCase(case_id, TEST if case_id in holdout else TRAIN, metadata=tuple(sorted(metadata.items())),
                       image=t2w, label=dseg)
             for case_id, _, t2w, dseg, metadata in found]
    split_plan = None
    if split == "paper":
        folds, split_notes = nnunet_default_folds([c.case_id for c in cases if c.subset == TRAIN])
        split_plan = SplitPlan("uxnet_holdout_18", "3D UX-Net dataset_FeTA.json test hold-out (18 cases, FeTA_k = "
                               "sub-(k+1) assumed); folds are nnU-Net's default 5-fold over the rest, not the "
                               f"paper's; sub-011 {'in the pool' if sub011 == 'pool' else 'dropped'}",
                               holdout=sorted(holdout), folds=folds, notes=split_notes)
    return DatasetPlan(
        dataset_id=dataset_id, name=name, channel_names={"0": "T2"}, labels=dict(LABELS), cases=cases,
        split=split_plan, problems=problems, notes=notes,
        reference="https://feta.grand-challenge.org/ (FeTA 2021, release feta_2.1, Synapse)",
        licence="FeTA data usage agreement (research use only); not redistributable",
        description="FeTA2021 fetal brain tissue segmentation, super-resolution T2w MRI (mial / irtk)",
        extra_json={"paper_intensity_window": [0, 1000]},
    )
