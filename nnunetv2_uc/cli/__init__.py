"""The ``nnunetv2_uc`` command line: one module per subcommand in this package.

Each module has ``add_arguments(parser)`` and ``run(args) -> int``: it parses and checks the arguments, then calls
the library with keyword arguments (as nnU-Net's entry points do). Only the chosen subcommand's module is imported,
so ``nnunetv2_uc --help`` stays instant. A ``UserError`` raised by the library ends the command with its message on
stderr and its exit code (2: bad input, 3: refusing to overwrite).
"""
from __future__ import annotations

import argparse
import importlib
import sys

from nnunetv2_uc import __version__
from nnunetv2_uc.errors import UserError

#: subcommand -> one-line help, in workflow order; the module is nnunetv2_uc.cli.<name with '_' for '-'>
SUBCOMMANDS: dict[str, str] = {
    "doctor": "check this installation (and a trained model folder) for training and prediction, with fixes",
    "convert": "convert a public dataset release (FLARE2021, OIMHS, FeTA2021, AbdomenCT-1K, BTCV, uC layout) to "
               "nnU-Net raw format",
    "synth": "write a small synthetic abdominal-CT dataset in nnU-Net raw format",
    "plans-override": "add a preset configuration (e.g. the papers' 96^3 patch) to a dataset's plans",
    "plan": "plan patch and batch size for uC 3DU-Net, 3D UX-Net or uC on nnU-Net's U-Net with nnU-Net's "
            "planners; writes an nnU-Net plans file",
    "env": "print the shell line that lets the stock nnUNetv2_* commands find this plugin's trainers",
    "import-weights": "convert an original 3D UX-Net / uC 3DU-Net checkpoint into nnU-Net pretrained weights",
    "uc-init": "start uC on nnU-Net's network from a trained nnU-Net model: weights for nnUNetv2_train "
               "-pretrained_weights (and the uC plans of the same topology)",
    "predict": "nnUNetv2_predict with several sliding-window tiles per network call (or with onnxruntime/OpenVINO)",
    "export-onnx": "export a trained model to ONNX, one self-checked file per fold, for other runtimes",
    "evaluate": "evaluate predictions with the uC papers' metrics (mIoU, Dice, VOE, HD95, ASSD, ARI)",
    "cost": "parameters, MACs, latency and peak memory of the networks next to nnU-Net's U-Net",
    "bench": "benchmark training steps and sliding-window inference against nnU-Net's networks",
    "demo": "synthetic CT -> plan -> train -> predict -> evaluate with the stock nnU-Net commands",
}


def module_name(command: str) -> str:
    return f"nnunetv2_uc.cli.{command.replace('-', '_')}"


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser; only ``command``'s module is imported (the other subcommands are listed by name and help)."""
    parser = argparse.ArgumentParser(
        prog="nnunetv2_uc",
        description="uC 3DU-Net and 3D UX-Net for nnU-Net v2: conversion, planning, training helpers, evaluation.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, summary in SUBCOMMANDS.items():
        if name != command:
            subparsers.add_parser(name, help=summary)
            continue
        module = importlib.import_module(module_name(name))
        sub = subparsers.add_parser(name, help=summary, description=module.__doc__,
                                    formatter_class=argparse.RawDescriptionHelpFormatter)
        module.add_arguments(sub)
        sub.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    args = build_parser(command if command in SUBCOMMANDS else None).parse_args(argv)
    try:
        return int(args._run(args) or 0)
    except UserError as error:
        print(f"nnunetv2_uc {args.command}: error: {error}", file=sys.stderr)
        return error.exit_code
