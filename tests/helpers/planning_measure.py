"""Peak memory of real fp32 training steps on the CPU, each in a fresh process (for the memory-model tests)."""
from __future__ import annotations

import ctypes
import gc
import multiprocessing
from concurrent.futures import ProcessPoolExecutor


def _rss_bytes(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def _warm_up_runtime(build, loss_fn, input_channels: int, num_classes: int) -> None:
    """One training step of a throw-away network at the smallest patch: the runtime's one-time allocations
    (kernel caches, thread pools, autograd engine) happen here, not in the measurement."""
    import torch

    network = build()
    x = torch.randn(1, input_channels, 32, 16, 16)
    target = torch.randint(0, num_classes, (1, 1, 32, 16, 16), dtype=torch.int16)
    loss_fn(network(x), target).backward()
    torch.optim.AdamW(network.parameters()).step()
    del network, x, target
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)  # hand the freed heap back, so it is not reused unseen


def _step_peak(architecture: dict, input_channels: int, num_classes: int, patch: tuple, batch: int,
               optimizer_slots: int, steps: int) -> int:
    """Peak RSS growth over ``steps`` nnU-Net-style training steps (network built inside the measurement)."""
    import torch
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

    from nnunetv2_uc.planning.memory import nnunet_loss

    torch.set_num_threads(2)
    torch.manual_seed(0)
    build = lambda: get_network_from_plans(architecture["network_class_name"], architecture["arch_kwargs"],
                                           architecture["_kw_requires_import"], input_channels, num_classes,
                                           allow_init=False, deep_supervision=False)
    loss_fn = nnunet_loss(1)
    _warm_up_runtime(build, loss_fn, input_channels, num_classes)
    x = torch.randn(batch, input_channels, *patch)
    target = torch.randint(0, num_classes, (batch, 1, *patch), dtype=torch.int16)
    with open("/proc/self/clear_refs", "w") as f:  # reset the peak (VmHWM) to the current RSS
        f.write("5")
    start = _rss_bytes("VmRSS")
    network = build()
    if optimizer_slots == 2:
        optimizer = torch.optim.AdamW(network.parameters(), lr=1e-4)
    else:
        optimizer = torch.optim.SGD(network.parameters(), lr=1e-4, momentum=0.99, nesterov=True)
    for _ in range(steps):
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(network(x), target)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(network.parameters(), 12)
        optimizer.step()
        del loss
    return _rss_bytes("VmHWM") - start


def measure_cpu_training_peak(architecture: dict, input_channels: int, num_classes: int, patch, batch: int,
                              optimizer_slots: int = 2, steps: int = 2) -> int:
    """Peak RSS growth (bytes) of real fp32 CPU training steps, in a new spawned interpreter."""
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(_step_peak, architecture, input_channels, num_classes, tuple(patch), batch,
                           optimizer_slots, steps).result()
