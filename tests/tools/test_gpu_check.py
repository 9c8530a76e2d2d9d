"""scripts/gpu_check.sh (the project's GPU check): its summary from known inputs, its refusals, and the whole
check in --smoke mode on CPU (slow)."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from helpers.paths import REPO_ROOT

SCRIPT = REPO_ROOT / "scripts" / "gpu_check.sh"
SUMMARY = REPO_ROOT / "scripts" / "gpu_check_summary.py"
BIN = Path(sys.executable).parent
GIB = 1024 ** 3


def _bench_json(path: Path, rows: list[dict], gpu: str = "NVIDIA H200") -> None:
    environment = {"torch": "2.14.1+cu130", "cuda": "13.0", "cudnn": 92400, "gpu": gpu}
    path.write_text(json.dumps({"environment": environment, "rows": rows}))


def test_summary_tables_ratios_targets_and_losses(tmp_path):
    out = tmp_path
    (out / "logs").mkdir()
    (out / "meta.json").write_text(json.dumps({"smoke": False, "device": "cuda", "amp": "fp16", "patch": "48 224 224",
                                               "memory_patch": "128 128 128", "volume": "100 512 512", "repeats": 3,
                                               "commit": "abc1234", "started": "2026-11-30T10:00:00Z"}))
    (out / "steps.tsv").write_text("step\tstatus\tseconds\tlimit_s\ndoctor\tok\t9\t90\n"
                                   "train_nnUNetTrainerUXNet_tiny\ttimed out at 240 s\t240\t240\n"
                                   "compiled_uxnet\tskipped (budget spent)\t0\t0\n")
    (out / "total_seconds").write_text("461\n")
    (out / "doctor.json").write_text(json.dumps({"blocking": False, "checks": [
        {"name": "cuda driver", "status": "ok", "detail": "driver 580.65.06 supports CUDA up to 13.0", "fix": ""}]}))
    step = {"uxnet": 0.50, "uc3dunet": 0.24, "plainunet": 0.20, "resenc_m": 0.30}
    _bench_json(out / "step_eager.json", [
        {"name": n, "train_step_s": s, "peak_memory_bytes": 3 * GIB, "depthwise_share": 0.4 if n == "uxnet" else 0.0}
        for n, s in step.items()])
    _bench_json(out / "memory128.json", [{"name": n, "peak_memory_bytes": (i + 1) * GIB,
                                          "memory_kind": "cuda max allocated"} for i, n in enumerate(step)])
    _bench_json(out / "compiled_plainunet.json", [{"name": "plainunet", "train_step_s": 0.10}])
    _bench_json(out / "compiled_uc3dunet.json", [{"name": "uc3dunet", "train_step_s": 0.14}])
    for tiles, seconds in ((1, 20.0), (4, 15.0)):
        _bench_json(out / f"infer{tiles}_uxnet.json", [{"name": "uxnet", "inference_s": seconds,
                                                        "inference_peak_memory_bytes": GIB}])
    _bench_json(out / "infer1_plainunet.json", [{"name": "plainunet", "inference_s": 8.0,
                                                 "inference_peak_memory_bytes": GIB}])
    _bench_json(out / "layout_ours_contiguous.json", [{"name": "uxnet", "train_step_s": 0.45}])
    (out / "logs" / "train_nnUNetTrainerUC_tiny.log").write_text(
        "2026-11-30 10:01:00.1: Using torch.compile...\n2026-11-30 10:02:00.1: train_loss 0.2301\n"
        "2026-11-30 10:02:00.2: val_loss 0.1805\n2026-11-30 10:03:00.1: train_loss 0.1504\n"
        "2026-11-30 10:03:00.2: val_loss 0.1203\n")
    (out / "logs" / "train_nnUNetTrainerUXNet_tiny.log").write_text(
        "2026-11-30 10:02:00.1: train_loss nan\n2026-11-30 10:02:00.2: val_loss nan\n")

    proc = subprocess.run([sys.executable, str(SUMMARY), str(out)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    md = (out / "summary.md").read_text()
    assert md.startswith("## GPU check: NVIDIA H200")
    assert "at commit abc1234" in md and "driver 580.65.06" in md and "461 s in all" in md
    assert "| uxnet | 0.500 | 2.50 | - | - | <= 2.0x: eager NOT met, compiled - | 3.00 | 40.0% |" in md
    assert "| uc3dunet | 0.240 | 1.20 | 0.140 | 1.40 | <= 1.5x: eager met, compiled met | 3.00 | 0.0% |" in md
    assert "| resenc_m | 4.00 | cuda max allocated |" in md
    assert "| uxnet | channels_last_3d: 0.500 | contiguous: 0.450 | - | contiguous |" in md
    assert "| uxnet | 20.00 | 15.00 | 0.75 | 2.50 | 1.00 |" in md
    assert "| nnUNetTrainerUC_tiny | not run | on | 2 | 0.2301, 0.1504 | 0.1805, 0.1203 | yes |" in md
    assert "| nnUNetTrainerUXNet_tiny | timed out at 240 s | off | 1 | nan | nan | NO |" in md
    assert "compiled_uxnet (skipped (budget spent))" in md
    data = json.loads((out / "summary.json").read_text())
    assert data["training_step"]["uc3dunet"]["compiled_x_plain"] == pytest.approx(1.4)
    assert data["training"]["nnUNetTrainerUC_tiny"]["finite"] is True


def _env(out: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("nnUNet_", "NNUNETV2_UC_"))}
    # keeps the suite's nnU-Net worker count (tests/conftest.py)
    return {**env, "OUT": str(out), "PATH": f"{BIN}{os.pathsep}{env.get('PATH', '')}",
            "nnUNet_def_n_proc": os.environ["nnUNet_def_n_proc"]}


def test_gpu_check_refuses_a_non_empty_out_and_unknown_arguments(tmp_path):
    (tmp_path / "keep.txt").write_text("user data")
    proc = subprocess.run(["bash", str(SCRIPT), "--smoke"], env=_env(tmp_path), capture_output=True, text=True)
    assert proc.returncode == 2 and "is not empty" in proc.stderr
    assert (tmp_path / "keep.txt").read_text() == "user data"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt"]
    proc = subprocess.run(["bash", str(SCRIPT), "--fast"], env=_env(tmp_path / "new"), capture_output=True, text=True)
    assert proc.returncode == 2 and "unknown argument --fast" in proc.stderr


@pytest.mark.slow
def test_gpu_check_smoke_runs_every_step_on_cpu(tmp_path):
    out = tmp_path / "out"
    proc = subprocess.run(["bash", str(SCRIPT), "--smoke"], env=_env(out), capture_output=True, text=True,
                          timeout=2700)
    assert proc.returncode == 0, proc.stdout[-4000:]
    steps = {line.split("\t")[0]: line.split("\t")[1] for line in (out / "steps.tsv").read_text().splitlines()[1:]}
    assert steps.pop("compiled") == "skipped (smoke run: no compiling on CPU)"
    assert steps == {name: "ok" for name in steps} and len(steps) == 12, steps
    data = json.loads((out / "summary.json").read_text())
    for net in ("uc3dunet", "plainunet"):
        assert data["training_step"][net]["eager_s"] > 0 and data["memory_128"][net]["peak_memory_bytes"] > 0
        assert data["memory_128"][net]["estimated_peak_bytes"] > 0
        assert data["inference"][net]["one_tile_s"] > 0 and data["inference"][net]["four_tiles_s"] > 0
    assert data["training_step"]["plainunet"]["eager_x_plain"] == 1.0
    assert data["layout"]["uc3dunet"]["contiguous"] > 0 and data["layout"]["uc3dunet"]["fast_paths_all"] > 0
    assert data["layout"]["plainunet"]["channels_last_3d"] > 0
    training = data["training"]["nnUNetTrainerUC_demo"]
    assert training["epochs"] >= 1 and training["finite"] and all(math.isfinite(v) for v in training["train_loss"])
    assert {c["name"] for c in data["doctor"]["checks"]} >= {"nnUNet_results", "cuda device"}
    md = (out / "summary.md").read_text()
    assert md.startswith("## GPU check, SMOKE RUN ON CPU") and "| uc3dunet |" in md and "| uxnet |" not in md
    assert json.loads((out / "step_eager.json").read_text())["environment"]["fast_paths"] == "cpu"
    assert json.loads((out / "layout_ours_contiguous.json").read_text())["environment"]["layout"] == "contiguous"
