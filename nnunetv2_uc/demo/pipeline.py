"""Run the whole pipeline on built-in synthetic CT: synth, plan, train, predict, evaluate (stock nnU-Net commands).

Steps, each a subprocess whose own log is shown, with a one-line status per step:
  1 synth        nnunetv2_uc synth (24 training + 6 held-out cases, 4 organs, anisotropic CT)
  2 plan         nnUNetv2_plan_and_preprocess -c 3d_fullres --verify_dataset_integrity
  3 train        nnUNetv2_train DATASET 3d_fullres 0 -tr nnUNetTrainerUC_demo (or nnUNetTrainerUXNet_demo):
                 a fixed schedule (the same work on any machine, so the same Dice); before training the
                 trainer times a few iterations and prints the expected time of the rest of the demo, and
                 after every epoch the time left. With --minutes and an estimate above what is left of it,
                 it stops before training, or with --allow-fewer-iterations trains fewer iterations per
                 epoch (and says that Dice will be lower)
  4 predict      nnUNetv2_predict on imagesTs
  5 evaluate     nnunetv2_uc evaluate (paper metrics) -> WORKDIR/evaluation.json, evaluation.md, plots/
  6 report       prints the table; WORKDIR/overlays/*.png (CT, reference, prediction); copies nnU-Net's
                 training curve to WORKDIR/progress.png

nnUNet_raw/nnUNet_preprocessed/nnUNet_results are set to folders under WORKDIR, nnUNet_compile=f on CPU and
nnUNet_extTrainer to this plugin's trainers. Uses the GPU when torch sees one, else the CPU. Re-running
reuses every finished step (delete a step's output to redo it); an interrupted training resumes (--c).
Exit code 0 on success, 1 with the failed step named, 75 when the estimate does not fit --minutes.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from nnunetv2.utilities.file_path_utilities import convert_trainer_plans_config_to_identifier

from nnunetv2_uc.architectures.registry import demo_networks
from nnunetv2_uc.demo.schedule import SECONDS_LEFT_ENV, STOPPED_EXIT_CODE, TEST_CASES_ENV, WHEN_SHORT_ENV
from nnunetv2_uc.errors import UserError
from nnunetv2_uc.evaluation.plots import write_image_overlay
from nnunetv2_uc.conversion.raw_dataset import dataset_folder_name
from nnunetv2_uc.registration import ENV_VAR, ext_trainer_value

DATASET_ID = 990
DATASET_NAME = "SyntheticCT"
CONFIGURATION = "3d_fullres"
PLANS = "nnUNetPlans"
FOLD = "0"
TRAINERS = demo_networks()
#: nnUNet_n_proc_DA for training on the CPU unless the user set it: augmenting a demo batch takes ~0.04 s of one
#: core, ~5 % of an iteration, so one worker keeps up and more would only compete with the network for the cores
DATA_AUGMENTATION_WORKERS = 1
#: OpenMP threads that wait at a barrier sleep instead of spinning: on a busy machine spinning threads burn the
#: cores the working ones need (measured: 3-4x the CPU time per iteration beside other jobs; docs/demo_schedule.md)
OMP_WAIT_POLICY = "PASSIVE"


@dataclass(frozen=True)
class DemoSettings:
    """The user's choices that shape the steps' commands and environments."""

    minutes: float | None = None
    allow_fewer_iterations: bool = False
    cases: int = 24
    test_cases: int = 6
    seed: int = 0
    processes: int = 2


@dataclass
class DemoPaths:
    """Every folder and file the demo reads or writes, derived from the work dir and the trainer."""

    workdir: Path
    trainer: str

    @property
    def raw(self) -> Path:
        return self.workdir / "nnUNet_raw"

    @property
    def preprocessed(self) -> Path:
        return self.workdir / "nnUNet_preprocessed"

    @property
    def results(self) -> Path:
        return self.workdir / "nnUNet_results"

    @property
    def dataset(self) -> str:
        return dataset_folder_name(DATASET_ID, DATASET_NAME)

    @property
    def raw_dataset(self) -> Path:
        return self.raw / self.dataset

    @property
    def plans_file(self) -> Path:
        return self.preprocessed / self.dataset / f"{PLANS}.json"

    @property
    def fold_dir(self) -> Path:
        # nnU-Net's own naming (get_output_folder would read nnUNet_results of this process, not the work dir's)
        identifier = convert_trainer_plans_config_to_identifier(self.trainer, PLANS, CONFIGURATION)
        return self.results / self.dataset / identifier / f"fold_{FOLD}"

    @property
    def predictions(self) -> Path:
        return self.workdir / f"predictions_{self.trainer}"

    @property
    def evaluation_json(self) -> Path:
        return self.workdir / "evaluation.json"

    @property
    def evaluation_table(self) -> Path:
        return self.workdir / "evaluation.md"

    @property
    def plots(self) -> Path:
        return self.workdir / "plots"

    @property
    def evaluated_marker(self) -> Path:
        """Records which predictions evaluation.json belongs to (the trainer can change between runs)."""
        return self.workdir / ".evaluated_predictions"


@dataclass
class Step:
    """One pipeline step: a command (or None for in-process work), and how to tell that it already ran."""

    name: str
    describe: str
    done: Callable[[], bool]
    command: Callable[[], list[str]] | None = None
    extra_env: Callable[[], dict[str, str]] = field(default=lambda: {})
    before: Callable[[], None] | None = None
    after: Callable[[], None] | None = None


# ----------------------------------------------------------------------------- environment and commands

def executable(name: str) -> str:
    """A console script of this environment (next to the running Python), else from PATH."""
    candidate = Path(sys.executable).parent / name
    if candidate.exists():
        return str(candidate)
    found = shutil.which(name)
    if found is None:
        raise FileNotFoundError(f"{name} not found next to {sys.executable} or on PATH; install nnunetv2 "
                                f"(pip install nnunetv2) into this environment")
    return found


def pick_device(requested: str) -> str:
    if requested != "auto":
        return requested
    return "cuda" if torch.cuda.is_available() else "cpu"


def pipeline_env(paths: DemoPaths, device: str) -> dict[str, str]:
    """The process environment for every step: nnU-Net folders, compile off on CPU, the plugin's trainers."""
    env = dict(os.environ)
    env.update({
        "nnUNet_raw": str(paths.raw), "nnUNet_preprocessed": str(paths.preprocessed),
        "nnUNet_results": str(paths.results), ENV_VAR: ext_trainer_value(os.environ.get(ENV_VAR)),
    })
    if device == "cpu":
        env["nnUNet_compile"] = "f"
        env.setdefault("OMP_WAIT_POLICY", OMP_WAIT_POLICY)
    return env


