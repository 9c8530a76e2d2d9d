"""Every benchmark in benchmarks/ and the planning table in experiments/ runs, at the smallest size, and prints the
table it is for (so that none rots unseen; their numbers at real sizes are in BENCHMARKS.md / README)."""
from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

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


def _script_macs(network: str, patch: list[int]) -> int:
    """MACs of the network bench_onnx_tiles.py builds (its own builder), counted on the meta device."""
    import importlib.util

    import torch

    from nnunetv2_uc.measure.cost import count_macs

    spec = importlib.util.spec_from_file_location("bench_onnx_tiles", REPO_ROOT / "benchmarks" / "bench_onnx_tiles.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    with torch.device("meta"):
        return count_macs(script.build(network, patch, False), 1, 3, patch)


def test_bench_onnx_tiles_times_every_runtime_and_precision():
    out = _run("benchmarks/bench_onnx_tiles.py", "--network", "uc3dunet", "--patch", "16", "32", "32", "--warmup",
               "0", "--repeats", "1", "--gemm-size", "128")
    timed = dict(re.findall(rf"^  (\w+ \w+)\s+median\s+{NUMBER} ms\s+min\s+({NUMBER})", out, re.M))
    assert {"torch fp32", "torch bf16", "onnxruntime fp32"} <= set(timed), out
    assert all(float(ms) > 0 for ms in timed.values())
    # the rates of the fastest calls: 2 x MACs per second, against the fastest fp32 rate of the run
    before, after = map(float, re.search(rf"^torch.matmul peak before / after the timings \(GFLOP/s\): fp32 ({NUMBER}) / "
                                         rf"({NUMBER}),", out, re.M).groups())
    gflop, peak = re.search(rf"^arithmetic per tile: ({NUMBER}) GFLOP .* fp32 peak on this CPU ({NUMBER}) GFLOP/s",
                            out, re.M).groups()
    macs = _script_macs("uc3dunet", [16, 32, 32])
    assert float(gflop) == pytest.approx(2 * macs / 1e9, abs=0.006)
    # tolerances are the printing's: times to 0.01 ms, rates and shares to 0.01, the peak to 0.1
    rates = {}
    for name, rate, share in re.findall(
            rf"^  (\w+ \w+)\s+({NUMBER}) GFLOP/s = \s*({NUMBER}) % of the fp32 peak", out, re.M):
        rates[name] = float(rate)
        ms = float(timed[name])
        expected_rate = 2 * macs / 1e9 / (ms / 1000)
        assert float(rate) == pytest.approx(expected_rate, abs=expected_rate * (0.006 / ms + 1e-3) + 0.006)
        expected_share = 100 * float(rate) / float(peak)
        assert float(share) == pytest.approx(
            expected_share, abs=expected_share * (0.006 / float(rate) + 0.06 / float(peak)) + 0.006)
    assert set(rates) == set(timed), out
    fp32_rates = [rate for name, rate in rates.items() if name.endswith("fp32")]
    assert float(peak) == pytest.approx(max(before, after, *fp32_rates), abs=0.051)
    ceiling = float(re.search(rf"^fp32 ceiling: .* would be ({NUMBER})x torch fp32", out, re.M).group(1))
    expected_ceiling = float(peak) / rates["torch fp32"]
    assert ceiling == pytest.approx(
        expected_ceiling, abs=expected_ceiling * (0.006 / rates["torch fp32"] + 0.06 / float(peak)) + 0.006)
    assert "onnxruntime bf16: not timed (--backend onnxruntime runs fp32 only" in out
    deviation = re.search(r"^onnxruntime fp32: deviation from torch fp32 (\S+) of the logit range", out, re.M)
    assert deviation and float(deviation.group(1)) < 1e-4


@pytest.fixture(scope="module")
def predicted_case(tmp_path_factory):
    """bench_predict_case.py on a tiny trained PlainConvUNet: (its report, its work folder)."""
    import json

    from helpers.model_folders import write_model_folder

    root = tmp_path_factory.mktemp("bench_predict_case")
    model = write_model_folder(root / "trained", "plainunet", train_steps=5)
    report = root / "report.json"
    _run("benchmarks/bench_predict_case.py", "--model-folder", str(model), "--shape", "18", "42", "42",
         "--native-zoom", "1", "0.75", "0.75", "--mirroring", "off", "--ways", "stock", "torch fp32",
         "onnxruntime fp32", "--profile", "stock", "--tile-repeats", "1", "--workdir", str(root / "work"), "--json",
         str(report), timeout=600)
    return json.loads(report.read_text()), root / "work"


def test_bench_predict_case_runs_the_stock_command_and_a_runtime(predicted_case):
    result, work = predicted_case
    assert result["tiles"] == 2 * 2 * 2 and result["native_shape"] == [18, 56, 56]  # patch 12x28x28 (tiny plans)
    stock, torch_way, runtime = result["runs"]
    assert (stock["way"], torch_way["way"], runtime["way"]) == ("stock", "torch fp32", "onnxruntime fp32")
    assert stock["wall_s"] > 0 and runtime["tile_s"] > 0 and stock["peak_rss_mib"] >= stock["peak_pss_mib"] > 100
    assert stock["agreement_with_stock"] == 1.0 and runtime["agreement_with_stock"] >= 0.999
    assert set(stock["stages_s"]) == {"preprocessing", "sliding window", "export"}
    # the torch way is torch (not the runtime --backend auto would take) and predicts what nnU-Net predicts
    assert torch_way["agreement_with_stock"] == 1.0
    assert "cache" not in (work / "out_torch_fp32_notta.log").read_text()
    # the memory sampler reads each process's page tables once a second, not 10 times (it slowed the commands)
    assert 0 <= stock["memory_sampler_cpu_s"] < 0.1 * stock["wall_s"]


@pytest.mark.parametrize("way", ["stock", "nnunetv2_uc"])
def test_predict_timeline_stamps_nnunets_steps_and_lists_the_processes_at_the_memory_peak(predicted_case, tmp_path,
                                                                                            way):
    import json

    _, work = predicted_case
    results = work / "nnUNet_results"
    dataset = next(results.iterdir())
    trainer, plans, configuration = next(dataset.iterdir()).name.split("__")
    model = ["-d", dataset.name, "-c", configuration, "-tr", trainer, "-p", plans, "-f", "0", "-device", "cpu",
             "--disable_tta", "-i", str(work / "images"), "-o", str(tmp_path / "out")]
    command = (["nnUNetv2_predict", *model] if way == "stock" else
               [sys.executable, "-m", "nnunetv2_uc", "predict", *model, "--backend", "torch"])
    report = tmp_path / "timeline.json"
    out = _run("benchmarks/predict_timeline.py", "--log", str(tmp_path / "command.log"), "--json", str(report),
               "--", *command, nnUNet_results=str(results), nnUNet_raw=str(work / "raw"),
               nnUNet_preprocessed=str(work / "preprocessed"), nnUNet_compile="f",
               PATH=os.pathsep.join([os.path.dirname(sys.executable), os.environ["PATH"]]))
    timeline = json.loads(report.read_text())
    main_events = [s["event"] for s in timeline["steps"] if s["pid"] == timeline["main_pid"]]
    for step in ("initialize_from_trained_model_folder", "predict_from_files", "predict_sliding_window_return_logits"):
        assert f"{step} start" in main_events and any(e.startswith(f"{step} end (") for e in main_events), main_events
    assert "_internal_maybe_mirror_and_predict: 8 calls" in " ".join(main_events)  # 2x2x2 tiles, no mirroring
    assert (tmp_path / "out" / "ctcase_000.nii.gz").is_file()
    roles = [p["role"] for p in timeline["processes_at_peak"]]
    assert roles.count("main") == 1 and timeline["peak_pss_mib"] > 100
    assert timeline["peak_pss_mib"] == pytest.approx(sum(p["pss_mib"] for p in timeline["processes_at_peak"]), abs=2)
    assert f"peak PSS {timeline['peak_pss_mib']} MiB" in out
