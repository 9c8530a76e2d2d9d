"""BTCV multi-organ abdominal CT (13 organs) -> nnU-Net raw (default Dataset505_BTCV).

Layout of --input (the extracted RawData.zip, or its parent): RawData/Training/img/img0001.nii.gz,
RawData/Training/label/label0001.nii.gz (30 labelled cases, ids 0001-0010 and 0021-0040) and
RawData/Testing/img/img0061.nii.gz ... (20 unlabelled; nnU-Net v1's Test/img is accepted too). Case ids are
BTCV_<4-digit id>. Images are copied unchanged; masks are rounded to uint8 with the image geometry.
channel_names {"0": "CT"} selects nnU-Net's CT normalisation.

--split paper uses --protocol:
  monai      MONAI/UNETR dataset_0.json: train 0001-0010, 0021-0034, val 0035-0040 (one fold; the split uC most
             likely used) -- the default
  transunet  TransUNet "Synapse": 12 test cases to imagesTs/labelsTs, 8 organs kept (spleen, right kidney,
             left kidney, gallbladder, liver, stomach, aorta, pancreas -> 1..8, the rest -> background),
             nnU-Net's default 5 folds over the other 18
  nnunet     nnU-Net default 5-fold cross-validation over all 30 (as in "nnU-Net Revisited")
"""
from __future__ import annotations

from pathlib import Path

from nnunetv2_uc.conversion.cases import TEST, TRAIN, NiftiCase
from nnunetv2_uc.conversion.pipeline import DatasetPlan, find_subfolder, input_folder, match_files, unmatched_problems
from nnunetv2_uc.conversion.splits import SplitPlan, nnunet_default_folds, single_fold

DEFAULT_ID = 505
DEFAULT_NAME = "BTCV"
LABELS = {"background": 0, "spleen": 1, "right_kidney": 2, "left_kidney": 3, "gallbladder": 4, "esophagus": 5,
          "liver": 6, "stomach": 7, "aorta": 8, "inferior_vena_cava": 9, "portal_and_splenic_vein": 10,
          "pancreas": 11, "right_adrenal_gland": 12, "left_adrenal_gland": 13}
SYNAPSE_KEPT = ("spleen", "right_kidney", "left_kidney", "gallbladder", "liver", "stomach", "aorta", "pancreas")
MONAI_TRAIN = tuple(f"BTCV_{n:04d}" for n in [*range(1, 11), *range(21, 35)])
MONAI_VAL = tuple(f"BTCV_{n:04d}" for n in range(35, 41))
TRANSUNET_TEST = tuple(f"BTCV_{n:04d}" for n in (1, 2, 3, 4, 8, 22, 25, 29, 32, 35, 36, 38))
PROTOCOLS = ("monai", "transunet", "nnunet")  # the published splits --split paper can write


def synapse_labels() -> tuple[dict[str, int], tuple[tuple[int, int], ...]]:
    """The 8-organ label set and the mapping from the 13 BTCV ids (others -> background)."""
    labels = {"background": 0} | {name: index for index, name in enumerate(SYNAPSE_KEPT, start=1)}
    mapping = {value: labels.get(name, 0) for name, value in LABELS.items()}
    return labels, tuple(sorted(mapping.items()))


def _split(protocol: str, training_ids: list[str]) -> SplitPlan:
    present = set(training_ids)
    if protocol == "monai":
        val = sorted(present & set(MONAI_VAL))
        notes = [] if present <= set(MONAI_TRAIN + MONAI_VAL) else \
            [f"ids outside dataset_0.json put into train: {sorted(present - set(MONAI_TRAIN + MONAI_VAL))}"]
        return SplitPlan("monai_dataset0_24_6", "MONAI UNETR/SwinUNETR dataset_0.json (train 24 / val 6)",
                         folds=single_fold(sorted(present - set(val)), val), notes=notes)
    if protocol == "transunet":
        holdout = sorted(present & set(TRANSUNET_TEST))
        folds, notes = nnunet_default_folds(sorted(present - set(holdout)))
        return SplitPlan("transunet_synapse_18_12", "TransUNet Synapse protocol: 12 test cases held out, 8 organs; "
                         "folds are nnU-Net's default over the 18 training cases", holdout=holdout, folds=folds,
                         notes=notes)
    folds, notes = nnunet_default_folds(sorted(present))
    return SplitPlan("nnunet_5fold_30", "nnU-Net default 5-fold cross-validation over all labelled cases",
                     folds=folds, notes=notes)


def build_plan(input_dir: str | Path, dataset_id: int = DEFAULT_ID, name: str = DEFAULT_NAME,
               split: str = "paper", *, protocol: str = "monai") -> DatasetPlan:
    root = input_folder(input_dir)
    problems: list[str] = []
    training_dir = find_subfolder(root, "Training")
    test_dir = find_subfolder(training_dir.parent, "Testing", "Test", depth=1) if training_dir else None
    images = match_files(training_dir / "img", r"img(\d{4})") if training_dir and (training_dir / "img").is_dir() \
        else {}
    labels = match_files(training_dir / "label", r"label(\d{4})") \
        if training_dir and (training_dir / "label").is_dir() else {}
    if training_dir is None or not (training_dir / "img").is_dir() or not (training_dir / "label").is_dir():
        problems.append(f"{root}: expected RawData/Training/img and RawData/Training/label of the BTCV release")
    problems += unmatched_problems(images, labels)
    test_images = match_files(test_dir / "img", r"img(\d{4})") if test_dir and (test_dir / "img").is_dir() else {}

    protocol = protocol if split == "paper" else "nnunet"
    label_names, mapping = synapse_labels() if protocol == "transunet" else (dict(LABELS), None)
    training_ids = [f"BTCV_{n}" for n in sorted(set(images) & set(labels))]
    split_plan = _split(protocol, training_ids) if split == "paper" else None
    holdout = set(split_plan.holdout) if split_plan else set()
    cases = [NiftiCase(f"BTCV_{n}", TEST if f"BTCV_{n}" in holdout else TRAIN, image=images[n], label=labels[n],
                       label_mapping=mapping)
             for n in sorted(set(images) & set(labels))]
    cases += [NiftiCase(f"BTCV_{n}", TEST, image=path) for n, path in sorted(test_images.items())]
    return DatasetPlan(
        dataset_id=dataset_id, name=name, channel_names={"0": "CT"}, labels=label_names, cases=cases,
        split=split_plan, problems=problems,
        notes=[f"{len(test_images)} unlabelled test image(s) copied to imagesTs"] if test_images else [],
        reference="https://www.synapse.org/#!Synapse:syn3193805 (MICCAI 2015 Multi-Atlas Labeling Beyond the "
                  "Cranial Vault)",
        licence="Synapse terms of use of the BTCV challenge (account required); not redistributable",
        description="BTCV abdominal multi-organ CT, portal venous phase"
                    + (" (8-organ Synapse subset)" if protocol == "transunet" else ""),
        extra_json={"paper_intensity_window": [-175, 250], "paper_spacing": [1.5, 1.5, 2.0]},
    )
