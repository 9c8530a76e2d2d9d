"""Old spellings that keep working for one release, each with a message that names the new one.

The rule the new spellings follow: a subcommand that mirrors an nnU-Net command keeps nnU-Net's flag spelling
(``predict``: ``-patches_per_batch`` as ``nnUNetv2_predict``'s ``-step_size``; ``plan``: ``-gpu_memory_target`` as
``nnUNetv2_plan_experiment``'s); every other flag is ``--long-name``. A network is chosen with ``--network`` and
named as in the registry (snake_case: ``uc3dunet``, ``uxnet``, ``uc_nnunet``, ``plainunet``, ``resenc_m``).
"""
from __future__ import annotations

import argparse
import sys

#: old network name -> the registry's name
DEPRECATED_NETWORK_NAMES = {"uc-nnunet": "uc_nnunet"}


def deprecated(old: str, new: str) -> None:
    """Tell the user (stderr) that ``old`` still works in this release and what replaces it."""
    print(f"nnunetv2_uc: {old} is deprecated and will be removed in the next release; use {new}", file=sys.stderr)


def network_name(value: str) -> str:
    """argparse ``type`` for network names: the registry's name, or a deprecated one mapped to it (with a message)."""
    if value in DEPRECATED_NETWORK_NAMES:
        deprecated(f"the network name {value!r}", repr(DEPRECATED_NETWORK_NAMES[value]))
        return DEPRECATED_NETWORK_NAMES[value]
    return value


class _StoreWithDeprecatedSpelling(argparse.Action):
    """Stores like the default action; a deprecated option string also prints the deprecation message."""

    def __init__(self, option_strings, dest, deprecated_spellings=(), **kwargs):
        self.deprecated_spellings = tuple(deprecated_spellings)
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        if option_string in self.deprecated_spellings:
            deprecated(option_string, self.option_strings[0])
        setattr(namespace, self.dest, values)


def add_network_argument(parser: argparse.ArgumentParser, **kwargs) -> None:
    """``--network`` (dest ``network``), also accepted as the deprecated ``--arch``; ``kwargs`` as add_argument's."""
    parser.add_argument("--network", "--arch", dest="network", action=_StoreWithDeprecatedSpelling,
                        deprecated_spellings=("--arch",), type=network_name, **kwargs)
