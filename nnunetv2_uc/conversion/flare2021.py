"""FLARE2021 abdominal CT (liver, kidney, spleen, pancreas) -> nnU-Net raw (default Dataset501_FLARE2021).

Layout of --input: TrainingImg/train_000_0000.nii.gz ... and TrainingMask/train_000.nii.gz ... (361 labelled
cases). Any other *_0000.nii.gz under --input (validation_001_0000.nii.gz, test cases; folder names vary) goes to
imagesTs without a label. Images are copied unchanged; masks are rounded to uint8 and given the image geometry.
Labels follow the official FLARE21 evaluation: liver 1, kidney 2, spleen 3, pancreas 4 (3D UX-Net's JSON names
1 and 3 the other way round). channel_names {"0": "CT"} selects nnU-Net's CT normalisation.

--split paper: 3D UX-Net's 20-case test hold-out (its dataset_FLARE.json) goes to imagesTs/labelsTs, and
nnU-Net's default 5 folds are written over the other cases; the paper's own folds were never published.
"""
from __future__ import annotations

import re
from pathlib import Path

from nnunetv2_uc.conversion.cases import TEST, TRAIN, NiftiCase
from nnunetv2_uc.conversion.pipeline import (DatasetPlan, find_subfolder, input_folder, match_files, nifti_stem,
                                             unmatched_problems)
from nnunetv2_uc.conversion.splits import SplitPlan, nnunet_default_folds

DEFAULT_ID = 501
DEFAULT_NAME = "FLARE2021"
LABELS = {"background": 0, "liver": 1, "kidney": 2, "spleen": 3, "pancreas": 4}
UXNET_TEST_IDS = tuple(f"train_{n:03d}" for n in (
    36, 39, 44, 54, 80, 125, 135, 157, 158, 183, 193, 220, 230, 242, 286, 296, 299, 323, 341, 351))
UNLABELLED_IMAGE = re.compile(r"(.+)_0000")


def _unlabelled_cases(root, training_images) -> dict[str, object]:
    """Validation/test images anywhere under the root except the training image folder."""
    found = {}
    for path in sorted(root.rglob("*_0000.nii*")):
        if path.parent == training_images or any(part.startswith(".") for part in path.parts):
            continue
        found[UNLABELLED_IMAGE.fullmatch(nifti_stem(path)).group(1)] = path
    return found


def build_plan(input_dir: str | Path, dataset_id: int = DEFAULT_ID, name: str = DEFAULT_NAME,
               split: str = "paper") -> DatasetPlan:
    root = input_folder(input_dir)
    problems: list[str] = []
    image_dir = find_subfolder(root, "TrainingImg")
    mask_dir = find_subfolder(root, "TrainingMask")
    images = match_files(image_dir, r"(train_\d+)_0000") if image_dir else {}
    masks = match_files(mask_dir, r"(train_\d+)") if mask_dir else {}
    if image_dir is None or mask_dir is None:
        problems.append(f"{root}: expected the folders TrainingImg/ and TrainingMask/ of the FLARE2021 release")
    problems += unmatched_problems(images, masks)

    holdout = sorted(set(UXNET_TEST_IDS) & set(masks)) if split == "paper" else []
    cases = [NiftiCase(case_id, TEST if case_id in holdout else TRAIN, image=images[case_id],
                       label=masks[case_id])
             for case_id in sorted(set(images) & set(masks))]
    unlabelled = _unlabelled_cases(root, image_dir)
    cases += [NiftiCase(case_id, TEST, image=path) for case_id, path in unlabelled.items()]

    split_plan = None
    if split == "paper":
        pool = [c.case_id for c in cases if c.subset == TRAIN]
        folds, notes = nnunet_default_folds(pool)
        split_plan = SplitPlan("uxnet_holdout_20", "3D UX-Net dataset_FLARE.json test hold-out (20 cases); "
                               "folds are nnU-Net's default 5-fold over the rest, not the paper's (unpublished)",
                               holdout=holdout, folds=folds, notes=notes)
    notes = [f"{len(unlabelled)} unlabelled validation/test image(s) copied to imagesTs"] if unlabelled else []
    return DatasetPlan(
        dataset_id=dataset_id, name=name, channel_names={"0": "CT"}, labels=dict(LABELS),
        cases=cases, split=split_plan, problems=problems, notes=notes,
        reference="https://flare.grand-challenge.org/ (MICCAI FLARE 2021)",
        licence="FLARE2021 challenge terms (registration required); images from MSD (CC BY-SA 4.0) and NIH "
                "Pancreas-CT (TCIA); redistribution not granted",
        description="FLARE2021 abdominal organ segmentation, portal-venous CT in HU",
        extra_json={"paper_intensity_window": [-125, 275]},
    )
