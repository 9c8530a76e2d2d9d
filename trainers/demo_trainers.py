"""Time-budgeted trainers for `nnunetv2_uc demo` (DEMO ONLY: short schedules on small synthetic data).

``nnUNetTrainerUC_demo`` / ``nnUNetTrainerUXNet_demo`` keep everything of the plugin trainers (network built
from the plans, AdamW + poly LR, nnU-Net's loss, sampling and augmentation) and change only what a
minutes-long run on 2 CPU cores needs:

- a fixed, small patch and batch, and on CPU a narrower network (written into the plans, so nnUNetv2_predict
  builds the same network);
- AdamW at 2e-3 (the plugin recipe's 5e-4 is tuned for 1000 x 250 iterations);
- 20 epochs (poly LR over 20 epochs; fewer only if the budget cannot pay for 20 one-iteration epochs) of a
  length fitted to a wall-clock budget: after nnU-Net's
  ``on_train_start`` the trainer times a few real training iterations and sets the iterations per epoch
  (1..250, plus 2 validation iterations) so that training ends within ``$nnunetv2_uc_demo_train_seconds``
  seconds of the trainer's start (default 300); before every epoch the count is re-fitted to the time left,
  so a machine that slows down (or speeds up) mid-run still finishes on time;
- no mirroring (neither as augmentation nor as test-time augmentation in the final validation): the
  synthetic anatomy is lateralised and a short schedule learns faster without it.

Use the regular trainers (``nnUNetTrainerUC``, ``nnUNetTrainerUXNet``) for real data.
"""
from __future__ import annotations

import os
import statistics
from time import perf_counter

import torch

from nnunetv2_uc.trainers.base import merge_network_kwargs
from nnunetv2_uc.trainers.plans_preparation import FIXED_PATCH_KEY
from nnunetv2_uc.trainers.uc_trainers import nnUNetTrainerUC
from nnunetv2_uc.trainers.uxnet_trainers import nnUNetTrainerUXNet

BUDGET_ENV = "nnunetv2_uc_demo_train_seconds"
DEFAULT_BUDGET_S = 300.0
CALIBRATION_STEPS = 3
DEMO_EPOCHS = 20
MAX_ITERATIONS = 250  # nnU-Net's default epoch length caps an epoch on fast machines
EPOCH_OVERHEAD_S = 1.5  # per epoch besides the iterations: logging, progress.png, checkpoint_best


def train_budget_seconds() -> float:
    """The training budget from ``$nnunetv2_uc_demo_train_seconds`` (seconds, > 0)."""
    raw = os.environ.get(BUDGET_ENV)
    if raw is None:
        return DEFAULT_BUDGET_S
    value = float(raw)
    if value <= 0:
        raise ValueError(f"{BUDGET_ENV} must be a positive number of seconds, got {raw!r}")
    return value


