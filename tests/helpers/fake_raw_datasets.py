"""Tiny synthetic releases in the exact raw layouts of FLARE2021, OIMHS, FeTA2021, AbdomenCT-1K, BTCV and the uC
repository, for the conversion tests. No real data: volumes are ellipsoid phantoms of a few thousand voxels with
realistic file names, dtypes, spacings, origins and label values.

Each ``make_*`` function writes under ``root`` and returns a dict describing what it wrote, so tests can assert
on exact values without re-implementing the converters. The helpers at the end (``nnunet_env`` fixture,
``convert``, ``assert_valid_nnunet_dataset``) are shared by the tests in tests/conversion/.
"""
from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

CT_SIZE_ZYX = (10, 16, 18)


def organ_phantom(shape_zyx: tuple[int, int, int], n_labels: int, seed: int) -> np.ndarray:
    """Label map with ``n_labels`` nested/adjacent ellipsoids; label 1 is the largest structure."""
    rng = np.random.RandomState(seed)
    z, y, x = np.meshgrid(*[np.linspace(-1, 1, s) for s in shape_zyx], indexing="ij")
    labels = np.zeros(shape_zyx, dtype=np.uint8)
    for label in range(1, n_labels + 1):
        radius = 0.75 / (1 + 0.35 * (label - 1))
        centre = rng.uniform(-0.35, 0.35, size=3)
        inside = ((z - centre[0]) ** 2 + (y - centre[1]) ** 2 + (x - centre[2]) ** 2) < radius ** 2
        labels[inside & (labels == 0) if label > 1 else inside] = label
    return labels


def ct_intensities(labels: np.ndarray, seed: int) -> np.ndarray:
    """int16 HU-like image: air/fat background, organs around 40-200 HU, noise."""
    rng = np.random.RandomState(seed)
    hu = np.where(labels > 0, 40 + 15 * labels.astype(np.int32), -100)
    return (hu + rng.normal(0, 10, labels.shape)).astype(np.int16)


