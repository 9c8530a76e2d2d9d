"""`nnunetv2_uc doctor`: the whole report on a healthy and a broken setup, every CUDA branch with injected facts,
the torch/torchvision pairing, the compiler probe, and the model-folder checks on the legacy 0.1.0 fixture."""
from __future__ import annotations

import json
import shutil
import subprocess
import types
from pathlib import Path

import pytest
import torch
from packaging.requirements import Requirement

from helpers.paths import FIXTURES
from nnunetv2_uc.cli import main
from nnunetv2_uc.doctor import cuda, environment
from nnunetv2_uc.doctor.checks import FAIL, OK, SKIP, WARN
from nnunetv2_uc.doctor.cuda import (
    CudaFacts, check_bf16, check_compile, check_cuda_device, check_cuda_driver, check_cudnn, compile_problem,
    driver_cuda_version, format_cudnn,
)
from nnunetv2_uc.doctor.environment import (
    check_dependencies, check_disk, check_nnunetv2, check_python, check_torch_torchvision, matching_torchvision,
)
from nnunetv2_uc.doctor.model_folder import check_model_folder
from nnunetv2_uc.doctor.nnunet_setup import check_ext_trainer, check_nnunet_path, check_trainer_lookup
from nnunetv2_uc.registration import shim_directory

FIXTURE_MODEL = (FIXTURES / "legacy_results_0.1.0" / "Dataset901_LegacyUC"
                 / "nnUNetTrainerUC_tiny__nnUNetPlans__3d_fullres")
H200 = CudaFacts("2.14.1+cu130", "13.0", devices=["NVIDIA H200 (sm_90, 139.8 GiB)"], driver_cuda=(13, 0),
                 driver_version="580.65.06", cudnn_version=92400, bf16=True)


@pytest.fixture
def nnunet_folders(tmp_path, monkeypatch):
    """nnUNet_raw/_preprocessed/_results set to fresh folders, the plugin on nnUNet_extTrainer."""
    for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        (tmp_path / name).mkdir()
        monkeypatch.setenv(name, str(tmp_path / name))
    monkeypatch.setenv("nnUNet_extTrainer", shim_directory())
    monkeypatch.delenv("nnUNet_compile", raising=False)
    return tmp_path


@pytest.fixture
def gpu_machine(monkeypatch):
    """This machine seen as a healthy H200 node whose compiler probe succeeds (everything else is real)."""
    monkeypatch.setattr(cuda, "cuda_facts", lambda: H200)
    monkeypatch.setattr(cuda, "compile_problem", lambda environ: None)


def run_doctor(capsys, *args: str) -> tuple[int, dict]:
    code = main(["doctor", "--json", *args])
    return code, json.loads(capsys.readouterr().out)


def by_name(report: dict) -> dict[str, dict]:
    return {c["name"]: c for c in report["checks"]}


# ------------------------------------------------------------------------------------------- whole report

def test_healthy_setup_passes(nnunet_folders, gpu_machine, capsys):
    code, report = run_doctor(capsys)
    checks = by_name(report)
    assert code == 0 and report["blocking"] is False
    assert not [c for c in report["checks"] if c["status"] == FAIL]
    for name in ("python", "torch+torchvision", "nnunetv2", "dependencies", "nnUNet_raw", "nnUNet_preprocessed",
                 "nnUNet_results", "nnUNet_extTrainer", "trainer lookup", "cuda device", "cuda driver", "cudnn",
                 "bf16", "torch.compile"):
        assert checks[name]["status"] == OK, checks[name]
    assert checks["nnUNet_results"]["detail"] == str(nnunet_folders / "nnUNet_results")
    assert "nnUNetTrainerUC" in checks["trainer lookup"]["detail"]
    assert "NVIDIA H200" in checks["cuda device"]["detail"] and "cuDNN 9.24.0" == checks["cudnn"]["detail"]
    assert checks["disk"]["status"] in (OK, WARN) and "GiB free" in checks["disk"]["detail"]


def test_missing_nnunet_results_fails_and_names_it(nnunet_folders, gpu_machine, monkeypatch, capsys):
    monkeypatch.delenv("nnUNet_results")
    assert main(["doctor"]) == 1
    lines = capsys.readouterr().out.splitlines()
    failed = [line for line in lines if line.startswith("[FAIL]")]
    assert failed == [next(line for line in lines if line.startswith("[FAIL] nnUNet_results: not set"))]
    assert "fix: export nnUNet_results=/path/to/nnUNet_results" in failed[0]
    assert lines[-1].startswith("doctor:") and "1 failed" in lines[-1]


