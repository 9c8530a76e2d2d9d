"""Parameters, MACs, latency and peak memory of UX-Net / uC 3DU-Net next to nnU-Net's PlainConvUNet.

MACs follow fvcore's conventions (the spec's reference numbers); see ``nnunetv2_uc.cost``. Each network is timed in
a fresh process, so its peak memory is its own.
"""
from __future__ import annotations

import argparse
import json
import sys

from nnunetv2_uc.architectures.registry import NETWORKS
from nnunetv2_uc.cost import DEFAULT_ARCHS, cost_report, format_table
from nnunetv2_uc.errors import UserError
from nnunetv2_uc.timing import request_problem


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--arch", nargs="+", default=["all"], choices=tuple(NETWORKS) + ("all",),
                        help=f"networks to report (default: all = {' '.join(DEFAULT_ARCHS)})")
    parser.add_argument("--patch", nargs=3, type=int, default=[96, 96, 96], metavar=("D0", "D1", "D2"),
                        help="input patch size (default 96 96 96, the papers' crop)")
    parser.add_argument("--classes", type=int, default=5, help="output classes (default 5)")
    parser.add_argument("--input-channels", type=int, default=1, help="input channels (default 1)")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="where to time (default cpu)")
    parser.add_argument("--repeats", type=int, default=3, help="timed repetitions; the median is reported")
    parser.add_argument("--no-timing", action="store_true", help="only parameters and MACs (instant)")
    parser.add_argument("--json", dest="json_out", metavar="FILE", help="also write the rows as JSON ('-' = stdout)")


def run(args: argparse.Namespace) -> int:
    archs = list(DEFAULT_ARCHS) if "all" in args.arch else list(dict.fromkeys(args.arch))
    problem = request_problem(archs, args.patch, args.device)
    if problem:
        raise UserError(problem)
    if not args.no_timing:
        print(f"timing {', '.join(archs)} at patch {args.patch} on {args.device} "
              f"({args.repeats} repeats after 1 warm-up; each network in a fresh process)...", file=sys.stderr)
    rows = cost_report(archs=archs, patch=args.patch, input_channels=args.input_channels, num_classes=args.classes,
                       device=args.device, repeats=args.repeats, timing=not args.no_timing)
    if args.json_out == "-":
        print(json.dumps(rows, indent=2))
        return 0
    print(format_table(rows))
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump(rows, f, indent=2)
    return 0
