"""Fixed-schedule trainers for `nnunetv2_uc demo` (DEMO ONLY: a short schedule on small synthetic data).

``nnUNetTrainerUC_demo`` / ``nnUNetTrainerUXNet_demo`` keep everything of the plugin trainers (network built
from the plans, AdamW + poly LR, nnU-Net's loss, sampling and augmentation) and change only what a
minutes-long run on a few CPU cores needs:

- a fixed, small patch and batch, and on CPU a narrower network (same topology; written into the plans, so
  nnUNetv2_predict builds the same network);
- a fixed amount of work, ``demo_epochs`` x ``demo_iterations`` (poly LR over the epochs), measured to reach
  the demo's Dice on the synthetic data whatever the machine's speed, and a higher AdamW learning rate than
  the plugin recipe's 5e-4 (tuned for 1000 x 250 iterations);
- no mirroring (neither as augmentation nor as test-time augmentation): the synthetic anatomy is lateralised
  and a short schedule learns faster without it;
- on the CPU, the thread count that trains fastest on this machine now: nnUNetv2_train uses every core, and
  with another process busy on the same cores fewer threads are faster (measured before training);
- on the CPU, no final validation of the fold (the demo predicts and evaluates its held-out test cases instead).

Time is estimated, never cut: before training the trainer times a few real training iterations and one
inference tile, prints the expected time of the rest of the demo (training, final validation on a GPU, prediction,
evaluation) and prints the time left after every epoch. With ``$NNUNETV2_UC_DEMO_SECONDS_LEFT`` set (the
demo's ``--minutes``) and an estimate above it, it stops before training (exit code 75) or, with
``$NNUNETV2_UC_DEMO_WHEN_SHORT=fewer``, trains fewer iterations per epoch and says that Dice will be lower.

Use the regular trainers (``nnUNetTrainerUC``, ``nnUNetTrainerUXNet``) for real data.
"""
from __future__ import annotations

import json
import os
import sys
from dataclasses import asdict
from time import perf_counter

import numpy as np
import torch
from nnunetv2.inference.sliding_window_prediction import compute_steps_for_sliding_window

from nnunetv2_uc.demo import schedule as demo_schedule
from nnunetv2_uc.demo.schedule import Decision, Measurement, Schedule
from nnunetv2_uc.planning.trainer_plans import FIXED_PATCH_KEY
from nnunetv2_uc.trainers.paper_trainers import nnUNetTrainerUC, nnUNetTrainerUXNet

CALIBRATION_STEPS = 3  # timed training iterations (after one warm-up); they train the network like any other
ESTIMATE_FILE = "demo_estimate.json"  # in the fold folder: the measurement and the decision


def _env_seconds_left() -> float | None:
    raw = demo_schedule.environment_value(demo_schedule.SECONDS_LEFT_ENV)
    if raw is None or raw == "":
        return None
    value = float(raw)
    if value <= 0:
        raise ValueError(f"{demo_schedule.SECONDS_LEFT_ENV} must be a positive number of seconds, got {raw!r}")
    return value


def _env_when_short() -> str:
    value = demo_schedule.environment_value(demo_schedule.WHEN_SHORT_ENV, "stop")
    if value not in demo_schedule.WHEN_SHORT_CHOICES:
        raise ValueError(f"{demo_schedule.WHEN_SHORT_ENV} must be one of {demo_schedule.WHEN_SHORT_CHOICES}, "
                         f"got {value!r}")
    return value


def tiles_per_case(image_shape: list[float], patch: list[int]) -> int:
    """Sliding-window tiles (step 0.5, nnU-Net's default) for an image of ``image_shape`` voxels."""
    shape = [max(int(round(s)), p) for s, p in zip(image_shape, patch)]
    return int(np.prod([len(steps) for steps in compute_steps_for_sliding_window(shape, patch, 0.5)]))