def test_real_machine_report_is_consistent(nnunet_folders, capsys):
    """Whatever this machine has: one line per check, exit code 1 exactly when a line failed."""
    code = main(["doctor", "--json"])
    report = json.loads(capsys.readouterr().out)
    statuses = {c["status"] for c in report["checks"]}
    assert statuses <= {OK, WARN, FAIL, SKIP}
    assert code == (1 if FAIL in statuses else 0) and report["blocking"] == (FAIL in statuses)
    assert all(c["fix"] for c in report["checks"] if c["status"] == FAIL)


def test_nonexistent_model_folder_is_a_user_error(nnunet_folders, tmp_path, capsys):
    assert main(["doctor", "-m", str(tmp_path / "nope")]) == 2
    assert "nnunetv2_uc doctor: error: -m" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------- nnU-Net setup

def test_nnunet_path_that_does_not_exist_or_is_a_file(tmp_path):
    missing = check_nnunet_path("nnUNet_preprocessed", {"nnUNet_preprocessed": str(tmp_path / "x")})
    assert missing.status == FAIL and "does not exist" in missing.detail and f"mkdir -p {tmp_path / 'x'}" in missing.fix
    (tmp_path / "f").write_text("")
    assert "is not a folder" in check_nnunet_path("nnUNet_raw", {"nnUNet_raw": str(tmp_path / "f")}).detail


def test_ext_trainer_warns_with_the_env_line():
    missing = check_ext_trainer({"nnUNet_extTrainer": "/other"})
    assert missing.status == WARN and 'eval "$(nnunetv2_uc env)"' in missing.fix
    assert f"export nnUNet_extTrainer=/other:{shim_directory()}" in missing.fix
    assert check_ext_trainer({"nnUNet_extTrainer": f"/other:{shim_directory()}"}).status == OK


def test_trainer_lookup_failure_from_torchvision_names_the_pair():
    def broken(name):
        raise RuntimeError("operator torchvision::nms does not exist")

    check = check_trainer_lookup(broken)
    assert check.status == FAIL and "torchvision::nms" in check.detail
    assert f"torchvision=={matching_torchvision(torch.__version__)}" in check.fix


def test_python_and_dependency_ranges():
    assert check_python("3.9.18", ">=3.10").status == FAIL
    assert check_python("3.11.7", ">=3.10").status == OK
    requirements = [Requirement("nnunetv2>=2.8.1,<2.9"), Requirement("numpy>=1.24"), Requirement("scipy>=1.10"),
                    Requirement("pytest>=7; extra == 'test'")]
    versions = {"nnunetv2": "2.9.0", "numpy": "1.23.5", "scipy": None}.get
    nnunet = check_nnunetv2(requirements, versions)
    assert nnunet.status == FAIL and "nnunetv2 2.9.0 is outside" in nnunet.detail
    assert nnunet.fix == 'pip install "nnunetv2<2.9,>=2.8.1"'
    deps = check_dependencies(requirements[1:], versions)
    assert deps.status == FAIL and "numpy 1.23.5 is outside >=1.24" in deps.detail
    assert "scipy is not installed" in deps.detail
    assert '"numpy>=1.24"' in deps.fix and '"scipy>=1.10"' in deps.fix
    assert check_dependencies(requirements[1:3], {"numpy": "2.0", "scipy": "1.13"}.get).status == OK


def test_dependency_ranges_come_from_the_package_metadata():
    names = {r.name for r in environment.runtime_requirements()}
    assert {"nnunetv2", "torch", "dynamic-network-architectures"} <= names and "pytest" not in names


# ------------------------------------------------------------------------------------------- torch pairing

def _fake_modules(torch_version: str, vision: str | Exception):
    def import_module(name):
        if name == "torch":
            return types.SimpleNamespace(__version__=torch_version)
        if isinstance(vision, Exception):
            raise vision
        return types.SimpleNamespace(__version__=vision)
    return import_module


def test_torch_torchvision_pairing():
    assert matching_torchvision("2.14.1+cu130") == "0.29.1" and matching_torchvision("2.1.2") == "0.16.2"
    nms = check_torch_torchvision(_fake_modules("2.14.1+cpu", RuntimeError("operator torchvision::nms does not exist")))
    assert nms.status == FAIL and "torchvision::nms" in nms.detail
    assert "pip install torch==2.14.1 torchvision==0.29.1" in nms.fix
    wrong = check_torch_torchvision(_fake_modules("2.14.1+cu130", "0.28.0+cu130"))
    assert wrong.status == FAIL and "(torchvision 0.29.1)" in wrong.detail
    mixed = check_torch_torchvision(_fake_modules("2.14.1+cpu", "0.29.1+cu130"))
    assert mixed.status == WARN and "different builds" in mixed.detail
    assert check_torch_torchvision(_fake_modules("2.14.1+cu126", "0.29.1+cu126")).status == OK
    assert check_torch_torchvision().status == OK  # the installed pair


