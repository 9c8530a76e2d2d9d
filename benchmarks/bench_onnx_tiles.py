"""Time one sliding-window tile through PyTorch (fp32 as nnU-Net's predictor runs it on the CPU, and bf16 autocast),
onnxruntime (fp32) and OpenVINO (fp32 and bf16).

Builds a network at the widths given (a fresh initialisation: timings do not depend on the weights), exports it with
export-onnx's exporter, checks the outputs agree, then times ``--repeats`` calls of one (1, 1, *patch) tile on each
runtime after ``--warmup`` calls, with ``--threads`` threads each; prints the median and the spread in ms.

    nice -n 10 python benchmarks/bench_onnx_tiles.py --network uc3dunet --patch 32 64 64 --threads 2
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Callable

import torch

from nnunetv2_uc.architectures.registry import network_entry
from nnunetv2_uc.inference.onnx_export import export_network
from nnunetv2_uc.inference.runtimes import PRECISIONS, RUNNERS
from nnunetv2_uc.inference.predict import bf16_autocast_call

WIDTHS = {  # a moderate width: a quarter of the paper configurations
    "uc3dunet": {"features": [6, 12, 24, 48, 96, 8]},
    "uxnet": {"feature_sizes": [12, 24, 48, 96], "hidden_size": 192},
}


def build(network: str, patch: list[int], full_width: bool) -> torch.nn.Module:
    entry = network_entry(network)
    if entry.name in WIDTHS and not full_width:
        return entry.network_class(1, 3, **WIDTHS[entry.name]).eval()
    return entry.build_for_patch(1, 3, patch, False).eval()


def report_deviation(name: str, got: torch.Tensor, expected: torch.Tensor) -> None:
    deviation = float((got - expected).abs().max() / (expected.max() - expected.min()))
    agreement = float((got.argmax(1) == expected.argmax(1)).float().mean())
    print(f"{name}: deviation from torch fp32 {deviation:.2e} of the logit range, argmax agrees on "
          f"{100 * agreement:.2f} % of voxels (untrained network)")


def time_calls(call: Callable[[], object], warmup: int, repeats: int) -> list[float]:
    """Milliseconds of each of ``repeats`` calls after ``warmup`` untimed ones."""
    for _ in range(warmup):
        call()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(1000 * (time.perf_counter() - start))
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--network", default="uc3dunet", help="registry name: uc3dunet, uxnet, plainunet, ...")
    parser.add_argument("--patch", type=int, nargs=3, default=[32, 64, 64])
    parser.add_argument("--full-width", action="store_true", help="the paper / planned widths instead of a quarter")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.set_grad_enabled(False)
    torch.manual_seed(0)
    network = build(args.network, args.patch, args.full_width)
    tile_shape = (1, *args.patch)
    tile = torch.randn(1, *tile_shape)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "tile.onnx"
        export_network(network, tile_shape, path)
        expected = network(tile)
        calls = {"torch fp32": lambda: network(tile), "torch bf16": lambda: bf16_autocast_call(network, tile)}
        report_deviation("torch bf16", bf16_autocast_call(network, tile), expected)
        for backend, make_runner in RUNNERS.items():
            for precision in PRECISIONS:
                try:
                    runner = make_runner(path, tile_shape, args.threads, precision)
                except Exception as error:  # a runtime that is not installed, or a precision it lacks, is left out
                    print(f"{backend} {precision}: not timed ({error})")
                    continue
                report_deviation(f"{backend} {precision}", runner(tile), expected)
                calls[f"{backend} {precision}"] = lambda runner=runner: runner(tile)
        parameters = sum(p.numel() for p in network.parameters())
        print(f"{args.network} ({parameters:,} parameters), tile {tuple(tile.shape)}, {args.threads} threads, "
              f"{args.repeats} calls after {args.warmup} warm-up calls")
        for name, call in calls.items():
            times = time_calls(call, args.warmup, args.repeats)
            print(f"  {name:18s} median {statistics.median(times):8.1f} ms   min {min(times):8.1f}   "
                  f"max {max(times):8.1f}")


if __name__ == "__main__":
    main()