class DemoScheduleMixin:
    """Fixed small patch, a fixed schedule and an up-front time estimate (see the module docstring)."""

    demo_patch_size: tuple[int, int, int] = (32, 64, 64)
    demo_batch_size: int = 2
    demo_epochs: int = 20
    demo_iterations: int = 20
    demo_val_iterations: int = 2
    demo_initial_lr: float = 2e-3  # AdamW; 4x the plugin recipe's 5e-4, for a few hundred iterations

    #: on CPU the network is narrowed to these kwargs (merged over the paper defaults); on a GPU the paper width
    demo_cpu_network_kwargs: dict = {}

    @classmethod
    def demo_schedule(cls) -> Schedule:
        return Schedule(cls.demo_epochs, cls.demo_iterations, cls.demo_val_iterations)

    @classmethod
    def adjust_plans(cls, plans: dict, configuration: str, device: torch.device) -> None:
        """Write the demo patch and batch into the plans before the trainer reads them; the trainer saves them
        to plans.json, so nnUNetv2_predict builds the same network."""
        super().adjust_plans(plans, configuration, device)
        config = plans.get("configurations", {}).get(configuration)
        if config is None:
            return  # the parent trainer reports the missing configuration with the fix
        config["patch_size"] = list(cls.demo_patch_size)
        config["batch_size"] = cls.demo_batch_size
        config[FIXED_PATCH_KEY] = True

    @classmethod
    def network_overrides(cls, device: torch.device) -> dict:
        """On CPU the demo trains a narrower network (``demo_cpu_network_kwargs``)."""
        overrides = super().network_overrides(device)
        return {**overrides, **cls.demo_cpu_network_kwargs} if device.type == "cpu" else overrides

    def configure_recipe(self) -> None:
        super().configure_recipe()
        self.num_epochs = self.demo_epochs
        self.num_iterations_per_epoch = self.demo_iterations
        self.num_val_iterations_per_epoch = self.demo_val_iterations
        self.initial_lr = self.demo_initial_lr
        self.save_every = 5
        # read now, so a bad value fails before any work
        self.demo_seconds_left = _env_seconds_left()
        self.demo_when_short = _env_when_short()
        self.demo_cases_after = int(demo_schedule.environment_value(demo_schedule.TEST_CASES_ENV, "0"))
        self.demo_started = perf_counter()

    def configure_rotation_dummyDA_mirroring_and_inital_patch_size(self):
        rotation, dummy_2d, initial_patch, _ = super().configure_rotation_dummyDA_mirroring_and_inital_patch_size()
        self.inference_allowed_mirroring_axes = None
        return rotation, dummy_2d, initial_patch, None

    # ------------------------------------------------------------------ estimate before training

    def on_train_start(self) -> None:
        super().on_train_start()
        self.demo_trained_now = True
        decision = self._decide()
        self._write_estimate(decision)
        self.print_to_log_file(f"[nnunetv2_uc demo] {decision.message}", also_print_to_console=True)
        if decision.action == "stop":
            self._stop_data_loaders()
            sys.exit(demo_schedule.STOPPED_EXIT_CODE)
        self.num_iterations_per_epoch = decision.iterations
        self.demo_after_training_s = decision.estimate.after_training_s
        self.demo_planned_epoch_s = decision.estimate.training_s / max(self.num_epochs - self.current_epoch, 1)
        self.demo_epoch_seconds: list[float] = []
        self.demo_epoch_clock = perf_counter()

    def _decide(self) -> Decision:
        measurement = self.measure()
        seconds_left = None
        if self.demo_seconds_left is not None:
            seconds_left = self.demo_seconds_left - (perf_counter() - self.demo_started)
        n_val_cases = len(self.do_split()[1]) if self._validates() else 0
        return demo_schedule.decide(
            self.demo_schedule(), self.num_epochs - self.current_epoch, measurement,
            cases_after=n_val_cases + self.demo_cases_after, tiles_per_case=self._tiles_per_case(),
            seconds_left=seconds_left, when_short=self.demo_when_short, after=self._after_training())

    def _validates(self) -> bool:
        """nnU-Net's final validation of the fold runs on a GPU; on the CPU the demo skips it (see
        ``perform_actual_validation``)."""
        return self.device.type != "cpu"

    def _after_training(self) -> str:
        return demo_schedule.AFTER_WITH_VALIDATION if self._validates() else demo_schedule.AFTER_WITHOUT_VALIDATION

    def perform_actual_validation(self, save_probabilities: bool = False) -> None:
        """On the CPU, right after training, skip nnU-Net's final validation of the fold (about a minute on 2 cores):
        the demo predicts and evaluates its held-out test cases next. On a GPU, and with ``nnUNetv2_train --val``,
        nnU-Net's validation."""
        if self._validates() or not getattr(self, "demo_trained_now", False):  # --val: validate as asked
            super().perform_actual_validation(save_probabilities)
            return
        self.print_to_log_file("[nnunetv2_uc demo] nnU-Net's final validation skipped on the CPU: the demo evaluates "
                               "its held-out test cases next (nnUNetv2_train ... --val runs it)",
                               also_print_to_console=True)

    def measure(self) -> Measurement:
        """Time real training iterations (they count as training) and one inference tile (batch 1). On the CPU,
        first choose the thread count that trains fastest on this machine now (``fastest_thread_count``)."""
        def clock() -> float:
            if self.device.type == "cuda":
                torch.cuda.synchronize()
            return perf_counter()

        def seconds_per_iteration(threads: int | None = None) -> float:
            if threads is not None:
                torch.set_num_threads(threads)
            return demo_schedule.median_duration(
                lambda: self.train_step(next(self.dataloader_train)), CALIBRATION_STEPS, clock)

        self.network.train()
        if self.device.type == "cpu":
            threads, timings = demo_schedule.fastest_thread_count(seconds_per_iteration, torch.get_num_threads())
            torch.set_num_threads(threads)
            self.demo_threads = {"chosen": threads, "seconds_per_iteration": timings}
            self.print_to_log_file("[nnunetv2_uc demo] " + demo_schedule.describe_threads(threads, timings),
                                   also_print_to_console=True)
            per_iteration = timings[threads]
        else:
            per_iteration = seconds_per_iteration()
        tile = torch.zeros((1, self.num_input_channels, *self.configuration_manager.patch_size), device=self.device)
        self.network.eval()
        with torch.no_grad():
            per_tile = demo_schedule.median_duration(lambda: self.network(tile), 2, clock)
        self.network.train()
        return Measurement(per_iteration, per_tile)

    def _tiles_per_case(self) -> int:
        return tiles_per_case(self.configuration_manager.median_image_size_in_voxels,
                              list(self.configuration_manager.patch_size))

    def _write_estimate(self, decision: Decision) -> None:
        record = {"action": decision.action, "iterations_per_epoch": decision.iterations,
                  "schedule": asdict(self.demo_schedule()) | {"epochs_left": self.num_epochs - self.current_epoch},
                  "estimate_s": {"training": decision.estimate.training_s,
                                 "after_training": decision.estimate.after_training_s},
                  "needed_s": {"training": decision.needed.training_s,
                               "after_training": decision.needed.after_training_s},
                  "seconds_left": decision.seconds_left, "message": decision.message,
                  "cpu_threads": getattr(self, "demo_threads", None)}
        with open(os.path.join(self.output_folder, ESTIMATE_FILE), "w") as handle:
            json.dump(record, handle, indent=2)

    def _stop_data_loaders(self) -> None:
        for loader in (self.dataloader_train, self.dataloader_val):
            finish = getattr(loader, "_finish", None)
            if finish is not None:
                finish()

    # ------------------------------------------------------------------ progress

    def on_epoch_end(self) -> None:
        finished = self.current_epoch + 1
        super().on_epoch_end()
        now = perf_counter()  # after nnU-Net's checkpoint and progress.png, which are part of an epoch's cost
        self.demo_epoch_seconds.append(now - self.demo_epoch_clock)
        self.demo_epoch_clock = now
        mean_epoch = float(np.mean(self.demo_epoch_seconds[-5:]))  # recent epochs: follows a changing load
        self.print_to_log_file("[nnunetv2_uc demo] " + demo_schedule.progress(
            finished, self.num_epochs, mean_epoch, self.demo_planned_epoch_s, self.demo_after_training_s,
            self._after_training()),
            also_print_to_console=True)


