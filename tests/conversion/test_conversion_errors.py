"""Bad inputs: every problem is listed (exit code 2), nothing is half-written, existing datasets are only replaced
with --overwrite (exit code 3 without it), and re-running is idempotent."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

import helpers.fake_raw_datasets as fake
from helpers.fake_raw_datasets import convert, digest, nnunet_env  # noqa: F401


def folder_digests(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): digest(p) for p in sorted(folder.rglob("*")) if p.is_file()}


def assert_nothing_written(raw: Path) -> None:
    """No dataset and no leftover temporary folder."""
    assert not raw.exists() or not list(raw.iterdir()), list(raw.iterdir())


def test_every_validation_problem_is_listed_and_nothing_is_written(tmp_path, nnunet_env, capsys):
    root = tmp_path / "FLARE21"
    fake.make_flare2021(root)
    (root / "TrainingMask" / "train_001.nii.gz").unlink()  # image without label
    fake.write_ct_pair(root / "elsewhere" / "x.nii.gz", root / "TrainingMask" / "train_099.nii.gz", 4, 7)
    (root / "TrainingImg" / "train_002_0000.nii.gz").write_bytes(b"not a nifti file")  # unreadable
    fake.write_sitk(root / "TrainingMask" / "train_003.nii.gz", np.zeros((4, 5, 6), np.uint8))  # shape mismatch
    fake.write_ct_pair(root / "elsewhere" / "y.nii.gz", root / "TrainingMask" / "train_004.nii.gz", 4, 4,
                       spacing=(2.0, 2.0, 2.0))  # spacing mismatch

    assert convert("flare2021", "--input", str(root)) == 2
    err = capsys.readouterr().err
    assert "5 problem(s)" in err and "nothing was written" in err and "Traceback" not in err
    assert f"image {root / 'TrainingImg' / 'train_001_0000.nii.gz'} has no matching label" in err
    assert f"label {root / 'TrainingMask' / 'train_099.nii.gz'} has no matching image" in err
    assert f"{root / 'TrainingImg' / 'train_002_0000.nii.gz'}: cannot be read" in err
    assert "train_003: shape mismatch" in err and "train_004: spacing mismatch" in err
    assert_nothing_written(nnunet_env["nnUNet_raw"])


def test_unexpected_label_values_in_several_cases_are_all_reported(tmp_path, nnunet_env, capsys):
    root = tmp_path / "Abdomen"
    fake.make_btcv(root)
    for number, bad_value in (("0005", 14), ("0023", 200)):
        path = root / "RawData" / "Training" / "label" / f"label{number}.nii.gz"
        labels = fake.organ_phantom(fake.CT_SIZE_ZYX, 13, seed=0)
        labels[0, 0, 0] = bad_value
        fake.write_sitk(path, labels, (0.76, 0.76, 3.0))
    assert convert("btcv", "--input", str(root), "--protocol", "nnunet") == 2
    err = capsys.readouterr().err
    assert "BTCV_0005: label values [14] are not declared" in err
    assert "BTCV_0023: label values [200] are not declared" in err
    assert_nothing_written(nnunet_env["nnUNet_raw"])


def test_existing_dataset_untouched_without_overwrite_and_rerun_is_idempotent(tmp_path, nnunet_env, capsys):
    root = tmp_path / "feta"
    fake.make_feta2021(root)
    assert convert("feta2021", "--input", str(root)) == 0
    dataset = nnunet_env["nnUNet_raw"] / "Dataset503_FeTA2021"
    first = folder_digests(dataset)
    placed = nnunet_env["nnUNet_preprocessed"] / "Dataset503_FeTA2021" / "splits_final.json"
    assert placed.is_file()

    assert convert("feta2021", "--input", str(root), "--sub011", "drop") == 3  # refusing to overwrite
    assert "pass --overwrite" in capsys.readouterr().err
    assert folder_digests(dataset) == first

    assert convert("feta2021", "--input", str(root), "--overwrite") == 0
    assert folder_digests(dataset) == first  # byte-identical re-run
    assert [p.name for p in nnunet_env["nnUNet_raw"].iterdir()] == ["Dataset503_FeTA2021"]


def test_failed_overwrite_keeps_the_previous_dataset(tmp_path, nnunet_env):
    root = tmp_path / "oimhs"
    fake.make_oimhs(root)
    assert convert("oimhs", "--input", str(root)) == 0
    dataset = nnunet_env["nnUNet_raw"] / "Dataset502_OIMHS"
    before = folder_digests(dataset)
    Image.new("RGB", (40, 24), (7, 7, 7)).save(root / "Images" / "4" / "2.png")  # whole mask of unknown colour
    assert convert("oimhs", "--input", str(root), "--overwrite") == 2
    assert folder_digests(dataset) == before
    assert [p.name for p in nnunet_env["nnUNet_raw"].iterdir()] == ["Dataset502_OIMHS"]


def test_oimhs_layout_problems_are_all_listed(tmp_path, nnunet_env, capsys):
    root = tmp_path / "oimhs"
    fake.make_oimhs(root)
    Image.new("RGB", (42, 30)).save(root / "Images" / "3" / "5.png")  # another size
    Image.new("RGB", (40, 24)).save(root / "Images" / "4" / "scan_a.png")  # not an integer stem
    assert convert("oimhs", "--input", str(root)) == 2
    err = capsys.readouterr().err
    assert f"{root / 'Images' / '3'}: B-scans differ in size" in err
    assert "B-scan names must be integers" in err and "scan_a.png" in err
    assert_nothing_written(nnunet_env["nnUNet_raw"])


def test_dataset_id_used_by_another_name_is_refused(tmp_path, nnunet_env, capsys):
    fake.make_btcv(tmp_path / "b")
    (nnunet_env["nnUNet_raw"] / "Dataset505_Other").mkdir(parents=True)
    assert convert("btcv", "--input", str(tmp_path / "b")) == 2
    assert "dataset id 505 is already used by" in capsys.readouterr().err
    assert convert("btcv", "--input", str(tmp_path / "b"), "--dataset-id", "605") == 0


def test_conflicting_placed_split_needs_overwrite(tmp_path, nnunet_env, capsys):
    fake.make_btcv(tmp_path / "b")
    placed = nnunet_env["nnUNet_preprocessed"] / "Dataset505_BTCV" / "splits_final.json"
    placed.parent.mkdir(parents=True)
    placed.write_text(json.dumps([{"train": ["BTCV_0001"], "val": ["BTCV_0005"]}]))
    assert convert("btcv", "--input", str(tmp_path / "b")) == 3  # refusing to overwrite
    assert f"{placed} exists with a different split" in capsys.readouterr().err
    assert convert("btcv", "--input", str(tmp_path / "b"), "--overwrite") == 0
    assert json.loads(placed.read_text())[0]["val"] == ["BTCV_0035", "BTCV_0036"]


def test_user_errors_give_a_message_not_a_traceback(tmp_path, nnunet_env, monkeypatch, capsys):
    assert convert("abdomenct1k", "--input", str(tmp_path / "missing")) == 2
    assert "is not a folder" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert convert("abdomenct1k", "--input", str(tmp_path / "empty")) == 2
    err = capsys.readouterr().err
    assert "Mask.7z" in err and "no labelled training case" in err
    fake.make_flare2021(tmp_path / "f")
    monkeypatch.delenv("nnUNet_raw")
    assert convert("flare2021", "--input", str(tmp_path / "f")) == 2
    assert "export nnUNet_raw" in capsys.readouterr().err
