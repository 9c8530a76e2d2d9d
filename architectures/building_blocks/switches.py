"""Measurement switches, read once from the environment when the networks are imported.

They exist to compare implementations on a device (``scripts/gpu_check.sh`` runs ``nnunetv2_uc bench`` under
each); the defaults are what was measured, and neither switch changes values or state-dict keys.

- ``NNUNETV2_UC_FAST_PATHS`` = ``cpu`` (default) | ``all`` | ``none``: the devices on which the drop-in layers of
  ``fast_layers`` take their fast path (measured on CPU only).
- ``NNUNETV2_UC_LAYOUT`` = ``channels_last`` (default) | ``contiguous``: the memory format of UX-Net's and uC's
  weights and maps.
"""
from __future__ import annotations

import os


def _setting(name: str, choices: tuple[str, ...]) -> str:
    value = os.environ.get(name, choices[0])
    if value not in choices:
        raise ValueError(f"{name}={value!r}: choose one of {', '.join(choices)} (default {choices[0]})")
    return value


FAST_PATHS = _setting("NNUNETV2_UC_FAST_PATHS", ("cpu", "all", "none"))
LAYOUT = _setting("NNUNETV2_UC_LAYOUT", ("channels_last", "contiguous"))
