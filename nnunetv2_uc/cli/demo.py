"""Run the whole pipeline on built-in synthetic CT: synth, plan, train, predict, evaluate (stock nnU-Net commands).

The training is a fixed schedule, so the result does not depend on the machine's speed; time is estimated
before training (and the time left printed after every epoch). --minutes is an optional upper bound: when the
estimate does not fit it, the demo stops before training (exit code 75) unless --allow-fewer-iterations lets it
train fewer iterations per epoch, at a lower Dice. Re-running reuses every finished step. See
`nnunetv2_uc.demo.pipeline` for the steps.
"""
from __future__ import annotations

import argparse

from nnunetv2_uc.architectures.registry import demo_networks
from nnunetv2_uc.deprecation import add_network_argument
from nnunetv2_uc.demo.pipeline import run_demo


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_network_argument(parser, choices=sorted(demo_networks()), default="uc3dunet",
                         help="network to train (default uc3dunet)")
    parser.add_argument("--workdir", default="demo", help="folder for all data, models and results (default ./demo)")
    parser.add_argument("--minutes", type=float, default=None,
                        help="upper bound on the whole demo's wall time (default: none). Before training the "
                             "demo estimates the time it needs; if that exceeds what is left, it stops (or see "
                             "--allow-fewer-iterations)")
    parser.add_argument("--allow-fewer-iterations", action="store_true",
                        help="when the estimate exceeds --minutes, train fewer iterations per epoch instead of "
                             "stopping (Dice will be lower)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                        help="auto: the GPU if torch sees one, else the CPU")
    parser.add_argument("--cases", type=int, default=24, help="synthetic training cases (default 24)")
    parser.add_argument("--test-cases", type=int, default=6, help="synthetic held-out test cases (default 6)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic data (default 0)")
    parser.add_argument("--trainer", default=None,
                        help="override the trainer class name (advanced/testing, e.g. nnUNetTrainerUC_tiny)")
    parser.add_argument("--processes", type=int, default=2, help="worker processes for nnU-Net steps (default 2)")
    parser.add_argument("--dry-run", action="store_true",
                        help="list the steps and commands (and which are already done) without running them")


def run(args: argparse.Namespace) -> int:
    return run_demo(workdir=args.workdir, network=args.network, minutes=args.minutes,
                    allow_fewer_iterations=args.allow_fewer_iterations, device=args.device, cases=args.cases,
                    test_cases=args.test_cases, seed=args.seed, trainer=args.trainer, processes=args.processes,
                    dry_run=args.dry_run)
