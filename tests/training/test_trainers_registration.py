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


def test_every_trainer_is_declared_once_and_named_after_its_registry_entry():
    """The trainer classes are the only declaration of the names: the package and the shim export what the trainer
    modules declare, and each name is its network entry's ``trainer`` plus one of the known variants."""
    import importlib.util

    from nnunetv2_uc.architectures.registry import NETWORKS, TRAINER_VARIANTS
    from nnunetv2_uc import trainers

    declared = {**trainers.TRAINERS, **trainers.DEMO_TRAINERS}
    expected = {entry.trainer + variant: entry for entry in NETWORKS.values() if entry.trainer
                for variant in TRAINER_VARIANTS}
    assert sorted(declared) == sorted(expected) and len(trainers.TRAINER_NAMES) == 12
    assert all(declared[name].registry_entry is entry for name, entry in expected.items())
    assert sorted(trainers.__all__) == sorted(expected)
    spec = importlib.util.spec_from_file_location("shim_probe", Path(shim_directory()) / "nnunetv2_uc_trainers_shim.py")
    shim = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(shim)
    assert all(getattr(shim, name) is cls for name, cls in declared.items())


@pytest.mark.parametrize("name", ["nnUNetTrainerUC", "nnUNetTrainerUXNet_tiny", "nnUNetTrainerUC_SGD",
                                  "nnUNetTrainerUXNet_demo"])
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
    from nnunetv2_uc.planning.overrides import available_presets

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


def test_train_5fold_resumes_unfinished_folds(tmp_path):
    trained = tmp_path / "Dataset004_Hippocampus" / "nnUNetTrainerUC__MyPlans__3d_fullres"
    files = {0: ["checkpoint_final.pth", "validation/summary.json"], 1: ["checkpoint_final.pth"],
             2: ["checkpoint_latest.pth", "checkpoint_best.pth"], 3: ["checkpoint_best.pth"], 4: []}
    for fold, names in files.items():
        (trained / f"fold_{fold}" / "validation").mkdir(parents=True)
        for name in names:
            (trained / f"fold_{fold}" / name).write_text("x")
    proc = _dry_run("4", "nnUNetTrainerUC", "--", "-p", "MyPlans",
                    env_extra={"SLURM_CPUS_PER_TASK": "2", "nnUNet_results": str(tmp_path)})
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    train = "nnUNet_n_proc_DA=2 nnUNetv2_train 4 3d_fullres {} -tr nnUNetTrainerUC --npz -device cpu -p MyPlans"
    assert lines[:5] == ["# fold 0 done (checkpoint_final.pth, validation/summary.json)",
                         train.format(1) + " --val", train.format(2) + " --c", train.format(3) + " --c",
                         train.format(4)]


def test_train_5fold_usage_error():
    proc = _dry_run("4")
    assert proc.returncode == 2 and "give DATASET and TRAINER" in proc.stderr


def test_slurm_template_is_valid_bash_array_job():
    script = REPO_ROOT / "scripts" / "slurm_train_5fold.sh"
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    text = script.read_text()
    assert "#SBATCH --array=0-4" in text and 'eval "$(nnunetv2_uc env)"' in text and "--c" in text
    assert 'export nnUNet_n_proc_DA="${nnUNet_n_proc_DA:-${SLURM_CPUS_PER_TASK:-12}}"' in text
    assert "#SBATCH --signal=B:USR1@120" in text and "#SBATCH --requeue" in text


FAKE_TRAIN = """#!/usr/bin/env bash
# fake nnUNetv2_train: records its arguments, exits 85 on USR1/TERM (as the plugin's trainers do), else $FAKE_EXIT
echo "$@" > "$FAKE_DIR/args"
trap 'echo USR1 > "$FAKE_DIR/signal"; exit 85' USR1
trap 'echo TERM > "$FAKE_DIR/signal"; exit 85' TERM
touch "$FAKE_DIR/started"
for i in $(seq "$FAKE_LOOPS"); do sleep 0.05; done
exit "${FAKE_EXIT:-0}"
"""


def _fake_slurm_task(tmp_path: Path, fake_exit: int, signum: int | None) -> tuple[subprocess.CompletedProcess, Path]:
    """Run the SLURM template as array task 2 of job 77 with fake nnUNetv2_train / scontrol / nnunetv2_uc on PATH."""
    import signal
    import time

    fakes = tmp_path / "bin"
    fakes.mkdir()
    scripts = {"nnUNetv2_train": FAKE_TRAIN,
               "scontrol": '#!/usr/bin/env bash\necho "$@" >> "$FAKE_DIR/scontrol"\n',
               "nnunetv2_uc": "#!/usr/bin/env bash\necho export nnUNet_extTrainer=/shim\n"}
    for name, text in scripts.items():
        (fakes / name).write_text(text)
        (fakes / name).chmod(0o755)
    env = {"PATH": f"{fakes}:/usr/bin:/bin", "FAKE_DIR": str(tmp_path), "FAKE_EXIT": str(fake_exit),
           "FAKE_LOOPS": "1200" if signum is not None else "1",
           "DATASET": "4", "TRAINER": "nnUNetTrainerUC", "nnUNet_raw": "r", "nnUNet_preprocessed": "p",
           "nnUNet_results": "res", "SLURM_ARRAY_TASK_ID": "2", "SLURM_ARRAY_JOB_ID": "77", "SLURM_JOB_ID": "79"}
    proc = subprocess.Popen(["bash", str(REPO_ROOT / "scripts" / "slurm_train_5fold.sh")], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if signum is not None:
        deadline = time.time() + 20
        while not (tmp_path / "started").exists() and time.time() < deadline:
            time.sleep(0.02)
        proc.send_signal(signum)  # what SLURM does with --signal=B:USR1@120: to the batch shell only
    out, _ = proc.communicate(timeout=60)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out), tmp_path


@pytest.mark.parametrize("signame", ["SIGUSR1", "SIGTERM"])
def test_slurm_template_forwards_the_signal_and_requeues_the_task(tmp_path, signame):
    import signal

    proc, fake = _fake_slurm_task(tmp_path, 0, getattr(signal, signame))
    assert proc.returncode == 0, proc.stdout
    assert (fake / "signal").read_text().strip() == signame[3:]  # forwarded to the training
    assert (fake / "args").read_text().split() == ["4", "3d_fullres", "2", "-tr", "nnUNetTrainerUC", "--npz", "--c"]
    assert (fake / "scontrol").read_text().strip() == "requeue 77_2"
    assert "requeueing 77_2" in proc.stdout


@pytest.mark.parametrize("code", [0, 1])
def test_slurm_template_does_not_requeue_a_finished_or_failed_task(tmp_path, code):
    proc, fake = _fake_slurm_task(tmp_path, code, None)
    assert proc.returncode == code, proc.stdout
    assert not (fake / "scontrol").exists()
    assert "--c" in (fake / "args").read_text().split()