def count_files(folder: Path, pattern: str) -> int:
    return len(list(folder.glob(pattern))) if folder.is_dir() else 0


def n_test_cases(paths: DemoPaths) -> int:
    return count_files(paths.raw_dataset / "imagesTs", "*_0000.nii.gz")


def preprocessing_complete(paths: DemoPaths) -> bool:
    """Plans exist and every training case has its preprocessed properties file (written last per case)."""
    try:
        plans = json.loads(paths.plans_file.read_text())
        n_train = json.loads((paths.raw_dataset / "dataset.json").read_text())["numTraining"]
    except (OSError, ValueError, KeyError):
        return False
    identifier = plans.get("configurations", {}).get(CONFIGURATION, {}).get("data_identifier")
    if identifier is None:
        return False
    return count_files(paths.preprocessed / paths.dataset / identifier, "*.pkl") >= n_train


def dataset_mismatch(paths: DemoPaths, seed: int, cases: int, test_cases: int) -> str | None:
    """Why the synthetic dataset already in the work dir does not match --seed/--cases/--test-cases (None if
    it matches or does not exist yet)."""
    try:
        info = json.loads((paths.raw_dataset / "dataset.json").read_text())
    except (OSError, ValueError):
        return None
    found = (info.get("synthetic_seed"), info.get("numTraining"), info.get("numTest"))
    wanted = (seed, cases, test_cases)
    if found == wanted:
        return None
    return (f"{paths.raw_dataset} was made with seed {found[0]}, {found[1]} training and {found[2]} test cases, "
            f"not seed {wanted[0]}, {wanted[1]} and {wanted[2]}; use another --workdir or delete {paths.workdir}")


def predictions_complete(paths: DemoPaths) -> bool:
    n = n_test_cases(paths)
    return n > 0 and count_files(paths.predictions, "*.nii.gz") >= n


def evaluation_current(paths: DemoPaths) -> bool:
    """evaluation.json exists and was computed from this trainer's predictions."""
    return (paths.evaluation_json.is_file() and paths.evaluated_marker.is_file()
            and paths.evaluated_marker.read_text().strip() == str(paths.predictions))


# ----------------------------------------------------------------------------- steps

