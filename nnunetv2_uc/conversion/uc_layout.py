"""The uC repository's dataset layout -> nnU-Net raw (default Dataset506_UCLayout).

Layout of --input: imagesTr/ + labelsTr/ (training), imagesVal/ + labelsVal/ (the fixed validation set),
imagesTs/ (test images, possibly resized offline) + original_labelTs/ (test labels at the original shape) and
shapes.json (test file -> original shape). Images and labels are paired by identical names (a trailing _0000 is
ignored); when the names differ but the counts match they are paired by sorted order, as uC's loader does, with
a warning. Training and validation cases both go to imagesTr/labelsTr; a validation or test id that collides with
an earlier one is prefixed with val_/test_. Test labels whose shape differs from the resized test image keep
their own grid; dataset.json lists them ("test_labels_on_original_grid") and keeps shapes.json
("uc_original_shapes", also copied next to dataset.json): predictions must be resized nearest-neighbour to the
original shape before evaluation, as uC's test.py does.

Labels and channel name: --like DATASET takes them from one of the other converters; --labels (JSON text or
file, name -> id) and --channel-name override (channel name decides nnU-Net's normalisation: CT, or anything
else for per-image z-score). Without --labels/--like the ids found in the masks (0..N) are named label_N.

--split paper: one fold, train = imagesTr/labelsTr ids, val = imagesVal/labelsVal ids (uC's fixed split).
"""
from __future__ import annotations

import json
from pathlib import Path

from nnunetv2_uc.conversion import abdomenct1k, btcv, feta2021, flare2021, oimhs
from nnunetv2_uc.conversion.cases import TEST, TRAIN, NiftiCase
from nnunetv2_uc.conversion.pipeline import DatasetPlan, input_folder, nifti_files, nifti_stem
from nnunetv2_uc.conversion.splits import SplitPlan, nnunet_default_folds, single_fold

DEFAULT_ID = 506
DEFAULT_NAME = "UCLayout"
#: --like DATASET -> (channel name, labels) of that dataset's converter
LIKE = {"flare2021": ("CT", flare2021.LABELS), "abdomenct1k": ("CT", abdomenct1k.LABELS),
        "btcv": ("CT", btcv.LABELS), "feta2021": ("T2", feta2021.LABELS), "oimhs": ("OCT", oimhs.scheme_labels("uc"))}
SUBSETS = (("imagesTr", "labelsTr", TRAIN, ""), ("imagesVal", "labelsVal", TRAIN, "val_"),
           ("imagesTs", "original_labelTs", TEST, "test_"))


def _case_stem(path: Path) -> str:
    stem = nifti_stem(path)
    return stem[:-5] if stem.endswith("_0000") else stem


def pair_files(images: list[Path], labels: list[Path], where: str) -> tuple[list[tuple[Path, Path | None]],
                                                                              list[str], list[str]]:
    """(pairs, problems, warnings): by identical stem, else by sorted order when the counts match."""
    if not labels:
        return [(image, None) for image in images], [], []
    by_stem = {_case_stem(p): p for p in labels}
    if {_case_stem(p) for p in images} == set(by_stem):
        return [(image, by_stem[_case_stem(image)]) for image in images], [], []
    if len(images) == len(labels):
        return list(zip(images, labels)), [], [f"{where}: image and label names differ, paired by sorted order "
                                              f"like uC's loader ({images[0].name} <-> {labels[0].name}, ...)"]
    missing = sorted(set(map(_case_stem, images)) ^ set(by_stem))
    return [], [f"{where}: {len(images)} images but {len(labels)} labels, and names do not match: {missing[:10]}"], []


