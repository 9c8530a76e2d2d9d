"""`nnunetv2_uc bench`: one run times training steps and nnU-Net sliding-window inference side by side."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from nnunetv2_uc.architectures.building_blocks.layout import to_channels_last
from nnunetv2_uc.measure.cost import StepSetup, build_network, measure_step


def test_bench_times_training_and_sliding_window_inference_with_ratios(tmp_path):
    out = tmp_path / "bench.json"
    result = subprocess.run(
        [sys.executable, "-m", "nnunetv2_uc", "bench", "--network", "uc3dunet", "plainunet", "--patch", "32", "32", "32",
         "--volume", "40", "32", "32", "--no-mirroring", "--repeats", "1", "--classes", "3", "--json", str(out)],
        capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["environment"]["torch"] == torch.__version__
    rows = {r["name"]: r for r in report["rows"]}
    assert set(rows) == {"uc3dunet", "plainunet"}
    assert rows["plainunet"]["step_x_plainunet"] == 1.0
    for row in rows.values():
        assert row["train_step_s"] > 0 and row["inference_s"] > 0 and row["volume"] == [40, 32, 32]
        assert row["train_voxels_per_s"] == 32 ** 3 / row["train_step_s"]
    assert "| uc3dunet |" in result.stdout


def test_bench_refuses_a_volume_smaller_than_the_patch():
    result = subprocess.run([sys.executable, "-m", "nnunetv2_uc", "bench", "--patch", "32", "32", "32",
                             "--volume", "16", "32", "32"], capture_output=True, text=True)
    assert result.returncode == 2 and "smaller than the patch" in result.stderr


def test_channels_last_and_bf16_autocast_steps_run_and_keep_outputs():
    setup = StepSetup("uc3dunet", (16, 16, 32), num_classes=2, channels_last=True, amp="bf16")
    result = measure_step(setup, repeats=1, warmup=0)
    assert result["train_step_s"] > 0
    # the networks store their weights channels-last; contiguous weights give the same function
    torch.manual_seed(0)
    net = build_network("uc3dunet", 1, 2, (16, 16, 32)).eval()
    assert net.head.seg_layers.weight.is_contiguous(memory_format=torch.channels_last_3d)
    x = torch.randn(1, 1, 16, 16, 32)
    with torch.no_grad():
        expected = net(x)
        for p in net.parameters():
            p.data = p.data.contiguous()
        torch.testing.assert_close(net(x), expected, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(to_channels_last(net)(x), expected, rtol=1e-4, atol=1e-5)


def test_batched_predictor_equals_nnunet_predictor_over_many_tiles():
    """16 tiles with mirroring: 3 per network call vs nnU-Net's one at a time give the same logits."""
    from nnunetv2_uc.measure.bench import synthetic_predictor

    torch.manual_seed(0)
    patch, volume = (16, 16, 32), (24, 40, 48)  # 2 x 4 x 2 tiles at step 0.5
    net = build_network("uc3dunet", 1, 3, patch).eval()
    data = torch.randn(1, *volume)
    stock = synthetic_predictor(net, patch, volume, 3, "cpu", mirroring=True)
    batched = synthetic_predictor(net, patch, volume, 3, "cpu", mirroring=True, patches_per_batch=3)
    assert type(batched).__name__ == "BatchedSlidingWindowPredictor"
    tiles = len(stock._internal_get_sliding_window_slicers(volume))
    assert tiles == 16
    calls = []
    net.register_forward_hook(lambda module, inputs, output: calls.append(inputs[0].shape[0]))
    expected = stock.predict_sliding_window_return_logits(data)
    stock_calls, calls[:] = list(calls), []
    got = batched.predict_sliding_window_return_logits(data)
    assert stock_calls == [1] * (8 * tiles)  # nnU-Net: one tile per call, 8 mirror variants
    assert max(calls) == 3 and sum(calls) == 8 * tiles
    # nnU-Net accumulates in fp16: batched vs single-sample conv rounding may move a value by a few fp16 ulps
    torch.testing.assert_close(got, expected, rtol=5e-3, atol=5e-3)
    assert (got - expected).abs().mean() < 1e-4


