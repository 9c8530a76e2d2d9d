#!/usr/bin/env python
"""Forward+backward time of one depthwise 7^3 conv (UX-Net's), contiguous vs channels_last_3d, on this machine.

    python benchmarks/bench_depthwise.py --threads 1
"""
from __future__ import annotations

import argparse
import time

import torch


def seconds(conv: torch.nn.Module, x: torch.Tensor, repeats: int) -> float:
    def step():
        conv.zero_grad()
        x.grad = None
        conv(x).sum().backward()

    step()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"| channels | size | contiguous s | channels_last_3d s | ratio |  (threads {torch.get_num_threads()})")
    print("|---|---|---|---|---|")
    for channels, size in ((48, 24), (48, 32), (96, 16)):
        torch.manual_seed(0)
        conv = torch.nn.Conv3d(channels, channels, 7, padding=3, groups=channels)
        x = torch.randn(1, channels, size, size, size, requires_grad=True)
        contiguous = seconds(conv, x, args.repeats)
        conv = conv.to(memory_format=torch.channels_last_3d)
        x = x.detach().contiguous(memory_format=torch.channels_last_3d).requires_grad_()
        last = seconds(conv, x, args.repeats)
        print(f"| {channels} | {size}^3 | {contiguous:.3f} | {last:.3f} | {last / contiguous:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
