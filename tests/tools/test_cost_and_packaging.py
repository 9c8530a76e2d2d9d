"""The cost command, the CLI surface, and the wheel: a plain `pip install .` carries every sub-package."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from helpers.paths import REPO_ROOT


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "nnunetv2_uc", *args], capture_output=True, text=True)


def test_cost_without_timing_reports_exact_parameters_and_macs():
    result = run_cli("cost", "--no-timing", "--json", "-")
    assert result.returncode == 0, result.stderr
    rows = {r["arch"]: r for r in json.loads(result.stdout)}
    assert rows["uxnet"]["parameters"] == 53_006_069 and round(rows["uxnet"]["gmacs"], 3) == 579.169
    assert rows["uc3dunet"]["parameters"] == 21_716_235 and round(rows["uc3dunet"]["gmacs"], 3) == 248.441
    # nnU-Net's default PlainConvUNet at 96^3: 5 stages, 32..320 features
    assert rows["plainunet"]["gmacs"] < rows["uc3dunet"]["gmacs"] < rows["uxnet"]["gmacs"]


def test_cost_times_every_network_side_by_side(tmp_path):
    out = tmp_path / "cost.json"
    result = run_cli("cost", "--patch", "32", "32", "32", "--classes", "3", "--repeats", "1", "--json", str(out))
    assert result.returncode == 0, result.stderr
    assert "| uxnet |" in result.stdout and "step x plain" in result.stdout
    rows = json.loads(out.read_text())
    assert [r["arch"] for r in rows] == ["uxnet", "uc3dunet", "plainunet"]
    for row in rows:
        assert row["forward_s"] > 0 and row["train_step_s"] > 0
        assert row["peak_memory_bytes"] > 0


def test_cost_refuses_a_patch_uxnet_cannot_take():
    result = run_cli("cost", "--network", "uxnet", "--patch", "40", "64", "64", "--no-timing")
    assert result.returncode == 2
    assert "axis 0 has size 40" in result.stderr and "32 or 48" in result.stderr


def test_every_subcommand_has_help():
    from nnunetv2_uc.cli import SUBCOMMANDS

    top = run_cli("--help")
    assert top.returncode == 0
    for name in SUBCOMMANDS:
        assert name in top.stdout
        sub = run_cli(name, "--help")
        assert sub.returncode == 0 and "usage: nnunetv2_uc " + name in sub.stdout, sub.stderr


def test_wheel_carries_the_mapped_packages_and_imports_from_them(tmp_path):
    build = subprocess.run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(tmp_path / "dist"),
                            str(REPO_ROOT)], capture_output=True, text=True)
    if build.returncode != 0 and not (REPO_ROOT / "pyproject.toml").exists():
        pytest.fail("the project source is not next to the tests")
    assert build.returncode == 0, build.stderr[-3000:]
    wheel = next((tmp_path / "dist").glob("nnunetv2_uc-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    for expected in ("nnunetv2_uc/cli/__init__.py", "nnunetv2_uc/cli/demo.py", "nnunetv2_uc/cli/plan.py",
                     "nnunetv2_uc/planning/api.py",
                     "nnunetv2_uc/architectures/building_blocks/u_connection.py", "nnunetv2_uc/architectures/uxnet.py",
                     "nnunetv2_uc/architectures/uc3dunet.py", "nnunetv2_uc/trainers/__init__.py",
                     "nnunetv2_uc/plans_overrides/__init__.py", "nnunetv2_uc/cli/doctor.py", "nnunetv2_uc/doctor/checks.py",
                     "nnunetv2_uc/architectures/building_blocks/switches.py"):
        assert expected in names
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "nnunetv2_uc = nnunetv2_uc.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()
    metadata = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    assert "License-Expression: Apache-2.0" in metadata  # the SPDX form; the TOML-table form stops building in 2027
    assert "deprecated" not in build.stderr.lower(), build.stderr[-3000:]
    assert "nnunetv2_uc/ext_trainers/nnunetv2_uc_trainers_shim.py" in names  # the folder nnUNet_extTrainer points at
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    probe = ("import nnunetv2_uc, nnunetv2_uc.architectures as a, nnunetv2_uc.trainers, nnunetv2_uc.plans_overrides;"
             "from nnunetv2_uc.registration import installed_trainer_names as names;"
             "print(a.__file__); print(sum(p.numel() for p in a.UC3DUNet(1, 5).parameters()));"
             "print(len(names()), len(nnunetv2_uc.trainers.__all__))")
    env = {**os.environ, "PYTHONPATH": str(site)}
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    location, params, findable, exported = result.stdout.split()
    assert Path(location).is_relative_to(site) and params == "21716235"
    assert int(findable) == int(exported) >= 12  # the shim, a module of no package, imports from the unpacked wheel