# ---------------------------------------------------------------------------------------------------- CUDA

def test_driver_too_old_for_the_cuda13_wheel_says_which_driver_and_which_build():
    facts = CudaFacts("2.14.1+cu130", "13.0", driver_cuda=(12, 4), driver_version="550.54.15",
                      init_warning="The NVIDIA driver on your system is too old (found version 12040).")
    driver = check_cuda_driver(facts)
    assert driver.status == FAIL
    assert "built for CUDA 13.0, which needs an NVIDIA driver >= 580" in driver.detail
    assert "driver 550.54.15 supports CUDA up to 12.4" in driver.detail
    assert ("pip install torch==2.14.1 torchvision==0.29.1 --index-url https://download.pytorch.org/whl/cu126"
            in driver.fix)
    assert "make install TORCH_INDEX_URL=https://download.pytorch.org/whl/cu126" in driver.fix
    device = check_cuda_device(facts)
    assert device.status == FAIL and "too old" in device.detail


def test_driver_branches():
    ok = check_cuda_driver(H200)
    assert ok.status == OK and "minor-version" not in ok.detail
    minor = check_cuda_driver(CudaFacts("2.14.1+cu126", "12.6", driver_cuda=(12, 2), driver_version="535.1"))
    assert minor.status == OK and "minor-version compatibility" in minor.detail
    old11 = check_cuda_driver(CudaFacts("2.14.1+cu126", "12.6", driver_cuda=(11, 8)))
    assert old11.status == FAIL and ">= 525" in old11.detail and "/whl/cu118" in old11.fix
    too_old = check_cuda_driver(CudaFacts("2.14.1+cu126", "12.6", driver_cuda=(10, 2)))
    assert too_old.status == FAIL and "have the NVIDIA driver upgraded" in too_old.fix
    cpu_build = check_cuda_driver(CudaFacts("2.14.1+cpu", None, driver_cuda=(12, 8)))
    assert cpu_build.status == FAIL and "CPU-only build" in cpu_build.detail and "/whl/cu126" in cpu_build.fix
    assert check_cuda_driver(CudaFacts("2.14.1+cu130", "13.0")).status == SKIP


def test_device_cudnn_bf16_branches():
    no_driver = CudaFacts("2.14.1+cu130", "13.0", cudnn_version=92400)
    assert check_cuda_device(no_driver).status == WARN and "no NVIDIA driver" in check_cuda_device(no_driver).detail
    assert check_cuda_device(CudaFacts("2.14.1+cpu", None)).status == WARN
    hidden = check_cuda_device(CudaFacts("2.14.1+cu130", "13.0", driver_cuda=(13, 0)))
    assert hidden.status == WARN and "CUDA_VISIBLE_DEVICES" in hidden.fix
    assert check_cuda_device(H200).status == OK
    assert check_cudnn(CudaFacts("2.14.1+cu130", "13.0")).status == WARN
    assert check_cudnn(CudaFacts("2.14.1+cpu", None)).status == SKIP
    assert format_cudnn(92400) == "9.24.0" and format_cudnn(8907) == "8.9.7" and format_cudnn(90100) == "9.1.0"
    assert check_bf16(H200).detail == "supported"
    no_bf16 = check_bf16(CudaFacts("2.14.1+cu126", "12.6", devices=["Tesla V100"], bf16=False))
    assert no_bf16.status == OK and "not supported" in no_bf16.detail
    assert check_bf16(no_driver).status == SKIP


def test_driver_cuda_version_reads_the_driver_library(tmp_path):
    assert driver_cuda_version(str(tmp_path / "libcuda_missing.so")) is None
    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.skip("no gcc to build a stand-in driver library")
    source = tmp_path / "fake_cuda.c"
    source.write_text("int cuDriverGetVersion(int *v) { *v = 12040; return 0; }\n")
    library = tmp_path / "libfakecuda.so"
    subprocess.run([gcc, "-shared", "-fPIC", str(source), "-o", str(library)], check=True)
    assert driver_cuda_version(str(library)) == (12, 4)


def test_real_cuda_facts_are_consistent():
    facts = cuda.cuda_facts()
    assert facts.torch_version == torch.__version__ and facts.torch_cuda == torch.version.cuda
    assert bool(facts.devices) == torch.cuda.is_available()


# ----------------------------------------------------------------------------------------- compile, disk

