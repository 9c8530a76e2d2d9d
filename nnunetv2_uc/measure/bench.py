"""Benchmark training steps and nnU-Net sliding-window inference of UX-Net, uC, PlainConvUNet and ResEnc M.

Training step: forward, cross-entropy, backward, SGD step on a random batch (median of --repeats after a warm-up).
Inference: nnU-Net's own nnUNetPredictor.predict_sliding_window_return_logits over a fixed synthetic volume
(tile step 0.5, Gaussian weighting, mirroring on unless --no-mirroring), i.e. exactly what nnUNetv2_predict runs;
median of --repeats predictions after a warm-up network call.
With --patches-per-batch N > 1 the predictor is nnunetv2_uc's batched one (N tiles per network call, otherwise
nnU-Net's computation). Each network and mode runs in a fresh process, so peak memory is its own. Ratios are to
PlainConvUNet and ResEnc M (nnU-Net's default and its recommended residual preset) at the same patch, from the
same run. Each training row also carries the plugin's memory model for the same step (``estimated_peak_bytes``:
fake tensors, the run's device and autocast dtype, SGD with momentum), so a GPU run calibrates the model against
the measured peak (``torch.cuda.max_memory_allocated``).
"""
from __future__ import annotations

import math
import platform
from dataclasses import asdict
from typing import Callable, Sequence

import torch
from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

from nnunetv2_uc.architectures.building_blocks import switches
from nnunetv2_uc.architectures.registry import SGD_SLOTS, network_entry
from nnunetv2_uc.inference.predict import BatchedSlidingWindowPredictor
from nnunetv2_uc.measure.cost import (StepSetup, depthwise_share, measure_step, median_seconds, peak_memory_bytes,
                                      peak_memory_start, prepare, run_in_fresh_process)
from nnunetv2_uc.planning.memory import Precision, TrainingMemoryModel


def synthetic_predictor(model, patch: Sequence[int], volume: Sequence[int], num_classes: int, device: str,
                        mirroring: bool, patches_per_batch: int = 1):
    """nnU-Net's predictor (or, with ``patches_per_batch`` > 1, the batched one) set up for ``model`` on a
    one-channel CT-like dataset with a ``volume``-sized median image; step 0.5, Gaussian weighting."""
    plans = PlansManager({
        "dataset_name": "Dataset999_Bench", "plans_name": "nnUNetPlans", "original_median_spacing_after_transp": [1, 1, 1],
        "original_median_shape_after_transp": list(volume), "image_reader_writer": "SimpleITKIO",
        "transpose_forward": [0, 1, 2], "transpose_backward": [0, 1, 2], "experiment_planner_used": "bench",
        "label_manager": "LabelManager", "foreground_intensity_properties_per_channel": {},
        "configurations": {"3d_fullres": {"data_identifier": "bench", "preprocessor_name": "DefaultPreprocessor",
                                          "batch_size": 2, "patch_size": list(patch),
                                          "spacing": [1, 1, 1], "normalization_schemes": ["ZScoreNormalization"],
                                          "use_mask_for_norm": [False], "architecture": {}}},
    })
    dataset_json = {"labels": {"background": 0, **{f"class{i}": i for i in range(1, num_classes)}},
                    "channel_names": {"0": "CT"}, "numTraining": 0, "file_ending": ".nii.gz"}
    options = dict(tile_step_size=0.5, use_gaussian=True, use_mirroring=mirroring,
                   perform_everything_on_device=device == "cuda", device=torch.device(device), verbose=False,
                   allow_tqdm=False)
    if patches_per_batch > 1:
        predictor = BatchedSlidingWindowPredictor(patches_per_batch=patches_per_batch, **options)
    else:
        predictor = nnUNetPredictor(**options)
    predictor.manual_initialization(model, plans, plans.get_configuration("3d_fullres"), None, dataset_json,
                                    "bench", (0, 1, 2) if mirroring else None)
    return predictor


def measure_inference(setup: StepSetup, volume: Sequence[int], mirroring: bool, repeats: int,
                      patches_per_batch: int = 1) -> dict:
    """Median seconds of ``repeats`` sliding-window predictions of one (C, *volume) case, and peak memory.

    The warm-up is one network call on a full tile batch (cuDNN's per-shape autotuning, the allocator), not a
    whole prediction: at 100x512x512 a prediction is hundreds of network calls.
    """
    model, _, _, autocast, _ = prepare(setup)
    model.eval()
    predictor = synthetic_predictor(model, setup.patch, volume, setup.num_classes, setup.device, mirroring,
                                    patches_per_batch)
    torch.manual_seed(0)
    data = torch.randn(setup.input_channels, *volume)

    def predict():
        with autocast():
            predictor.predict_sliding_window_return_logits(data)

    with torch.inference_mode(), autocast():
        model(torch.zeros(patches_per_batch, setup.input_channels, *setup.patch, device=setup.device))
    start = peak_memory_start(setup.device)
    seconds = median_seconds(predict, setup.device, repeats, warmup=0)
    peak, kind = peak_memory_bytes(setup.device, start)
    return {"inference_s": seconds, "inference_peak_memory_bytes": peak, "memory_kind": kind}


