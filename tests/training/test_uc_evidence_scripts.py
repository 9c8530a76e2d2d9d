"""Smoke test of the uC-on-nnU-Net evidence (README "uC on nnU-Net's own network"): the scripts it needs run end to
end on a small synthetic dataset with a tiny schedule, so they cannot rot unseen. Its numbers mean nothing.

experiments/uc_on_nnunet_evidence.sh (synth, plan, the hand-made CPU plans and their uC version, cost, the uC version
under nnU-Net's recipe, predict, evaluate, the tables) with 5 + 1 cases and 1 epoch x 2 iterations; then
experiments/uc_evidence_probe.py for 2 steps with each optimizer on the uC plans, which imports the evidence trainers'
module and builds the trainers of both recipes. The other trainings differ only in the trainer and plans names (suite time: one training here).
"""
from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from helpers.paths import REPO_ROOT

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def evidence(tmp_path_factory):
    work = tmp_path_factory.mktemp("evidence")
    env = {k: v for k, v in os.environ.items() if not k.startswith("nnUNet_")}
    env.update(CASES="5", TEST_CASES="1", EPOCHS="1", ITERATIONS="2", MODELS="sgd-uc", SEED="3",
               PATH=f"{os.path.dirname(sys.executable)}:{env['PATH']}",
               nnUNet_def_n_proc=os.environ["nnUNet_def_n_proc"])  # the suite's worker count (tests/conftest.py)
    result = subprocess.run(["bash", str(REPO_ROOT / "experiments" / "uc_on_nnunet_evidence.sh"), str(work)], env=env,
                            capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return work, result.stdout


def test_evidence_script_trains_predicts_and_tabulates(evidence):
    work, stdout = evidence
    rows = [line for line in (work / "test.md").read_text().splitlines() if line.startswith("| nnUNetTrainer")]
    assert [row.split("|")[1].strip() for row in rows] == ["nnUNetTrainer_evidence__nnUNetPlans_evidence_UCUNet"]
    for row in rows:  # parameters, GMACs, minutes, schedule, then five metrics: all numbers
        cells = [c.strip() for c in row.split("|")[2:-1]]
        assert cells[3] == "1 x 2"
        assert all(re.fullmatch(r"-?\d+(\.\d+)?", c) for c in cells[:3] + cells[4:]), row
    cost = (work / "cost.md").read_text()
    assert "UCPlainConvUNet" in cost and "PlainConvUNet" in cost
    log = (work / "evidence.log").read_text()
    assert "data seed 3" in log and log.count("trained ") == 1


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_probe_reports_the_uc_levels(evidence, optimizer, tmp_path):
    work, _ = evidence
    env = dict(os.environ, nnUNet_raw=str(work / "nnUNet_raw"), nnUNet_preprocessed=str(work / "nnUNet_preprocessed"),
               nnUNet_results=str(tmp_path), nnUNet_n_proc_DA="0", nnUNet_compile="f")
    result = subprocess.run([sys.executable, str(REPO_ROOT / "experiments" / "uc_evidence_probe.py"),
                             "nnUNetPlans_evidence_UCUNet", "2", optimizer], env=env, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    steps = re.findall(r"step (\d+) loss (-?\d+\.\d+)", result.stdout)
    assert [s for s, _ in steps] == ["0", "1"]
    levels = re.findall(r"stage (\d+): gate mean (\d\.\d+), below 0.01 (\d+\.\d)%, residual scale norm (\d\.\d+e[-+]\d+)",
                        result.stdout)
    assert {stage for stage, *_ in levels} == {"0", "1", "2"}
    assert all(0 < float(mean) < 1 and float(norm) > 0 for _, mean, _, norm in levels)  # one step opened the scales
