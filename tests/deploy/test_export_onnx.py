"""`nnunetv2_uc export-onnx`: every network kind exports to standard ONNX operators and passes its own check against
PyTorch; a refused export, an existing output folder and missing runtimes leave nothing behind. Tiny models written
in-process (tests/helpers/model_folders.py), CPU."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from helpers.model_folders import write_model_folder
from nnunetv2_uc.cli import main

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

NETWORKS = ["uc3dunet", "uxnet", "uc_nnunet", "plainunet", "resenc"]
CLASSES = {"uc3dunet": "nnunetv2_uc.architectures.uc3dunet.UC3DUNet",
           "uxnet": "nnunetv2_uc.architectures.uxnet.UXNet",
           "uc_nnunet": "nnunetv2_uc.architectures.uc_unet.UCPlainConvUNet",
           "plainunet": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
           "resenc": "dynamic_network_architectures.architectures.unet.ResidualEncoderUNet"}


@pytest.fixture
def results(tmp_path, monkeypatch) -> Path:
    for key in ("raw", "preprocessed", "results"):
        (tmp_path / key).mkdir()
        monkeypatch.setenv(f"nnUNet_{key}", str(tmp_path / key))
    monkeypatch.setenv("nnUNet_compile", "f")
    return tmp_path / "results"


def leftovers(folder: Path) -> list[str]:
    """Hidden partial folders or files export-onnx may have left next to its output."""
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


@pytest.mark.parametrize("network", NETWORKS)
def test_every_network_kind_exports_standard_onnx_that_matches_torch(network, results, tmp_path, capsys):
    from nnunetv2_uc.architectures.building_blocks import switches
    from nnunetv2_uc.inference.onnx_export import DEFAULT_TOLERANCE, sha256

    model = write_model_folder(results, network)
    keys_before = set(torch.load(model / "fold_0" / "checkpoint_final.pth", weights_only=False)["network_weights"])
    out = tmp_path / "export"
    assert main(["export-onnx", "-m", str(model), "-f", "0", "-o", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["dataset.json", "export_manifest.json", "fold_0.onnx",
                                                     "plans.json"]
    assert leftovers(tmp_path) == []
    manifest = json.loads((out / "export_manifest.json").read_text())
    assert manifest["network_class"] == CLASSES[network]
    assert manifest["folds"] == ["0"] and manifest["opset"] == 18
    assert manifest["sha256"]["onnx"]["0"] == sha256(out / "fold_0.onnx")
    assert manifest["sha256"]["checkpoints"]["0"] == sha256(model / "fold_0" / "checkpoint_final.pth")
    assert (out / "plans.json").read_bytes() == (model / "plans.json").read_bytes()
    deviation = manifest["self_check"]["deviation"]["0"]
    assert manifest["self_check"]["tolerance"] == DEFAULT_TOLERANCE and deviation <= DEFAULT_TOLERANCE
    print(f"{network}: ONNX vs torch deviation {deviation:.2e} of the logit range")

    graph = onnx.load(str(out / "fold_0.onnx"))
    onnx.checker.check_model(graph, full_check=True)
    assert {node.domain for node in graph.graph.node} <= {"", "ai.onnx"}  # standard operators only
    batch = graph.graph.input[0].type.tensor_type.shape.dim[0]
    assert batch.dim_param and not batch.dim_value  # dynamic batch axis
    assert [d.dim_value for d in graph.graph.input[0].type.tensor_type.shape.dim[1:]] == manifest["tile_shape"]
    assert (switches.FAST_PATHS, switches.LAYOUT) == ("cpu", "channels_last")  # restored after the export
    # the checkpoint is read, never changed; the trainer builds the same state-dict keys as before
    assert set(torch.load(model / "fold_0" / "checkpoint_final.pth",
                          weights_only=False)["network_weights"]) == keys_before


def test_a_refused_export_leaves_nothing_behind(results, tmp_path, capsys):
    model = write_model_folder(results, "plainunet")
    out = tmp_path / "export"
    assert main(["export-onnx", "-m", str(model), "-f", "0", "-o", str(out), "--tolerance", "1e-15"]) == 2
    error = capsys.readouterr().err
    assert "fold_0.onnx differs from the PyTorch network by" in error and "tolerance 1e-15" in error
    assert not out.exists() and leftovers(tmp_path) == []


def test_an_existing_output_folder_is_kept_unless_overwrite(results, tmp_path, capsys):
    model = write_model_folder(results, "plainunet")
    out = tmp_path / "export"
    out.mkdir()
    (out / "mine.txt").write_text("keep")
    assert main(["export-onnx", "-m", str(model), "-f", "0", "-o", str(out)]) == 3
    assert "exists; choose another -o or pass --overwrite" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["mine.txt"]
    assert main(["export-onnx", "-m", str(model), "-f", "0", "-o", str(out), "--overwrite"]) == 0
    assert sorted(p.name for p in out.glob("*.onnx")) == ["fold_0.onnx"]
    assert not (out / "mine.txt").exists() and leftovers(tmp_path) == []


def test_export_by_dataset_flags_finds_the_model_as_nnunet_does(results, tmp_path):
    write_model_folder(results, "plainunet")
    out = tmp_path / "export"
    assert main(["export-onnx", "-d", "901", "-c", "3d_fullres", "-tr", "nnUNetTrainer", "-f", "0",
                 "-o", str(out)]) == 0
    assert json.loads((out / "export_manifest.json").read_text())["trainer"] == "nnUNetTrainer"


def test_a_missing_runtime_names_the_install_command(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime now raises ImportError
    out = tmp_path / "export"
    assert main(["export-onnx", "-m", str(tmp_path), "-f", "0", "-o", str(out)]) == 2
    assert 'pip install "nnunetv2-uc[onnx]"' in capsys.readouterr().err
    assert not out.exists()
