"""Which runtime and number format `nnunetv2_uc predict` uses: --backend auto, --precision bf16 (torch autocast on the
CPU, OpenVINO's bf16 hint, refused by onnxruntime) and the CPU check for native bf16. No model is trained here."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import torch

from nnunetv2_uc.cli import predict as predict_cli
from nnunetv2_uc.inference import runtimes
from nnunetv2_uc.errors import UserError


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    predict_cli.add_arguments(parser)
    return parser.parse_args(["-i", "in", "-o", "out", *argv])


@pytest.fixture
def installed(monkeypatch):
    """Pretend exactly the given packages are installed."""
    def pretend(*packages: str) -> None:
        monkeypatch.setattr(runtimes, "installed", lambda package: package in packages)
    return pretend


EXPORT_PACKAGES = ("onnx", "onnxscript", "onnxruntime")


def test_auto_on_the_cpu_takes_the_fastest_runtime_installed(installed):
    cpu_model = ("-d", "1", "-c", "3d_fullres", "-device", "cpu")
    installed(*EXPORT_PACKAGES, "openvino")
    assert predict_cli.chosen_backend(_args(*cpu_model)) == "openvino"
    assert predict_cli.chosen_backend(_args("-m", "export")) == "openvino"
    installed(*EXPORT_PACKAGES)
    assert predict_cli.chosen_backend(_args(*cpu_model)) == "onnxruntime"
    # bf16: onnxruntime has no bf16 convolutions, so torch (or openvino) runs it
    assert predict_cli.chosen_backend(_args(*cpu_model, "--precision", "bf16")) == "torch"
    installed("openvino")  # without the exporter a trained model cannot be exported: torch
    assert predict_cli.chosen_backend(_args(*cpu_model)) == "torch"
    installed()
    assert predict_cli.chosen_backend(_args(*cpu_model)) == "torch"


def test_auto_passes_over_a_runtime_measured_slower_than_torch_for_the_models_network(installed, monkeypatch,
                                                                                     tmp_path):
    """UX-Net tiles are slower in onnxruntime than in torch (BENCHMARKS.md): with only onnxruntime, auto takes torch for
    a UX-Net model and onnxruntime for the others; OpenVINO, faster than torch for every network, stays first."""
    def model_of(network_class: str) -> Path:
        folder = tmp_path / network_class
        folder.mkdir()
        architecture = {"network_class_name": network_class, "arch_kwargs": {}, "_kw_requires_import": []}
        plans = {"plans_name": "nnUNetPlans", "configurations": {"3d_fullres": {"architecture": architecture}}}
        (folder / "plans.json").write_text(json.dumps(plans))
        return folder

    cpu_model = _args("-d", "1", "-c", "3d_fullres", "-device", "cpu")
    folders = {"uxnet": model_of("nnunetv2_uc.architectures.uxnet.UXNet"),
               "plain": model_of("dynamic_network_architectures.architectures.unet.PlainConvUNet")}
    for model, with_onnxruntime_only, with_openvino in (("uxnet", "torch", "openvino"),
                                                        ("plain", "onnxruntime", "openvino")):
        monkeypatch.setattr(predict_cli, "find_model_folder", lambda *flags, folder=folders[model]: str(folder))
        installed(*EXPORT_PACKAGES)
        assert predict_cli.chosen_backend(cpu_model) == with_onnxruntime_only, model
        installed(*EXPORT_PACKAGES, "openvino")
        assert predict_cli.chosen_backend(cpu_model) == with_openvino, model
    # an export folder (-m) has no torch network to fall back to: onnxruntime runs even UX-Net there
    installed(*EXPORT_PACKAGES)
    assert predict_cli.chosen_backend(_args("-m", "export")) == "onnxruntime"


def test_auto_keeps_torch_on_a_gpu_and_an_explicit_backend(installed):
    installed(*EXPORT_PACKAGES, "openvino")
    assert predict_cli.chosen_backend(_args("-d", "1", "-c", "3d_fullres")) == "torch"  # -device cuda (default)
    assert predict_cli.chosen_backend(_args("-d", "1", "-c", "3d_fullres", "-device", "cpu",
                                            "--backend", "torch")) == "torch"


def test_auto_with_an_export_folder_and_no_runtime_names_the_install_command(installed):
    installed()
    with pytest.raises(UserError, match=r'pip install "nnunetv2-uc\[openvino\]"'):
        predict_cli.chosen_backend(_args("-m", "export"))


def test_the_installed_check_reads_what_is_importable():
    assert runtimes.installed("onnx") == (__import__("importlib").util.find_spec("onnx") is not None)


@pytest.mark.parametrize("flags, native", [("fpu avx512f avx512_bf16 avx512_vnni", True),
                                           ("fpu amx_bf16 amx_tile", True), ("fpu avx2 avx512f avx512_vnni", False)])
def test_native_bf16_reads_the_cpu_flags(tmp_path, flags, native):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nflags\t\t: {flags}\n")
    assert runtimes.native_bf16(cpuinfo) is native
    assert runtimes.native_bf16(tmp_path / "missing") is False


def test_onnxruntime_refuses_bf16_before_loading_anything(tmp_path):
    with pytest.raises(UserError, match="--backend onnxruntime runs fp32 only.*openvino or torch"):
        runtimes.onnxruntime_runner(tmp_path / "never_read.onnx", (1, 8, 8, 8), precision="bf16")


def test_bf16_on_a_gpu_is_refused():
    with pytest.raises(UserError, match="--precision bf16 is for the CPU"):
        predict_cli._checked_precision(_args("-d", "1", "-c", "3d_fullres", "--precision", "bf16"))


class _RecordingNetwork(torch.nn.Module):
    """A 1x1x1 convolution that records the dtype it computed in."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv3d(1, 3, 1)
        self.dtypes: list[torch.dtype] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        self.dtypes.append(y.dtype)
        return y


def _predictor(precision: str):
    from nnunetv2_uc.inference.predict import BatchedSlidingWindowPredictor

    predictor = BatchedSlidingWindowPredictor(use_mirroring=True, perform_everything_on_device=False,
                                              device=torch.device("cpu"), allow_tqdm=False, patches_per_batch=1,
                                              cpu_precision=precision)
    predictor.network = _RecordingNetwork().eval()
    predictor.allowed_mirroring_axes = (0, 1, 2)
    return predictor


def test_bf16_runs_the_network_under_autocast_and_sums_mirrored_calls_in_fp32():
    tiles = torch.randn(2, 1, 4, 6, 8, generator=torch.Generator().manual_seed(1))
    fp32, bf16 = _predictor("fp32"), _predictor("bf16")
    with torch.inference_mode():
        expected = fp32._internal_maybe_mirror_and_predict(tiles)
        got = bf16._internal_maybe_mirror_and_predict(tiles)
    assert fp32.network.dtypes == [torch.float32] * 8
    assert bf16.network.dtypes == [torch.bfloat16] * 8  # 8 mirrored calls, each in bf16
    assert got.dtype == torch.float32 and bf16.network is not None
    assert isinstance(bf16.network, _RecordingNetwork)  # the network is put back after the call
    deviation = float((got - expected).abs().max() / (expected.max() - expected.min()))
    assert 0 < deviation < 1e-2  # bf16's 8-bit mantissa: about 0.4 % of a value


def test_an_unknown_precision_is_refused():
    from nnunetv2_uc.inference.predict import BatchedSlidingWindowPredictor

    with pytest.raises(ValueError, match="cpu_precision must be fp32 or bf16"):
        BatchedSlidingWindowPredictor(device=torch.device("cpu"), cpu_precision="fp16")
