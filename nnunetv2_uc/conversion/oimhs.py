"""OIMHS retinal OCT (macular hole, edema, choroid, retina) -> nnU-Net raw (default Dataset502_OIMHS).

Layout of --input (the extracted figshare zip): Images/<eye id>/<n>.png, one PNG per B-scan holding the B-scan
(left half) and its colour-coded mask (right half) side by side, and optionally a *Demographics*.xlsx sheet.
For every eye the B-scans are sorted numerically (2 before 10), checked to have one size, split at width // 2
and stacked as the z axis of one volume per eye, OIMHS_<eye:03d>: numpy (n_bscans, H, W), uint8 grey
(luminance 0.299/0.587/0.114 where the channels differ). Mask colours are decoded by exact match:
red macular_hole 1, blue macular_edema 2, yellow choroid 3, green retina 4, black background 0 (--label-scheme
torch-em: choroid 1, retina 2, edema 3, hole 4). Pixels of any other colour are an error naming the file and the
pixel count, unless there are at most --max-unknown-colour-pixels of them per B-scan (then background).
The release gives no spacing: --spacing sets it (default nominal 1 1 1) and it is recorded in dataset.json; an
anisotropic spacing changes nnU-Net's plans. channel_names {"0": "OCT"} selects per-image z-score.

--split paper: no published split exists; a project-defined patient-grouped 5-fold (seed 12345; both eyes of a
patient share a fold) from --patient-map or the Demographics sheet (each eye its own patient when neither is
readable), plus a seeded hold-out of --holdout-fraction of the patients in imagesTs/labelsTs if > 0.
"""
from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import SimpleITK as sitk
from PIL import Image

from nnunetv2_uc.conversion.cases import (TEST, TRAIN, CaseOutcome, CaseSource, Geometry, Inspection, UnconvertibleCase,
                                          describe_read_error, write_label)
from nnunetv2_uc.conversion.pipeline import DatasetPlan, find_subfolder, input_folder
from nnunetv2_uc.conversion.splits import SplitPlan, grouped_folds, seeded_group_holdout

DEFAULT_ID = 502
DEFAULT_NAME = "OIMHS"
COLOURS = {"macular_hole": (255, 0, 0), "macular_edema": (0, 0, 255), "choroid": (255, 255, 0),
           "retina": (0, 255, 0)}
LABEL_SCHEMES = {
    "uc": ("macular_hole", "macular_edema", "choroid", "retina"),
    "torch-em": ("choroid", "retina", "macular_edema", "macular_hole"),
}
LUMINANCE = np.array([0.299, 0.587, 0.114])
BSCAN = re.compile(r"(\d+)\.png", re.IGNORECASE)
NOMINAL_SPACING = (1.0, 1.0, 1.0)  # the release gives no spacing


def scheme_labels(scheme: str) -> dict[str, int]:
    return {"background": 0} | {name: index for index, name in enumerate(LABEL_SCHEMES[scheme], start=1)}


