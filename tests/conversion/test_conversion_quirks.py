"""Dataset quirks: AbdomenCT-1K header repair, OIMHS PNG splitting/colours/stacking, FeTA methods and hold-out."""
from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import SimpleITK as sitk

import helpers.fake_raw_datasets as fake
from helpers.fake_raw_datasets import assert_valid_nnunet_dataset, convert, nnunet_env, read  # noqa: F401


def test_abdomenct1k_repairs_non_orthonormal_headers_and_skips_images_without_mask(tmp_path, nnunet_env, capsys):
    info = fake.make_abdomenct1k(tmp_path / "AbdomenCT-1K")
    broken = tmp_path / "AbdomenCT-1K" / "AbdomenCT-1K-ImagePart1" / "Case_00011_0000.nii.gz"
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(broken))
    try:
        reader.ReadImageInformation()
        raise AssertionError("the fixture must reproduce SimpleITK's 'No orthonormal definition' failure")
    except RuntimeError as error:
        assert "orthonormal" in str(error)

    assert convert("abdomenct1k", "--input", str(tmp_path / "AbdomenCT-1K")) == 0
    dataset = nnunet_env["nnUNet_raw"] / "Dataset504_AbdomenCT1K"
    dataset_json = assert_valid_nnunet_dataset(dataset)
    assert sorted(p.name[:10] for p in (dataset / "imagesTr").iterdir()) == info["labelled"]
    assert dataset_json["header_repaired_cases"] == ["Case_00011"]
    assert dataset_json["fake_spacing_cases"] == ["Case_00078"]
    assert dataset_json["skipped_without_mask"] == ["Case_01062"]
    assert not (dataset / "imagesTs").exists()

    image_array, image = read(dataset / "imagesTr" / "Case_00011_0000.nii.gz")
    direction = np.array(image.GetDirection()).reshape(3, 3)
    np.testing.assert_allclose(direction @ direction.T, np.eye(3), atol=1e-6)
    np.testing.assert_allclose(image.GetSpacing(), np.linalg.norm(fake.non_orthonormal_affine()[:3, :3], axis=0))
    source = nib.load(str(broken))
    assert image_array.dtype == np.int16
    np.testing.assert_array_equal(image_array, np.asanyarray(source.dataobj).transpose(2, 1, 0))
    out = capsys.readouterr().out
    assert "Header repaired" in out and "Case_00011" in out
    assert "1 image(s) without a mask skipped" in out and "fake 1x1x1" in out


def test_abdomenct1k_unlabelled_to_test_and_seeded_holdout(tmp_path, nnunet_env):
    fake.make_abdomenct1k(tmp_path / "a")
    assert convert("abdomenct1k", "--input", str(tmp_path / "a"), "--unlabelled", "test",
                   "--holdout-fraction", "0.2") == 0
    dataset = nnunet_env["nnUNet_raw"] / "Dataset504_AbdomenCT1K"
    dataset_json = assert_valid_nnunet_dataset(dataset)
    assert dataset_json["numTraining"] == 4 and len(dataset_json["holdout_cases"]) == 1
    held_out = dataset_json["holdout_cases"][0]
    assert sorted(p.name for p in (dataset / "imagesTs").iterdir()) == sorted(
        [f"{held_out}_0000.nii.gz", "Case_01062_0000.nii.gz"])
    assert [p.name for p in (dataset / "labelsTs").iterdir()] == [f"{held_out}.nii.gz"]


def test_oimhs_splits_maps_colours_and_stacks_bscans_numerically(tmp_path, nnunet_env):
    info = fake.make_oimhs(tmp_path / "OIMHS")
    assert convert("oimhs", "--input", str(tmp_path / "OIMHS"), "--patient-map", str(info["patient_map"]),
                   "--spacing", "0.0116", "0.0039", "0.24") == 0
    dataset = nnunet_env["nnUNet_raw"] / "Dataset502_OIMHS"
    dataset_json = assert_valid_nnunet_dataset(dataset)
    assert dataset_json["channel_names"] == {"0": "OCT"}
    assert dataset_json["labels"] == {"background": 0, "macular_hole": 1, "macular_edema": 2, "choroid": 3,
                                      "retina": 4}
    assert dataset_json["spacing_xyz_mm"] == [0.0116, 0.0039, 0.24] and not dataset_json["spacing_is_nominal"]
    for case_id, (expected_image, expected_labels) in info["expected"].items():
        image, image_sitk = read(dataset / "imagesTr" / f"{case_id}_0000.nii.gz")
        labels, _ = read(dataset / "labelsTr" / f"{case_id}.nii.gz")
        assert image.dtype == np.uint8 and image.shape == expected_image.shape  # (n_bscans, H, W)
        np.testing.assert_array_equal(image, expected_image)  # numeric order, grey or luminance
        np.testing.assert_array_equal(labels, expected_labels)
        np.testing.assert_allclose(image_sitk.GetSpacing(), (0.0116, 0.0039, 0.24))
    assert info["expected"]["OIMHS_001"][0].shape[0] == 11
    assert dataset_json["case_metadata"]["OIMHS_002"]["patient"] == "P001"

    folds = json.loads((dataset / "splits_final.json").read_text())
    assert len(folds) == 3  # three patients
    for fold in folds:  # both eyes of patient P001 always share a side
        assert ("OIMHS_001" in fold["val"]) == ("OIMHS_002" in fold["val"])


