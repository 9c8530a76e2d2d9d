"""Training that survives a shared GPU cluster (issue #22): atomic checkpoints, checkpoints by time, a clean stop
on SIGTERM / SIGUSR1 and a resume that never trips over a broken checkpoint.

``ClusterSurvivalMixin`` is part of every plugin trainer (``PaperNetworkTrainer`` includes it):

- **Atomic checkpoints.** Every checkpoint (latest, best, final) is written by nnU-Net's ``save_checkpoint`` into a
  temporary file in the same folder, flushed to disk (fsync) and moved into place with ``os.replace``; a kill at
  any moment leaves the old or the new file, never a truncated one. Temporary files a kill left behind are removed
  when training starts.
- **Resume that reports.** ``nnUNetv2_train ... --c`` picks checkpoint_final -> latest -> best by existence;
  ``load_checkpoint`` here reads the chosen file and the ones after it (final -> latest -> best), names every one
  that does not load on stderr and in the training log, and resumes from the newest (highest epoch) that loads.
- **Checkpoints by time.** Besides nnU-Net's every ``save_every`` epochs, ``checkpoint_latest.pth`` is written after
  an epoch when more than ``$NNUNETV2_UC_CHECKPOINT_MINUTES`` minutes (default 30) have passed since the last one.
- **A clean stop on a signal.** On SIGTERM or SIGUSR1 (SLURM's ``--signal=B:USR1@120``) the trainer finishes the
  current iteration, writes ``checkpoint_latest.pth`` for the current epoch (resuming retrains that epoch),
  shuts the data-augmentation workers down and exits with ``STOPPED_BY_SIGNAL_EXIT_CODE`` (85). Under DDP every
  rank stops at the same iteration (the request is all-reduced after each step), rank 0 saves, all ranks exit.
"""
from __future__ import annotations

import glob
import os
import signal
import sys
import threading
from os.path import basename, dirname, isfile, join
from time import monotonic, perf_counter, sleep
from types import FrameType
from typing import Any

import torch
from torch import distributed as dist

CHECKPOINT_MINUTES_ENV = "NNUNETV2_UC_CHECKPOINT_MINUTES"
DEFAULT_CHECKPOINT_MINUTES = 30.0
#: exit code of a training that stopped cleanly on SIGTERM/SIGUSR1 after writing checkpoint_latest.pth; resume
#: with ``--c``. Not 75 (the demo's "needs more time"), not 128+N (killed by signal N).
STOPPED_BY_SIGNAL_EXIT_CODE = 85
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
#: TEST ONLY: seconds to sleep between writing a checkpoint's temporary file and moving it into place, so the fault
#: tests can kill the process in the middle of a checkpoint write. Never set it for real training.
TEST_SLOW_SAVE_ENV = "NNUNETV2_UC_TEST_SLOW_SAVE"
TEMP_MARKER = ".tmp-"
RESUME_ORDER = ("checkpoint_final.pth", "checkpoint_latest.pth", "checkpoint_best.pth")
REQUIRED_KEYS = ("network_weights", "optimizer_state", "logging", "current_epoch", "init_args")


class StopRequested(Exception):
    """Raised after a training iteration when a stop signal has arrived; caught in ``run_training``."""


def checkpoint_minutes() -> float:
    """``$NNUNETV2_UC_CHECKPOINT_MINUTES`` (default 30); a value <= 0 turns checkpoints by time off."""
    raw = os.environ.get(CHECKPOINT_MINUTES_ENV, "")
    if raw.strip() == "":
        return DEFAULT_CHECKPOINT_MINUTES
    try:
        return float(raw)
    except ValueError:
        raise ValueError(f"{CHECKPOINT_MINUTES_ENV} must be a number of minutes, got {raw!r}") from None


def _fsync_directory(folder: str) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return  # some file systems do not open directories; the rename is still atomic
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def temporary_name(filename: str) -> str:
    """The temporary file next to ``filename`` a checkpoint is written to before it is moved into place."""
    return join(dirname(filename), f".{basename(filename)}{TEMP_MARKER}{os.getpid()}")


def commit_file(temporary: str, filename: str) -> None:
    """Flush ``temporary`` to disk and move it onto ``filename`` atomically (same folder)."""
    with open(temporary, "rb") as handle:
        os.fsync(handle.fileno())
    slow = float(os.environ.get(TEST_SLOW_SAVE_ENV, "0") or 0)
    if slow > 0:  # TEST ONLY (see TEST_SLOW_SAVE_ENV): a window in which a kill finds a half-done write
        sleep(slow)
    os.replace(temporary, filename)
    _fsync_directory(dirname(filename) or ".")


def remove_stale_temporaries(folder: str) -> list[str]:
    """Remove the temporary checkpoint files a killed process left in ``folder``; returns their names."""
    removed = []
    for path in glob.glob(join(folder, f".*.pth{TEMP_MARKER}*")):
        try:
            os.remove(path)
            removed.append(basename(path))
        except OSError:
            pass
    return removed


