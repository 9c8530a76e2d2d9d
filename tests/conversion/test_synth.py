"""`nnunetv2_uc synth`: determinism, geometry, labels, HU ranges, atomic writing and nnU-Net's integrity check."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from nnunetv2_uc.demo import synth
from nnunetv2_uc.cli import main
from nnunetv2_uc.errors import OverwriteRefused, UserError


@pytest.fixture(scope="module")
def cases() -> list[synth.SyntheticCase]:
    return [synth.synthesize_case(seed=3, index=i) for i in range(4)]


@pytest.fixture(scope="module")
def small_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    raw = tmp_path_factory.mktemp("raw")
    return synth.generate_dataset(raw, 981, n_cases=3, n_test=2, seed=7)


def test_same_seed_same_case_and_independent_of_case_count() -> None:
    a, b = synth.synthesize_case(5, 2), synth.synthesize_case(5, 2)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.label, b.label)
    assert a.spacing_zyx == b.spacing_zyx
    other_seed = synth.synthesize_case(6, 2)
    assert not np.array_equal(a.image, other_seed.image) or a.image.shape != other_seed.image.shape
    held_out = synth.synthesize_case(5, 2, held_out=True)
    assert held_out.image.shape != a.image.shape or not np.array_equal(held_out.image, a.image)


def test_geometry_is_anisotropic_and_varies_per_case(cases: list[synth.SyntheticCase]) -> None:
    for case in cases:
        sz, sy, sx = case.spacing_zyx
        assert 2.5 <= sz <= 5.0 and 0.7 <= sy <= 0.9 and sy == sx
        nz, ny, nx = case.image.shape
        assert 24 <= nz <= 40 and 96 <= ny <= 128 and ny == nx
        assert case.label.shape == case.image.shape == case.tissue.shape
        assert case.image.dtype == np.int16 and case.label.dtype == np.uint8
    assert len({c.spacing_zyx for c in cases}) == len(cases)


def test_every_case_has_all_four_organs_inside_the_body(cases: list[synth.SyntheticCase]) -> None:
    for case in cases:
        assert set(np.unique(case.label)) == set(synth.LABELS.values())
        assert np.all(case.tissue[case.label > 0] == synth.TISSUES["soft_tissue"])
        voxel_ml = float(np.prod(case.spacing_zyx)) / 1000.0
        volumes = {n: float((case.label == v).sum()) * voxel_ml for n, v in synth.LABELS.items() if v}
        assert volumes["liver"] == max(volumes.values())
        assert all(v > 1.0 for v in volumes.values()), volumes  # every organ > 1 ml
    liver_sizes = [int((c.label == synth.LABELS["liver"]).sum()) for c in cases]
    assert len(set(liver_sizes)) == len(liver_sizes)  # random size/shape


def test_hu_ranges_per_tissue_and_organ(cases: list[synth.SyntheticCase]) -> None:
    for case in cases:
        background = case.label == 0
        median = {name: float(np.median(case.image[(case.tissue == v) & background]))
                  for name, v in synth.TISSUES.items()}
        assert -1030 <= median["air"] <= -970
        assert -140 <= median["fat"] <= -60
        assert 10 <= median["soft_tissue"] <= 70
        assert median["bone"] >= 300
        for name, hu in synth.ORGAN_HU.items():
            mean = float(case.image[case.label == synth.LABELS[name]].mean())
            assert abs(mean - hu) < 35, (name, mean)
        assert case.image.min() >= synth.HU_RANGE[0] and case.image.max() <= synth.HU_RANGE[1]
        # noise: soft tissue is not flat
        assert 5 <= float(case.image[(case.tissue == synth.TISSUES["soft_tissue"]) & background].std()) <= 40


def test_written_dataset_layout_and_geometry(small_dataset: Path) -> None:
    assert small_dataset.name == "Dataset981_SyntheticCT"
    info = json.loads((small_dataset / "dataset.json").read_text())
    assert info["channel_names"] == {"0": "CT"}
    assert info["labels"] == synth.LABELS and info["numTraining"] == 3 and info["file_ending"] == ".nii.gz"
    assert sorted(p.name for p in (small_dataset / "imagesTs").iterdir()) == [
        "synthtest_000_0000.nii.gz", "synthtest_001_0000.nii.gz"]
    assert len(list((small_dataset / "labelsTs").iterdir())) == 2
    expected = synth.synthesize_case(7, 1)
    img = sitk.ReadImage(str(small_dataset / "imagesTr" / "synth_001_0000.nii.gz"))
    seg = sitk.ReadImage(str(small_dataset / "labelsTr" / "synth_001.nii.gz"))
    assert np.allclose(img.GetSpacing(), tuple(reversed(expected.spacing_zyx)), atol=1e-5)
    assert np.array_equal(sitk.GetArrayFromImage(img), expected.image)
    assert np.array_equal(sitk.GetArrayFromImage(seg), expected.label)
    assert seg.GetSpacing() == img.GetSpacing() and seg.GetOrigin() == img.GetOrigin()
    assert not [p for p in small_dataset.parent.iterdir() if p.name.startswith(".")]  # temp dir moved away


def test_nnunet_integrity_check_passes(small_dataset: Path) -> None:
    from nnunetv2.experiment_planning.verify_dataset_integrity import verify_dataset_integrity

    verify_dataset_integrity(str(small_dataset), num_processes=1)


def test_same_folder_replaced_only_with_overwrite_and_id_of_another_name_refused(tmp_path: Path) -> None:
    first = synth.generate_dataset(tmp_path, 982, n_cases=1, n_test=0, seed=1)
    marker = first / "imagesTr" / "synth_000_0000.nii.gz"
    before = marker.read_bytes()
    with pytest.raises(OverwriteRefused, match="--overwrite"):
        synth.generate_dataset(tmp_path, 982, n_cases=1, n_test=0, seed=2)
    assert marker.read_bytes() == before
    for overwrite in (False, True):  # the id belongs to Dataset982_SyntheticCT: another name is refused either way
        with pytest.raises(UserError, match="dataset id 982 is already used by") as error:
            synth.generate_dataset(tmp_path, 982, n_cases=1, n_test=0, seed=2, name="Other", overwrite=overwrite)
        assert not isinstance(error.value, OverwriteRefused)
    assert marker.read_bytes() == before and not (tmp_path / "Dataset982_Other").exists()
    replaced = synth.generate_dataset(tmp_path, 982, n_cases=1, n_test=0, seed=2, overwrite=True)
    assert replaced == first and marker.read_bytes() != before
    assert np.array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(marker))), synth.synthesize_case(2, 0).image)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["Dataset982_SyntheticCT"]  # no temporary folder left


def test_id_used_in_nnunet_preprocessed_is_refused(tmp_path: Path) -> None:
    (tmp_path / "preprocessed" / "Dataset984_Planned").mkdir(parents=True)
    with pytest.raises(UserError, match="Dataset984_Planned"):
        synth.generate_dataset(tmp_path / "raw", 984, n_cases=1, n_test=0, preprocessed_root=tmp_path / "preprocessed")
    assert not (tmp_path / "raw").exists() or not list((tmp_path / "raw").iterdir())


def test_cli_writes_to_nnunet_raw_and_reports_errors_on_stderr(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                              capsys: pytest.CaptureFixture) -> None:
    monkeypatch.delenv("nnUNet_raw", raising=False)
    monkeypatch.delenv("nnUNet_preprocessed", raising=False)
    assert main(["synth", "--dataset-id", "983", "--cases", "1", "--test-cases", "1"]) == 2
    assert "nnunetv2_uc synth: error: no output folder; set nnUNet_raw" in capsys.readouterr().err
    monkeypatch.setenv("nnUNet_raw", str(tmp_path))
    assert main(["synth", "--dataset-id", "983", "--cases", "1", "--test-cases", "1", "--seed", "4"]) == 0
    assert (tmp_path / "Dataset983_SyntheticCT" / "labelsTs" / "synthtest_000.nii.gz").is_file()
    assert main(["synth", "--dataset-id", "983", "--cases", "1"]) == 3
    captured = capsys.readouterr()
    assert "already exists; pass --overwrite" in captured.err and "error" not in captured.out
    assert main(["synth", "--dataset-id", "983", "--cases", "1", "--name", "Other"]) == 2
    assert "dataset id 983 is already used by" in capsys.readouterr().err
    assert main(["synth", "--dataset-id", "1000", "--cases", "1"]) == 2
    assert "outside nnU-Net's range 1..999" in capsys.readouterr().err
    assert main(["synth", "--dataset-id", "985", "--name", "bad name", "--cases", "1"]) == 2
    assert "letters, digits, '_' and '-' only" in capsys.readouterr().err
    assert main(["synth", "--dataset-id", "985", "--cases", "0"]) == 2
    assert "--cases >= 1" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["Dataset983_SyntheticCT"]