def build_steps(settings: DemoSettings, paths: DemoPaths, device: str, clock: Callable[[], float]) -> list[Step]:
    """The six steps in order. ``clock()`` returns the seconds spent so far (for the --minutes bound)."""
    uc = [sys.executable, "-m", "nnunetv2_uc"]
    ds = str(DATASET_ID)

    def train_command() -> list[str]:
        command = [executable("nnUNetv2_train"), ds, CONFIGURATION, FOLD, "-tr", paths.trainer, "-device", device]
        if (paths.fold_dir / "checkpoint_latest.pth").is_file():
            command.append("--c")  # resume an interrupted training
        return command

    def train_env() -> dict[str, str]:
        return training_env(settings, device, clock())

    def mark_evaluated() -> None:
        paths.evaluated_marker.write_text(str(paths.predictions) + "\n")

    return [
        Step("synth", f"synthetic dataset {paths.dataset}", lambda: (paths.raw_dataset / "dataset.json").is_file(),
             lambda: uc + ["synth", "--dataset-id", ds, "--cases", str(settings.cases), "--test-cases",
                           str(settings.test_cases), "--seed", str(settings.seed), "--name", DATASET_NAME,
                           "--raw-dir", str(paths.raw)]),
        Step("plan", "fingerprint, plans and preprocessing (3d_fullres)", lambda: preprocessing_complete(paths),
             lambda: [executable("nnUNetv2_plan_and_preprocess"), "-d", ds, "-c", CONFIGURATION,
                      "-np", str(settings.processes), "--verify_dataset_integrity"]),
        Step("train", f"{paths.trainer}, fold {FOLD}, on {device}",
             lambda: (paths.fold_dir / "checkpoint_final.pth").is_file(), train_command, train_env),
        Step("predict", "test cases (imagesTs)", lambda: predictions_complete(paths),
             lambda: [executable("nnUNetv2_predict"), "-i", str(paths.raw_dataset / "imagesTs"),
                      "-o", str(paths.predictions), "-d", ds, "-c", CONFIGURATION, "-f", FOLD,
                      "-tr", paths.trainer, "-device", device, "-npp", str(settings.processes),
                      "-nps", str(settings.processes)]),
        Step("evaluate", "paper metrics on the test cases", lambda: evaluation_current(paths),
             lambda: uc + ["evaluate", "--gt", str(paths.raw_dataset / "labelsTs"), "--pred", str(paths.predictions),
                           "--dataset-json", str(paths.raw_dataset / "dataset.json"),
                           "-o", str(paths.evaluation_json), "--table", str(paths.evaluation_table),
                           "--plots", str(paths.plots), "-j", str(settings.processes), "--overwrite"],
             before=lambda: paths.evaluated_marker.unlink(missing_ok=True), after=mark_evaluated),
        Step("report", "table, overlays and training curve", lambda: False, None,
             after=lambda: report(paths)),
    ]


def training_env(settings: DemoSettings, device: str, spent_s: float) -> dict[str, str]:
    """What the demo trainer reads: the seconds left of --minutes (none: no bound), what to do when its estimate
    does not fit them, and how many test cases follow training (for the estimate); on the CPU also the
    augmentation worker count unless the user chose one."""
    env = {WHEN_SHORT_ENV: "fewer" if settings.allow_fewer_iterations else "stop",
           TEST_CASES_ENV: str(settings.test_cases)}
    if settings.minutes is not None:
        env[SECONDS_LEFT_ENV] = f"{max(settings.minutes * 60.0 - spent_s, 1.0):.0f}"
    if device == "cpu" and "nnUNet_n_proc_DA" not in os.environ:
        env["nnUNet_n_proc_DA"] = str(DATA_AUGMENTATION_WORKERS)
    return env


def write_image_overlays(paths: DemoPaths) -> list[Path]:
    """One overlay PNG per test case in WORKDIR/overlays."""
    dataset = json.loads((paths.raw_dataset / "dataset.json").read_text())
    names = {int(v): k for k, v in dataset["labels"].items() if int(v) > 0}
    out_dir = paths.workdir / "overlays"
    out_dir.mkdir(exist_ok=True)
    written = []
    for pred_file in sorted(paths.predictions.glob("*.nii.gz")):
        case = pred_file.name[: -len(".nii.gz")]
        out_file = out_dir / f"{case}.png"
        write_image_overlay(paths.raw_dataset / "imagesTs" / f"{case}_0000.nii.gz",
                            paths.raw_dataset / "labelsTs" / pred_file.name, pred_file, names, out_file)
        written.append(out_file)
    return written


def report(paths: DemoPaths) -> None:
    """Print the evaluation table and the mean Dice; write image overlays; copy nnU-Net's progress.png."""
    progress = paths.fold_dir / "progress.png"
    if progress.is_file():
        shutil.copyfile(progress, paths.workdir / "progress.png")
    write_image_overlays(paths)
    print(paths.evaluation_table.read_text())
    summary = json.loads(paths.evaluation_json.read_text())
    per_class = {summary["labels"][k]: v["dice"] for k, v in summary["per_class_mean"].items()}
    print("mean Dice over the test cases: " + f"{summary['mean']['dice']:.3f} ("
          + ", ".join(f"{name} {dice:.3f}" for name, dice in per_class.items()) + ")")
    print(f"files: {paths.evaluation_json}, {paths.evaluation_table}, {paths.workdir / 'overlays'}/ (CT with "
          f"reference and prediction), {paths.plots}/ (error overlays, box plots), {paths.workdir / 'progress.png'}")


