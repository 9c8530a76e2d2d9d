"""Run the whole pipeline on built-in synthetic CT: synth, plan, train, predict, evaluate (stock nnU-Net commands).

Steps, each a subprocess whose own log is shown, with a one-line status per step:
  1 synth        nnunetv2_uc synth (24 training + 6 held-out cases, 4 organs, anisotropic CT)
  2 plan         nnUNetv2_plan_and_preprocess -c 3d_fullres --verify_dataset_integrity
  3 train        nnUNetv2_train DATASET 3d_fullres 0 -tr nnUNetTrainerUC_demo (or nnUNetTrainerUXNet_demo):
                 20 epochs whose length is fitted to what is left of --minutes (70 % of it, minus the steps
                 before; the rest is kept for nnU-Net's final validation, prediction and evaluation)
  4 predict      nnUNetv2_predict on imagesTs
  5 evaluate     nnunetv2_uc evaluate (paper metrics) -> WORKDIR/evaluation.json, evaluation.md, plots/
  6 report       prints the table; WORKDIR/overlays/*.png (CT, reference, prediction); copies nnU-Net's
                 training curve to WORKDIR/progress.png

nnUNet_raw/nnUNet_preprocessed/nnUNet_results are set to folders under WORKDIR, nnUNet_compile=f on CPU and
nnUNet_extTrainer to this plugin's trainers. Uses the GPU when torch sees one, else the CPU. Re-running
reuses every finished step (delete a step's output to redo it); an interrupted training resumes (--c).
Exit code 0 on success, otherwise 1 with the failed step named.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

DATASET_ID = 990
DATASET_NAME = "SyntheticCT"
CONFIGURATION = "3d_fullres"
FOLD = "0"
TRAINERS = {"uc3dunet": "nnUNetTrainerUC_demo", "uxnet": "nnUNetTrainerUXNet_demo"}
BUDGET_ENV = "nnunetv2_uc_demo_train_seconds"  # read by trainers/demo_trainers.py
MIN_TRAIN_S = 20.0
#: share of --minutes kept for what follows training (final validation, prediction, evaluation)
AFTER_TRAINING_SHARE = 0.3


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
        return f"Dataset{DATASET_ID:03d}_{DATASET_NAME}"

    @property
    def raw_dataset(self) -> Path:
        return self.raw / self.dataset

    @property
    def plans_file(self) -> Path:
        return self.preprocessed / self.dataset / "nnUNetPlans.json"

    @property
    def fold_dir(self) -> Path:
        return self.results / self.dataset / f"{self.trainer}__nnUNetPlans__{CONFIGURATION}" / f"fold_{FOLD}"

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
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def pipeline_env(paths: DemoPaths, device: str) -> dict[str, str]:
    """The process environment for every step: nnU-Net folders, compile off on CPU, the plugin's trainers."""
    from nnunetv2_uc.registration import ENV_VAR, ext_trainer_value

    env = dict(os.environ)
    env.update({
        "nnUNet_raw": str(paths.raw), "nnUNet_preprocessed": str(paths.preprocessed),
        "nnUNet_results": str(paths.results), ENV_VAR: ext_trainer_value(os.environ.get(ENV_VAR)),
    })
    if device == "cpu":
        env["nnUNet_compile"] = "f"
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


def dataset_mismatch(paths: DemoPaths, args: argparse.Namespace) -> str | None:
    """Why the synthetic dataset already in the work dir does not match --seed/--cases/--test-cases (None if
    it matches or does not exist yet)."""
    try:
        info = json.loads((paths.raw_dataset / "dataset.json").read_text())
    except (OSError, ValueError):
        return None
    found = (info.get("synthetic_seed"), info.get("numTraining"), info.get("numTest"))
    wanted = (args.seed, args.cases, args.test_cases)
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

def build_steps(args: argparse.Namespace, paths: DemoPaths, device: str, clock: Callable[[], float]) -> list[Step]:
    """The six steps in order. ``clock()`` returns the seconds spent so far (for the training budget)."""
    uc = [sys.executable, "-m", "nnunetv2_uc"]
    ds = str(DATASET_ID)

    def train_command() -> list[str]:
        command = [executable("nnUNetv2_train"), ds, CONFIGURATION, FOLD, "-tr", paths.trainer, "-device", device]
        if (paths.fold_dir / "checkpoint_latest.pth").is_file():
            command.append("--c")  # resume an interrupted training
        return command

    def train_env() -> dict[str, str]:
        return {BUDGET_ENV: f"{training_budget_s(args.minutes, clock()):.0f}"}

    def mark_evaluated() -> None:
        paths.evaluated_marker.write_text(str(paths.predictions) + "\n")

    return [
        Step("synth", f"synthetic dataset {paths.dataset}", lambda: (paths.raw_dataset / "dataset.json").is_file(),
             lambda: uc + ["synth", "--dataset-id", ds, "--cases", str(args.cases), "--test-cases",
                           str(args.test_cases), "--seed", str(args.seed), "--name", DATASET_NAME,
                           "--raw-dir", str(paths.raw)]),
        Step("plan", "fingerprint, plans and preprocessing (3d_fullres)", lambda: preprocessing_complete(paths),
             lambda: [executable("nnUNetv2_plan_and_preprocess"), "-d", ds, "-c", CONFIGURATION,
                      "-np", str(args.processes), "--verify_dataset_integrity"]),
        Step("train", f"{paths.trainer}, fold {FOLD}, on {device}",
             lambda: (paths.fold_dir / "checkpoint_final.pth").is_file(), train_command, train_env),
        Step("predict", "test cases (imagesTs)", lambda: predictions_complete(paths),
             lambda: [executable("nnUNetv2_predict"), "-i", str(paths.raw_dataset / "imagesTs"),
                      "-o", str(paths.predictions), "-d", ds, "-c", CONFIGURATION, "-f", FOLD,
                      "-tr", paths.trainer, "-device", device, "-npp", str(args.processes),
                      "-nps", str(args.processes)]),
        Step("evaluate", "paper metrics on the test cases", lambda: evaluation_current(paths),
             lambda: uc + ["evaluate", "--gt", str(paths.raw_dataset / "labelsTs"), "--pred", str(paths.predictions),
                           "--dataset-json", str(paths.raw_dataset / "dataset.json"),
                           "-o", str(paths.evaluation_json), "--table", str(paths.evaluation_table),
                           "--plots", str(paths.plots), "-j", str(args.processes), "--overwrite"],
             before=lambda: paths.evaluated_marker.unlink(missing_ok=True), after=mark_evaluated),
        Step("report", "table, overlays and training curve", lambda: False, None,
             after=lambda: report(paths)),
    ]


