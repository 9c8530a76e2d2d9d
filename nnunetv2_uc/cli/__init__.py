"""The `nnunetv2_uc` command line: one subcommand per module.

Each subcommand module exposes ``add_arguments(parser)`` and ``run(args) -> int``, plus a module docstring
whose first line is the subcommand's one-line help. Modules are imported when the parser is built, so
they must keep heavy imports (torch, nnU-Net) inside ``run``.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from nnunetv2_uc import __version__

# subcommand name -> module implementing it
SUBCOMMANDS: dict[str, str] = {
    "cost": "nnunetv2_uc.cost",
    "convert": "nnunetv2_uc.conversion.cli",
    "import-weights": "nnunetv2_uc.interop",
    "env": "nnunetv2_uc.registration",
    "plans-override": "nnunetv2_uc.plans_override",
    "evaluate": "nnunetv2_uc.evaluation.cli",
    "synth": "nnunetv2_uc.synth",
    "demo": "nnunetv2_uc.demo",
    "bench": "nnunetv2_uc.bench",
    "predict": "nnunetv2_uc.predict",
    "plan": "nnunetv2_uc.cli.plan",
}


def _summary(module) -> str:
    return (module.__doc__ or "").strip().splitlines()[0] if module.__doc__ else ""


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The full parser; with ``only``, just that subcommand's module is imported (the others stay unloaded)."""
    parser = argparse.ArgumentParser(
        prog="nnunetv2_uc",
        description="uC 3DU-Net and 3D UX-Net for nnU-Net v2: conversion, training helpers, evaluation.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, module_name in SUBCOMMANDS.items():
        if only is not None and name != only:
            subparsers.add_parser(name)
            continue
        module = importlib.import_module(module_name)
        sub = subparsers.add_parser(name, help=_summary(module), description=module.__doc__,
                                    formatter_class=argparse.RawDescriptionHelpFormatter)
        module.add_arguments(sub)
        sub.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    args = build_parser(only=command if command in SUBCOMMANDS else None).parse_args(argv)
    return int(args._run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
