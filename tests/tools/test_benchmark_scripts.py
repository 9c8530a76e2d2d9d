"""Every benchmark in benchmarks/ and the planning table in experiments/ runs, at the smallest size, and prints the
table it is for (so that none rots unseen; their numbers at real sizes are in BENCHMARKS.md / README)."""
from __future__ import annotations

import os
import re
import subprocess
import sys

from helpers.paths import REPO_ROOT

NUMBER = r"\d+\.\d+"


def _run(script: str, *args: str, timeout: int = 300, **env: str) -> str:
    result = subprocess.run([sys.executable, str(REPO_ROOT / script), *args], capture_output=True, text=True,
                            timeout=timeout, cwd=REPO_ROOT, env={**os.environ, **env})
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    return result.stdout


def test_bench_depthwise_prints_both_layouts():
    out = _run("benchmarks/bench_depthwise.py", "--threads", "1", "--repeats", "1")
    rows = re.findall(rf"^\| (\d+) \| (\d+)\^3 \| ({NUMBER}) \| ({NUMBER}) \| ({NUMBER}) \|$", out, re.M)
    assert [(c, s) for c, s, *_ in rows] == [("48", "24"), ("48", "32"), ("96", "16")]
    assert all(float(t) > 0 for row in rows for t in row[2:4])


def test_bench_checkpoint_write_times_both_networks(tmp_path):
    out = _run("benchmarks/bench_checkpoint_write.py", "--folder", str(tmp_path), "--repeats", "1")
    sizes = dict(re.findall(r"^(uc3dunet|uxnet): (\d+) MiB; atomic write", out, re.M))
    assert set(sizes) == {"uc3dunet", "uxnet"} and int(sizes["uxnet"]) > int(sizes["uc3dunet"]) > 100
    assert not list(tmp_path.iterdir())  # its files are removed


def test_bench_evaluate_checks_hd95_against_medpy(tmp_path):
    out = _run("benchmarks/bench_evaluate.py", "--shape", "12", "40", "40", "--classes", "2", "--cases", "1",
               "--uc-classes", "2", "--workdir", str(tmp_path))
    assert "medpy hd95 (no spacing) == our hd95_pooled_vox for classes [1, 2]" in out
    assert re.search(rf"^\| nnunetv2_uc evaluate -j 1 \(all metrics\) \| {NUMBER} \| measured \|$", out, re.M)


def test_bench_vs_original_semantics_compares_the_same_weights():
    out = _run("benchmarks/bench_vs_original_semantics.py", "--network", "uc3dunet", "--patch", "32", "--threads",
               "1", "--repeats", "1")
    assert re.search(rf"^\| uc3dunet \| 32\^3 \| 1 \| {NUMBER} / {NUMBER} \| {NUMBER} / {NUMBER} \| {NUMBER} / {NUMBER} \|$",
                     out, re.M)


def test_planning_table_plans_an_example():
    out = _run("experiments/planning_table.py", "--networks", "uc3dunet", "--cases", "1", timeout=600)
    rows = [line for line in out.splitlines() if line.startswith("| ") and "GiB |" in line]
    assert len(rows) == 1 and len(re.findall(r"\d+x\d+x\d+ b\d+, \d+\.\d GiB", rows[0])) == 2


def test_bench_onnx_tiles_times_every_runtime_and_precision():
    out = _run("benchmarks/bench_onnx_tiles.py", "--network", "uc3dunet", "--patch", "16", "32", "32", "--warmup",
               "0", "--repeats", "1")
    timed = dict(re.findall(rf"^  (\w+ \w+)\s+median\s+({NUMBER}) ms", out, re.M))
    assert {"torch fp32", "torch bf16", "onnxruntime fp32"} <= set(timed), out
    assert all(float(ms) > 0 for ms in timed.values())
    assert "onnxruntime bf16: not timed (--backend onnxruntime runs fp32 only" in out
    deviation = re.search(r"^onnxruntime fp32: deviation from torch fp32 (\S+) of the logit range", out, re.M)
    assert deviation and float(deviation.group(1)) < 1e-4


def test_bench_predict_case_runs_the_stock_command_and_a_runtime(tmp_path):
    import json

    from helpers.model_folders import write_model_folder

    model = write_model_folder(tmp_path / "trained", "plainunet", train_steps=5)
    report = tmp_path / "report.json"
    _run("benchmarks/bench_predict_case.py", "--model-folder", str(model), "--shape", "18", "42", "42",
         "--native-zoom", "1", "0.75", "0.75", "--mirroring", "off", "--ways", "stock", "onnxruntime fp32",
         "--profile", "stock", "--tile-repeats", "1", "--workdir", str(tmp_path / "work"), "--json", str(report),
         timeout=600)
    result = json.loads(report.read_text())
    assert result["tiles"] == 2 * 2 * 2 and result["native_shape"] == [18, 56, 56]  # patch 12x28x28 (tiny plans)
    stock, runtime = result["runs"]
    assert (stock["way"], runtime["way"]) == ("stock", "onnxruntime fp32")
    assert stock["wall_s"] > 0 and runtime["tile_s"] > 0 and stock["peak_rss_mib"] >= stock["peak_pss_mib"] > 100
    assert stock["agreement_with_stock"] == 1.0 and runtime["agreement_with_stock"] >= 0.999
    assert set(stock["stages_s"]) == {"preprocessing", "sliding window", "export"}