# ----------------------------------------------------------------------------- runner

def status(index: int, total: int, step: Step, message: str) -> None:
    print(f"[demo {index}/{total}] {step.name}: {message}", flush=True)


def run_step(step: Step, env: dict[str, str], dry_run: bool) -> int:
    """Run one step; returns its exit code (0 for in-process steps)."""
    command = step.command() if step.command else None
    step_env = step.extra_env()
    if dry_run:
        prefix = " ".join(f"{k}={v}" for k, v in step_env.items())
        print(f"    {prefix + ' ' if prefix else ''}{' '.join(command) if command else '(in-process)'}", flush=True)
        return 0
    if step.before:
        step.before()
    if command:
        code = subprocess.run(command, env={**env, **step_env}).returncode
        if code != 0:
            return code
    if step.after:
        step.after()
    return 0


def run_pipeline(steps: list[Step], env: dict[str, str], dry_run: bool = False) -> int:
    """Run the steps in order, reusing finished ones. Returns 0, 1 after naming the failed step, or
    STOPPED_EXIT_CODE when the trainer's estimate did not fit --minutes and it stopped before training."""
    for index, step in enumerate(steps, start=1):
        if step.done():
            status(index, len(steps), step, "reused (already done)")
            continue
        status(index, len(steps), step, f"{'would run' if dry_run else 'running'}: {step.describe}")
        started = time.perf_counter()
        try:
            code = run_step(step, env, dry_run)
        except (OSError, ValueError, KeyError) as error:
            code, detail = 1, f"{type(error).__name__}: {error}"
        else:
            detail = f"exit code {code}"
        if code == STOPPED_EXIT_CODE:
            status(index, len(steps), step, "stopped before training: the estimate above does not fit --minutes; "
                                            "re-run with more --minutes (or none), or add --allow-fewer-iterations")
            return STOPPED_EXIT_CODE
        if code != 0:
            status(index, len(steps), step, f"FAILED ({detail}); see the output above. Fix it and re-run the "
                                            f"demo: finished steps are reused")
            return 1
        if not dry_run:
            status(index, len(steps), step, f"done in {time.perf_counter() - started:.0f} s")
    return 0


# ----------------------------------------------------------------------------- entry point

def run_demo(workdir: str | os.PathLike = "demo", network: str = "uc3dunet", minutes: float | None = None,
             allow_fewer_iterations: bool = False, device: str = "auto", cases: int = 24, test_cases: int = 6,
             seed: int = 0, trainer: str | None = None, processes: int = 2, dry_run: bool = False) -> int:
    """Run (or with ``dry_run`` list) the six steps in ``workdir``; returns 0, 1 (a step failed) or
    ``STOPPED_EXIT_CODE`` (the estimate does not fit ``minutes`` and fewer iterations were not allowed).

    Raises UserError for settings that cannot work (the message says which and the fix).
    """
    if network not in TRAINERS:
        raise UserError(f"unknown network {network!r}; choose one of {', '.join(sorted(TRAINERS))} (--network)")
    if minutes is not None and minutes <= 0:
        raise UserError(f"--minutes must be > 0 (or left out for no bound), got {minutes:g}")
    if cases < 5 or test_cases < 1:
        raise UserError(f"need --cases >= 5 (nnU-Net's 5-fold split) and --test-cases >= 1, got {cases} and "
                        f"{test_cases}")
    settings = DemoSettings(minutes, allow_fewer_iterations, cases, test_cases, seed, processes)
    started = time.perf_counter()
    paths = DemoPaths(Path(workdir).resolve(), trainer or TRAINERS[network])
    mismatch = dataset_mismatch(paths, seed, cases, test_cases)
    if mismatch:
        raise UserError(mismatch)
    device = pick_device(device)
    if not dry_run:
        paths.workdir.mkdir(parents=True, exist_ok=True)
    bound = "no time bound" if minutes is None else f"at most {minutes:g} min"
    print(f"demo: work dir {paths.workdir}, trainer {paths.trainer}, device {device}, {bound}", flush=True)
    steps = build_steps(settings, paths, device, clock=lambda: time.perf_counter() - started)
    code = run_pipeline(steps, pipeline_env(paths, device), dry_run)
    if code == 0 and not dry_run:
        print(f"demo: finished in {(time.perf_counter() - started) / 60:.1f} min", flush=True)
    return code
