"""Converters end to end on fake releases: FLARE2021, BTCV and the uC layout, plus nnU-Net's integrity check on
every converter's output."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

import helpers.fake_raw_datasets as fake
from helpers.fake_raw_datasets import assert_valid_nnunet_dataset, convert, digest, nnunet_env, read  # noqa: F401
from nnunetv2_uc.cli import main


def test_flare2021_uxnet_holdout_and_default_folds(tmp_path, nnunet_env, capsys):
    info = fake.make_flare2021(tmp_path / "FLARE21")
    assert convert("flare2021", "--input", str(tmp_path / "FLARE21")) == 0
    dataset = nnunet_env["nnUNet_raw"] / "Dataset501_FLARE2021"
    dataset_json = assert_valid_nnunet_dataset(dataset)

    assert dataset_json["channel_names"] == {"0": "CT"}
    assert dataset_json["labels"] == {"background": 0, "liver": 1, "kidney": 2, "spleen": 3, "pancreas": 4}
    assert dataset_json["numTraining"] == 6
    assert dataset_json["split_protocol"] == "uxnet_holdout_20"
    assert sorted(p.name for p in (dataset / "imagesTs").iterdir()) == [
        "train_036_0000.nii.gz", "validation_001_0000.nii.gz"]
    assert [p.name for p in (dataset / "labelsTs").iterdir()] == ["train_036.nii.gz"]
    # images are copied byte for byte; the float mask of train_036 became uint8 with the same values
    source = tmp_path / "FLARE21"
    assert digest(dataset / "imagesTr" / "train_003_0000.nii.gz") == digest(source / "TrainingImg" /
                                                                           "train_003_0000.nii.gz")
    written, _ = read(dataset / "labelsTs" / "train_036.nii.gz")
    original, _ = read(source / "TrainingMask" / "train_036.nii.gz")
    np.testing.assert_array_equal(written, original.astype(np.uint8))

    splits = json.loads((dataset / "splits_final.json").read_text())
    assert len(splits) == 5
    assert sorted(i for fold in splits for i in fold["val"]) == [c for c in info["training"] if c != "train_036"][:6]
    placed = nnunet_env["nnUNet_preprocessed"] / "Dataset501_FLARE2021" / "splits_final.json"
    assert json.loads(placed.read_text()) == splits
    out = capsys.readouterr().out
    assert "uxnet_holdout_20" in out and str(placed) in out


def test_flare2021_split_none_keeps_every_labelled_case_in_training(tmp_path, nnunet_env):
    fake.make_flare2021(tmp_path / "FLARE21")
    assert convert("flare2021", "--input", str(tmp_path / "FLARE21"), "--split", "none",
                   "--dataset-id", "321", "--name", "Flare") == 0
    dataset = nnunet_env["nnUNet_raw"] / "Dataset321_Flare"
    dataset_json = assert_valid_nnunet_dataset(dataset)
    assert dataset_json["numTraining"] == 7
    assert not (dataset / "splits_final.json").exists()
    assert not (dataset / "labelsTs").exists()
    assert not (nnunet_env["nnUNet_preprocessed"] / "Dataset321_Flare").exists()


def test_btcv_monai_split_and_testing_folder(tmp_path, nnunet_env):
    fake.make_btcv(tmp_path / "Abdomen")
    assert convert("btcv", "--input", str(tmp_path / "Abdomen")) == 0
    dataset = nnunet_env["nnUNet_raw"] / "Dataset505_BTCV"
    dataset_json = assert_valid_nnunet_dataset(dataset)
    assert len(dataset_json["labels"]) == 14 and dataset_json["labels"]["left_adrenal_gland"] == 13
    assert json.loads((dataset / "splits_final.json").read_text()) == [
        {"train": ["BTCV_0001", "BTCV_0005", "BTCV_0021", "BTCV_0023"], "val": ["BTCV_0035", "BTCV_0036"]}]
    assert [p.name for p in (dataset / "imagesTs").iterdir()] == ["BTCV_0061_0000.nii.gz"]
    assert not (dataset / "labelsTs").exists()
    written, _ = read(dataset / "labelsTr" / "BTCV_0021.nii.gz")
    original, _ = read(tmp_path / "Abdomen" / "RawData" / "Training" / "label" / "label0021.nii.gz")
    np.testing.assert_array_equal(written, original)


def test_btcv_transunet_protocol_holds_out_and_keeps_eight_organs(tmp_path, nnunet_env):
    fake.make_btcv(tmp_path / "bt", test_folder="Test")  # nnU-Net v1 Task017 layout
    assert convert("btcv", "--input", str(tmp_path / "bt" / "RawData"), "--protocol", "transunet") == 0
    dataset = nnunet_env["nnUNet_raw"] / "Dataset505_BTCV"
    dataset_json = assert_valid_nnunet_dataset(dataset)
    assert list(dataset_json["labels"]) == ["background", "spleen", "right_kidney", "left_kidney", "gallbladder",
                                            "liver", "stomach", "aorta", "pancreas"]
    assert sorted(p.name for p in (dataset / "labelsTs").iterdir()) == [
        "BTCV_0001.nii.gz", "BTCV_0035.nii.gz", "BTCV_0036.nii.gz"]
    assert "BTCV_0061_0000.nii.gz" in {p.name for p in (dataset / "imagesTs").iterdir()}
    original = read(tmp_path / "bt" / "RawData" / "Training" / "label" / "label0001.nii.gz")[0].astype(int)
    written, _ = read(dataset / "labelsTs" / "BTCV_0001.nii.gz")
    expected = np.select([original == 6, original == 7, original == 8, original == 11, original >= 5],
                         [5, 6, 7, 8, 0], original)
    np.testing.assert_array_equal(written, expected)
    assert set(np.unique(original).tolist()) & {5, 9, 10, 12, 13}, "fixture must contain dropped organs"


def test_uc_layout_pairs_prefixes_collisions_and_keeps_original_test_grid(tmp_path, nnunet_env, capsys):
    info = fake.make_uc_layout(tmp_path / "uc", mismatched_label_names=True)
    assert convert("uc-layout", "--input", str(tmp_path / "uc"), "--like", "flare2021") == 0
    dataset = nnunet_env["nnUNet_raw"] / "Dataset506_UCLayout"
    dataset_json = assert_valid_nnunet_dataset(dataset)
    assert dataset_json["channel_names"] == {"0": "CT"} and dataset_json["labels"]["pancreas"] == 4
    assert json.loads((dataset / "splits_final.json").read_text()) == [
        {"train": ["train_000", "train_001", "train_002"], "val": ["train_010", "val_train_001"]}]
    assert dataset_json["test_labels_on_original_grid"] == info["resized"]
    assert dataset_json["uc_original_shapes"] == info["shapes"]
    assert json.loads((dataset / "shapes.json").read_text()) == info["shapes"]
    resized_image = sitk.ReadImage(str(dataset / "imagesTs" / "train_020_0000.nii.gz"))
    original_label = sitk.ReadImage(str(dataset / "labelsTs" / "train_020.nii.gz"))
    assert list(original_label.GetSize()) == info["shapes"]["train_020.nii.gz"] != list(resized_image.GetSize())
    out = capsys.readouterr().out
    assert "paired by sorted order" in out and "val_train_001" in out and "nearest-neighbour" in out


def test_uc_layout_without_labels_infers_ids_and_requires_a_channel_name(tmp_path, nnunet_env, capsys):
    fake.make_uc_layout(tmp_path / "uc")
    assert convert("uc-layout", "--input", str(tmp_path / "uc")) == 2
    assert "--channel-name" in capsys.readouterr().err
    assert convert("uc-layout", "--input", str(tmp_path / "uc"), "--channel-name", "CT", "--split", "none") == 0
    dataset_json = json.loads((nnunet_env["nnUNet_raw"] / "Dataset506_UCLayout" / "dataset.json").read_text())
    assert dataset_json["labels"] == {"background": 0, "label_1": 1, "label_2": 2, "label_3": 3, "label_4": 4}


CONVERTERS = {
    "flare2021": (fake.make_flare2021, [], 501),
    "oimhs": (fake.make_oimhs, [], 502),
    "feta2021": (fake.make_feta2021, [], 503),
    "abdomenct1k": (fake.make_abdomenct1k, [], 504),
    "btcv": (fake.make_btcv, [], 505),
    "uc-layout": (fake.make_uc_layout, ["--like", "feta2021"], 506),
}


@pytest.mark.parametrize("dataset", sorted(CONVERTERS))
def test_output_passes_nnunet_integrity_check(dataset, tmp_path, nnunet_env):
    """nnU-Net's own check, the function `nnUNetv2_plan_and_preprocess --verify_dataset_integrity` runs."""
    from nnunetv2.experiment_planning.verify_dataset_integrity import verify_dataset_integrity

    make, extra, dataset_id = CONVERTERS[dataset]
    make(tmp_path / "release")
    assert convert(dataset, "--input", str(tmp_path / "release"), *extra) == 0
    folder = next(nnunet_env["nnUNet_raw"].glob(f"Dataset{dataset_id}_*"))
    assert_valid_nnunet_dataset(folder)
    verify_dataset_integrity(str(folder), num_processes=1)  # raises on any problem