def read_checkpoint(filename: str, device: torch.device) -> dict:
    """``torch.load`` of a trainer checkpoint; raises when it does not load or lacks what resuming needs."""
    checkpoint = torch.load(filename, map_location=device, weights_only=False)
    if not isinstance(checkpoint, dict):
        raise ValueError(f"not a checkpoint dict but {type(checkpoint).__name__}")
    missing = [key for key in REQUIRED_KEYS if key not in checkpoint]
    if missing:
        raise ValueError(f"missing {missing}")
    return checkpoint


def fallbacks(filename: str) -> list[str]:
    """The checkpoints to try after ``filename`` fails, in nnU-Net's resume order (final -> latest -> best)."""
    name = basename(filename)
    if name not in RESUME_ORDER:
        return []
    return [join(dirname(filename), other) for other in RESUME_ORDER[RESUME_ORDER.index(name) + 1:]]


class ClusterSurvivalMixin:
    """Atomic checkpoints, checkpoints by time, a clean stop on SIGTERM/SIGUSR1 (see the module docstring).

    Mixed into an ``nnUNetTrainer`` subclass; calls nnU-Net's methods and adds around them.
    """

    stop_exit_code = STOPPED_BY_SIGNAL_EXIT_CODE

    # ------------------------------------------------------------------ atomic checkpoints

    def save_checkpoint(self, filename: str) -> None:
        """nnU-Net's checkpoint, written to a temporary file in the same folder and moved into place."""
        if self.local_rank != 0 or self.disable_checkpointing:
            super().save_checkpoint(filename)  # nothing written (nnU-Net logs why where it matters)
            return
        started = perf_counter()
        temporary = temporary_name(filename)
        try:
            super().save_checkpoint(temporary)
            commit_file(temporary, filename)
        except BaseException:
            if isfile(temporary):
                os.remove(temporary)
            raise
        seconds = perf_counter() - started
        self._cluster_checkpoint_seconds = getattr(self, "_cluster_checkpoint_seconds", []) + [seconds]
        if basename(filename) == "checkpoint_latest.pth":
            self._cluster_last_latest = monotonic()
        self.print_to_log_file(f"[nnunetv2_uc] wrote {basename(filename)} (resumes at epoch {self.current_epoch + 1}) "
                               f"in {seconds:.2f} s", also_print_to_console=False)

    # ------------------------------------------------------------------ resume

    def load_checkpoint(self, filename_or_checkpoint: dict | str) -> None:
        """Load the newest checkpoint that loads, starting from the one nnU-Net chose (final -> latest -> best).

        A file that does not load is named on stderr and in the log and skipped. Among those that load, the one
        with the highest epoch wins (a kill while checkpoint_latest.pth was being replaced can leave a newer
        checkpoint_best.pth); on a tie nnU-Net's order decides.
        """
        if not isinstance(filename_or_checkpoint, str):
            super().load_checkpoint(filename_or_checkpoint)
            return
        failures, epochs = [], {}
        for candidate in [filename_or_checkpoint, *fallbacks(filename_or_checkpoint)]:
            if not isfile(candidate):
                continue
            try:
                epochs[candidate] = int(read_checkpoint(candidate, torch.device("cpu"))["current_epoch"])
            except Exception as error:  # noqa: BLE001 - any failure to read is reported by name and skipped
                failures.append(candidate)
                self._cluster_report(f"[nnunetv2_uc] checkpoint {candidate} does not load ({type(error).__name__}: "
                                     f"{str(error)[:200]}); skipping it")
        if not epochs:
            raise RuntimeError(f"no checkpoint loads: {failures or [filename_or_checkpoint]} (see the messages "
                               "above); remove them to start the fold from scratch")
        chosen = max(epochs, key=lambda path: epochs[path])  # first of the highest: nnU-Net's order on a tie
        if chosen != filename_or_checkpoint:
            why = "does not load" if filename_or_checkpoint in failures else f"epoch {epochs[filename_or_checkpoint]}"
            self._cluster_report(f"[nnunetv2_uc] resuming from {chosen} instead (epoch {epochs[chosen]}; "
                                 f"{basename(filename_or_checkpoint)}: {why})")
        # by name: nnU-Net 2.8.1's load_checkpoint does not accept the dict it documents (it reads the file again;
        # resuming only)
        super().load_checkpoint(chosen)

    def _cluster_report(self, message: str) -> None:
        print(message, file=sys.stderr, flush=True)
        self.print_to_log_file(message, also_print_to_console=False)

    # ------------------------------------------------------------------ checkpoints by time

    def on_train_start(self) -> None:
        removed = remove_stale_temporaries(self.output_folder) if self.local_rank == 0 else []
        for name in removed:
            self.print_to_log_file(f"[nnunetv2_uc] removed {name}, an unfinished checkpoint write of a killed run")
        self._cluster_minutes = checkpoint_minutes()
        self._cluster_last_latest = monotonic()
        super().on_train_start()
        self.print_to_log_file(
            f"[nnunetv2_uc] checkpoint_latest.pth every {self.save_every} epochs and after any epoch that ends more "
            f"than {self._cluster_minutes:g} min after the last one ({CHECKPOINT_MINUTES_ENV}); on SIGTERM/SIGUSR1 "
            f"a checkpoint and exit code {self.stop_exit_code}", also_print_to_console=False)

    def on_epoch_end(self) -> None:
        super().on_epoch_end()  # nnU-Net's logging, every-N checkpoint and best checkpoint; then current_epoch += 1
        finished = self.current_epoch - 1
        due = 0 < self._cluster_minutes * 60 <= monotonic() - self._cluster_last_latest
        if due and finished != self.num_epochs - 1:  # the last epoch is followed by checkpoint_final.pth
            self._save_latest_for(self.current_epoch, "by time")

    def _save_latest_for(self, resume_epoch: int, why: str) -> None:
        """Write checkpoint_latest.pth so that ``--c`` starts at ``resume_epoch`` (nnU-Net stores epoch + 1)."""
        saved_epoch = self.current_epoch
        self.current_epoch = resume_epoch - 1
        try:
            self.print_to_log_file(f"[nnunetv2_uc] checkpoint_latest.pth {why}", also_print_to_console=False)
            self.save_checkpoint(join(self.output_folder, "checkpoint_latest.pth"))
        finally:
            self.current_epoch = saved_epoch

    # ------------------------------------------------------------------ stop on a signal

    def _cluster_install_handlers(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # signal handlers can only be set from the main thread (e.g. a notebook's worker thread)
        for signum in STOP_SIGNALS:
            signal.signal(signum, self._cluster_on_signal)

    def _cluster_on_signal(self, signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if getattr(self, "_cluster_finished_training", False):
            # training is over and checkpoint_final.pth written (e.g. during the final validation): stop now;
            # `--c` loads the final checkpoint and only validates again
            print(f"[nnunetv2_uc] {name} after training; exiting with {self.stop_exit_code} (`--c` validates again)",
                  file=sys.stderr, flush=True)
            raise SystemExit(self.stop_exit_code)
        if self._cluster_stop_signal is None:
            self._cluster_stop_signal = signum
            print(f"[nnunetv2_uc] {name} received: stopping after the current iteration", file=sys.stderr, flush=True)

    def _cluster_stop_requested(self) -> bool:
        """Whether this rank (or, under DDP, any rank) received a stop signal."""
        requested = getattr(self, "_cluster_stop_signal", None) is not None
        if self.is_ddp:
            flag = torch.tensor([1 if requested else 0], device=self.device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            requested = bool(flag.item())
        return requested

    def train_step(self, batch: dict) -> dict:
        result = super().train_step(batch)
        if self._cluster_stop_requested():
            raise StopRequested()
        return result

    def validation_step(self, batch: dict) -> dict:
        result = super().validation_step(batch)
        if self._cluster_stop_requested():
            raise StopRequested()
        return result

    def run_training(self) -> None:
        """nnU-Net's training loop; on a stop signal: checkpoint, data loaders shut down, exit code 85.

        The handlers are set here, before nnU-Net's ``on_train_start`` starts the data-augmentation workers (forked
        workers inherit them and keep running until they are shut down), and stay for the final validation.
        """
        self._cluster_stop_signal: int | None = None
        self._cluster_finished_training = False
        self._cluster_install_handlers()
        try:
            super().run_training()
        except StopRequested:
            self._cluster_stop()

    def on_train_end(self) -> None:
        super().on_train_end()  # checkpoint_final.pth, latest removed, data loaders shut down
        self._cluster_finished_training = True
        signum = getattr(self, "_cluster_stop_signal", None)
        if signum is not None:  # arrived after the last iteration: training is complete, skip the validation
            self.print_to_log_file(f"[nnunetv2_uc] {signal.Signals(signum).name} after the last iteration: "
                                   f"checkpoint_final.pth written; exit code {self.stop_exit_code} (`--c` validates)")
            sys.exit(self.stop_exit_code)

    def _cluster_stop(self) -> None:
        signum = getattr(self, "_cluster_stop_signal", None)
        name = signal.Signals(signum).name if signum is not None else "a stop signal on another rank"
        epoch = self.current_epoch
        self._save_latest_for(epoch, f"on {name} during epoch {epoch}")
        self.print_to_log_file(f"[nnunetv2_uc] stopped on {name} during epoch {epoch}: checkpoint_latest.pth "
                               f"written, `nnUNetv2_train ... --c` resumes at epoch {epoch}; exit code "
                               f"{self.stop_exit_code}", also_print_to_console=True)
        self._cluster_shut_down_loaders()
        if self.is_ddp:
            dist.barrier()  # the other ranks wait until rank 0 has written the checkpoint
        sys.stdout.flush()
        sys.exit(self.stop_exit_code)

    def _cluster_shut_down_loaders(self) -> None:
        for loader in (getattr(self, "dataloader_train", None), getattr(self, "dataloader_val", None)):
            finish = getattr(loader, "_finish", None)
            if finish is not None:
                finish()

    def checkpoint_write_seconds(self) -> list[Any]:
        """Seconds each checkpoint write of this process took (torch.save + fsync + rename)."""
        return list(getattr(self, "_cluster_checkpoint_seconds", []))