@dataclass(frozen=True)
class OimhsEye(CaseSource):
    """All B-scans of one eye, stacked into one volume when written."""

    bscans: tuple[Path, ...] = ()
    spacing: tuple[float, float, float] = NOMINAL_SPACING
    colour_ids: tuple[tuple[tuple[int, int, int], int], ...] = ()
    max_unknown_pixels: int = 0

    @property
    def has_label(self) -> bool:
        return True

    def inspect(self) -> Inspection:
        result = Inspection()
        sizes: dict[tuple[int, int], list[str]] = {}
        for path in self.bscans:
            try:
                with Image.open(path) as image:
                    sizes.setdefault(image.size, []).append(path.name)
            except Exception as error:  # noqa: BLE001 - unreadable PNGs are user-facing problems
                result.problems.append(describe_read_error(path, error))
        if len(sizes) > 1:
            detail = "; ".join(f"{w}x{h}: {', '.join(names[:5])}" for (w, h), names in sorted(sizes.items()))
            result.problems.append(f"{self.bscans[0].parent}: B-scans differ in size ({detail})")
        for (width, _), names in sizes.items():
            if width % 2:
                result.problems.append(f"{self.bscans[0].parent}: width {width} is odd, cannot split "
                                       f"B-scan | mask ({', '.join(names[:5])})")
        return result

    def _split_bscan(self, path: Path) -> tuple[np.ndarray, np.ndarray, int]:
        """(grey B-scan, label ids, unknown-colour pixel count) of one side-by-side PNG."""
        with Image.open(path) as image:
            rgb = np.asarray(image.convert("RGB"))
        half = rgb.shape[1] // 2
        left, right = rgb[:, :half], rgb[:, half:]
        if np.array_equal(left[..., 0], left[..., 1]) and np.array_equal(left[..., 0], left[..., 2]):
            grey = left[..., 0].copy()
        else:
            grey = np.rint(left @ LUMINANCE).astype(np.uint8)
        packed = (right[..., 0].astype(np.uint32) << 16) | (right[..., 1].astype(np.uint32) << 8) | right[..., 2]
        labels = np.zeros(packed.shape, dtype=np.uint8)
        known = packed == 0
        for (r, g, b), label_id in self.colour_ids:
            match = packed == ((r << 16) | (g << 8) | b)
            labels[match] = label_id
            known |= match
        return grey, labels, int((~known).sum())

    def write(self, image_path: Path, label_path: Path | None) -> CaseOutcome:
        outcome = CaseOutcome(self.case_id)
        greys, labels = [], []
        for path in self.bscans:
            try:
                grey, ids, unknown = self._split_bscan(path)
            except Exception as error:  # noqa: BLE001
                outcome.problems.append(describe_read_error(path, error))
                continue
            if unknown > self.max_unknown_pixels:
                outcome.problems.append(f"{path}: {unknown} mask pixel(s) of unknown colour (only black, red, blue, "
                                        f"yellow and green are defined); fix the mask or raise "
                                        f"--max-unknown-colour-pixels")
            elif unknown:
                outcome.warnings.append(f"{path}: {unknown} unknown-colour mask pixel(s) set to background")
            greys.append(grey)
            labels.append(ids)
        if outcome.problems:
            return outcome
        image = sitk.GetImageFromArray(np.stack(greys))
        image.SetSpacing(self.spacing)
        sitk.WriteImage(image, str(image_path), useCompression=True)
        label_volume = np.stack(labels)
        try:
            write_label(label_volume, Geometry.of_image(image), label_path)
        except UnconvertibleCase as problem:
            outcome.problems.append(str(problem))
        outcome.label_values = tuple(int(v) for v in np.unique(label_volume))
        return outcome


def _normalise_eye(value) -> str:
    text = str(value).strip()
    try:
        return str(int(float(text)))
    except ValueError:
        return text


def _read_table(path: Path) -> list[dict]:
    if path.suffix.lower() in (".xlsx", ".xls"):
        return pd.read_excel(path).to_dict("records")  # needs openpyxl (optional): ImportError without it
    with open(path, newline="") as handle:
        dialect = csv.Sniffer().sniff(handle.read(4096), delimiters=",;\t")
        handle.seek(0)
        return list(csv.DictReader(handle, dialect=dialect))


def read_patient_map(path: Path) -> dict[str, dict]:
    """eye id -> {"patient": ..., ["stage": ...]} from a sheet with 'eye' and 'patient' columns."""
    rows = _read_table(path)
    columns = list(rows[0]) if rows else []
    eye = next((c for c in columns if "eye" in str(c).lower()), None)
    patient = next((c for c in columns if "patient" in str(c).lower()), None)
    if eye is None or patient is None:
        raise UnconvertibleCase(f"{path}: needs an eye-id column and a patient column (found {columns}); fix the "
                          f"header or pass another --patient-map")
    stage = next((c for c in columns if "stage" in str(c).lower()), None)
    mapping = {}
    for row in rows:
        entry = {"patient": str(row[patient]).strip()}
        if stage is not None:
            entry["stage"] = str(row[stage]).strip()
        mapping[_normalise_eye(row[eye])] = entry
    return mapping


def _patient_map(patient_map: str | Path | None, root: Path) -> tuple[dict[str, dict], list[str], list[str]]:
    """(map, problems, notes): an explicit --patient-map must be readable; the release sheet is optional."""
    if patient_map:
        try:
            return read_patient_map(Path(patient_map)), [], []
        except (OSError, ImportError, UnconvertibleCase, ValueError) as error:
            return {}, [f"--patient-map {patient_map}: {error}"], []
    sheets = sorted(root.glob("*emographic*.xlsx"))
    if not sheets:
        return {}, [], ["no patient map: each eye is treated as its own patient in the folds"]
    try:
        return read_patient_map(sheets[0]), [], []
    except ImportError:
        return {}, [], [f"{sheets[0]} not read (install openpyxl, or pass --patient-map as CSV): each eye is "
                        f"treated as its own patient"]
    except (OSError, UnconvertibleCase, ValueError) as error:
        return {}, [], [f"{sheets[0]} not usable ({error}): each eye is treated as its own patient"]