def training_budget_s(minutes: float, spent_s: float) -> float:
    """Seconds for nnUNetv2_train: what is left of ``minutes`` after the steps so far, minus a reserve for
    the final validation, prediction and evaluation; never below MIN_TRAIN_S."""
    total = minutes * 60.0
    return max(MIN_TRAIN_S, total * (1.0 - AFTER_TRAINING_SHARE) - spent_s)


def write_image_overlay(image_file: Path, gt_file: Path, pred_file: Path, label_names: dict[int, str],
                        out_file: Path) -> None:
    """CT (soft-tissue window) with the reference and the prediction side by side, on the axial slice with the
    most reference foreground."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    import SimpleITK as sitk
    from matplotlib.patches import Patch

    from nnunetv2_uc.evaluation.plots import label_colours

    image, gt, pred = (sitk.GetArrayFromImage(sitk.ReadImage(str(f))) for f in (image_file, gt_file, pred_file))
    z = int(np.argmax((gt > 0).sum(axis=(1, 2))))
    colours = label_colours(sorted(label_names))
    figure, axes = plt.subplots(1, 2, figsize=(6.4, 3.5))
    for axis, seg, title in ((axes[0], gt[z], "reference"), (axes[1], pred[z], "prediction")):
        axis.imshow(np.clip(image[z], -160, 240), cmap="gray", interpolation="bilinear")
        rgba = np.zeros(seg.shape + (4,))
        for label, colour in colours.items():
            rgba[seg == label] = (*colour[:3], 0.45)
        axis.imshow(rgba, interpolation="nearest")
        axis.set_title(f"{title} (slice {z})", fontsize=9)
        axis.axis("off")
    figure.legend(handles=[Patch(facecolor=colours[l], label=n) for l, n in sorted(label_names.items())],
                  loc="lower center", ncol=len(label_names), fontsize=8, frameon=False)
    figure.suptitle(out_file.stem, fontsize=9)
    figure.tight_layout(rect=(0, 0.07, 1, 1))
    figure.savefig(out_file, dpi=80)
    plt.close(figure)


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
    """Run the steps in order, reusing finished ones. Returns 0, or 1 after naming the failed step."""
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
        if code != 0:
            status(index, len(steps), step, f"FAILED ({detail}); see the output above. Fix it and re-run the "
                                            f"demo: finished steps are reused")
            return 1
        if not dry_run:
            status(index, len(steps), step, f"done in {time.perf_counter() - started:.0f} s")
    return 0


# ----------------------------------------------------------------------------- CLI

def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--arch", choices=sorted(TRAINERS), default="uc3dunet",
                        help="network to train (default uc3dunet)")
    parser.add_argument("--workdir", default="demo", help="folder for all data, models and results (default ./demo)")
    parser.add_argument("--minutes", type=float, default=10.0,
                        help="time budget for the whole demo; training gets what the other steps leave (default 10)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                        help="auto: the GPU if torch sees one, else the CPU")
    parser.add_argument("--cases", type=int, default=24, help="synthetic training cases (default 24)")
    parser.add_argument("--test-cases", type=int, default=6, help="synthetic held-out test cases (default 6)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic data (default 0)")
    parser.add_argument("--trainer", default=None,
                        help="override the trainer class name (advanced/testing, e.g. nnUNetTrainerUC_tiny)")
    parser.add_argument("--processes", type=int, default=2, help="worker processes for nnU-Net steps (default 2)")
    parser.add_argument("--dry-run", action="store_true",
                        help="list the steps and commands (and which are already done) without running them")


def run(args: argparse.Namespace) -> int:
    if args.minutes <= 0 or args.cases < 5 or args.test_cases < 1:
        print("demo: need --minutes > 0, --cases >= 5 (nnU-Net's 5-fold split) and --test-cases >= 1")
        return 1
    started = time.perf_counter()
    workdir = Path(args.workdir).resolve()
    paths = DemoPaths(workdir, args.trainer or TRAINERS[args.arch])
    mismatch = dataset_mismatch(paths, args)
    if mismatch:
        print(f"demo: {mismatch}")
        return 1
    device = pick_device(args.device)
    if not args.dry_run:
        workdir.mkdir(parents=True, exist_ok=True)
    print(f"demo: work dir {workdir}, trainer {paths.trainer}, device {device}, budget {args.minutes:g} min",
          flush=True)
    steps = build_steps(args, paths, device, clock=lambda: time.perf_counter() - started)
    code = run_pipeline(steps, pipeline_env(paths, device), args.dry_run)
    if code == 0 and not args.dry_run:
        print(f"demo: finished in {(time.perf_counter() - started) / 60:.1f} min", flush=True)
    return code
