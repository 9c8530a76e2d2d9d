"""`nnunetv2_uc demo`: step list and commands, reuse of finished steps, failure reporting, the fixed schedule and
its up-front time estimate (with a fake timer)."""
from __future__ import annotations

import json
import os
import pickle
import sys
from pathlib import Path

import pytest

from nnunetv2_uc.demo import schedule as demo_schedule
from nnunetv2_uc.demo import pipeline as demo
from nnunetv2_uc.cli import main
from nnunetv2_uc.demo.schedule import Measurement, Schedule
from nnunetv2_uc.trainers import demo_trainers


def _steps(workdir: Path, spent_s: float = 0.0, arch: str = "uc3dunet", **settings
           ) -> tuple[list[demo.Step], demo.DemoPaths]:
    paths = demo.DemoPaths(workdir, demo.TRAINERS[arch])
    return demo.build_steps(demo.DemoSettings(**settings), paths, "cpu", clock=lambda: spent_s), paths


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
    assert f"{demo_schedule.WHEN_SHORT_ENV}=stop " in out and demo_schedule.SECONDS_LEFT_ENV not in out  # no bound
    assert f"{demo_schedule.TEST_CASES_ENV}=6 " in out
    assert not workdir.exists()


def test_uxnet_arch_selects_its_trainer(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["demo", "--dry-run", "--network", "uxnet", "--workdir", str(tmp_path), "--device", "cpu"]) == 0
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
    assert demo.dataset_mismatch(paths, seed=0, cases=24, test_cases=6) is None
    assert main(["demo", "--dry-run", "--workdir", str(tmp_path), "--device", "cpu"]) == 0
    assert main(["demo", "--dry-run", "--workdir", str(tmp_path), "--device", "cpu", "--seed", "3"]) == 2
    assert "made with seed 0, 24 training and 6 test cases, not seed 3" in capsys.readouterr().err


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


def test_bad_settings_are_refused_with_the_fix(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["demo", "--dry-run", "--workdir", str(tmp_path), "--minutes", "0"]) == 2
    assert "--minutes must be > 0 (or left out for no bound)" in capsys.readouterr().err
    assert main(["demo", "--dry-run", "--workdir", str(tmp_path), "--cases", "4"]) == 2
    assert "need --cases >= 5" in capsys.readouterr().err


