"""`nnunetv2_uc env`, the extTrainer shim, `nnunetv2_uc plans-override` and scripts/train_5fold.sh --dry-run."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from helpers.paths import REPO_ROOT
from nnunetv2_uc.cli import main
from nnunetv2_uc.registration import ext_trainer_value, export_line, shim_directory

TRAIN_5FOLD = REPO_ROOT / "scripts" / "train_5fold.sh"


# ---------------------------------------------------------------- env + shim

def test_env_appends_and_never_drops(capsys, monkeypatch):
    shim = shim_directory()
    assert ext_trainer_value(None) == shim
    assert ext_trainer_value(f"/a{os.pathsep}/b") == f"/a{os.pathsep}/b{os.pathsep}{shim}"
    assert ext_trainer_value(f"/a{os.pathsep}{shim}") == f"/a{os.pathsep}{shim}"  # idempotent
    monkeypatch.setenv("nnUNet_extTrainer", "/other/trainers")
    assert main(["env"]) == 0
    assert capsys.readouterr().out.strip() == export_line("/other/trainers")
    assert export_line("/other/trainers") == f"export nnUNet_extTrainer=/other/trainers{os.pathsep}{shim}"


def test_env_line_is_valid_shell_and_works_through_python_m(tmp_path):
    env = {**os.environ, "nnUNet_extTrainer": "/x y/z"}
    out = subprocess.run(
        ["bash", "-c", f'eval "$({sys.executable} -m nnunetv2_uc env)" && printf %s "$nnUNet_extTrainer"'],
        env=env, capture_output=True, text=True, check=True, cwd=tmp_path).stdout
    assert out == f"/x y/z{os.pathsep}{shim_directory()}"


def test_shim_directory_holds_only_the_shim_module():
    import pkgutil

    modules = [m.name for m in pkgutil.iter_modules([shim_directory()])]
    assert modules == ["nnunetv2_uc_trainers_shim"]
    text = (Path(shim_directory()) / "nnunetv2_uc_trainers_shim.py").read_text()
    assert "from nnunetv2_uc.trainers import" in text and "from ." not in text


@pytest.mark.parametrize("name", ["nnUNetTrainerUC", "nnUNetTrainerUXNet_tiny", "nnUNetTrainerUC_SGD"])
def test_stock_lookup_finds_trainers_and_they_pickle(name, monkeypatch):
    import pickle

    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

    monkeypatch.setenv("nnUNet_extTrainer", f"/does/not/exist{os.pathsep}{shim_directory()}")
    cls = recursive_find_trainer_class_by_name(name)
    assert cls.__name__ == name and cls.__module__.startswith("nnunetv2_uc.trainers.")
    assert "nnunetv2_uc_trainers_shim" not in sys.modules  # popped by nnU-Net; nothing depends on it
    assert pickle.loads(pickle.dumps(cls)) is cls


def test_stock_lookup_of_unknown_name_names_the_variable(monkeypatch):
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

    monkeypatch.setenv("nnUNet_extTrainer", shim_directory())
    with pytest.raises(RuntimeError, match="Could not find requested nnunet trainer nnUNetTrainerUCX.*nnUNet_extTrainer"):
        recursive_find_trainer_class_by_name("nnUNetTrainerUCX")


# ---------------------------------------------------------------- plans-override

@pytest.fixture
def plans_file(tmp_path, monkeypatch) -> Path:
    folder = tmp_path / "preprocessed" / "Dataset901_Aniso"
    folder.mkdir(parents=True)
    monkeypatch.setenv("nnUNet_preprocessed", str(tmp_path / "preprocessed"))
    monkeypatch.setenv("nnUNet_raw", str(tmp_path / "raw"))
    monkeypatch.setenv("nnUNet_results", str(tmp_path / "results"))
    plans = {"dataset_name": "Dataset901_Aniso", "plans_name": "nnUNetPlans",
             "configurations": {"3d_fullres": {"data_identifier": "nnUNetPlans_3d_fullres", "patch_size": [12, 28, 28],
                                               "batch_size": 2}}}
    path = folder / "nnUNetPlans.json"
    path.write_text(json.dumps(plans))
    return path


def test_plans_override_adds_inheriting_config_and_is_idempotent(plans_file, capsys):
    assert main(["plans-override", "901", "--preset", "3d_fullres_paper96"]) == 0
    plans = json.loads(plans_file.read_text())
    config = plans["configurations"]["3d_fullres_paper96"]
    assert config["inherits_from"] == "3d_fullres" and config["patch_size"] == [96, 96, 96]
    assert config["batch_size"] in (1, 2) and config["uc_fixed_patch"] is True
    assert "data_identifier" not in config and "spacing" not in config  # inherited: reuses the preprocessed data
    before = plans_file.read_bytes()
    assert main(["plans-override", "Dataset901_Aniso", "--preset", "3d_fullres_paper96"]) == 0
    assert plans_file.read_bytes() == before
    assert "unchanged" in capsys.readouterr().out


def test_plans_override_refuses_to_clobber_without_force(plans_file, capsys):
    plans = json.loads(plans_file.read_text())
    plans["configurations"]["3d_fullres_paper96"] = {"inherits_from": "3d_fullres", "patch_size": [64, 64, 64]}
    plans_file.write_text(json.dumps(plans))
    before = plans_file.read_bytes()
    assert main(["plans-override", "901", "--preset", "3d_fullres_paper96"]) == 3
    assert "--force" in capsys.readouterr().err
    assert plans_file.read_bytes() == before
    assert main(["plans-override", "901", "--preset", "3d_fullres_paper96", "--force"]) == 0
    assert json.loads(plans_file.read_text())["configurations"]["3d_fullres_paper96"]["patch_size"] == [96, 96, 96]


def test_plans_override_errors(plans_file, capsys):
    assert main(["plans-override", "901", "--preset", "nope"]) == 2
    assert "3d_fullres_paper96" in capsys.readouterr().err  # lists the available presets
    plans = json.loads(plans_file.read_text())
    plans["configurations"] = {"2d": plans["configurations"]["3d_fullres"]}
    plans_file.write_text(json.dumps(plans))
    before = plans_file.read_bytes()
    assert main(["plans-override", "901", "--preset", "3d_fullres_paper96"]) == 2
    assert "no '3d_fullres' configuration" in capsys.readouterr().err
    assert plans_file.read_bytes() == before
    assert main(["plans-override", "901", "--preset", "3d_fullres_paper96", "-p", "OtherPlans"]) == 2
    assert "OtherPlans.json does not exist" in capsys.readouterr().err
    assert sorted(p.name for p in plans_file.parent.iterdir()) == ["nnUNetPlans.json"]  # no temp files left


def test_presets_are_valid_data_files():
    from nnunetv2_uc.plans_override import available_presets

    presets = available_presets()
    assert "3d_fullres_paper96" in presets
    for name, preset in presets.items():
        assert preset["configuration_name"] == name and "__" not in name
        assert preset["configuration"]["inherits_from"] == "3d_fullres"
        assert all(s % 16 == 0 for s in preset["configuration"]["patch_size"])


# ---------------------------------------------------------------- scripts

def _dry_run(*args: str, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    hidden = ("CUDA_VISIBLE_DEVICES", "SLURM_CPUS_PER_TASK", "nnUNet_n_proc_DA")
    env = {k: v for k, v in os.environ.items() if k not in hidden}
    env["PATH"] = "/usr/bin:/bin"  # no nvidia-smi: the GPU list comes from --gpus / CUDA_VISIBLE_DEVICES only
    env.update(env_extra or {})
    return subprocess.run(["bash", str(TRAIN_5FOLD), "--dry-run", *args], env=env, capture_output=True, text=True)


def test_train_5fold_dry_run_spreads_folds_over_gpus():
    proc = _dry_run("4", "nnUNetTrainerUC", env_extra={"CUDA_VISIBLE_DEVICES": "2,3", "SLURM_CPUS_PER_TASK": "16"})
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    # two folds side by side share the job's 16 CPUs: 8 data-augmentation workers each
    assert lines[:5] == [f"CUDA_VISIBLE_DEVICES={g} nnUNet_n_proc_DA=8 nnUNetv2_train 4 3d_fullres {f} "
                         "-tr nnUNetTrainerUC --npz" for f, g in zip(range(5), [2, 3, 2, 3, 2])]
    assert lines[5] == "nnUNetv2_find_best_configuration 4 -c 3d_fullres -tr nnUNetTrainerUC"


@pytest.mark.parametrize("gpus, cpus, expected", [
    ("0 1 2 3 4 5 6 7", "16", 3),  # at most 5 folds side by side: 16 // 5
    ("0 1 2 3", "64", 12),         # capped at nnU-Net's default of 12 per GPU
    ("0 1 2 3", "3", 1),           # at least 1
])
def test_train_5fold_shares_the_cpus_between_folds_side_by_side(gpus, cpus, expected):
    proc = _dry_run("--gpus", gpus, "4", "nnUNetTrainerUC", env_extra={"SLURM_CPUS_PER_TASK": cpus})
    assert proc.returncode == 0, proc.stderr
    assert all(f"nnUNet_n_proc_DA={expected} nnUNetv2_train" in line for line in proc.stdout.splitlines()[:5])


def test_train_5fold_n_proc_da_from_nproc_or_the_users_value():
    cpus = len(os.sched_getaffinity(0))  # what nproc reports
    one_at_a_time = _dry_run("4", "nnUNetTrainerUC").stdout.splitlines()[0]
    assert one_at_a_time.startswith(f"nnUNet_n_proc_DA={max(1, min(12, cpus))} nnUNetv2_train")
    users = _dry_run("4", "nnUNetTrainerUC", env_extra={"nnUNet_n_proc_DA": "20"}).stdout.splitlines()[0]
    assert users.startswith("nnUNet_n_proc_DA=20 nnUNetv2_train")


def test_train_5fold_dry_run_cpu_config_and_extra_args():
    proc = _dry_run("4", "nnUNetTrainerUXNet", "3d_fullres_paper96", "--", "-p", "MyPlans",
                    env_extra={"SLURM_CPUS_PER_TASK": "2"})
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert lines[0] == ("nnUNet_n_proc_DA=2 nnUNetv2_train 4 3d_fullres_paper96 0 -tr nnUNetTrainerUXNet --npz "
                        "-device cpu -p MyPlans")
    assert len(lines) == 6 and lines[-1].endswith("-tr nnUNetTrainerUXNet -p MyPlans")


def test_train_5fold_usage_error():
    proc = _dry_run("4")
    assert proc.returncode == 2 and "give DATASET and TRAINER" in proc.stderr


def test_slurm_template_is_valid_bash_array_job():
    script = REPO_ROOT / "scripts" / "slurm_train_5fold.sh"
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    text = script.read_text()
    assert "#SBATCH --array=0-4" in text and 'eval "$(nnunetv2_uc env)"' in text and "--c" in text
    assert 'export nnUNet_n_proc_DA="${nnUNet_n_proc_DA:-${SLURM_CPUS_PER_TASK:-12}}"' in text