AUTOCAST_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


def estimated_step_bytes(setup: StepSetup) -> int:
    """The memory model's bytes for the step ``measure_step`` times (network built as bench builds it)."""
    entry = network_entry(setup.name)
    precision = Precision(setup.device.split(":")[0], AUTOCAST_DTYPES.get(setup.amp))
    model = TrainingMemoryModel(lambda: entry.build_for_patch(setup.input_channels, setup.num_classes, setup.patch,
                                                              setup.checkpointing),
                                setup.input_channels, precision, SGD_SLOTS)
    return model(setup.patch, setup.batch).total


def bench(networks: Sequence[str], patch: Sequence[int], batch: int, device: str, amp: str, compile_: bool,
          channels_last: bool, volume: Sequence[int] | None, mirroring: bool, repeats: int, classes: int,
          progress: Callable[[str], None] = print, patches_per_batch: int = 1, checkpointing: bool = False,
          profile_depthwise: bool = False, inference_only: bool = False) -> list[dict]:
    """One row per network; ``inference_only`` (with ``volume``) skips the training step."""
    rows = []
    voxels_per_step = batch * int(math.prod(patch))
    for name in networks:
        setup = StepSetup(name, tuple(patch), 1, classes, batch, device, amp, compile_, channels_last,
                          checkpointing and network_entry(name).supports_checkpointing)
        row = asdict(setup)
        if not inference_only:
            progress(f"[bench] {name}: training step at {list(patch)} x batch {batch} on {device} (amp {amp}, "
                     f"compile {compile_}, channels_last {channels_last}, checkpointing {setup.checkpointing})")
            row.update(run_in_fresh_process(measure_step, setup, repeats))
            row["estimated_peak_bytes"] = estimated_step_bytes(setup)
            row["steps_per_s"] = 1 / row["train_step_s"]
            row["train_voxels_per_s"] = voxels_per_step / row["train_step_s"]
        if profile_depthwise:
            progress(f"[bench] {name}: torch profiler on one training step (depthwise-conv share)")
            row.update(run_in_fresh_process(depthwise_share, setup))
        if volume:
            progress(f"[bench] {name}: sliding-window inference of a {list(volume)} volume (mirroring {mirroring}, "
                     f"{patches_per_batch} tile(s) per call)")
            inference = run_in_fresh_process(measure_inference, setup, tuple(volume), mirroring, repeats,
                                             patches_per_batch)
            row.update(inference_s=inference["inference_s"], volume=list(volume), mirroring=mirroring,
                       patches_per_batch=patches_per_batch,
                       inference_peak_memory_bytes=inference["inference_peak_memory_bytes"],
                       inference_voxels_per_s=int(math.prod(volume)) / inference["inference_s"])
        rows.append(row)
    for baseline in ("plainunet", "resenc_m"):
        base = next((r for r in rows if r["name"] == baseline), None)
        for row in rows if base else []:
            if not inference_only:
                row[f"step_x_{baseline}"] = row["train_step_s"] / base["train_step_s"]
            if volume:
                row[f"inference_x_{baseline}"] = row["inference_s"] / base["inference_s"]
    return rows


def environment(device: str) -> dict:
    info = {"python": platform.python_version(), "torch": torch.__version__, "machine": platform.machine(),
            "processor": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
            "fast_paths": switches.FAST_PATHS, "layout": switches.LAYOUT}
    if device == "cuda":
        info.update(gpu=torch.cuda.get_device_name(), cudnn=torch.backends.cudnn.version(), cuda=torch.version.cuda)
    return info


def format_rows(rows: list[dict]) -> str:
    has_step = "train_step_s" in rows[0]
    has_inference = "inference_s" in rows[0]
    has_profile = "depthwise_share" in rows[0]
    header = ["network"]
    if has_step:
        header += ["step s", "steps/s", "Mvox/s", "peak MiB", "model MiB", "x plain", "x ResEnc M"]
    if has_profile:
        header += ["depthwise share"]
    if has_inference:
        header += ["infer s", "infer x plain"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        cells = [r["name"]]
        if has_step:
            cells += [f"{r['train_step_s']:.3f}", f"{r['steps_per_s']:.2f}", f"{r['train_voxels_per_s'] / 1e6:.3f}",
                      f"{r['peak_memory_bytes'] / 2**20:.0f}", f"{r['estimated_peak_bytes'] / 2**20:.0f}",
                      _ratio(r, "step_x_plainunet"),
                      _ratio(r, "step_x_resenc_m")]
        if has_profile:
            cells += [f"{100 * r['depthwise_share']:.1f}%"]
        if has_inference:
            cells += [f"{r['inference_s']:.2f}", _ratio(r, "inference_x_plainunet")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _ratio(row: dict, key: str) -> str:
    return f"{row[key]:.2f}" if key in row else "-"