def test_compile_branches(monkeypatch):
    assert check_compile(True, {"nnUNet_compile": "f"}).status == OK
    assert check_compile(False, {}).status == SKIP
    failing = check_compile(True, {}, lambda environ: "no C compiler (Triton uses $CC, else gcc, else clang)")
    assert failing.status == FAIL and "export nnUNet_compile=f" in failing.fix
    assert check_compile(True, {"nnUNet_compile": "true"}, lambda environ: None).status == OK


def test_compile_probe_runs_the_compiler(tmp_path):
    assert "does not run" in compile_problem({"CC": str(tmp_path / "no-such-cc")})
    assert "cannot compile against Python.h" in compile_problem({"CC": shutil.which("false")})
    if shutil.which("gcc"):
        assert compile_problem({"CC": shutil.which("gcc")}) is None


def test_disk_thresholds(tmp_path):
    env = {"nnUNet_preprocessed": str(tmp_path)}
    assert check_disk(env, lambda p: 10 * 1024 ** 3).status == WARN
    assert check_disk(env, lambda p: 512 * 1024 ** 2).status == FAIL
    assert check_disk(env, lambda p: 500 * 1024 ** 3).detail.startswith("500.0 GiB free")
    assert check_disk({}).status == SKIP


# -------------------------------------------------------------------------------------------- model folder

@pytest.fixture
def model_copy(tmp_path):
    return Path(shutil.copytree(FIXTURE_MODEL, tmp_path / "results" / FIXTURE_MODEL.name))


def _rewrite_checkpoint(folder: Path, edit) -> None:
    path = folder / "fold_0" / "checkpoint_final.pth"
    checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    edit(checkpoint)
    torch.save(checkpoint, path)


def test_model_folder_of_the_legacy_fixture_passes(nnunet_folders, gpu_machine, model_copy, capsys):
    code, report = run_doctor(capsys, "-m", str(model_copy))
    checks = by_name(report)
    assert code == 0
    assert checks["model record"]["status"] == SKIP and "names no nnunetv2-uc version" in checks["model record"]["detail"]
    assert checks["model trainer"]["status"] == OK and "nnUNetTrainerUC_tiny" in checks["model trainer"]["detail"]
    assert checks["model network"]["status"] == OK and checks["model network"]["detail"].startswith("UC3DUNet (")
    weights = torch.load(model_copy / "fold_0" / "checkpoint_final.pth", weights_only=False)["network_weights"]
    assert checks["model fold_0/checkpoint_final.pth"] == {
        "name": "model fold_0/checkpoint_final.pth", "status": OK,
        "detail": f"{len(weights)} tensors, strict load", "fix": ""}


def test_model_checkpoint_that_does_not_match_fails(model_copy):
    shutil.copy(model_copy / "fold_0" / "checkpoint_final.pth", model_copy / "fold_0" / "checkpoint_best.pth")
    _rewrite_checkpoint(model_copy, lambda c: c["network_weights"].pop(next(iter(c["network_weights"]))))
    checks = {c.name: c for c in check_model_folder(model_copy)}
    assert checks["model fold_0/checkpoint_best.pth"].status == OK
    final = checks["model fold_0/checkpoint_final.pth"]
    assert final.status == FAIL and "Missing key" in final.detail


@pytest.mark.parametrize("trainer, hint", [
    ("nnUNetTrainerUC_bf16", "another nnunetv2-uc version than the installed"),
    ("nnUNetTrainerSomeoneElses", "neither nnU-Net's"),
])
def test_model_with_an_unknown_trainer_says_what_to_install(model_copy, trainer, hint):
    _rewrite_checkpoint(model_copy, lambda c: c.update(trainer_name=trainer))
    checks = check_model_folder(model_copy)
    assert [c.status for c in checks] == [OK, SKIP, FAIL]
    assert checks[2].name == "model trainer" and trainer in checks[2].detail and hint in checks[2].fix


def test_model_of_our_trainer_that_does_not_resolve_points_to_the_lookup(model_copy):
    def broken(name):
        raise RuntimeError("operator torchvision::nms does not exist")

    checks = check_model_folder(model_copy, find_trainer=broken)
    assert checks[2].status == FAIL and "is a trainer of the installed nnunetv2-uc" in checks[2].fix
    assert "nnunetv2_uc doctor" in checks[2].fix


def test_model_folder_without_checkpoints(tmp_path):
    (tmp_path / "plans.json").write_text("{}")
    checks = check_model_folder(tmp_path)
    assert [c.status for c in checks] == [FAIL] and "dataset.json, fold_*/checkpoint_*.pth" in checks[0].detail
