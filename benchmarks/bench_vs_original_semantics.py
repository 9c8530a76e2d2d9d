#!/usr/bin/env python
"""Training-step time of our UX-Net / uC vs the straightforward original-semantics re-statement (tests/helpers/).

Both networks get the same weights (ours loaded from the reference's state dict through nnunetv2_uc.weights.original) and
the same input; steps alternate between the two so machine load hits both alike. CPU process time is reported
next to wall time because process time is far less sensitive to other jobs on a shared machine.

    python benchmarks/bench_vs_original_semantics.py --patch 48 64 --threads 1 --repeats 5
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from helpers.original_semantics import OriginalUC3DUNet, OriginalUXNet  # noqa: E402

from nnunetv2_uc.weights.original import load_original  # noqa: E402

PAIRS = {
    "uxnet": (lambda: OriginalUXNet(in_chans=1, out_chans=5), {"in_chans": 1, "out_chans": 5}),
    "uc3dunet": (lambda: OriginalUC3DUNet(1, 5, (24, 48, 96, 192, 384, 32)), {"in_channels": 1, "out_channels": 5}),
}


def training_step(model, x, target, optimizer) -> None:
    optimizer.zero_grad(set_to_none=True)
    torch.nn.functional.cross_entropy(model(x), target).backward()
    optimizer.step()


def compare(arch: str, size: int, repeats: int, batch: int = 1) -> dict:
    torch.manual_seed(0)
    make_reference, kwargs = PAIRS[arch]
    reference = make_reference().train()
    ours = load_original(arch, reference.state_dict(), **kwargs).train()
    x = torch.randn(batch, 1, size, size, size)
    target = torch.randint(0, 5, (batch, size, size, size))
    runs = {name: (model, torch.optim.SGD(model.parameters(), lr=1e-4))
            for name, model in (("original_semantics", reference), ("ours", ours))}
    times = {name: {"wall": [], "cpu": []} for name in runs}
    for name, (model, opt) in runs.items():
        training_step(model, x, target, opt)  # warm-up
    for _ in range(repeats):
        for name, (model, opt) in runs.items():
            wall, cpu = time.perf_counter(), time.process_time()
            training_step(model, x, target, opt)
            times[name]["wall"].append(time.perf_counter() - wall)
            times[name]["cpu"].append(time.process_time() - cpu)
    median = lambda values: sorted(values)[len(values) // 2]
    row = {"arch": arch, "patch": size, "batch": batch, "threads": torch.get_num_threads()}
    for name in runs:
        row[f"{name}_wall_s"] = median(times[name]["wall"])
        row[f"{name}_cpu_s"] = median(times[name]["cpu"])
    row["ratio_cpu"] = row["ours_cpu_s"] / row["original_semantics_cpu_s"]
    row["ratio_wall"] = row["ours_wall_s"] / row["original_semantics_wall_s"]
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--network", nargs="+", default=list(PAIRS), choices=list(PAIRS))
    parser.add_argument("--patch", nargs="+", type=int, default=[48, 64], help="cubic patch edge(s)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", dest="json_out")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = []
    print(f"batch {args.batch}")
    print("| network | patch | threads | original-semantics step s (cpu / wall) | ours step s (cpu / wall) | ratio (cpu / wall) |")
    print("|---|---|---|---|---|---|")
    for arch in args.network:
        for size in args.patch:
            r = compare(arch, size, args.repeats, args.batch)
            rows.append(r)
            print(f"| {arch} | {size}^3 | {r['threads']} | {r['original_semantics_cpu_s']:.2f} / "
                  f"{r['original_semantics_wall_s']:.2f} | {r['ours_cpu_s']:.2f} / {r['ours_wall_s']:.2f} | "
                  f"{r['ratio_cpu']:.2f} / {r['ratio_wall']:.2f} |", flush=True)
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
