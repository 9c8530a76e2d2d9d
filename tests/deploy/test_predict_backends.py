"""`nnunetv2_uc predict --backend onnxruntime|openvino` against the PyTorch predictor on the same tiny trained uC
3DU-Net (two folds, mirroring on), and the checks of an export folder (each bad input a clear error naming the file
and the fix, nothing written to the output folder). Tiny models written in-process, CPU."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers.e2e_data import write_raw_dataset
from helpers.model_folders import write_model_folder
from nnunetv2_uc.cli import main

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

FOLDS = (0, 1)
MIN_AGREEMENT = 0.999  # share of voxels with the same label as the PyTorch predictor


@pytest.fixture(scope="module")
def deployed(tmp_path_factory):
    """A tiny trained uC 3DU-Net (2 folds), its export, two held-out cases, and both predictors' outputs."""
    from nnunetv2_uc.inference.onnx_export import export_model

    root = tmp_path_factory.mktemp("deploy")
    with pytest.MonkeyPatch.context() as patch:
        for key in ("raw", "preprocessed", "results"):
            (root / key).mkdir()
            patch.setenv(f"nnUNet_{key}", str(root / key))
        patch.setenv("nnUNet_compile", "f")
        model = write_model_folder(root / "results", "uc3dunet", folds=FOLDS, train_steps=15)
        raw = write_raw_dataset(root / "raw", 901, "Aniso", 0, 2, seed=5)
        export = root / "export"
        export_model(model, export, FOLDS)
        common = ["-i", str(raw / "imagesTs"), "-npp", "1", "-nps", "1", "--save_probabilities",
                  "--disable_progress_bar"]
        assert main(["predict", *common, "-o", str(root / "torch"), "-d", "901", "-c", "3d_fullres", "-tr",
                     "nnUNetTrainerUC", "-f", "0", "1", "-device", "cpu", "--backend", "torch"]) == 0
        assert main(["predict", *common, "-o", str(root / "onnxruntime"), "-m", str(export),
                     "--backend", "onnxruntime"]) == 0
        yield {"root": root, "model": model, "export": export, "raw": raw}


def _labels(folder: Path) -> dict[str, np.ndarray]:
    import SimpleITK as sitk

    return {p.name: sitk.GetArrayFromImage(sitk.ReadImage(str(p))) for p in sorted(folder.glob("*.nii.gz"))}


def test_onnxruntime_predicts_the_segmentations_torch_predicts(deployed):
    torch_labels, ort_labels = _labels(deployed["root"] / "torch"), _labels(deployed["root"] / "onnxruntime")
    assert sorted(ort_labels) == sorted(torch_labels) and len(torch_labels) == 2
    for case, reference in torch_labels.items():
        agreement = float(np.mean(ort_labels[case] == reference))
        print(f"{case}: onnxruntime vs torch labels agree on {100 * agreement:.3f} % of {reference.size} voxels")
        assert agreement >= MIN_AGREEMENT, case
        assert len(np.unique(reference)) > 1, "the tiny model should predict some foreground"
        probabilities = {name: np.load(deployed["root"] / name / case.replace(".nii.gz", ".npz"))["probabilities"]
                         for name in ("torch", "onnxruntime")}
        difference = float(np.abs(probabilities["torch"] - probabilities["onnxruntime"]).max())
        print(f"{case}: max |probability difference| {difference:.2e}")
        assert difference <= 1e-3


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_ensembled_mirrored_logits_match_torch_on_a_batch_of_tiles(deployed, backend, monkeypatch):
    """nnU-Net's fold loop and mirroring (8 flipped calls) on a volume of 2 tiles, run as one batch of 2."""
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunetv2_uc.inference.onnx_export import DEFAULT_TOLERANCE
    from nnunetv2_uc.inference.onnx_export import load_exported_model, predictor_for_export

    if backend == "openvino":
        pytest.importorskip("openvino")
    monkeypatch.setenv("nnUNet_compile", "f")
    reference = nnUNetPredictor(tile_step_size=0.5, use_mirroring=True, perform_everything_on_device=False,
                                device=torch.device("cpu"), allow_tqdm=False)
    reference.initialize_from_trained_model_folder(str(deployed["model"]), FOLDS)
    exported = predictor_for_export(load_exported_model(deployed["export"]), backend, patches_per_batch=2,
                                    progress_bar=False)
    data = torch.randn((1, 16, 32, 48), generator=torch.Generator().manual_seed(1))
    expected = reference.predict_logits_from_preprocessed_data(data).float()
    got = exported.predict_logits_from_preprocessed_data(data).float()
    deviation = float((got - expected).abs().max() / (expected.max() - expected.min()))
    agreement = float((got.argmax(0) == expected.argmax(0)).float().mean())
    print(f"{backend}: logits deviation {deviation:.2e} of the range (fp16 accumulation), labels agree on "
          f"{100 * agreement:.3f} %")
    # nnU-Net accumulates tiles in fp16: its rounding (~5e-4 of the range) dominates the runtimes' fp32 difference
    assert deviation <= 10 * DEFAULT_TOLERANCE + 1e-3
    assert agreement >= MIN_AGREEMENT


