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