def write_sitk(path: Path, array_zyx: np.ndarray, spacing=(0.8, 0.8, 2.5), origin=(-90.0, -120.0, 30.0),
               direction=None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = sitk.GetImageFromArray(array_zyx)
    image.SetSpacing([float(s) for s in spacing])
    image.SetOrigin([float(o) for o in origin])
    if direction is not None:
        image.SetDirection(direction)
    sitk.WriteImage(image, str(path), useCompression=path.name.endswith(".gz"))
    return path


def write_ct_pair(image_path: Path, label_path: Path | None, n_labels: int, seed: int,
                  spacing=(0.8, 0.8, 2.5), float_mask: bool = False, shape_zyx=CT_SIZE_ZYX) -> np.ndarray:
    """An int16 CT image and (optionally) its mask with identical geometry; returns the label array."""
    labels = organ_phantom(shape_zyx, n_labels, seed)
    write_sitk(image_path, ct_intensities(labels, seed), spacing)
    if label_path is not None:
        write_sitk(label_path, labels.astype(np.float32) if float_mask else labels, spacing)
    return labels


def make_flare2021(root: Path) -> dict:
    """TrainingImg/TrainingMask with 6 ordinary cases, the UX-Net hold-out case train_036 (float mask) and an
    unlabelled validation image."""
    training = [f"train_{n:03d}" for n in (0, 1, 2, 3, 4, 5, 36)]
    for index, case in enumerate(training):
        spacing = (0.7 + 0.05 * index, 0.7 + 0.05 * index, 2.5 if index % 2 else 5.0)
        write_ct_pair(root / "TrainingImg" / f"{case}_0000.nii.gz", root / "TrainingMask" / f"{case}.nii.gz",
                      n_labels=4, seed=index, spacing=spacing, float_mask=case == "train_036")
    write_ct_pair(root / "ValidationImg" / "validation_001_0000.nii.gz", None, n_labels=4, seed=99)
    return {"training": training, "holdout": ["train_036"], "unlabelled": ["validation_001"]}


def make_btcv(root: Path, test_folder: str = "Testing") -> dict:
    """RawData/Training/{img,label} with 13-organ masks and RawData/<test_folder>/img (Testing, or Test as in
    nnU-Net v1's Task017)."""
    training = ["0001", "0005", "0021", "0023", "0035", "0036"]
    for index, number in enumerate(training):
        write_ct_pair(root / "RawData" / "Training" / "img" / f"img{number}.nii.gz",
                      root / "RawData" / "Training" / "label" / f"label{number}.nii.gz",
                      n_labels=13, seed=10 + index, spacing=(0.76, 0.76, 3.0))
    write_ct_pair(root / "RawData" / test_folder / "img" / "img0061.nii.gz", None, n_labels=13, seed=61)
    return {"training": [f"BTCV_{n}" for n in training], "test": ["BTCV_0061"]}


def non_orthonormal_affine(spacing=(0.8, 0.8, 2.5), shear: float = 0.02) -> np.ndarray:
    """A RAS affine whose direction cosines are slightly non-orthogonal (as in ~30 AbdomenCT-1K headers)."""
    affine = np.diag([-spacing[0], -spacing[1], spacing[2], 1.0])
    affine[0, 1] = shear * spacing[1]
    affine[:3, 3] = (100.0, 120.0, -40.0)
    return affine


def write_nibabel_sform_only(path: Path, array_xyz: np.ndarray, affine: np.ndarray) -> None:
    """Write with only the sform set, so SimpleITK sees the non-orthonormal matrix and rejects the file."""
    import nibabel as nib

    image = nib.Nifti1Image(array_xyz, affine)
    image.set_qform(None, code=0)
    image.set_sform(affine, code=1)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(image, str(path))


def make_abdomenct1k(root: Path) -> dict:
    """ImagePart1..3 + Mask: ordinary cases, a non-orthonormal header case (image and mask), a fake-spacing
    LiTS case, a Part2 case and an image without a mask."""
    labelled = {"00001": 1, "00002": 1, "00078": 1, "00401": 2}
    for index, (number, part) in enumerate(labelled.items()):
        spacing = (1.0, 1.0, 1.0) if number == "00078" else (0.78, 0.78, 2.0 + index)
        write_ct_pair(root / f"AbdomenCT-1K-ImagePart{part}" / f"Case_{number}_0000.nii.gz",
                      root / "Mask" / f"Case_{number}.nii.gz", n_labels=4, seed=20 + index, spacing=spacing,
                      float_mask=number == "00002")
    labels = organ_phantom(CT_SIZE_ZYX, 4, seed=30).transpose(2, 1, 0)  # nibabel arrays are (x, y, z)
    affine = non_orthonormal_affine()
    write_nibabel_sform_only(root / "AbdomenCT-1K-ImagePart1" / "Case_00011_0000.nii.gz",
                             ct_intensities(labels, 30), affine)
    write_nibabel_sform_only(root / "Mask" / "Case_00011.nii.gz", labels, affine)
    write_ct_pair(root / "AbdomenCT-1K-ImagePart3" / "Case_01062_0000.nii.gz", None, n_labels=4, seed=31)
    return {"labelled": [f"Case_{n}" for n in sorted([*labelled, "00011"])], "repaired": ["Case_00011"],
            "fake_spacing": ["Case_00078"], "without_mask": ["Case_01062"]}


FETA_SUBJECTS = {  # subject -> (reconstruction, pathology, gestational age)
    "sub-001": ("mial", "Pathological", 27.4), "sub-002": ("mial", "Neurotypical", 30.1),
    "sub-011": ("mial", "Neurotypical", 25.0), "sub-041": ("irtk", "Pathological", 22.6),
    "sub-061": ("irtk", "Neurotypical", 33.0), "sub-072": ("irtk", "Pathological", 28.8),
}


def make_feta2021(root: Path) -> dict:
    """feta_2.1/ with participants.tsv, mial and irtk subjects, the UX-Net orphan sub-011, a hold-out subject
    (sub-061) and a float dseg (sub-002); T2w float32 at 0.5 mm."""
    release = root / "feta_2.1"
    release.mkdir(parents=True)
    with open(release / "participants.tsv", "w", newline="") as handle:
        writer = csv.writer(handle, delimiter="\t")
        writer.writerow(["participant_id", "Pathology", "Gestational age"])
        for subject, (_, pathology, age) in FETA_SUBJECTS.items():
            writer.writerow([subject, pathology, age])
    for index, (subject, (method, _, _)) in enumerate(FETA_SUBJECTS.items()):
        anat = release / subject / "anat"
        labels = organ_phantom((14, 14, 14), 7, seed=40 + index)
        scale = 900.0 if method == "mial" else 2500.0  # the two methods differ in intensity range
        t2 = (labels.astype(np.float32) * scale / 7 + np.random.RandomState(index).rand(*labels.shape))
        write_sitk(anat / f"{subject}_rec-{method}_T2w.nii.gz", t2.astype(np.float32), (0.5, 0.5, 0.5), (0, 0, 0))
        dseg = labels.astype(np.float64) if subject == "sub-002" else labels
        write_sitk(anat / f"{subject}_rec-{method}_dseg.nii.gz", dseg, (0.5, 0.5, 0.5), (0, 0, 0))
        for kind in ("T2w", "dseg"):
            (anat / f"{subject}_rec-{method}_{kind}.json").write_text(json.dumps({"Reconstruction": method}))
    return {"subjects": list(FETA_SUBJECTS), "holdout": ["FeTA_061"], "orphan": "FeTA_011"}


OIMHS_COLOURS = {1: (255, 0, 0), 2: (0, 0, 255), 3: (255, 255, 0), 4: (0, 255, 0)}  # uC ids -> RGB
OIMHS_EYES = {1: ("P001", 11), 2: ("P001", 3), 3: ("P002", 4), 4: ("P003", 3)}  # eye -> (patient, B-scans)


def oimhs_bscan(height: int, width: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A grey B-scan and its label ids: retina band with a hole and a cyst above a choroid band."""
    rng = np.random.RandomState(seed)
    labels = np.zeros((height, width), dtype=np.uint8)
    top = 6 + seed % 3
    labels[top:top + 8, :] = 4
    labels[top + 8:top + 11, :] = 3
    labels[top:top + 3, width // 2 - 2:width // 2 + 2] = 1
    labels[top + 4:top + 6, 3:6] = 2
    grey = (40 + 45 * labels + rng.randint(0, 20, labels.shape)).astype(np.uint8)
    return grey, labels


def make_oimhs(root: Path, stray_pixel: bool = False, height: int = 24, width: int = 20,
               demographics_sheet: bool = False) -> dict:
    """Images/<eye>/<n>.png side by side (B-scan | colour mask), eye 1 with 11 B-scans (tests 2 < 10), eye 2 with
    a coloured (non-grey) left half; a patient map (eyes 1 and 2 belong to one patient)."""
    from PIL import Image

    expected = {}
    for eye, (_, n_bscans) in OIMHS_EYES.items():
        images, labels = [], []
        for number in range(1, n_bscans + 1):
            grey, ids = oimhs_bscan(height, width, seed=eye * 100 + number)
            left = np.stack([grey] * 3, axis=-1)
            if eye == 2:  # a tinted B-scan: the converter must use luminance
                left[..., 0] = np.clip(grey.astype(int) + 10, 0, 255)
            colour = np.zeros((height, width, 3), dtype=np.uint8)
            for label_id, rgb in OIMHS_COLOURS.items():
                colour[ids == label_id] = rgb
            if stray_pixel and eye == 3 and number == 2:
                colour[0, 0] = (12, 200, 77)
            path = root / "Images" / str(eye) / f"{number}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.concatenate([left, colour], axis=1)).save(path)
            luminance = np.rint(left @ np.array([0.299, 0.587, 0.114])).astype(np.uint8)
            images.append(grey if eye != 2 else luminance)
            labels.append(ids)
        expected[f"OIMHS_{eye:03d}"] = (np.stack(images), np.stack(labels))
    patient_map = root / "eye_patient_map.csv"
    with open(patient_map, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["Eye ID", "Patient ID"])
        for eye, (patient, _) in OIMHS_EYES.items():
            writer.writerow([eye, patient])
    if demographics_sheet:  # the release's sheet; column names beyond 'Eye ID' are unverified
        import pandas as pd

        pd.DataFrame({"Eye ID": list(OIMHS_EYES), "Patient ID": [p for p, _ in OIMHS_EYES.values()],
                      "Stage": [4, 4, 3, 2]}).to_excel(root / "OIMHS Demographics.xlsx", index=False)
    return {"expected": expected, "patient_map": patient_map,
            "patients": {f"OIMHS_{eye:03d}": patient for eye, (patient, _) in OIMHS_EYES.items()}}


def make_uc_layout(root: Path, mismatched_label_names: bool = False) -> dict:
    """The uC repository layout: imagesTr/labelsTr, imagesVal/labelsVal, imagesTs/original_labelTs and shapes.json,
    with one test image resized (half resolution in-plane) relative to its original-shape label. The validation
    set reuses a training name (train_001) to exercise the collision prefix."""
    train, val, test = ["train_000", "train_001", "train_002"], ["train_001", "train_010"], ["train_020", "train_021"]
    for folder_pair, names, seed in ((("imagesTr", "labelsTr"), train, 0), (("imagesVal", "labelsVal"), val, 10)):
        for index, name in enumerate(names):
            label_name = f"label_{index:02d}" if mismatched_label_names and folder_pair[0] == "imagesTr" else name
            write_ct_pair(root / folder_pair[0] / f"{name}.nii.gz", root / folder_pair[1] / f"{label_name}.nii.gz",
                          n_labels=4, seed=seed + index)
    shapes = {}
    for index, name in enumerate(test):
        labels = write_ct_pair(root / "imagesTs" / f"{name}.nii.gz", root / "original_labelTs" / f"{name}.nii.gz",
                               n_labels=4, seed=20 + index)
        shapes[f"{name}.nii.gz"] = list(reversed(labels.shape))
    resized = organ_phantom(CT_SIZE_ZYX, 4, seed=20)[:, ::2, ::2]
    write_sitk(root / "imagesTs" / "train_020.nii.gz", ct_intensities(resized, 20), (1.6, 1.6, 2.5))
    (root / "shapes.json").write_text(json.dumps(shapes))
    return {"train": train, "val": val, "test": test, "resized": ["train_020"], "shapes": shapes}


# ---- helpers shared by the conversion tests -------------------------------------------------------------------


@pytest.fixture
def nnunet_env(tmp_path, monkeypatch) -> dict[str, Path]:
    """nnUNet_raw/_preprocessed/_results pointing into the test's temporary folder."""
    folders = {name: tmp_path / name for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")}
    for name, folder in folders.items():
        monkeypatch.setenv(name, str(folder))
    return folders


def convert(*argv: str) -> int:
    """`nnunetv2_uc convert ...` in-process, one worker (tests stay light on the shared CPU)."""
    from nnunetv2_uc.cli import main

    return main(["convert", *argv, "-j", "1"])


def read(path: Path) -> tuple[np.ndarray, sitk.Image]:
    image = sitk.ReadImage(str(path))
    return sitk.GetArrayFromImage(image), image


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def assert_valid_nnunet_dataset(dataset: Path) -> dict:
    """The checks the spec asks of every converter's output; returns dataset.json."""
    dataset_json = json.loads((dataset / "dataset.json").read_text())
    assert {"channel_names", "labels", "numTraining", "file_ending"} <= set(dataset_json)
    images = sorted((dataset / "imagesTr").iterdir())
    assert dataset_json["numTraining"] == len(images) == len(list((dataset / "labelsTr").iterdir()))
    declared = set(dataset_json["labels"].values())
    for subset in ("Tr", "Ts"):
        if not (dataset / f"labels{subset}").is_dir():
            continue
        for label_path in sorted((dataset / f"labels{subset}").iterdir()):
            image_path = dataset / f"images{subset}" / label_path.name.replace(".nii.gz", "_0000.nii.gz")
            labels, label_image = read(label_path)
            assert label_image.GetPixelID() == sitk.sitkUInt8
            assert set(np.unique(labels).tolist()) <= declared, label_path
            image = sitk.ReadImage(str(image_path))
            if dataset_json.get("test_labels_on_original_grid") and label_path.stem.split(".")[0] in \
                    dataset_json["test_labels_on_original_grid"]:
                continue
            assert image.GetSize() == label_image.GetSize()
            assert image.GetSpacing() == label_image.GetSpacing()
            assert image.GetOrigin() == label_image.GetOrigin()
            assert image.GetDirection() == label_image.GetDirection()
    for folder in ("imagesTr", "imagesTs"):
        if (dataset / folder).is_dir():
            assert all(p.name.endswith("_0000.nii.gz") for p in (dataset / folder).iterdir())
    training_ids = {p.name[: -len("_0000.nii.gz")] for p in images}
    if (dataset / "splits_final.json").is_file():
        for fold in json.loads((dataset / "splits_final.json").read_text()):
            assert set(fold["train"]) | set(fold["val"]) <= training_ids
            assert not set(fold["train"]) & set(fold["val"])
    holdout = set(dataset_json.get("holdout_cases", []))
    assert not holdout & training_ids
    return dataset_json