def _eye_case_id(folder_name: str) -> str:
    return f"OIMHS_{int(folder_name):03d}" if folder_name.isdigit() else f"OIMHS_{folder_name}"


def _eyes(images_dir: Path) -> tuple[dict[str, tuple[Path, ...]], list[str]]:
    eyes, problems = {}, []
    for folder in sorted(p for p in images_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
        pngs = [p for p in folder.iterdir() if p.suffix.lower() == ".png"]
        odd = sorted(p.name for p in pngs if not BSCAN.fullmatch(p.name))
        if odd:
            problems.append(f"{folder}: B-scan names must be integers (<n>.png), found {odd[:5]}")
        numbered = sorted((int(BSCAN.fullmatch(p.name).group(1)), p) for p in pngs if BSCAN.fullmatch(p.name))
        if not numbered:
            problems.append(f"{folder}: no B-scan PNGs")
            continue
        eyes[folder.name] = tuple(p for _, p in numbered)
    return eyes, problems


def build_plan(input_dir: str | Path, dataset_id: int = DEFAULT_ID, name: str = DEFAULT_NAME,
               split: str = "paper", *, spacing: tuple[float, float, float] = NOMINAL_SPACING,
               label_scheme: str = "uc", max_unknown_colour_pixels: int = 0,
               patient_map: str | Path | None = None, holdout_fraction: float = 0.0) -> DatasetPlan:
    """``spacing`` in mm: x along a B-scan row, y along depth (rows), z between B-scans."""
    root = input_folder(input_dir)
    problems: list[str] = []
    images_dir = find_subfolder(root, "Images", depth=1)
    eyes: dict[str, tuple[Path, ...]] = {}
    if images_dir is None:
        problems.append(f"{root}: expected the Images/<eye id>/<n>.png folders of the OIMHS release")
    else:
        eyes, problems = _eyes(images_dir)
    if not 0.0 <= holdout_fraction < 1.0:
        problems.append(f"--holdout-fraction {holdout_fraction} must be in [0, 1)")
    if any(s <= 0 for s in spacing):
        problems.append(f"--spacing {spacing} must be positive")
    patient_info, map_problems, notes = _patient_map(patient_map, root)
    problems += map_problems
    missing = sorted(e for e in eyes if patient_info and _normalise_eye(e) not in patient_info)
    if missing:
        notes.append(f"eyes missing from the patient map, treated as their own patient: {missing}")
    patients = {_eye_case_id(e): patient_info.get(_normalise_eye(e), {}).get("patient", f"eye_{e}") for e in eyes}

    labels = scheme_labels(label_scheme)
    colour_ids = tuple((COLOURS[name], labels[name]) for name in LABEL_SCHEMES[label_scheme])
    split_plan, holdout = None, set()
    if split == "paper":
        holdout = set(seeded_group_holdout(patients, holdout_fraction))
        folds, split_notes = grouped_folds({c: p for c, p in patients.items() if c not in holdout})
        split_plan = SplitPlan("project_defined_patient_grouped_5fold",
                               "project-defined (no published split): patient-grouped 5-fold, seed 12345"
                               + (f", seeded {holdout_fraction:.0%} patient hold-out" if holdout else ""),
                               holdout=sorted(holdout), folds=folds, notes=split_notes)
    cases = []
    for eye, bscans in eyes.items():
        case_id = _eye_case_id(eye)
        metadata = {"eye": eye, "n_bscans": len(bscans)} | patient_info.get(_normalise_eye(eye), {})
        cases.append(OimhsEye(case_id, TEST if case_id in holdout else TRAIN, tuple(sorted(metadata.items())),
                              bscans=bscans, spacing=tuple(spacing), colour_ids=colour_ids,
                              max_unknown_pixels=max_unknown_colour_pixels))
    return DatasetPlan(
        dataset_id=dataset_id, name=name, channel_names={"0": "OCT"}, labels=labels, cases=cases,
        split=split_plan, problems=problems, notes=notes,
        reference="https://doi.org/10.6084/m9.figshare.23508453 (OIMHS, Scientific Data 2023)",
        licence="figshare record, probably CC BY 4.0 (unverified); contains patient images",
        description="OIMHS macular hole OCT: B-scans of one eye stacked along z (numpy axis 0)",
        extra_json={"spacing_xyz_mm": list(spacing), "spacing_is_nominal": list(spacing) == [1.0] * 3,
                    "label_scheme": label_scheme, "slice_axis": "z = B-scan index",
                    "paper_intensity_window": [0, 300]},
    )
