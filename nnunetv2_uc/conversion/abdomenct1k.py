"""AbdomenCT-1K abdominal CT (liver, kidney, spleen, pancreas) -> nnU-Net raw (default Dataset504_AbdomenCT1K).

Layout of --input: AbdomenCT-1K-ImagePart{1,2,3}/Case_00001_0000.nii.gz ... (1,062 images) and
Mask/Case_00001.nii.gz ... (1,000 masks; extract Mask.7z and the nested Case_1000-.7z first). Images without a
mask are skipped and counted (or copied to imagesTs with --unlabelled test). Labels as FLARE21: liver 1,
kidney 2, spleen 3, pancreas 4; channel_names {"0": "CT"}.

Quirk: about 30 images have non-orthonormal direction cosines that SimpleITK rejects ("No Orthonormal
Definition found"). SimpleITK is tried first; on failure the file is read with nibabel, its direction is
orthonormalised (polar decomposition, spacings kept) and image and mask are written with the same corrected
geometry. Repaired cases are printed and listed in dataset.json ("header_repaired_cases"). The 20 LiTS cases with
fake 1x1x1 mm spacing are kept and flagged ("fake_spacing_cases").

--split paper: there is no published split; nnU-Net's default 5 folds over all labelled cases
("project-defined"), plus a seeded hold-out of --holdout-fraction of the cases in imagesTs/labelsTs if > 0.
Never combine with FLARE2021: its 361 training cases are part of AbdomenCT-1K under other names.
"""
from __future__ import annotations

from pathlib import Path

from nnunetv2_uc.conversion.cases import TEST, TRAIN, NiftiCase
from nnunetv2_uc.conversion.pipeline import DatasetPlan, find_subfolder, input_folder, match_files, unmatched_problems
from nnunetv2_uc.conversion.splits import SplitPlan, nnunet_default_folds, seeded_group_holdout

DEFAULT_ID = 504
DEFAULT_NAME = "AbdomenCT1K"
LABELS = {"background": 0, "liver": 1, "kidney": 2, "spleen": 3, "pancreas": 4}
FAKE_SPACING_CASES = tuple(f"Case_{n:05d}" for n in (78, *range(273, 279), *range(280, 287), 462, *range(574, 579)))
CASE_IMAGE = r"(Case_\d{5})_0000"
CASE_MASK = r"(Case_\d{5})"
UNLABELLED_CHOICES = ("skip", "test")  # what happens to images without a mask


def _image_folders(root: Path, mask_dir: Path | None) -> list[Path]:
    """Every folder holding Case_XXXXX_0000 images (ImagePart1..3, whatever they were renamed to)."""
    folders = {p.parent for p in root.rglob("Case_*_0000.nii*") if not any(s.startswith(".") for s in p.parts)}
    return sorted(f for f in folders if f != mask_dir)


def _collect_images(folders: list[Path]) -> tuple[dict[str, Path], list[str]]:
    images: dict[str, Path] = {}
    problems = []
    for folder in folders:
        for case_id, path in match_files(folder, CASE_IMAGE).items():
            if case_id in images:
                problems.append(f"{case_id} is in two image folders: {images[case_id]} and {path}")
            images[case_id] = path
    return images, problems


def build_plan(input_dir: str | Path, dataset_id: int = DEFAULT_ID, name: str = DEFAULT_NAME,
               split: str = "paper", *, masks: str | Path | None = None, unlabelled: str = "skip",
               holdout_fraction: float = 0.0) -> DatasetPlan:
    root = input_folder(input_dir)
    problems: list[str] = []
    mask_dir = Path(masks) if masks else find_subfolder(root, "Mask", depth=1)
    if mask_dir is None or not mask_dir.is_dir():
        problems.append(f"mask folder {mask_dir or root / 'Mask'} not found; extract Mask.7z into {root} or pass "
                        f"--masks")
        mask_dir = None
    if not 0.0 <= holdout_fraction < 1.0:
        problems.append(f"--holdout-fraction {holdout_fraction} must be in [0, 1)")
    images, duplicate_problems = _collect_images(_image_folders(root, mask_dir))
    mask_files = match_files(mask_dir, CASE_MASK) if mask_dir else {}
    problems += duplicate_problems + unmatched_problems(images, mask_files, images_need_labels=False)

    labelled = sorted(set(images) & set(mask_files))
    without_mask = sorted(set(images) - set(mask_files))
    split_plan, holdout = None, set()
    if split == "paper":
        holdout = set(seeded_group_holdout({c: c for c in labelled}, max(holdout_fraction, 0.0)))
        folds, split_notes = nnunet_default_folds([c for c in labelled if c not in holdout])
        split_plan = SplitPlan("project_defined_5fold" + ("_holdout" if holdout else ""),
                               "project-defined (no published split): nnU-Net default 5 folds"
                               + (f", seeded {holdout_fraction:.0%} hold-out (seed 12345)" if holdout else ""),
                               holdout=sorted(holdout), folds=folds, notes=split_notes)
    cases = [NiftiCase(c, TEST if c in holdout else TRAIN, image=images[c], label=mask_files[c],
                       allow_header_repair=True)
             for c in labelled]
    if unlabelled == "test":
        cases += [NiftiCase(c, TEST, image=images[c], allow_header_repair=True) for c in without_mask]
    notes = [f"{len(without_mask)} image(s) without a mask "
             + ("copied to imagesTs" if unlabelled == "test" else "skipped") + f": {without_mask}"] \
        if without_mask else []
    fake = sorted(set(FAKE_SPACING_CASES) & {c.case_id for c in cases})
    if fake:
        notes.append(f"{len(fake)} LiTS case(s) with fake 1x1x1 mm spacing kept and flagged: {fake}")
    return DatasetPlan(
        dataset_id=dataset_id, name=name, channel_names={"0": "CT"}, labels=dict(LABELS), cases=cases,
        split=split_plan, problems=problems, notes=notes,
        reference="https://github.com/JunMa11/AbdomenCT-1K (Ma et al., TPAMI 2022); Zenodo 5903099, 5903846, "
                  "5903769",
        licence="AbdomenCT-1K usage form; source licences: LiTS and KiTS19 CC BY-NC-SA 4.0, MSD CC BY-SA 4.0, "
                "NIH Pancreas-CT (TCIA); record licence unverified",
        description="AbdomenCT-1K abdominal organ segmentation (multi-centre, multi-phase CT)",
        extra_json={"fake_spacing_cases": fake, "skipped_without_mask": without_mask if unlabelled == "skip"
                    else [], "paper_intensity_window": [-125, 300]},
    )