def epochs_for_budget(remaining_s: float, seconds_per_iteration: float, val_iterations: int,
                      nominal: int = DEMO_EPOCHS) -> int:
    """``nominal`` epochs, or fewer (at least 1) when the budget cannot pay for that many one-iteration epochs."""
    cheapest_epoch = seconds_per_iteration * (1 + 0.5 * val_iterations) + EPOCH_OVERHEAD_S
    return max(1, min(nominal, int(max(remaining_s, 0.0) // cheapest_epoch)))


def iterations_for_epoch(remaining_s: float, remaining_epochs: int, seconds_per_iteration: float,
                         val_iterations: int, maximum: int = MAX_ITERATIONS) -> int:
    """Training iterations per epoch so that the remaining epochs share the remaining time equally
    (a validation iteration counts as half a training iteration); between 1 and ``maximum``."""
    share = max(remaining_s, 0.0) / max(remaining_epochs, 1)
    fitted = int(share / max(seconds_per_iteration, 1e-6) - 0.5 * val_iterations)
    return min(maximum, max(1, fitted))


class DemoScheduleMixin:
    """Fixed small patch, short epochs and a wall-clock-fitted epoch count (see the module docstring)."""

    demo_patch_size: tuple[int, int, int] = (32, 64, 64)
    demo_batch_size: int = 2
    demo_epochs: int = DEMO_EPOCHS
    demo_val_iterations: int = 2
    demo_initial_lr: float = 2e-3  # AdamW; 4x the plugin recipe's 5e-4, for a few hundred iterations

    #: on CPU the network is narrowed to these kwargs (merged over the paper defaults); on a GPU the paper width
    demo_cpu_network_kwargs: dict = {}

    @classmethod
    def adjust_plans(cls, plans: dict, configuration: str, device: torch.device) -> None:
        """Write the demo patch, batch and (on CPU) network width into the plans before the trainer reads them;
        the trainer saves them to plans.json, so nnUNetv2_predict builds the same network."""
        super().adjust_plans(plans, configuration, device)
        config = plans.get("configurations", {}).get(configuration)
        if config is None:
            return  # the parent trainer reports the missing configuration with the fix
        config["patch_size"] = list(cls.demo_patch_size)
        config["batch_size"] = cls.demo_batch_size
        config[FIXED_PATCH_KEY] = True
        if device.type == "cpu" and cls.demo_cpu_network_kwargs:
            merge_network_kwargs(plans, configuration, cls.registry_entry, cls.demo_cpu_network_kwargs)

    def configure_recipe(self) -> None:
        super().configure_recipe()
        self.num_epochs = self.demo_epochs
        self.num_iterations_per_epoch = 20  # replaced by the fitted count in on_train_start
        self.num_val_iterations_per_epoch = self.demo_val_iterations
        self.initial_lr = self.demo_initial_lr
        self.save_every = 5
        self.demo_budget_s = train_budget_seconds()
        self.demo_started = perf_counter()

    def configure_rotation_dummyDA_mirroring_and_inital_patch_size(self):
        rotation, dummy_2d, initial_patch, _ = super().configure_rotation_dummyDA_mirroring_and_inital_patch_size()
        self.inference_allowed_mirroring_axes = None
        return rotation, dummy_2d, initial_patch, None

    def on_train_start(self) -> None:
        super().on_train_start()
        self._fit_epochs_to_budget()
        self.demo_last_epoch_start: float | None = None

    def on_train_epoch_start(self) -> None:
        super().on_train_epoch_start()
        self._pace_epoch()

    def _pace_epoch(self) -> None:
        """Re-size this epoch's iterations from the previous epoch's duration so training ends on time even
        when the machine gets slower or faster (the epoch count, and so the LR schedule, stays fixed)."""
        now = perf_counter()
        previous_start, self.demo_last_epoch_start = self.demo_last_epoch_start, now
        if previous_start is None:
            return
        iterations_run = self.num_iterations_per_epoch + 0.5 * self.num_val_iterations_per_epoch
        per_iteration = (now - previous_start) / iterations_run
        remaining = self.demo_budget_s - (now - self.demo_started)
        iterations = iterations_for_epoch(remaining, self.num_epochs - self.current_epoch, per_iteration,
                                          self.num_val_iterations_per_epoch)
        if iterations != self.num_iterations_per_epoch:
            self.print_to_log_file(f"[nnunetv2_uc demo] {per_iteration:.2f} s per iteration, {remaining:.0f} s left "
                                   f"-> {iterations} iterations per epoch")
            self.num_iterations_per_epoch = iterations

    def _fit_epochs_to_budget(self) -> None:
        """Time real training iterations (they count as training) and size the epochs to the budget."""
        self.network.train()
        durations = []
        for _ in range(CALIBRATION_STEPS):
            t0 = perf_counter()
            self.train_step(next(self.dataloader_train))
            if self.device.type == "cuda":
                torch.cuda.synchronize()
            durations.append(perf_counter() - t0)
        per_iteration = statistics.median(durations[1:])
        remaining = self.demo_budget_s - (perf_counter() - self.demo_started)
        if self.current_epoch == 0:  # a resumed run keeps its schedule
            self.num_epochs = epochs_for_budget(remaining, per_iteration, self.num_val_iterations_per_epoch,
                                                self.demo_epochs)
            self.lr_scheduler.max_steps = self.num_epochs
        self.num_iterations_per_epoch = iterations_for_epoch(
            remaining, self.num_epochs - self.current_epoch, per_iteration, self.num_val_iterations_per_epoch)
        self.print_to_log_file(
            f"[nnunetv2_uc demo] {per_iteration:.2f} s per training iteration; budget {self.demo_budget_s:.0f} s, "
            f"{remaining:.0f} s left -> {self.num_epochs} epochs x {self.num_iterations_per_epoch} iterations "
            f"(patch {list(self.configuration_manager.patch_size)}, batch {self.batch_size}); iterations per "
            f"epoch are re-fitted to the time left after every epoch"
        )


class nnUNetTrainerUC_demo(DemoScheduleMixin, nnUNetTrainerUC):
    """uC 3DU-Net for `nnunetv2_uc demo`: time-budgeted short schedule; DEMO ONLY.

    On CPU the widths are 2/3 of the paper's (f0..f4 = 16..256, decoder 16; 9.6 M instead of 21.7 M parameters,
    about 2.5x faster per iteration); the topology (uC levels 0-2, gated up-blocks) is the paper's.
    """

    demo_cpu_network_kwargs = {"features": [16, 32, 64, 128, 256, 16]}


class nnUNetTrainerUXNet_demo(DemoScheduleMixin, nnUNetTrainerUXNet):
    """3D UX-Net for `nnunetv2_uc demo`: time-budgeted short schedule; DEMO ONLY.

    On CPU the stage widths are halved (24..192, hidden 384); depths and the 7^3 depthwise kernels are the paper's.
    """

    demo_cpu_network_kwargs = {"feature_sizes": [24, 48, 96, 192], "hidden_size": 384}