class nnUNetTrainerUC_demo(DemoScheduleMixin, nnUNetTrainerUC):
    """uC 3DU-Net for `nnunetv2_uc demo`: 20 x 32 iterations at AdamW 3e-3; DEMO ONLY.

    On CPU the widths are a third of the paper's (f0..f4 = 8..128, decoder 8; 2.4 M instead of 21.7 M parameters,
    about 2.8x cheaper per iteration than 2/3 of the width); the topology (uC levels 0-2, gated up-blocks) is the
    paper's. The narrow net first takes the spleen for kidney and sorts it out only after ~250-500 iterations (varies
    from run to run), so it needs more iterations than a wider one (20 x 20 was not enough; 20 x 32 and 20 x 40 held
    in every run, mean Dice 0.92-0.94), but the whole schedule still costs about half of what 2/3 of the width needs
    for the same Dice (docs/demo_schedule.md).
    """

    demo_iterations = 32
    demo_initial_lr = 3e-3
    demo_cpu_network_kwargs = {"features": [8, 16, 32, 64, 128, 8]}


class nnUNetTrainerUXNet_demo(DemoScheduleMixin, nnUNetTrainerUXNet):
    """3D UX-Net for `nnunetv2_uc demo`: 20 x 20 iterations at AdamW 3e-3; DEMO ONLY.

    On CPU the stage widths are a third of the paper's (16..128, hidden 256; about 2.4x cheaper per iteration than
    half width); depths and the 7^3 depthwise kernels are the paper's.
    """

    demo_iterations = 20
    demo_initial_lr = 3e-3
    demo_cpu_network_kwargs = {"feature_sizes": [16, 32, 64, 128], "hidden_size": 256}
