"""Benchmark training steps and nnU-Net sliding-window inference of UX-Net, uC, PlainConvUNet and ResEnc M.

Training step: forward, cross-entropy, backward, SGD step on a random batch (median of --repeats after a warm-up).
Inference: nnU-Net's own nnUNetPredictor.predict_sliding_window_return_logits over a fixed synthetic volume
(tile step 0.5, Gaussian weighting, mirroring on unless --no-mirroring), i.e. exactly what nnUNetv2_predict runs;
median of --repeats predictions after a warm-up network call (--inference-only: no training step).
With --patches-per-batch N > 1 the predictor is nnunetv2_uc's batched one (N tiles per network call, otherwise
nnU-Net's computation). Each network and mode runs in a fresh process, so peak memory is its own. Ratios are to
PlainConvUNet and ResEnc M (nnU-Net's default and its recommended residual preset) at the same patch, from the
same run.
"""
from __future__ import annotations

import argparse
import json
import sys

from nnunetv2_uc.architectures.registry import NETWORKS
from nnunetv2_uc.deprecation import add_network_argument
from nnunetv2_uc.errors import UserError
from nnunetv2_uc.measure.bench import bench, environment, format_rows
from nnunetv2_uc.measure.cost import request_problem


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_network_argument(parser, nargs="+", default=list(NETWORKS), choices=tuple(NETWORKS),
                        help="networks to benchmark (default: all)")
    parser.add_argument("--patch", nargs=3, type=int, default=[64, 64, 64], metavar=("D0", "D1", "D2"),
                        help="training/inference patch (default 64 64 64; nnU-Net's 3d_fullres patch for GPU runs)")
    parser.add_argument("--batch", type=int, default=1, help="batch size of the training step (default 1)")
    parser.add_argument("--classes", type=int, default=5, help="output classes (default 5)")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--amp", default="off", choices=("off", "bf16", "fp16"), help="autocast dtype (default off)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the network (slow first steps)")
    parser.add_argument("--channels-last", action="store_true", help="model and input in channels_last(_3d)")
    parser.add_argument("--volume", nargs=3, type=int, metavar=("D0", "D1", "D2"),
                        help="also time sliding-window inference over a volume of this size, e.g. 100 512 512")
    parser.add_argument("--no-mirroring", action="store_true", help="inference without nnU-Net's mirroring TTA")
    parser.add_argument("--patches-per-batch", type=int, default=1, metavar="N",
                        help="sliding-window tiles per network call (default 1 = nnU-Net's predictor)")
    parser.add_argument("--profile-depthwise", action="store_true",
                        help="also profile one training step: share of its time in depthwise convs (fwd + bwd)")
    parser.add_argument("--checkpointing", action="store_true",
                        help="activation checkpointing in the networks that have it (nnU-Net's run without)")
    parser.add_argument("--inference-only", action="store_true",
                        help="with --volume: time only the inference, not the training step")
    parser.add_argument("--repeats", type=int, default=3, help="timed repetitions after one warm-up (median)")
    parser.add_argument("--json", dest="json_out", metavar="FILE", help="write rows and environment as JSON")


def _request_problem(args: argparse.Namespace) -> str | None:
    problem = request_problem(args.network, args.patch, args.device)
    if not problem and args.volume and any(v < p for v, p in zip(args.volume, args.patch)):
        problem = f"--volume {args.volume} is smaller than the patch {args.patch} on some axis"
    if not problem and args.inference_only and not args.volume:
        problem = "--inference-only needs --volume"
    if not problem and args.patches_per_batch < 1:
        problem = f"--patches-per-batch must be >= 1, got {args.patches_per_batch}"
    return problem


def run(args: argparse.Namespace) -> int:
    problem = _request_problem(args)
    if problem:
        raise UserError(problem)
    rows = bench(networks=args.network, patch=args.patch, batch=args.batch, device=args.device, amp=args.amp,
                 compile_=args.compile, channels_last=args.channels_last, volume=args.volume,
                 mirroring=not args.no_mirroring, repeats=args.repeats, classes=args.classes,
                 progress=lambda message: print(message, file=sys.stderr, flush=True),
                 patches_per_batch=args.patches_per_batch, checkpointing=args.checkpointing,
                 profile_depthwise=args.profile_depthwise, inference_only=args.inference_only)
    print(format_rows(rows))
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump({"environment": environment(args.device), "command": " ".join(sys.argv), "rows": rows}, f,
                      indent=2)
    return 0