def test_oimhs_unknown_colour_is_rejected_with_file_and_count_unless_tolerated(tmp_path, nnunet_env, capsys):
    fake.make_oimhs(tmp_path / "OIMHS", stray_pixel=True)
    assert convert("oimhs", "--input", str(tmp_path / "OIMHS")) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 'OIMHS' / 'Images' / '3' / '2.png'}: 1 mask pixel(s) of unknown colour" in err
    assert not list(nnunet_env["nnUNet_raw"].iterdir())

    assert convert("oimhs", "--input", str(tmp_path / "OIMHS"), "--max-unknown-colour-pixels", "1",
                   "--label-scheme", "torch-em") == 0
    dataset = nnunet_env["nnUNet_raw"] / "Dataset502_OIMHS"
    dataset_json = assert_valid_nnunet_dataset(dataset)
    assert dataset_json["labels"] == {"background": 0, "choroid": 1, "retina": 2, "macular_edema": 3,
                                      "macular_hole": 4}
    labels, _ = read(dataset / "labelsTr" / "OIMHS_003.nii.gz")
    assert labels[1, 0, 0] == 0  # the stray pixel became background
    expected = fake.make_oimhs(tmp_path / "again")["expected"]["OIMHS_001"][1]
    written, _ = read(dataset / "labelsTr" / "OIMHS_001.nii.gz")
    np.testing.assert_array_equal(written, np.select([expected == 1, expected == 2, expected == 3, expected == 4],
                                                     [4, 3, 1, 2], 0))
    assert "set to background" in capsys.readouterr().err


def test_feta2021_records_method_and_pathology_and_holds_out_uxnet_test(tmp_path, nnunet_env):
    fake.make_feta2021(tmp_path / "FeTA")
    assert convert("feta2021", "--input", str(tmp_path / "FeTA")) == 0  # parent of feta_2.1
    dataset = nnunet_env["nnUNet_raw"] / "Dataset503_FeTA2021"
    dataset_json = assert_valid_nnunet_dataset(dataset)
    assert dataset_json["channel_names"] == {"0": "T2"} and dataset_json["labels"]["brainstem"] == 7
    assert [p.name for p in (dataset / "labelsTs").iterdir()] == ["FeTA_061.nii.gz"]
    assert dataset_json["numTraining"] == 5  # sub-011 joins the pool by default
    metadata = dataset_json["case_metadata"]
    assert metadata["FeTA_001"] == {"gestational_age": 27.4, "pathology": "Pathological", "reconstruction": "mial",
                                    "subject": "sub-001"}
    assert metadata["FeTA_041"]["reconstruction"] == "irtk"
    t2w, _ = read(dataset / "imagesTr" / "FeTA_002_0000.nii.gz")
    assert t2w.dtype == np.float32
    original = read(tmp_path / "FeTA" / "feta_2.1" / "sub-002" / "anat" / "sub-002_rec-mial_dseg.nii.gz")[0]
    assert original.dtype == np.float64  # the float dseg quirk
    np.testing.assert_array_equal(read(dataset / "labelsTr" / "FeTA_002.nii.gz")[0], original.astype(np.uint8))


def test_feta2021_can_drop_the_orphan_subject(tmp_path, nnunet_env):
    fake.make_feta2021(tmp_path / "FeTA")
    assert convert("feta2021", "--input", str(tmp_path / "FeTA" / "feta_2.1"), "--sub011", "drop") == 0
    dataset = nnunet_env["nnUNet_raw"] / "Dataset503_FeTA2021"
    dataset_json = assert_valid_nnunet_dataset(dataset)
    assert "FeTA_011" not in dataset_json["case_metadata"]
    assert dataset_json["numTraining"] == 4


def test_oimhs_reads_the_demographics_sheet_for_patient_grouping(tmp_path, nnunet_env):
    fake.make_oimhs(tmp_path / "OIMHS", demographics_sheet=True)
    assert convert("oimhs", "--input", str(tmp_path / "OIMHS"), "--holdout-fraction", "0.34") == 0
    dataset_json = assert_valid_nnunet_dataset(nnunet_env["nnUNet_raw"] / "Dataset502_OIMHS")
    assert dataset_json["case_metadata"]["OIMHS_001"]["patient"] == "P001"
    assert dataset_json["case_metadata"]["OIMHS_003"]["stage"] == "3"
    holdout = set(dataset_json["holdout_cases"])
    assert holdout and len(holdout) < 4
    assert ("OIMHS_001" in holdout) == ("OIMHS_002" in holdout)  # a patient's eyes are held out together