def test_convert_help_for_every_dataset(capsys):
    for dataset in CONVERTERS:
        with pytest.raises(SystemExit) as exit_info:
            main(["convert", dataset, "--help"])
        assert exit_info.value.code == 0
        text = capsys.readouterr().out
        assert "--input" in text and "--overwrite" in text and "--split" in text and "Layout" in text


def test_stock_nnunet_integrity_command_accepts_repaired_abdomenct1k(tmp_path, nnunet_env):
    """The real command line on the converter with the header repair: `nnUNetv2_extract_fingerprint
    --verify_dataset_integrity` runs the same check as `nnUNetv2_plan_and_preprocess --verify_dataset_integrity`
    without planning and preprocessing (which take minutes even on tiny data)."""
    import os
    import subprocess
    import sys

    fake.make_abdomenct1k(tmp_path / "a")
    assert convert("abdomenct1k", "--input", str(tmp_path / "a")) == 0
    command = Path(sys.executable).with_name("nnUNetv2_extract_fingerprint")
    result = subprocess.run([str(command), "-d", "504", "--verify_dataset_integrity", "-np", "1"],
                            capture_output=True, text=True, env=os.environ.copy(), timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "verify_dataset_integrity Done" in result.stdout
    fingerprint = json.loads((nnunet_env["nnUNet_preprocessed"] / "Dataset504_AbdomenCT1K" /
                              "dataset_fingerprint.json").read_text())
    assert len(fingerprint["spacings"]) == 5


def test_parallel_workers_give_the_same_dataset_as_one_worker(tmp_path, nnunet_env):
    fake.make_btcv(tmp_path / "b")
    assert main(["convert", "btcv", "--input", str(tmp_path / "b"), "-j", "2"]) == 0
    assert convert("btcv", "--input", str(tmp_path / "b"), "--dataset-id", "705") == 0
    raw = nnunet_env["nnUNet_raw"]
    parallel, serial = raw / "Dataset505_BTCV", raw / "Dataset705_BTCV"
    files = sorted(p.relative_to(parallel) for p in parallel.rglob("*.nii.gz"))
    assert len(files) == 13
    assert all(digest(parallel / f) == digest(serial / f) for f in files)