def test_the_training_step_gets_the_bound_the_policy_and_the_test_cases(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("nnUNet_n_proc_DA", raising=False)
    env = demo.training_env(demo.DemoSettings(minutes=10, test_cases=4), "cpu", spent_s=45.0)
    assert env == {demo_schedule.SECONDS_LEFT_ENV: "555", demo_schedule.WHEN_SHORT_ENV: "stop",
                   demo_schedule.TEST_CASES_ENV: "4", "nnUNet_n_proc_DA": str(demo.DATA_AUGMENTATION_WORKERS)}
    env = demo.training_env(demo.DemoSettings(allow_fewer_iterations=True), "cpu", spent_s=45.0)
    assert demo_schedule.SECONDS_LEFT_ENV not in env and env[demo_schedule.WHEN_SHORT_ENV] == "fewer"
    assert "nnUNet_n_proc_DA" not in demo.training_env(demo.DemoSettings(), "cuda", spent_s=0.0)  # nnU-Net's
    monkeypatch.setenv("nnUNet_n_proc_DA", "3")  # the user's choice wins
    assert "nnUNet_n_proc_DA" not in demo.training_env(demo.DemoSettings(), "cpu", spent_s=0.0)


def test_a_stop_before_training_ends_the_demo_with_the_fix(capsys: pytest.CaptureFixture) -> None:
    python = sys.executable
    steps = [demo.Step("train", "x", lambda: False,
                       lambda: [python, "-c", f"import sys; sys.exit({demo_schedule.STOPPED_EXIT_CODE})"]),
             demo.Step("predict", "never reached", lambda: False, lambda: [python, "-c", "0"])]
    assert demo.run_pipeline(steps, env={"PATH": ""}) == demo_schedule.STOPPED_EXIT_CODE
    out = capsys.readouterr().out
    assert "train: stopped before training" in out and "--allow-fewer-iterations" in out and "predict" not in out


class FakeClock:
    """A clock that only moves when the timed work says so."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now

    def work(self, durations: list[float]):
        pending = iter(durations)

        def run() -> None:
            self.now += next(pending)
        return run


def test_timing_skips_the_warm_up_and_takes_the_median() -> None:
    clock = FakeClock()
    # warm-up 9 s (oneDNN setup) is not counted; median of 1.0, 1.4, 1.1
    assert demo_schedule.median_duration(clock.work([9.0, 1.0, 1.4, 1.1]), 3, clock) == pytest.approx(1.1)
    with pytest.raises(ValueError):
        demo_schedule.median_duration(clock.work([1.0]), 0, clock)


def test_threads_are_halved_while_that_trains_faster() -> None:
    def timer(seconds: dict[int, float]):
        calls = []

        def seconds_per_iteration(threads: int) -> float:
            calls.append(threads)
            return seconds[threads]
        return seconds_per_iteration, calls

    # idle 2 cores: two threads are faster, one is tried and rejected
    timed, calls = timer({2: 0.54, 1: 0.81})
    assert demo_schedule.fastest_thread_count(timed, 2) == (2, {2: 0.54, 1: 0.81}) and calls == [2, 1]
    # a CPU-bound process beside it (measured: 1.00 s with 2 threads, 0.82 s with 1)
    timed, calls = timer({2: 1.00, 1: 0.82})
    assert demo_schedule.fastest_thread_count(timed, 2)[0] == 1
    # 16 cores: halving stops at the first count that is not faster
    timed, calls = timer({16: 0.9, 8: 0.5, 4: 0.6, 2: 0.1})
    assert demo_schedule.fastest_thread_count(timed, 16) == (8, {16: 0.9, 8: 0.5, 4: 0.6}) and calls == [16, 8, 4]
    timed, calls = timer({1: 0.7})
    assert demo_schedule.fastest_thread_count(timed, 1) == (1, {1: 0.7})
    with pytest.raises(ValueError):
        demo_schedule.fastest_thread_count(timed, 0)
    assert demo_schedule.describe_threads(1, {2: 1.0, 1: 0.82}) == (
        "seconds per training iteration with 2 threads 1.00 s, 1 thread 0.82 s: training with 1 thread")


SCHEDULE = Schedule(epochs=20, iterations=30, val_iterations=3)
FAST = Measurement(seconds_per_iteration=0.5, seconds_per_tile=0.1)


def test_estimate_adds_training_validation_prediction_and_evaluation() -> None:
    estimate = demo_schedule.estimate(SCHEDULE, 30, 20, FAST, cases_after=10, tiles_per_case=18)
    # per epoch: 30 iterations + 3 validation batches at a third of an iteration, plus the epoch overhead
    assert estimate.training_s == pytest.approx(20 * (0.5 * 31 + demo_schedule.EPOCH_OVERHEAD_S))
    assert estimate.after_training_s == pytest.approx(
        demo_schedule.AFTER_TRAINING_FIXED_S + 10 * (18 * 0.1 + demo_schedule.CASE_OVERHEAD_S))
    assert estimate.total_s == pytest.approx(estimate.training_s + estimate.after_training_s)


def test_the_full_schedule_runs_without_a_bound_or_when_it_fits() -> None:
    unbounded = demo_schedule.decide(SCHEDULE, 20, FAST, 10, 18, seconds_left=None, when_short="stop")
    assert unbounded.action == "full" and unbounded.iterations == 30
    assert "20 epochs x 30 iterations at 0.50 s per iteration" in unbounded.message
    assert f"about {unbounded.needed.total_s / 60:.1f} min in all" in unbounded.message
    fits = demo_schedule.decide(SCHEDULE, 20, FAST, 10, 18, seconds_left=unbounded.needed.total_s + 1,
                                when_short="stop")
    assert fits.action == "full" and fits.iterations == 30 and "within the" in fits.message


def test_a_slow_machine_is_told_up_front_and_stops_by_default() -> None:
    slow = Measurement(seconds_per_iteration=2.0, seconds_per_tile=0.4)  # 4x slower: about 23 min
    decision = demo_schedule.decide(SCHEDULE, 20, slow, 10, 18, seconds_left=600, when_short="stop")
    needed_min = -(-decision.needed.total_s // 60)
    assert decision.action == "stop" and decision.iterations == 0
    assert decision.message.startswith(f"this machine needs about {needed_min:.0f} min for a reliable result")
    assert "10.0 min are left of --minutes; stopping before training" in decision.message


def test_fewer_iterations_fit_the_bound_and_say_dice_will_be_lower() -> None:
    slow = Measurement(seconds_per_iteration=2.0, seconds_per_tile=0.4)
    decision = demo_schedule.decide(SCHEDULE, 20, slow, 10, 18, seconds_left=600, when_short="fewer")
    assert decision.action == "fewer" and 1 <= decision.iterations < SCHEDULE.iterations
    assert decision.estimate.total_s <= 600  # the shortened run fits
    one_more = demo_schedule.estimate(SCHEDULE, decision.iterations + 1, 20, slow, 10, 18)
    assert one_more.total_s > 600  # and it is the longest that fits
    assert f"continuing with {decision.iterations} of 30 iterations per epoch" in decision.message
    assert "Dice will be lower" in decision.message
    # a resumed run with 5 epochs left sizes only those
    resumed = demo_schedule.decide(SCHEDULE, 5, slow, 10, 18, seconds_left=300, when_short="fewer")
    assert resumed.estimate.training_s <= 300 - resumed.estimate.after_training_s


def test_when_nothing_fits_one_iteration_per_epoch_runs_and_says_it_is_over() -> None:
    decision = demo_schedule.decide(SCHEDULE, 20, Measurement(5.0, 1.0), 10, 18, seconds_left=60, when_short="fewer")
    assert decision.iterations == 1 and decision.estimate.total_s > 60
    assert "even that takes about" in decision.message
    late = demo_schedule.decide(SCHEDULE, 20, FAST, 10, 18, seconds_left=-5, when_short="stop")
    assert late.action == "stop" and "but no time is left of --minutes" in late.message
    with pytest.raises(ValueError, match="when_short"):
        demo_schedule.decide(SCHEDULE, 20, FAST, 10, 18, seconds_left=None, when_short="maybe")


def test_progress_reports_the_time_left() -> None:
    line = demo_schedule.progress(5, 20, mean_epoch_s=12.0, planned_epoch_s=12.0, after_training_s=90.0)
    assert line == ("epoch 5/20 done (12.0 s per epoch): about 3.0 min of training left, then about 1.5 min for "
                    "the final validation, prediction and evaluation")
    # the machine got twice as slow as measured before training: what follows training will too
    slower = demo_schedule.progress(5, 20, mean_epoch_s=24.0, planned_epoch_s=12.0, after_training_s=90.0)
    assert "about 6.0 min of training left, then about 3.0 min for" in slower
    # on the CPU the demo trainer skips nnU-Net's final validation, and says so
    cpu = demo_schedule.progress(5, 20, 12.0, 12.0, 90.0, after=demo_schedule.AFTER_WITHOUT_VALIDATION)
    assert cpu.endswith("then about 1.5 min for prediction and evaluation")
    decision = demo_schedule.decide(SCHEDULE, 20, FAST, 6, 18, seconds_left=None, when_short="stop",
                                    after=demo_schedule.AFTER_WITHOUT_VALIDATION)
    assert "for prediction and evaluation: about" in decision.message and "validation" not in decision.message


def test_sliding_window_tiles_follow_nnunets_steps() -> None:
    # step 0.5 of the patch: 40 -> 2 positions along z (32 + 8), 115 -> 3 along y and x (64 + 2 x 25.5)
    assert demo_trainers.tiles_per_case([40.0, 115.0, 115.0], [32, 64, 64]) == 18
    assert demo_trainers.tiles_per_case([20.0, 50.0, 50.0], [32, 64, 64]) == 1  # padded to one patch


def test_the_work_is_fixed_whatever_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """The schedule is class data: no measurement or bound changes it (only --allow-fewer-iterations does, and
    says so)."""
    for cls in (demo_trainers.nnUNetTrainerUC_demo, demo_trainers.nnUNetTrainerUXNet_demo):
        schedule = cls.demo_schedule()
        assert (schedule.epochs, schedule.iterations) == (cls.demo_epochs, cls.demo_iterations)
        assert schedule.total_iterations >= 400
    monkeypatch.setenv(demo_schedule.SECONDS_LEFT_ENV, "-3")
    with pytest.raises(ValueError, match=demo_schedule.SECONDS_LEFT_ENV):
        demo_trainers._env_seconds_left()
    monkeypatch.setenv(demo_schedule.WHEN_SHORT_ENV, "later")
    with pytest.raises(ValueError, match=demo_schedule.WHEN_SHORT_ENV):
        demo_trainers._env_when_short()


def test_demo_trainers_are_found_through_the_shim(monkeypatch: pytest.MonkeyPatch) -> None:
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name
    from nnunetv2_uc.registration import shim_directory

    env = demo.pipeline_env(demo.DemoPaths(Path("/tmp/x"), "t"), "cpu")
    assert shim_directory() in env["nnUNet_extTrainer"].split(":")
    assert env["nnUNet_compile"] == "f" and env["nnUNet_raw"] == "/tmp/x/nnUNet_raw"
    assert env["OMP_WAIT_POLICY"] == os.environ.get("OMP_WAIT_POLICY", "PASSIVE")
    monkeypatch.setenv("nnUNet_extTrainer", env["nnUNet_extTrainer"])
    for name in ("nnUNetTrainerUC_demo", "nnUNetTrainerUXNet_demo"):
        cls = recursive_find_trainer_class_by_name(name)
        assert cls.__module__ == "nnunetv2_uc.trainers.demo_trainers" and cls.__name__ == name


def test_demo_trainer_fixes_patch_batch_in_the_plans_and_narrows_the_network_on_cpu() -> None:
    import torch

    def plans() -> dict:
        return {"configurations": {"3d_fullres": {"patch_size": [40, 128, 128], "batch_size": 5}}}

    cpu, gpu = plans(), plans()
    demo_trainers.nnUNetTrainerUC_demo.adjust_plans(cpu, "3d_fullres", torch.device("cpu"))
    demo_trainers.nnUNetTrainerUC_demo.adjust_plans(gpu, "3d_fullres", torch.device("cuda"))
    for config in (cpu["configurations"]["3d_fullres"], gpu["configurations"]["3d_fullres"]):
        assert config["patch_size"] == list(demo_trainers.DemoScheduleMixin.demo_patch_size)
        assert config["batch_size"] == 2 and config["uc_fixed_patch"] is True
    trainer = demo_trainers.nnUNetTrainerUC_demo
    assert trainer.network_overrides(torch.device("cpu")) == {"features": [8, 16, 32, 64, 128, 8]}
    assert trainer.network_overrides(torch.device("cuda")) == {}  # paper width on a GPU


@pytest.mark.slow
def test_demo_end_to_end_with_the_stock_commands_then_reuse(tmp_path: Path) -> None:
    """The real pipeline on a tiny synthetic set (5 + 1 cases) with a one-minute bound that the full schedule cannot
    fit, so the trainer estimates, says so and trains one iteration per epoch (--allow-fewer-iterations): every
    stock command runs, the outputs land in the work dir, and a second run reuses every step."""
    import subprocess

    workdir = tmp_path / "demo"
    command = [sys.executable, "-m", "nnunetv2_uc", "demo", "--workdir", str(workdir), "--device", "cpu",
               "--cases", "5", "--test-cases", "1", "--minutes", "1", "--allow-fewer-iterations"]
    first = subprocess.run(command, capture_output=True, text=True, timeout=1200)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert "this machine needs about" in first.stdout and "Dice will be lower" in first.stdout
    assert "epoch 20/20 done" in first.stdout and "of training left" in first.stdout
    estimate = json.loads(next(workdir.glob("nnUNet_results/*/*/fold_0/demo_estimate.json")).read_text())
    assert estimate["action"] == "fewer"
    assert 1 <= estimate["iterations_per_epoch"] < estimate["schedule"]["iterations"]
    threads = estimate["cpu_threads"]  # the thread count was measured on this machine before training
    assert threads["chosen"] in {int(n) for n in threads["seconds_per_iteration"]}
    assert "seconds per training iteration with" in first.stdout
    assert "final validation skipped on the CPU" in first.stdout
    assert not list(workdir.glob("nnUNet_results/*/*/fold_0/validation/summary.json"))
    for step in ("synth", "plan", "train", "predict", "evaluate", "report"):
        assert f"] {step}: done in" in first.stdout
    summary = json.loads((workdir / "evaluation.json").read_text())
    assert summary["n_cases"] == 1 and set(summary["labels"].values()) == {"liver", "kidney", "spleen", "pancreas"}
    assert summary["mean"]["dice"] == pytest.approx(_dice_of_files(workdir), abs=1e-6)  # the report's Dice is real
    assert "mean Dice over the test cases" in first.stdout
    assert (workdir / "overlays" / "synthtest_000.png").stat().st_size > 10_000
    assert (workdir / "progress.png").is_file() and (workdir / "evaluation.md").is_file()
    plans = json.loads((next(workdir.glob("nnUNet_results/*/nnUNetTrainerUC_demo__*")) / "plans.json").read_text())
    assert plans["configurations"]["3d_fullres"]["patch_size"] == [32, 64, 64]

    second = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert second.stdout.count("reused (already done)") == 5  # all but the report

    # the skipped validation is one command away, as the log says
    paths = demo.DemoPaths(workdir, "nnUNetTrainerUC_demo")
    validate = subprocess.run([demo.executable("nnUNetv2_train"), "990", "3d_fullres", "0", "-tr", "nnUNetTrainerUC_demo",
                               "--val", "-device", "cpu"], env=demo.pipeline_env(paths, "cpu"), capture_output=True,
                              text=True, timeout=600)
    assert validate.returncode == 0, validate.stdout[-3000:] + validate.stderr[-3000:]
    validation = json.loads((paths.fold_dir / "validation" / "summary.json").read_text())
    assert set(validation["mean"]) == {"1", "2", "3", "4"}


def _dice_of_files(workdir: Path) -> float:
    """Mean Dice over the four organs of the demo's one held-out case, from the prediction and label files (the
    number the 20-iteration schedule reaches is near chance, so the test checks the report against the files)."""
    import numpy as np
    import SimpleITK as sitk

    prediction = next(workdir.glob("predictions_*/synthtest_000.nii.gz"))
    label = next(workdir.glob("nnUNet_raw/*/labelsTs/synthtest_000.nii.gz"))
    predicted, truth = (sitk.GetArrayFromImage(sitk.ReadImage(str(f))) for f in (prediction, label))
    scores = []
    for organ in (1, 2, 3, 4):
        p, t = predicted == organ, truth == organ
        scores.append(2 * np.logical_and(p, t).sum() / (p.sum() + t.sum()))
    return float(np.mean(scores))

