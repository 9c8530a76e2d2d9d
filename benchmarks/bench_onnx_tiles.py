"""Time one sliding-window tile through PyTorch (fp32 as nnU-Net's predictor runs it on the CPU, and bf16 autocast),
onnxruntime (fp32) and OpenVINO (fp32 and bf16), against the arithmetic the CPU can do.

Builds a network at the widths given (a fresh initialisation: timings do not depend on the weights), exports it with
export-onnx's exporter, checks the outputs agree, then times ``--repeats`` calls of one (1, 1, *patch) tile on each
runtime after ``--warmup`` calls, with ``--threads`` threads each; prints the median and the spread in ms.

Each runtime's fastest call is also given as arithmetic per second (2 x the tile's MACs, counted as `nnunetv2_uc
cost` counts them) and as a share of this CPU's fp32 peak: the fastest fp32 rate seen in the run, that is the larger
of torch.matmul's (two ``--gemm-size`` square matrices, the fastest of 20 calls, measured before the runtimes start
and again after the timings) and any fp32 runtime's on this network. Interference from other processes only slows a
call down, so fastest calls and the largest rate are the fair pair. A runtime doing the network's MACs (direct or as
a matrix product, as these runtimes do) cannot be faster than that peak allows, so the peak over torch fp32's rate
bounds what an fp32 runtime can gain per tile on this network, as far as this CPU's rate has been seen (the "fp32
ceiling" line); the bf16 matmul peak gives the same for bf16.

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
from nnunetv2_uc.measure.cost import count_macs

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


def matmul_gflops(dtype: torch.dtype, size: int, repeats: int = 20) -> float:
    """Peak GFLOP/s of torch.matmul on two ``size`` x ``size`` matrices of ``dtype``: the fastest of ``repeats``
    calls (a peak, so the ceiling it gives is generous)."""
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    seconds = min(time_calls(lambda: a @ b, warmup=2, repeats=repeats)) / 1000
    return 2 * size ** 3 / seconds / 1e9


def report_rates(fastest_ms: dict[str, float], macs: int, matmul: dict[str, float]) -> None:
    """Each runtime's arithmetic rate against the fp32 peak, and the fp32 ceiling over torch fp32."""
    rates = {name: 2 * macs / (ms / 1000) / 1e9 for name, ms in fastest_ms.items()}
    fp32_rates = {"torch.matmul": matmul["fp32"], **{name: r for name, r in rates.items() if name.endswith("fp32")}}
    source = max(fp32_rates, key=fp32_rates.get)
    fp32_peak = fp32_rates[source]
    print(f"arithmetic per tile: {2 * macs / 1e9:.2f} GFLOP ({macs / 1e9:.2f} GMACs); fp32 peak on this CPU "
          f"{fp32_peak:.1f} GFLOP/s ({source}), bf16 matmul peak {matmul['bf16']:.1f} GFLOP/s; fastest calls:")
    for name, rate in rates.items():
        print(f"  {name:18s} {rate:9.2f} GFLOP/s = {100 * rate / fp32_peak:6.2f} % of the fp32 peak")
    print(f"fp32 ceiling: a runtime doing this arithmetic at the fp32 peak would be "
          f"{fp32_peak / rates['torch fp32']:.2f}x torch fp32 per tile (at the bf16 matmul peak "
          f"{matmul['bf16'] / rates['torch fp32']:.2f}x)")


def matmul_peaks(size: int) -> dict[str, float]:
    return {name: matmul_gflops(dtype, size) for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--network", default="uc3dunet", help="registry name: uc3dunet, uxnet, plainunet, ...")
    parser.add_argument("--patch", type=int, nargs=3, default=[32, 64, 64])
    parser.add_argument("--full-width", action="store_true", help="the paper / planned widths instead of a quarter")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--gemm-size", type=int, default=768, help="side of the square matrices of the matmul peak")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.set_grad_enabled(False)
    torch.manual_seed(0)
    peaks_before = matmul_peaks(args.gemm_size)
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
        fastest = {}
        for name, call in calls.items():
            times = time_calls(call, args.warmup, args.repeats)
            fastest[name] = min(times)
            print(f"  {name:18s} median {statistics.median(times):8.1f} ms   min {min(times):9.2f}   "
                  f"max {max(times):8.1f}")
    with torch.device("meta"):
        macs = count_macs(build(args.network, args.patch, args.full_width), 1, 3, args.patch)
    peaks_after = matmul_peaks(args.gemm_size)
    print("torch.matmul peak before / after the timings (GFLOP/s): " + ", ".join(
        f"{name} {peaks_before[name]:.1f} / {peaks_after[name]:.1f}" for name in peaks_before))
    report_rates(fastest, macs, {name: max(peaks_before[name], peaks_after[name]) for name in peaks_before})


if __name__ == "__main__":
    main()
