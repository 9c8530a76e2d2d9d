"""Parameters, MACs, latency and peak memory of UX-Net / uC 3DU-Net next to nnU-Net's PlainConvUNet.

MACs follow fvcore's conventions (the spec's reference numbers): convolutions from torch.utils.flop_counter
(1 multiply-add = 1 MAC; transposed convs counted over input voxels), the grouped 1x1x1 "DCS" layers as the
convs they are in the original, InstanceNorm/GroupNorm/LayerNorm modules as numel x (5 if affine else 4),
and nothing for activations, pooling or the original's hand-written channels-first LayerNorm (fvcore does
not see it). The papers quote thop (uC: 286.43 G) and ptflops (UX-Net: 639.4 G); those counters overcount
transposed convolutions 8x in 3-D, see the README.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from nnunetv2_uc.architectures.uxnet import DepthwiseChannelScaling
from nnunetv2_uc.timing import StepSetup, build_network, measure_step, run_in_fresh_process

DEFAULT_ARCHS = ("uxnet", "uc3dunet", "plainunet")


def count_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())


def count_macs(arch: str, input_channels: int, num_classes: int, patch: Sequence[int], batch: int = 1) -> int:
    """MACs of one forward pass (fvcore conventions, see the module docstring), counted on the meta device."""
    with torch.device("meta"):
        model = build_network(arch, input_channels, num_classes, patch).eval()
        x = torch.empty(batch, input_channels, *patch)
    norms = (nn.InstanceNorm3d, nn.InstanceNorm2d, nn.GroupNorm, nn.LayerNorm)
    extra = [0]

    def count_module(module, _inputs, output):
        if isinstance(module, DepthwiseChannelScaling):
            extra[0] += output.numel() * module.weight.shape[1]
        else:
            extra[0] += output.numel() * (5 if getattr(module, "weight", None) is not None else 4)

    hooks = [m.register_forward_hook(count_module) for m in model.modules()
             if isinstance(m, norms + (DepthwiseChannelScaling,))]
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(x)
    for hook in hooks:
        hook.remove()
    return counter.get_total_flops() // 2 + extra[0]


def cost_report(archs: Sequence[str], patch: Sequence[int], input_channels: int, num_classes: int,
                device: str = "cpu", repeats: int = 3, timing: bool = True) -> list[dict]:
    rows = []
    for arch in archs:
        model_params = count_parameters(build_network(arch, input_channels, num_classes, patch))
        row = {"arch": arch, "patch": list(patch), "input_channels": input_channels, "num_classes": num_classes,
               "parameters": model_params, "gmacs": count_macs(arch, input_channels, num_classes, patch) / 1e9}
        if timing:
            setup = StepSetup(arch, tuple(patch), input_channels, num_classes, device=device)
            row.update(run_in_fresh_process(measure_step, setup, repeats))
            row["device"] = device
        rows.append(row)
    return rows


def format_table(rows: list[dict]) -> str:
    baseline = next((r for r in rows if r["arch"] == "plainunet"), None)
    header = ["arch", "params", "GMACs"]
    timed = "forward_s" in rows[0]
    if timed:
        header += ["forward s", "train step s", "peak mem MiB"]
    if baseline:
        header += ["MACs x plain"] + (["step x plain"] if timed else [])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        cells = [r["arch"], f"{r['parameters']:,}", f"{r['gmacs']:.3f}"]
        if timed:
            cells += [f"{r['forward_s']:.3f}", f"{r['train_step_s']:.3f}", f"{r['peak_memory_bytes'] / 2**20:.0f}"]
        if baseline:
            cells.append(f"{r['gmacs'] / baseline['gmacs']:.2f}")
            if timed:
                cells.append(f"{r['train_step_s'] / baseline['train_step_s']:.2f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
