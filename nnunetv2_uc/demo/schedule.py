"""The demo's fixed amount of work and its time estimate (pure arithmetic: no torch, no nnU-Net).

`nnunetv2_uc demo` trains a fixed schedule (epochs x iterations) that reliably reaches its Dice on the
synthetic data whatever the machine's speed. Time is only estimated: the demo trainer times a few real
iterations and one inference tile, and this module turns those measurements into the expected seconds of
what is left (training, nnU-Net's final validation, prediction of the test cases, evaluation), checks them
against the user's optional ``--minutes`` bound and words the result. ``pipeline.py`` (which starts the
trainer) and ``trainers/demo_trainers.py`` (which measures) both read the environment variables' names from here
(this module stays free of heavy imports).
"""
from __future__ import annotations

import math
import os
import statistics
from dataclasses import dataclass
from typing import Callable, Mapping

from nnunetv2_uc.deprecation import deprecated

#: seconds left of ``--minutes`` when the training step starts (unset: no bound)
SECONDS_LEFT_ENV = "NNUNETV2_UC_DEMO_SECONDS_LEFT"
#: what the trainer does when the estimate exceeds the seconds left: "stop" or "fewer" (fewer iterations)
WHEN_SHORT_ENV = "NNUNETV2_UC_DEMO_WHEN_SHORT"
#: test cases the demo predicts after training (part of the estimate; 0 when the trainer runs on its own)
TEST_CASES_ENV = "NNUNETV2_UC_DEMO_TEST_CASES"
WHEN_SHORT_CHOICES = ("stop", "fewer")

#: exit code of nnUNetv2_train when the demo trainer stops before training because the bound is too short
STOPPED_EXIT_CODE = 75  # EX_TEMPFAIL: nothing is wrong, it needs more time

#: per epoch besides its iterations: validation batches' bookkeeping, log, progress.png, checkpoint_best
EPOCH_OVERHEAD_S = 1.0
#: per predicted case besides its sliding-window tiles: preprocessing, resampling, writing NIfTI
CASE_OVERHEAD_S = 1.5
#: starting nnUNetv2_predict and the evaluation/report steps (imports, file I/O)
AFTER_TRAINING_FIXED_S = 20.0


def environment_value(name: str, default: str | None = None, environ: Mapping[str, str] = os.environ) -> str | None:
    """The demo variable ``name``; its deprecated lowercase spelling still works for one release, with a message."""
    if name in environ:
        return environ[name]
    if name.lower() in environ:
        deprecated(f"the environment variable {name.lower()}", name)
        return environ[name.lower()]
    return default


@dataclass(frozen=True)
class Schedule:
    """The fixed amount of work: ``epochs`` x ``iterations`` training batches, plus validation batches."""

    epochs: int
    iterations: int
    val_iterations: int

    @property
    def total_iterations(self) -> int:
        return self.epochs * self.iterations


@dataclass(frozen=True)
class Measurement:
    """Seconds one training iteration (data loading included) and one inference tile took on this machine."""

    seconds_per_iteration: float
    seconds_per_tile: float


@dataclass(frozen=True)
class Estimate:
    """Expected seconds of what is left of the demo once training starts."""

    training_s: float
    after_training_s: float  # final validation + prediction + evaluation

    @property
    def total_s(self) -> float:
        return self.training_s + self.after_training_s


@dataclass(frozen=True)
class Decision:
    """What the trainer does: ``action`` is "full" (the whole schedule), "fewer" or "stop"."""

    action: str
    iterations: int
    estimate: Estimate  # for the iterations that will run
    needed: Estimate    # for the full schedule
    seconds_left: float | None
    message: str


def median_duration(work: Callable[[], object], repeats: int, clock: Callable[[], float]) -> float:
    """Median seconds of ``repeats`` calls of ``work`` after one untimed warm-up call (first-call setup such as
    oneDNN primitive creation is not representative). ``clock`` returns seconds and must include any device
    synchronisation the work needs."""
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    work()
    durations = []
    for _ in range(repeats):
        start = clock()
        work()
        durations.append(clock() - start)
    return statistics.median(durations)


def fastest_thread_count(seconds_per_iteration: Callable[[int], float], threads: int) -> tuple[int, dict[int, float]]:
    """The thread count to train with: start from ``threads`` and halve while that makes an iteration faster.

    On a CPU that other processes share, fewer threads are often faster: with every core busy, each parallel
    region waits for its slowest thread. ``seconds_per_iteration(n)`` times iterations with ``n`` threads.
    Returns the chosen count and every timing, ``{threads: seconds}``.
    """
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    timings = {threads: seconds_per_iteration(threads)}
    best = threads
    while best > 1:
        candidate = best // 2
        timings[candidate] = seconds_per_iteration(candidate)
        if timings[candidate] >= timings[best]:
            break
        best = candidate
    return best, timings


def describe_threads(chosen: int, timings: dict[int, float]) -> str:
    """One line for the log: every timing and the choice."""
    tried = ", ".join(f"{n} thread{'s' * (n != 1)} {s:.2f} s" for n, s in sorted(timings.items(), reverse=True))
    return f"seconds per training iteration with {tried}: training with {chosen} thread{'s' * (chosen != 1)}"


