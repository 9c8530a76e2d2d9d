"""Parameters, MACs, latency and peak memory of UX-Net / uC 3DU-Net next to nnU-Net's PlainConvUNet.

  nnunetv2_uc cost [--network ...] [--patch D0 D1 D2] [--no-timing]     the registry's networks at one patch
  nnunetv2_uc cost -d DATASET [-c 3d_fullres] [-p nnUNetPlans]        a plan's network next to the same plan with
                                                                      uC connections and the paper networks
                                                                      (parameters and MACs at the plan's patch;
                                                                      no timing)

MACs follow fvcore's conventions (the spec's reference numbers); see ``nnunetv2_uc.measure.cost``. Each network is timed in
a fresh process, so its peak memory is its own. With -d the networks are built from
$nnUNet_preprocessed/DATASET/PLANS.json as nnU-Net's trainer builds them (deep supervision off).
"""
from __future__ import annotations

import argparse
import json
import sys

from nnunetv2_uc.architectures.registry import NETWORKS
from nnunetv2_uc.deprecation import add_network_argument
from nnunetv2_uc.errors import UserError
from nnunetv2_uc.files import atomic_write_json
from nnunetv2_uc.measure.cost import (DEFAULT_NETWORKS, cost_report, format_plans_table, format_table,
                                      load_dataset_plans, plans_cost_report, request_problem)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_network_argument(parser, nargs="+", choices=tuple(NETWORKS) + ("all",),
                         help=f"networks to report (default: all = {' '.join(DEFAULT_NETWORKS)})")
    parser.add_argument("--patch", nargs=3, type=int, metavar=("D0", "D1", "D2"),
                        help="input patch size (default 96 96 96, the papers' crop)")
    plans = parser.add_argument_group("a dataset's plan (instead of --network/--patch)")
    plans.add_argument("-d", dest="dataset", metavar="DATASET",
                       help="dataset name or id: its plan's network, the same plan with uC connections and the paper "
                            "networks at the plan's patch (classes and input channels from the dataset)")
    plans.add_argument("-c", dest="configuration", default="3d_fullres", help="configuration (default 3d_fullres)")
    plans.add_argument("-p", dest="plans", default="nnUNetPlans", help="plans identifier (default nnUNetPlans)")
    parser.add_argument("--classes", type=int, default=5, help="output classes (default 5; without -d)")
    parser.add_argument("--input-channels", type=int, default=1, help="input channels (default 1; without -d)")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="where to time (default cpu)")
    parser.add_argument("--repeats", type=int, default=3, help="timed repetitions; the median is reported")
    parser.add_argument("--no-timing", action="store_true", help="only parameters and MACs (instant)")
    parser.add_argument("--json", dest="json_out", metavar="FILE", help="also write the rows as JSON ('-' = stdout)")


def run(args: argparse.Namespace) -> int:
    if args.dataset is not None:
        if args.network or args.patch:
            raise UserError("-d reports a dataset's plan at its own patch; leave out --network/--patch (or -d)")
        plans, dataset_json = load_dataset_plans(args.dataset, args.plans)
        return _output(plans_cost_report(plans, args.configuration, dataset_json), format_plans_table, args.json_out)
    networks = list(DEFAULT_NETWORKS) if not args.network or "all" in args.network else list(dict.fromkeys(args.network))
    patch = args.patch or [96, 96, 96]
    problem = request_problem(networks, patch, args.device)
    if problem:
        raise UserError(problem)
    if not args.no_timing:
        print(f"timing {', '.join(networks)} at patch {patch} on {args.device} "
              f"({args.repeats} repeats after 1 warm-up; each network in a fresh process)...", file=sys.stderr)
    rows = cost_report(networks=networks, patch=patch, input_channels=args.input_channels, num_classes=args.classes,
                       device=args.device, repeats=args.repeats, timing=not args.no_timing)
    return _output(rows, format_table, args.json_out)


def _output(rows: list[dict], format_rows, json_out: str | None) -> int:
    if json_out == "-":
        print(json.dumps(rows, indent=2))
        return 0
    print(format_rows(rows))
    if json_out:
        atomic_write_json(json_out, rows)
    return 0