def _labels_and_channel(like: str | None, labels_json: str | None, channel_name: str | None
                        ) -> tuple[dict[str, int] | None, str | None, list[str]]:
    labels, channel, problems = None, channel_name, []
    if like:
        default_channel, like_labels = LIKE[like]
        labels = dict(like_labels)
        channel = channel or default_channel
    if labels_json:
        try:
            text = Path(labels_json).read_text() if Path(labels_json).is_file() else labels_json
            labels = {str(k): int(v) for k, v in json.loads(text).items()}
        except (ValueError, TypeError, AttributeError) as error:
            problems.append(f"--labels {labels_json!r} is not a JSON object of name -> integer id ({error})")
    if labels is not None and sorted(labels.values()) != list(range(len(labels))):
        problems.append(f"--labels must give ids 0..N with background 0, got {sorted(labels.values())}")
    if channel is None:
        problems.append("pass --channel-name (CT, T2, OCT, ...) or --like DATASET: the channel name decides "
                        "nnU-Net's normalisation")
    return labels, channel, problems


def build_plan(input_dir: str | Path, dataset_id: int = DEFAULT_ID, name: str = DEFAULT_NAME,
               split: str = "paper", *, like: str | None = None, labels: str | None = None,
               channel_name: str | None = None) -> DatasetPlan:
    """``like``: a key of LIKE; ``labels``: JSON text or a .json file of name -> id (overrides ``like``'s);
    ``channel_name``: overrides ``like``'s; one of the two is needed."""
    root = input_folder(input_dir)
    label_ids, channel, problems = _labels_and_channel(like, labels, channel_name)
    notes: list[str] = []
    cases: list[NiftiCase] = []
    used: set[str] = set()
    ids_per_subset: dict[str, list[str]] = {}
    for image_folder, label_folder, subset, prefix in SUBSETS:
        if not (root / image_folder).is_dir():
            if image_folder == "imagesTr":
                problems.append(f"{root / image_folder} not found: this is not the uC layout")
            continue
        label_dir = root / label_folder
        pairs, pair_problems, warnings = pair_files(nifti_files(root / image_folder),
                                                    nifti_files(label_dir) if label_dir.is_dir() else [],
                                                    f"{root / image_folder} / {label_dir}")
        problems += pair_problems
        notes += warnings
        for image, label in pairs:
            case_id = _case_stem(image)
            if case_id in used:
                notes.append(f"{image_folder}/{image.name}: id {case_id} already used, renamed {prefix}{case_id}")
                case_id = prefix + case_id
            used.add(case_id)
            ids_per_subset.setdefault(image_folder, []).append(case_id)
            cases.append(NiftiCase(case_id, subset, image=image, label=label, label_keeps_own_grid=subset == TEST))

    extra_json, extra_files = {}, {}
    shapes_file = root / "shapes.json"
    if shapes_file.is_file():
        try:
            extra_json["uc_original_shapes"] = json.loads(shapes_file.read_text())
            extra_files["shapes.json"] = shapes_file.read_text()
        except ValueError as error:
            problems.append(f"{shapes_file} is not valid JSON ({error})")
    split_plan = None
    if split == "paper" and ids_per_subset.get("imagesVal"):
        split_plan = SplitPlan("uc_fixed_train_val", "uC layout: imagesTr = train, imagesVal = val (one fold)",
                               folds=single_fold(ids_per_subset.get("imagesTr", []), ids_per_subset["imagesVal"]))
    elif split == "paper":
        folds, split_notes = nnunet_default_folds(ids_per_subset.get("imagesTr", []))
        split_plan = SplitPlan("nnunet_default_5fold", "no imagesVal folder: nnU-Net default 5 folds",
                               folds=folds, notes=split_notes)
    return DatasetPlan(
        dataset_id=dataset_id, name=name, channel_names={"0": channel or ""}, labels=label_ids,
        cases=cases, split=split_plan, problems=problems, notes=notes,
        reference="uC repository layout (imagesTr/labelsTr/imagesVal/labelsVal/imagesTs/original_labelTs)",
        licence="as the source dataset", description=f"converted from the uC layout at {root.name}",
        extra_json=extra_json, extra_files=extra_files,
    )