def test_bench_records_batched_inference_and_checkpointing(tmp_path):
    out = tmp_path / "bench.json"
    result = subprocess.run(
        [sys.executable, "-m", "nnunetv2_uc", "bench", "--network", "uc3dunet", "plainunet", "--patch", "16", "16", "32",
         "--volume", "24", "24", "48", "--no-mirroring", "--repeats", "1", "--classes", "2", "--patches-per-batch", "4",
         "--checkpointing", "--json", str(out)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = {r["name"]: r for r in json.loads(out.read_text())["rows"]}
    assert rows["uc3dunet"]["checkpointing"] is True and rows["plainunet"]["checkpointing"] is False
    assert all(r["patches_per_batch"] == 4 and r["inference_s"] > 0 for r in rows.values())


def _out_of_memory_errors() -> list:
    """The out-of-memory error under each name this torch has: torch.cuda.OutOfMemoryError (torch >= 1.13, what
    the predictor catches, since pyproject allows torch >= 2.1.2) and torch.OutOfMemoryError (torch >= 2.5,
    where both names are one class)."""
    errors = [torch.cuda.OutOfMemoryError]
    if hasattr(torch, "OutOfMemoryError"):
        assert torch.OutOfMemoryError is torch.cuda.OutOfMemoryError
        errors.append(torch.OutOfMemoryError)
    return errors


@pytest.mark.parametrize("out_of_memory", _out_of_memory_errors(), ids=lambda e: f"{e.__module__}.{e.__name__}")
def test_batched_predictor_halves_the_batch_when_out_of_memory(capsys, out_of_memory):
    from nnunetv2_uc.measure.bench import synthetic_predictor

    class SmallGPU(torch.nn.Module):  # raises like CUDA does when a batch is too large
        def __init__(self, net):
            super().__init__()
            self.net = net

        def forward(self, x):
            if x.shape[0] > 2:
                raise out_of_memory("CUDA out of memory (simulated)")
            return self.net(x)

    torch.manual_seed(0)
    patch, volume = (16, 16, 32), (16, 40, 32)
    net = build_network("uc3dunet", 1, 2, patch).eval()
    data = torch.randn(1, *volume)
    expected = synthetic_predictor(net, patch, volume, 2, "cpu", mirroring=False).predict_sliding_window_return_logits(data)
    batched = synthetic_predictor(SmallGPU(net), patch, volume, 2, "cpu", mirroring=False, patches_per_batch=4)
    got = batched.predict_sliding_window_return_logits(data)
    assert batched.patches_per_batch == 2
    assert "out of GPU memory; continuing with 2 tile(s)" in capsys.readouterr().err
    torch.testing.assert_close(got, expected, rtol=5e-3, atol=5e-3)


def test_no_module_uses_the_torch_2_5_only_out_of_memory_name():
    """pyproject allows torch >= 2.1.2; torch.OutOfMemoryError appeared in 2.5 (torch.cuda.OutOfMemoryError works)."""
    import ast
    from pathlib import Path

    import nnunetv2_uc

    package = Path(nnunetv2_uc.__file__).parent
    offenders = []
    for source in package.rglob("*.py"):
        for node in ast.walk(ast.parse(source.read_text())):
            if (isinstance(node, ast.Attribute) and node.attr == "OutOfMemoryError"
                    and isinstance(node.value, ast.Name) and node.value.id == "torch"):
                offenders.append(f"{source.relative_to(package)}:{node.lineno}")
    assert not offenders


def test_depthwise_share_comes_from_the_profiler():
    from nnunetv2_uc.measure.cost import _is_depthwise, depthwise_share

    assert _is_depthwise([1, 48, 8, 8, 8], [48, 1, 7, 7, 7])
    assert not _is_depthwise([1, 1, 8, 8, 8], [48, 1, 7, 7, 7])  # one input channel: a dense conv
    assert not _is_depthwise([1, 48, 8, 8, 8], [96, 48, 3, 3, 3])
    ux = depthwise_share(StepSetup("uxnet", (32, 32, 32), num_classes=2), warmup=1)
    uc = depthwise_share(StepSetup("uc3dunet", (16, 16, 32), num_classes=2), warmup=1)
    assert 0.02 < ux["depthwise_share"] < 0.9 and ux["profiled_time_kind"] == "CPU operator time"
    assert uc["depthwise_share"] == 0.0 and uc["profiled_step_s"] > 0


@pytest.mark.parametrize("device, benchmark", [("cuda", True), ("cpu", False)])
def test_prepare_sets_cudnn_benchmark_on_cuda_as_nnunet_train_does(monkeypatch, device, benchmark):
    from nnunetv2_uc.measure import cost

    class StaysOnCPU(torch.nn.Linear):  # lets a "cuda" setup run on this CPU machine
        def to(self, *args, **kwargs):
            return self

    monkeypatch.setattr(cost, "build_network", lambda *args: StaysOnCPU(2, 2))
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    model, *_ = cost.prepare(StepSetup("plainunet", (16, 16, 16), device=device))
    assert isinstance(model, StaysOnCPU)
    assert torch.backends.cudnn.benchmark is benchmark


def test_bench_inference_only_times_no_training_step(tmp_path):
    out = tmp_path / "infer.json"
    result = subprocess.run(
        [sys.executable, "-m", "nnunetv2_uc", "bench", "--network", "uc3dunet", "plainunet", "--patch", "16", "16", "32",
         "--volume", "16", "24", "48", "--no-mirroring", "--repeats", "1", "--classes", "2", "--inference-only",
         "--json", str(out)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = {r["name"]: r for r in json.loads(out.read_text())["rows"]}
    assert all("train_step_s" not in r and r["inference_s"] > 0 for r in rows.values())
    assert rows["plainunet"]["inference_x_plainunet"] == 1.0 and "step_x_plainunet" not in rows["uc3dunet"]
    assert "training step" not in result.stderr and "| network | infer s | infer x plain |" in result.stdout
    refused = subprocess.run([sys.executable, "-m", "nnunetv2_uc", "bench", "--inference-only"],
                             capture_output=True, text=True)
    assert refused.returncode == 2 and "--inference-only needs --volume" in refused.stderr
