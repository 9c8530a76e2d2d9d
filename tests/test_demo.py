"""`nnunetv2_uc demo`: step list and commands, reuse of finished steps, failure reporting, the time budget."""
from __future__ import annotations

import argparse
import json
import pickle
import sys
from pathlib import Path

import pytest

from nnunetv2_uc import demo
from nnunetv2_uc.cli import main
from nnunetv2_uc.trainers import demo_trainers


def _args(workdir: Path, **overrides) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    demo.add_arguments(parser)
    args = parser.parse_args(["--workdir", str(workdir)])
    for key, value in overrides.items():
        setattr(args, key, value)
    return args


def _steps(workdir: Path, spent_s: float = 0.0, **overrides) -> tuple[list[demo.Step], demo.DemoPaths]:
    args = _args(workdir, **overrides)
    paths = demo.DemoPaths(workdir, demo.TRAINERS[args.arch])
    return demo.build_steps(args, paths, "cpu", clock=lambda: spent_s), paths


def _fake_finished_synth_and_plan(paths: demo.DemoPaths, n_train: int = 24, n_test: int = 6) -> None:
    (paths.raw_dataset / "imagesTs").mkdir(parents=True)
    (paths.raw_dataset / "dataset.json").write_text(json.dumps({"numTraining": n_train}))
    for i in range(n_test):
        (paths.raw_dataset / "imagesTs" / f"synthtest_{i:03d}_0000.nii.gz").write_bytes(b"")
    data = paths.preprocessed / paths.dataset / "nnUNetPlans_3d_fullres"
    data.mkdir(parents=True)
    paths.plans_file.write_text(json.dumps(
        {"configurations": {"3d_fullres": {"data_identifier": "nnUNetPlans_3d_fullres"}}}))
    for i in range(n_train):
        (data / f"synth_{i:03d}.pkl").write_bytes(pickle.dumps({}))