def epoch_seconds(iterations: int, val_iterations: int, seconds_per_iteration: float) -> float:
    """One epoch: training iterations, validation batches (a forward pass: a third of an iteration), overhead."""
    return seconds_per_iteration * (iterations + val_iterations / 3.0) + EPOCH_OVERHEAD_S


def inference_seconds(n_cases: int, tiles_per_case: int, seconds_per_tile: float) -> float:
    """Sliding-window prediction of ``n_cases`` cases of ``tiles_per_case`` tiles each."""
    return n_cases * (tiles_per_case * seconds_per_tile + CASE_OVERHEAD_S)


def estimate(schedule: Schedule, iterations: int, epochs_left: int, measurement: Measurement,
             cases_after: int, tiles_per_case: int) -> Estimate:
    """Seconds for ``epochs_left`` epochs of ``iterations`` and the inference on ``cases_after`` cases."""
    training = epochs_left * epoch_seconds(iterations, schedule.val_iterations, measurement.seconds_per_iteration)
    after = AFTER_TRAINING_FIXED_S + inference_seconds(cases_after, tiles_per_case, measurement.seconds_per_tile)
    return Estimate(training, after)


def fitting_iterations(schedule: Schedule, epochs_left: int, measurement: Measurement, seconds_left: float,
                       after_training_s: float) -> int:
    """The most iterations per epoch (1..schedule.iterations) whose training still ends with
    ``after_training_s`` to spare; 1 when not even that fits."""
    per_epoch = max(seconds_left - after_training_s, 0.0) / max(epochs_left, 1)
    room = per_epoch - EPOCH_OVERHEAD_S - measurement.seconds_per_iteration * schedule.val_iterations / 3.0
    fitted = math.floor(room / max(measurement.seconds_per_iteration, 1e-9))
    return max(1, min(schedule.iterations, fitted))


def minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min"


#: what follows training: with and without nnU-Net's final validation (the demo trainer skips it on the CPU)
AFTER_WITH_VALIDATION = "the final validation, prediction and evaluation"
AFTER_WITHOUT_VALIDATION = "prediction and evaluation"


def decide(schedule: Schedule, epochs_left: int, measurement: Measurement, cases_after: int, tiles_per_case: int,
           seconds_left: float | None, when_short: str, after: str = AFTER_WITH_VALIDATION) -> Decision:
    """Run the full schedule when it fits ``seconds_left`` (or there is no bound); otherwise stop or, with
    ``when_short == "fewer"``, shorten every epoch to what fits, saying that Dice will be lower."""
    if when_short not in WHEN_SHORT_CHOICES:
        raise ValueError(f"when_short must be one of {WHEN_SHORT_CHOICES}, got {when_short!r}")
    needed = estimate(schedule, schedule.iterations, epochs_left, measurement, cases_after, tiles_per_case)
    plan = (f"{epochs_left} epochs x {schedule.iterations} iterations at {measurement.seconds_per_iteration:.2f} s "
            f"per iteration: training about {minutes(needed.training_s)}, then about "
            f"{minutes(needed.after_training_s)} for {after}: about "
            f"{minutes(needed.total_s)} in all")
    if seconds_left is None or needed.total_s <= seconds_left:
        bound = "" if seconds_left is None else f" (within the {minutes(seconds_left)} left of --minutes)"
        return Decision("full", schedule.iterations, needed, needed, seconds_left, plan + bound)
    left = f"only {minutes(seconds_left)} are" if seconds_left > 0 else "no time is"
    short = (f"this machine needs about {math.ceil(needed.total_s / 60)} min for a reliable result "
             f"({plan}), but {left} left of --minutes")
    if when_short == "stop":
        return Decision("stop", 0, needed, needed, seconds_left,
                        short + "; stopping before training. Re-run with a larger --minutes (or none), or add "
                                "--allow-fewer-iterations to train fewer iterations (Dice will be lower)")
    iterations = fitting_iterations(schedule, epochs_left, measurement, seconds_left, needed.after_training_s)
    fewer = estimate(schedule, iterations, epochs_left, measurement, cases_after, tiles_per_case)
    over = "" if fewer.total_s <= seconds_left else f"; even that takes about {minutes(fewer.total_s)}"
    return Decision("fewer", iterations, fewer, needed, seconds_left,
                    short + f"; continuing with {iterations} of {schedule.iterations} iterations per epoch "
                            f"(--allow-fewer-iterations): Dice will be lower than with the full schedule{over}")


def progress(epoch_done: int, epochs: int, mean_epoch_s: float, planned_epoch_s: float,
             after_training_s: float, after: str = AFTER_WITH_VALIDATION) -> str:
    """One line after an epoch: how far, and the time left. Training from the measured epochs; what follows from
    the up-front estimate, scaled by how much slower (or faster) the epochs are than planned."""
    left = (epochs - epoch_done) * mean_epoch_s
    after_s = after_training_s * mean_epoch_s / max(planned_epoch_s, 1e-9)
    return (f"epoch {epoch_done}/{epochs} done ({mean_epoch_s:.1f} s per epoch): about {minutes(left)} of "
            f"training left, then about {minutes(after_s)} for {after}")
