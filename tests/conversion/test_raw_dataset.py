"""The one raw-dataset writer (nnunetv2_uc.conversion.raw_dataset) and that `convert` and `synth` both write through it."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from nnunetv2.dataset_conversion.generate_dataset_json import generate_dataset_json

import helpers.fake_raw_datasets as fake
from helpers.fake_raw_datasets import convert, nnunet_env  # noqa: F401
from nnunetv2_uc.conversion import raw_dataset
from nnunetv2_uc.demo import synth
from nnunetv2_uc.errors import OverwriteRefused, UserError
from nnunetv2_uc.conversion.raw_dataset import RawDatasetTarget, dataset_folder_name, write_dataset_json

DATASET_JSON = dict(channel_names={0: "CT"}, labels={"background": 0, "liver": 1}, num_training_cases=1,
                    dataset_name="Dataset950_Tiny", reference="a reference", licence="CC0-1.0",
                    description="a description", converted_by="a test", extra_key=[1, 2])


def contents(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def write_dataset(target: RawDatasetTarget, text: str) -> None:
    with target.writing() as work_dir:
        (work_dir / "imagesTr").mkdir()
        (work_dir / "imagesTr" / "case_0000.nii.gz").write_text(text)


def test_folder_name_and_nnunet_naming_rules(tmp_path):
    assert dataset_folder_name(7, "Liver_CT-2") == "Dataset007_Liver_CT-2"
    assert RawDatasetTarget(tmp_path, 7, "Liver_CT-2").naming_problems() == []
    problems = RawDatasetTarget(tmp_path, 1000, "bad name").naming_problems()
    assert len(problems) == 2 and "outside nnU-Net's range 1..999" in problems[0] and "'bad name'" in problems[1]
    assert RawDatasetTarget(tmp_path, 0, "_x").naming_problems()[1].startswith("--name '_x'")
    with pytest.raises(UserError) as error:
        RawDatasetTarget(tmp_path, 0, "Fine").check(overwrite=True)
    assert error.value.exit_code == 2 and not isinstance(error.value, OverwriteRefused)


def test_same_folder_refused_without_overwrite_and_left_untouched(tmp_path):
    target = RawDatasetTarget(tmp_path, 950, "Tiny")
    target.check(overwrite=False)
    write_dataset(target, "first")
    before = contents(target.path)
    with pytest.raises(OverwriteRefused, match="already exists; pass --overwrite") as error:
        target.check(overwrite=False)
    assert error.value.exit_code == 3
    assert contents(target.path) == before
    target.check(overwrite=True)  # allowed with the flag
    write_dataset(target, "second")
    assert contents(target.path) == {"imagesTr/case_0000.nii.gz": b"second"}
    assert [p.name for p in tmp_path.iterdir()] == ["Dataset950_Tiny"]  # no temporary or backup folder left


@pytest.mark.parametrize("where", ["raw", "preprocessed"])
def test_id_used_by_another_name_is_refused_even_with_overwrite(tmp_path, where):
    (tmp_path / where / "Dataset950_Other").mkdir(parents=True)
    target = RawDatasetTarget(tmp_path / "raw", 950, "Tiny", tmp_path / "preprocessed")
    assert target.id_clash_problems() == [f"dataset id 950 is already used by {tmp_path / where / 'Dataset950_Other'}; "
                                          f"choose another --dataset-id or --name Other"]
    with pytest.raises(UserError, match="already used by") as error:
        target.check(overwrite=True)
    assert error.value.exit_code == 2
    assert RawDatasetTarget(tmp_path / "raw", 950, "Other", tmp_path / "preprocessed").id_clash_problems() == []
    assert RawDatasetTarget(tmp_path / "raw", 951, "Tiny", tmp_path / "preprocessed").id_clash_problems() == []


def test_replacing_keeps_the_old_dataset_until_the_new_one_is_complete(tmp_path):
    target = RawDatasetTarget(tmp_path, 950, "Tiny")
    write_dataset(target, "old")
    old = contents(target.path)
    with pytest.raises(RuntimeError, match="disk full"):
        with target.writing() as work_dir:
            assert work_dir.parent == tmp_path and work_dir.name.startswith(".Dataset950_Tiny.")
            (work_dir / "imagesTr").mkdir()
            (work_dir / "imagesTr" / "case_0000.nii.gz").write_text("new, half written")
            assert contents(target.path) == old  # while the new one is being written
            raise RuntimeError("disk full")
    assert contents(target.path) == old
    assert [p.name for p in tmp_path.iterdir()] == ["Dataset950_Tiny"]

    with target.writing() as work_dir:
        (work_dir / "dataset.json").write_text("{}")
        assert contents(target.path) == old
    assert contents(target.path) == {"dataset.json": b"{}"}


def test_dataset_json_is_written_by_nnunets_function(tmp_path, monkeypatch):
    calls = []

    def spy(output_folder, **kwargs):
        calls.append(kwargs)
        generate_dataset_json(output_folder, **kwargs)

    monkeypatch.setattr(raw_dataset, "generate_dataset_json", spy)
    (tmp_path / "ours").mkdir()
    write_dataset_json(tmp_path / "ours", **DATASET_JSON)
    assert len(calls) == 1 and calls[0]["file_ending"] == ".nii.gz" and calls[0]["license"] == "CC0-1.0"
    assert DATASET_JSON["channel_names"] == {0: "CT"}  # nnU-Net's function changes its dicts, not the caller's

    (tmp_path / "nnunet").mkdir()
    arguments = {k: v for k, v in DATASET_JSON.items() if k != "licence"} | {"channel_names": {0: "CT"}}
    generate_dataset_json(str(tmp_path / "nnunet"), file_ending=".nii.gz", license="CC0-1.0", **arguments)
    assert (tmp_path / "ours" / "dataset.json").read_bytes() == (tmp_path / "nnunet" / "dataset.json").read_bytes()
    written = json.loads((tmp_path / "ours" / "dataset.json").read_text())
    assert written["channel_names"] == {"0": "CT"} and written["numTraining"] == 1 and written["extra_key"] == [1, 2]


@pytest.fixture
def writer_calls(monkeypatch) -> list[tuple[str, str]]:
    """(what, dataset folder) for every dataset.json and every move into place done by the writer."""
    calls: list[tuple[str, str]] = []
    original_generate, original_replace = raw_dataset.generate_dataset_json, raw_dataset.replace_directory

    def generate(output_folder, **kwargs):
        calls.append(("dataset.json", kwargs["dataset_name"]))
        original_generate(output_folder, **kwargs)

    def replace(finished, target):
        calls.append(("moved into place", target.name))
        original_replace(finished, target)

    monkeypatch.setattr(raw_dataset, "generate_dataset_json", generate)
    monkeypatch.setattr(raw_dataset, "replace_directory", replace)
    return calls


def test_synth_writes_through_the_writer(tmp_path, writer_calls):
    path = synth.generate_dataset(tmp_path, 952, n_cases=1, n_test=0, seed=0)
    assert path == tmp_path / "Dataset952_SyntheticCT"
    assert writer_calls == [("dataset.json", "SyntheticCT"), ("moved into place", "Dataset952_SyntheticCT")]


def test_convert_writes_through_the_writer_with_the_same_replace_rules(tmp_path, nnunet_env, writer_calls, capsys):
    fake.make_flare2021(tmp_path / "f")
    assert convert("flare2021", "--input", str(tmp_path / "f"), "--split", "none") == 0
    assert writer_calls == [("dataset.json", "Dataset501_FLARE2021"), ("moved into place", "Dataset501_FLARE2021")]
    assert convert("flare2021", "--input", str(tmp_path / "f"), "--split", "none") == 3
    assert "Dataset501_FLARE2021 already exists; pass --overwrite" in capsys.readouterr().err
    assert convert("flare2021", "--input", str(tmp_path / "f"), "--name", "Other", "--overwrite") == 2
    assert "dataset id 501 is already used by" in capsys.readouterr().err
    assert len(writer_calls) == 2
