"""`nnunetv2_uc bench`: one run times training steps and nnU-Net sliding-window inference side by side."""
from __future__ import annotations

import json
import subprocess
import sys

import torch

from nnunetv2_uc.architectures.blocks import to_channels_last
from nnunetv2_uc.timing import StepSetup, build_network, measure_step


def test_bench_times_training_and_sliding_window_inference_with_ratios(tmp_path):
    out = tmp_path / "bench.json"
    result = subprocess.run(
        [sys.executable, "-m", "nnunetv2_uc", "bench", "--arch", "uc3dunet", "plainunet", "--patch", "32", "32", "32",
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
