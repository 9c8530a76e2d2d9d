"""Networks to compare and how to time them: shared by `nnunetv2_uc cost` and `nnunetv2_uc bench`.

Each measurement runs in a fresh process (``run_in_fresh_process``) so its peak memory is its own.
"""
from __future__ import annotations

import contextlib
import multiprocessing
import resource
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile

from nnunetv2_uc.architectures.building_blocks.layout import to_channels_last
from nnunetv2_uc.architectures.registry import network_entry

def build_network(name: str, input_channels: int, num_classes: int, patch: Sequence[int],
                  checkpointing: bool = False) -> nn.Module:
    """The registry's network ``name`` as cost and bench run it (no DS heads); ``checkpointing`` turns on
    activation checkpointing where the network has it."""
    entry = network_entry(name)
    if checkpointing and not entry.supports_checkpointing:
        raise ValueError(f"{name} has no activation checkpointing option")
    return entry.build_for_patch(input_channels, num_classes, patch, checkpointing)


def request_problem(names: Sequence[str], patch: Sequence[int], device: str) -> str | None:
    """Why these networks cannot be run at ``patch`` on ``device`` (None if they can): checked before any work."""
    for name in names:
        problems = network_entry(name).input_problems(patch)
        if problems:
            return f"{name} cannot take patch {list(patch)}: " + "; ".join(problems)
    if device == "cuda" and not torch.cuda.is_available():
        return "--device cuda but no CUDA device is visible; use --device cpu"
    return None


@dataclass
class StepSetup:
    """How one network is run: batch, device, mixed precision ('off', 'bf16', 'fp16'), compile, memory format."""
    name: str
    patch: tuple[int, ...]
    input_channels: int = 1
    num_classes: int = 5
    batch: int = 1
    device: str = "cpu"
    amp: str = "off"
    compile: bool = False
    channels_last: bool = False
    checkpointing: bool = False


def prepare(setup: StepSetup):
    """(model, optimizer, loss function, autocast context factory, grad scaler or None) for ``setup``."""
    torch.manual_seed(0)
    device = torch.device(setup.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # as nnUNetv2_train sets it: cuDNN picks the fastest kernels per shape
    model = build_network(setup.name, setup.input_channels, setup.num_classes, setup.patch,
                          setup.checkpointing).to(device)
    if setup.channels_last:
        to_channels_last(model)
    if setup.compile:
        model = torch.compile(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.99, nesterov=True)
    dtype = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}[setup.amp]
    autocast = (lambda: torch.autocast(device.type, dtype=dtype)) if dtype else contextlib.nullcontext
    scaler = torch.amp.GradScaler(device.type) if setup.amp == "fp16" else None
    return model, optimizer, torch.nn.CrossEntropyLoss(), autocast, scaler


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def median_seconds(fn: Callable[[], None], device: str, repeats: int, warmup: int) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def peak_memory_start(device: str) -> int:
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
        return 0
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


def peak_memory_bytes(device: str, start: int) -> tuple[int, str]:
    """CUDA max allocated, or on CPU how far the peak RSS rose above ``start``."""
    if device.startswith("cuda"):
        return int(torch.cuda.max_memory_allocated()), "cuda max allocated"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - start, "peak RSS growth"


def training_step_runner(setup: StepSetup):
    """(model, one training step as a function) for ``setup``: forward, CE loss, backward, SGD step."""
    model, optimizer, loss_fn, autocast, scaler = prepare(setup)
    fmt = torch.channels_last_3d if setup.channels_last else torch.contiguous_format
    x = torch.randn(setup.batch, setup.input_channels, *setup.patch, device=setup.device).contiguous(memory_format=fmt)
    target = torch.randint(0, setup.num_classes, (setup.batch, *setup.patch), device=setup.device)

    def train_step():
        optimizer.zero_grad(set_to_none=True)
        with autocast():
            loss = loss_fn(model(x), target)
        if scaler is None:
            loss.backward()
            optimizer.step()
        else:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()

    def forward():
        with torch.no_grad(), autocast():
            model(x)

    return model, train_step, forward


def measure_step(setup: StepSetup, repeats: int = 3, warmup: int = 1) -> dict:
    """Median seconds of a forward pass (no grad) and of a training step (fwd, CE loss, bwd, SGD), peak memory."""
    model, train_step, forward = training_step_runner(setup)
    start = peak_memory_start(setup.device)
    model.eval()
    forward_s = median_seconds(forward, setup.device, repeats, warmup)
    model.train()
    step_s = median_seconds(train_step, setup.device, repeats, warmup)
    peak, kind = peak_memory_bytes(setup.device, start)
    return {"forward_s": forward_s, "train_step_s": step_s, "peak_memory_bytes": peak, "memory_kind": kind}


def _is_depthwise(input_shape: Sequence[int], weight_shape: Sequence[int]) -> bool:
    """A conv whose groups equal its (more than one) input channels: weight (C, 1, *k) on a C-channel input."""
    return (len(weight_shape) >= 3 and weight_shape[1] == 1 and len(input_shape) == len(weight_shape)
            and input_shape[1] == weight_shape[0] > 1)


def depthwise_share(setup: StepSetup, warmup: int = 2) -> dict:
    """Share of one training step's time spent in depthwise convolutions (forward and backward), from the
    torch profiler: CUDA kernel time on a GPU, operator time on CPU."""
    model, train_step, _ = training_step_runner(setup)
    model.train()
    for _ in range(warmup):
        train_step()
    cuda = setup.device.startswith("cuda")
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities, record_shapes=True) as prof:
        train_step()
        synchronize(setup.device)
    events = prof.events()
    if cuda:
        total = sum(e.self_device_time_total for e in events)
        timed = lambda e: e.device_time_total
    else:
        total = sum(e.self_cpu_time_total for e in events)
        timed = lambda e: e.cpu_time_total
    depthwise = 0.0
    for e in events:
        shapes = e.input_shapes or []
        if e.name == "aten::convolution" and len(shapes) > 1 and _is_depthwise(shapes[0], shapes[1]):
            depthwise += timed(e)
        elif e.name == "aten::convolution_backward" and len(shapes) > 2 and _is_depthwise(shapes[1], shapes[2]):
            depthwise += timed(e)
    return {"depthwise_share": depthwise / total if total else 0.0, "profiled_step_s": total / 1e6,
            "profiled_time_kind": "CUDA kernel time" if cuda else "CPU operator time"}


def run_in_fresh_process(fn: Callable, *args, **kwargs):
    """``fn(*args, **kwargs)`` in a new spawned interpreter (its own peak memory and allocator state)."""
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(fn, *args, **kwargs).result()
