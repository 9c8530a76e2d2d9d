"""Cost of one plugin checkpoint write (issue #22): nnU-Net's checkpoint dict of a paper-width network with AdamW
state, written the way the plugin's trainers write it (torch.save to a temporary file in the target folder, fsync,
os.replace, fsync of the folder: nnunetv2_uc.trainers.cluster), timed; and torch.save alone in place, as nnU-Net does.

    python benchmarks/bench_checkpoint_write.py --folder /path/on/the/results/filesystem [--repeats 5]
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
from time import perf_counter

import torch

from nnunetv2_uc.architectures import UXNet
from nnunetv2_uc.architectures.uc3dunet import UC3DUNet
from nnunetv2_uc.trainers.cluster import commit_file, temporary_name


def checkpoint_of(network: torch.nn.Module) -> dict:
    """nnU-Net's checkpoint keys, with AdamW state after one step (two tensors per parameter)."""
    optimizer = torch.optim.AdamW(network.parameters(), lr=5e-4)
    for p in network.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()
    return {"network_weights": network.state_dict(), "optimizer_state": optimizer.state_dict(),
            "grad_scaler_state": None, "logging": {}, "_best_ema": 0.0, "current_epoch": 1, "init_args": {},
            "trainer_name": "bench", "inference_allowed_mirroring_axes": (0, 1, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folder", default=None, help="where to write (default: a temporary folder)")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    folder = args.folder or tempfile.mkdtemp()
    for name, network in (("uc3dunet", UC3DUNet(1, 3)), ("uxnet", UXNet(1, 3))):
        checkpoint = checkpoint_of(network)
        target = os.path.join(folder, f"bench_{name}.pth")
        atomic, in_place = [], []
        for _ in range(args.repeats):
            started = perf_counter()
            torch.save(checkpoint, temporary_name(target))
            commit_file(temporary_name(target), target)
            atomic.append(perf_counter() - started)
            started = perf_counter()
            torch.save(checkpoint, target)
            in_place.append(perf_counter() - started)
        size = os.path.getsize(target) / 2**20
        os.remove(target)
        print(f"{name}: {size:.0f} MiB; atomic write (save + fsync + rename) median {statistics.median(atomic):.2f} s "
              f"(min {min(atomic):.2f}, max {max(atomic):.2f}); nnU-Net's torch.save in place median "
              f"{statistics.median(in_place):.2f} s")


if __name__ == "__main__":
    main()