def _copy_export(deployed, tmp_path: Path) -> Path:
    copy = tmp_path / "export"
    shutil.copytree(deployed["export"], copy)
    return copy


def _predict_from(deployed, export: Path, tmp_path: Path, capsys, *extra: str) -> str:
    """Run predict -m on ``export``; asserts exit code 2 and no output folder; returns stderr."""
    out = tmp_path / "pred"
    code = main(["predict", "-i", str(deployed["raw"] / "imagesTs"), "-o", str(out), "-m", str(export),
                 "--backend", "onnxruntime", "-npp", "1", "-nps", "1", "--disable_progress_bar", *extra])
    error = capsys.readouterr().err
    assert code == 2, error
    assert not out.exists()
    return error


def _rewrite_manifest(export: Path, change) -> None:
    manifest = json.loads((export / "export_manifest.json").read_text())
    change(manifest)
    (export / "export_manifest.json").write_text(json.dumps(manifest))


def test_plans_from_another_model_are_refused(deployed, tmp_path, capsys):
    export = _copy_export(deployed, tmp_path)
    plans = json.loads((export / "plans.json").read_text())
    plans["configurations"]["3d_fullres"]["spacing"] = [2.0, 1.0, 1.0]
    (export / "plans.json").write_text(json.dumps(plans))
    error = _predict_from(deployed, export, tmp_path, capsys)
    assert f"{export / 'plans.json'} is not the plans.json of the exported model" in error
    assert "export the model again with nnunetv2_uc export-onnx" in error


def test_a_dataset_json_from_another_dataset_is_refused(deployed, tmp_path, capsys):
    export = _copy_export(deployed, tmp_path)
    (export / "dataset.json").write_text(json.dumps({"channel_names": {"0": "CT"}, "labels": {"background": 0,
                                                     "liver": 1}, "numTraining": 3, "file_ending": ".nii.gz"}))
    assert f"{export / 'dataset.json'} is not the dataset.json" in _predict_from(deployed, export, tmp_path, capsys)


def test_a_tile_shape_other_than_the_planned_patch_is_refused(deployed, tmp_path, capsys):
    from nnunetv2_uc.inference.onnx_export import sha256
    from nnunetv2_uc.inference.runtimes import onnxruntime_runner
    from nnunetv2_uc.errors import UserError

    export = _copy_export(deployed, tmp_path)
    plans = json.loads((export / "plans.json").read_text())
    plans["configurations"]["3d_fullres"]["patch_size"] = [32, 32, 32]
    (export / "plans.json").write_text(json.dumps(plans))
    _rewrite_manifest(export, lambda m: m["sha256"].update({"plans.json": sha256(export / "plans.json")}))
    error = _predict_from(deployed, export, tmp_path, capsys)
    assert "plans patch [32, 32, 32]" in error and "take tiles of [16, 32, 32]" in error

    runner = onnxruntime_runner(deployed["export"] / "fold_0.onnx", (1, 16, 32, 32))
    with pytest.raises(UserError, match=r"fold_0.onnx takes tiles of shape \(B, 1, 16, 32, 32\), got "
                                        r"\(1, 1, 16, 32, 48\)"):
        runner(torch.zeros(1, 1, 16, 32, 48))


def test_a_fold_that_was_not_exported_is_refused(deployed, tmp_path, capsys):
    error = _predict_from(deployed, deployed["export"], tmp_path, capsys, "-f", "0", "3")
    assert f"fold(s) 3 were not exported to {deployed['export']} (it has folds 0, 1)" in error
    assert "nnunetv2_uc export-onnx -f 0 3" in error


def test_a_corrupted_onnx_file_is_refused(deployed, tmp_path, capsys):
    from nnunetv2_uc.inference.onnx_export import sha256

    export = _copy_export(deployed, tmp_path)
    onnx_file = export / "fold_1.onnx"
    onnx_file.write_bytes(onnx_file.read_bytes()[:5000])
    error = _predict_from(deployed, export, tmp_path, capsys)
    assert f"{onnx_file} is not the ONNX file of fold 1 that export-onnx wrote" in error
    # a checksum that matches the damaged file (edited by hand): the runtime's refusal, same advice
    _rewrite_manifest(export, lambda m: m["sha256"]["onnx"].update({"1": sha256(onnx_file)}))
    error = _predict_from(deployed, export, tmp_path, capsys)
    assert f"onnxruntime cannot load {onnx_file}" in error and "export-onnx" in error


def test_a_trained_model_folder_given_as_export_folder_is_explained(deployed, tmp_path, capsys):
    error = _predict_from(deployed, deployed["model"], tmp_path, capsys)
    assert "has no export_manifest.json" in error and "-d/-c/-tr/-p" in error