def test_dry_run_lists_the_stock_commands_and_writes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    workdir = tmp_path / "demo"
    assert main(["demo", "--dry-run", "--workdir", str(workdir), "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    names = [line.split("]")[1].split(":")[0].strip() for line in out.splitlines() if line.startswith("[demo ")]
    assert names == ["synth", "plan", "train", "predict", "evaluate", "report"]
    assert "nnUNetv2_plan_and_preprocess -d 990 -c 3d_fullres" in out
    assert "nnUNetv2_train 990 3d_fullres 0 -tr nnUNetTrainerUC_demo -device cpu" in out
    assert f"nnUNetv2_predict -i {workdir}/nnUNet_raw/Dataset990_SyntheticCT/imagesTs" in out
    assert f"-o {workdir}/evaluation.json" in out
    assert f"{demo.BUDGET_ENV}=420 " in out  # 10 min x 0.7, nothing spent yet
    assert not workdir.exists()


def test_uxnet_arch_selects_its_trainer(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["demo", "--dry-run", "--arch", "uxnet", "--workdir", str(tmp_path), "--device", "cpu"]) == 0
    assert "-tr nnUNetTrainerUXNet_demo" in capsys.readouterr().out


def test_finished_steps_are_detected_and_reused(tmp_path: Path) -> None:
    steps, paths = _steps(tmp_path)
    done = {s.name: s.done() for s in steps}
    assert not any(done.values())

    _fake_finished_synth_and_plan(paths)
    assert [s.done() for s in steps[:3]] == [True, True, False]
    # preprocessing with a case missing is not finished
    next(paths.preprocessed.rglob("synth_000.pkl")).unlink()
    assert not steps[1].done()
    (paths.preprocessed / paths.dataset / "nnUNetPlans_3d_fullres" / "synth_000.pkl").write_bytes(b"")

    paths.fold_dir.mkdir(parents=True)
    (paths.fold_dir / "checkpoint_latest.pth").write_bytes(b"")
    assert not steps[2].done() and steps[2].command()[-1] == "--c"  # interrupted training resumes
    (paths.fold_dir / "checkpoint_final.pth").write_bytes(b"")
    assert steps[2].done()

    paths.predictions.mkdir()
    for i in range(5):
        (paths.predictions / f"synthtest_{i:03d}.nii.gz").write_bytes(b"")
    assert not steps[3].done()  # 5 of 6 test cases predicted
    (paths.predictions / "synthtest_005.nii.gz").write_bytes(b"")
    assert steps[3].done()

    paths.evaluation_json.write_text("{}")
    assert not steps[4].done()  # no record of which predictions it evaluated
    steps[4].after()
    assert steps[4].done()
    other, _ = _steps(tmp_path, arch="uxnet")
    assert not other[4].done() and not other[2].done()  # another trainer: train, predict, evaluate again


def test_a_reused_dataset_must_match_the_requested_one(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    steps, paths = _steps(tmp_path)
    paths.raw_dataset.mkdir(parents=True)
    (paths.raw_dataset / "dataset.json").write_text(
        json.dumps({"synthetic_seed": 0, "numTraining": 24, "numTest": 6}))
    assert demo.dataset_mismatch(paths, _args(tmp_path)) is None
    assert main(["demo", "--dry-run", "--workdir", str(tmp_path), "--device", "cpu"]) == 0
    assert main(["demo", "--dry-run", "--workdir", str(tmp_path), "--device", "cpu", "--seed", "3"]) == 1
    assert "made with seed 0, 24 training and 6 test cases, not seed 3" in capsys.readouterr().out


def test_pipeline_skips_done_steps_and_names_the_failed_one(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    ran = []
    python = sys.executable
    steps = [
        demo.Step("first", "already there", lambda: True, lambda: ran.append("first") or [python, "-c", "0"]),
        demo.Step("second", "works", lambda: False, lambda: [python, "-c", "print('second ran')"],
                  after=lambda: ran.append("second")),
        demo.Step("third", "breaks", lambda: False, lambda: [python, "-c", "import sys; sys.exit(3)"]),
        demo.Step("fourth", "never reached", lambda: False, lambda: ran.append("fourth") or [python, "-c", "0"]),
    ]
    assert demo.run_pipeline(steps, env={"PATH": ""}) == 1
    out = capsys.readouterr().out
    assert ran == ["second"]
    assert "[demo 1/4] first: reused" in out
    assert "[demo 2/4] second: done in" in out
    assert "[demo 3/4] third: FAILED (exit code 3)" in out
    assert "fourth" not in out


def test_missing_console_script_fails_the_step_with_the_fix(capsys: pytest.CaptureFixture) -> None:
    step = demo.Step("plan", "x", lambda: False, lambda: [demo.executable("nnUNetv2_no_such_command")])
    assert demo.run_pipeline([step], env={}) == 1
    assert "FileNotFoundError" in capsys.readouterr().out


def test_training_budget_takes_what_the_other_steps_leave() -> None:
    assert demo.training_budget_s(10, 0) == pytest.approx(420)
    assert demo.training_budget_s(10, 100) == pytest.approx(320)
    assert demo.training_budget_s(1, 500) == demo.MIN_TRAIN_S


def test_epoch_iterations_follow_the_time_left() -> None:
    # 5 epochs and 100 s left at 1 s per iteration: 20 s per epoch -> 19 training + 2 validation (counted as 1)
    assert demo_trainers.iterations_for_epoch(100, 5, 1.0, 2) == 19
    # the default demo: 20 epochs in ~430 s at 0.76 s/iteration (2 idle CPU cores)
    assert demo_trainers.iterations_for_epoch(430, 20, 0.76, 2) == 27
    assert demo_trainers.iterations_for_epoch(30, 5, 3.0, 2) == 1      # far behind: one iteration per epoch
    assert demo_trainers.iterations_for_epoch(-10, 1, 1.0, 2) == 1
    assert demo_trainers.iterations_for_epoch(1e6, 5, 0.05, 2) == demo_trainers.MAX_ITERATIONS  # fast GPU


def test_epoch_count_shrinks_only_for_tiny_budgets() -> None:
    assert demo_trainers.epochs_for_budget(430, 0.76, 2) == demo_trainers.DEMO_EPOCHS
    assert demo_trainers.epochs_for_budget(11, 1.0, 2) == 3   # 3.5 s per one-iteration epoch
    assert demo_trainers.epochs_for_budget(-1, 1.0, 2) == 1


def test_budget_env_is_validated(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(demo_trainers.BUDGET_ENV, raising=False)
    assert demo_trainers.train_budget_seconds() == demo_trainers.DEFAULT_BUDGET_S
    monkeypatch.setenv(demo_trainers.BUDGET_ENV, "120")
    assert demo_trainers.train_budget_seconds() == 120.0
    monkeypatch.setenv(demo_trainers.BUDGET_ENV, "0")
    with pytest.raises(ValueError, match=demo_trainers.BUDGET_ENV):
        demo_trainers.train_budget_seconds()
    assert demo_trainers.BUDGET_ENV == demo.BUDGET_ENV


def test_demo_trainers_are_found_through_the_shim(monkeypatch: pytest.MonkeyPatch) -> None:
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name
    from nnunetv2_uc.registration import shim_directory

    env = demo.pipeline_env(demo.DemoPaths(Path("/tmp/x"), "t"), "cpu")
    assert shim_directory() in env["nnUNet_extTrainer"].split(":")
    assert env["nnUNet_compile"] == "f" and env["nnUNet_raw"] == "/tmp/x/nnUNet_raw"
    monkeypatch.setenv("nnUNet_extTrainer", env["nnUNet_extTrainer"])
    for name in ("nnUNetTrainerUC_demo", "nnUNetTrainerUXNet_demo"):
        cls = recursive_find_trainer_class_by_name(name)
        assert cls.__module__ == "nnunetv2_uc.trainers.demo_trainers" and cls.__name__ == name


def test_demo_trainer_fixes_patch_batch_and_cpu_width_in_the_plans() -> None:
    import torch

    def plans() -> dict:
        return {"configurations": {"3d_fullres": {"patch_size": [40, 128, 128], "batch_size": 5}}}

    cpu, gpu = plans(), plans()
    demo_trainers.nnUNetTrainerUC_demo.adjust_plans(cpu, "3d_fullres", torch.device("cpu"))
    demo_trainers.nnUNetTrainerUC_demo.adjust_plans(gpu, "3d_fullres", torch.device("cuda"))
    for config in (cpu["configurations"]["3d_fullres"], gpu["configurations"]["3d_fullres"]):
        assert config["patch_size"] == list(demo_trainers.DemoScheduleMixin.demo_patch_size)
        assert config["batch_size"] == 2 and config["uc_fixed_patch"] is True
    assert cpu["configurations"]["3d_fullres"]["uc3dunet_kwargs"] == {"features": [16, 32, 64, 128, 256, 16]}
    assert "uc3dunet_kwargs" not in gpu["configurations"]["3d_fullres"]  # paper width on a GPU


@pytest.mark.slow
def test_demo_end_to_end_with_the_stock_commands_then_reuse(tmp_path: Path) -> None:
    """The real pipeline on a tiny synthetic set (5 + 1 cases, ~20 s of training): every stock command runs, the
    outputs land in the work dir, and a second run reuses every step."""
    import subprocess

    workdir = tmp_path / "demo"
    command = [sys.executable, "-m", "nnunetv2_uc", "demo", "--workdir", str(workdir), "--device", "cpu",
               "--cases", "5", "--test-cases", "1", "--minutes", "0.5"]
    first = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    for step in ("synth", "plan", "train", "predict", "evaluate", "report"):
        assert f"] {step}: done in" in first.stdout
    summary = json.loads((workdir / "evaluation.json").read_text())
    assert summary["n_cases"] == 1 and set(summary["labels"].values()) == {"liver", "kidney", "spleen", "pancreas"}
    assert 0.0 <= summary["mean"]["dice"] <= 1.0
    assert "mean Dice over the test cases" in first.stdout
    assert (workdir / "overlays" / "synthtest_000.png").stat().st_size > 10_000
    assert (workdir / "progress.png").is_file() and (workdir / "evaluation.md").is_file()
    plans = json.loads((next(workdir.glob("nnUNet_results/*/nnUNetTrainerUC_demo__*")) / "plans.json").read_text())
    assert plans["configurations"]["3d_fullres"]["patch_size"] == [32, 64, 64]

    second = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert second.stdout.count("reused (already done)") == 5  # all but the report