@pytest.mark.slow
def test_predict_on_the_cpu_exports_once_into_the_cache_and_reuses_it(deployed, tmp_path, monkeypatch, capsys):
    """-device cpu without --backend: the fastest runtime installed (made onnxruntime here, to compare with the
    fixture's labels), the model exported into $NNUNETV2_UC_CACHE on the first run and read from there on the
    second."""
    from nnunetv2_uc.inference import runtimes

    cache = tmp_path / "cache"
    monkeypatch.setenv("NNUNETV2_UC_CACHE", str(cache))
    monkeypatch.setattr(runtimes, "FASTEST_FIRST", ("onnxruntime",))
    command = ["predict", "-i", str(deployed["raw"] / "imagesTs"), "-d", "901", "-c", "3d_fullres", "-tr",
               "nnUNetTrainerUC", "-f", "0", "1", "-device", "cpu", "-npp", "1", "-nps", "1",
               "--disable_progress_bar"]
    assert main([*command, "-o", str(tmp_path / "first")]) == 0
    first = capsys.readouterr().err
    (export,) = (cache / "onnx").iterdir()
    assert "exporting folds ['0', '1'] to the cache" in first and "onnxruntime fp32" in first
    assert sorted(p.name for p in export.iterdir()) == ["dataset.json", "export_manifest.json", "fold_0.onnx",
                                                         "fold_1.onnx", "plans.json"]
    written = {p.name: p.stat().st_mtime_ns for p in export.iterdir()}
    assert main([*command, "-o", str(tmp_path / "second")]) == 0
    second = capsys.readouterr().err
    assert f"using the export in {export}" in second and "exporting" not in second
    assert {p.name: p.stat().st_mtime_ns for p in export.iterdir()} == written
    reference = _labels(deployed["root"] / "onnxruntime")
    for run in ("first", "second"):
        labels = _labels(tmp_path / run)
        assert sorted(labels) == sorted(reference)
        for case in reference:  # the same runtime on the same export: the same labels
            assert np.array_equal(labels[case], reference[case]), (run, case)


def test_a_damaged_cached_export_is_exported_again(deployed, tmp_path, monkeypatch):
    from nnunetv2_uc.inference.onnx_export import cached_export
    from nnunetv2_uc.errors import UserError

    monkeypatch.setenv("NNUNETV2_UC_CACHE", str(tmp_path / "cache"))
    first = cached_export(deployed["model"], ["0"])
    (first / "fold_0.onnx").write_bytes(b"not an onnx file")
    again = cached_export(deployed["model"], ["0"])
    assert again == first and (again / "fold_0.onnx").stat().st_size > 1000
    with pytest.raises(UserError, match="has no checkpoint_final.pth for fold\\(s\\) 3"):
        cached_export(deployed["model"], ["0", "3"])


@pytest.mark.parametrize("network", ["uxnet", "uc_nnunet", "plainunet", "resenc"])
def test_each_network_predicts_through_each_runtime_what_torch_predicts(network, tmp_path, monkeypatch):
    """uC 3DU-Net is the fixture above (2 folds, mirroring); here every other network kind, one fold, no mirroring:
    nnU-Net's whole prediction from the raw files, torch against the exported model in each runtime installed."""
    from nnunetv2_uc.inference import runtimes
    from nnunetv2_uc.inference.onnx_export import export_model
    from nnunetv2_uc.inference.onnx_export import predict_from_export_folder
    from nnunetv2_uc.inference.predict import predict_from_model_folder

    for key in ("raw", "preprocessed", "results"):
        (tmp_path / key).mkdir()
        monkeypatch.setenv(f"nnUNet_{key}", str(tmp_path / key))
    monkeypatch.setenv("nnUNet_compile", "f")
    plans = f"nnUNetPlans_{network}"
    model = write_model_folder(tmp_path / "results", network, folds=(0,), train_steps=15, plans_name=plans)
    raw = write_raw_dataset(tmp_path / "raw", 901, "Aniso", 0, 1, seed=5)
    export_model(model, tmp_path / "export", [0])
    options = dict(input_folder=str(raw / "imagesTs"), mirroring=False, save_probabilities=True,
                   preprocessing_processes=1, export_processes=1, progress_bar=False)
    predict_from_model_folder(output_folder=str(tmp_path / "torch"), dataset="901", configuration="3d_fullres",
                              trainer=model.name.split("__")[0], plans=plans, folds=[0], device="cpu", **options)
    backends = [b for b in ("onnxruntime", "openvino") if runtimes.installed(b)]
    for backend in backends:
        predict_from_export_folder(output_folder=str(tmp_path / backend), export_folder=str(tmp_path / "export"),
                                   backend=backend, **options)
    torch_labels = _labels(tmp_path / "torch")
    assert len(torch_labels) == 1
    for backend in backends:
        labels = _labels(tmp_path / backend)
        assert sorted(labels) == sorted(torch_labels)
        for case, reference in torch_labels.items():
            agreement = float(np.mean(labels[case] == reference))
            print(f"{network} {backend} {case}: labels agree on {100 * agreement:.3f} % of {reference.size} voxels")
            assert agreement >= MIN_AGREEMENT
            probabilities = {name: np.load(tmp_path / name / case.replace(".nii.gz", ".npz"))["probabilities"]
                             for name in ("torch", backend)}
            # nnU-Net accumulates the logits in fp16 (a logit of 10 is rounded by up to 0.005) before the softmax
            assert float(np.abs(probabilities["torch"] - probabilities[backend]).max()) <= 5e-3
