"""uC connections in an nnU-Net plan: the ``architecture`` block of a configuration with and without them.

A 3-D configuration of nnU-Net's planners names ``PlainConvUNet`` or ``ResidualEncoderUNet``; its uC version names
``UCPlainConvUNet`` / ``UCResidualEncoderUNet`` (``architectures/uc_unet.py``) with the same arch_kwargs plus the
entries ``uc_arch_kwargs`` derives from the configuration's patch size. Nothing else in the plan changes, so the
stock trainers train the uC version on the same preprocessed data and nnUNetv2_predict builds it from plans.json.
"""
from __future__ import annotations

import copy
from typing import Sequence

from dynamic_network_architectures.architectures.unet import PlainConvUNet, ResidualEncoderUNet

from nnunetv2_uc.architectures.uc_unet import (
    MIN_POOLED_PLANE, PLANNED_FUSION, PLANNED_RESIDUAL_GAIN, SLICE_AXES, UC_FUSIONS, UCPlainConvUNet, UCPlanError,
    UCResidualEncoderUNet, check_uc_stages, in_plane_axes, stage_sizes,
)

MIN_DEFAULT_PLANE = 16  # default uC stages: in-plane map >= 16 voxels at the planned patch


def plane_poolings(plane_side: int) -> int:
    """2-D poolings for a plane whose smaller side is ``plane_side``: the largest n with side / 2^n >= 4."""
    n = 0
    while plane_side // 2 ** (n + 1) >= MIN_POOLED_PLANE:
        n += 1
    return n


def uc_arch_kwargs(patch_size: Sequence[int], strides: Sequence[Sequence[int]],
                   uc_stages: Sequence[int] | None = None, slice_axis: str = "first",
                   fusion: str = PLANNED_FUSION) -> dict:
    """The uC entries for a 3-D plan's arch_kwargs: ``{"uc_stages", "uc_depths", "uc_slice_axis", "uc_fusion"}``,
    plus ``uc_residual_gain`` for the residual fusion.

    ``patch_size`` and ``strides`` are the configuration's ``patch_size`` and ``arch_kwargs["strides"]``.
    ``uc_stages`` None: every skip stage whose in-plane map is at least 16 voxels; chosen stages need at least
    8 (one pooling to 4). Raises ``UCPlanError`` naming the entry to fix.
    """
    if len(patch_size) != 3:
        raise UCPlanError(f"patch_size {list(patch_size)} has {len(patch_size)} axes, but uC folds 3-D maps into "
                          f"2-D slices: plan it for a 3-D configuration (3d_fullres or 3d_lowres), not 2d")
    for s, stride in enumerate(strides):
        if len(stride) != 3:
            raise UCPlanError(f"strides[{s}] = {list(stride)} is not a 3-D stride; use the strides of the same "
                              f"3-D configuration as patch_size {list(patch_size)}")
    if slice_axis not in SLICE_AXES:
        raise UCPlanError(f"uc_slice_axis must be one of {SLICE_AXES}, got {slice_axis!r}")
    if fusion not in UC_FUSIONS:
        raise UCPlanError(f"uc_fusion must be one of {UC_FUSIONS}, got {fusion!r}")
    axes = in_plane_axes(slice_axis)
    sizes = stage_sizes(patch_size, strides)
    planes = [min(size[a] for a in axes) for size in sizes[:-1]]  # the bottleneck has no skip
    if uc_stages is None:
        uc_stages = [s for s, side in enumerate(planes) if side >= MIN_DEFAULT_PLANE]
        if not uc_stages:
            raise UCPlanError(
                f"patch_size {list(patch_size)} with these strides leaves no skip stage whose in-plane map (axes "
                f"{axes}) is at least {MIN_DEFAULT_PLANE} voxels (smaller in-plane side per stage: {planes}); plan "
                f"a patch_size of at least {MIN_DEFAULT_PLANE} on axes {axes}, or choose uc_stages among stages "
                f"whose in-plane side is at least {2 * MIN_POOLED_PLANE}")
    check_uc_stages(uc_stages, len(strides))
    depths = []
    for s in uc_stages:
        depth = plane_poolings(planes[s])
        if depth < 1:
            raise UCPlanError(
                f"uc_stages includes stage {s}, whose in-plane map at patch_size {list(patch_size)} is "
                f"{[sizes[s][a] for a in axes]} voxels (patch_size // strides[0..{s}]); its 2-D U-Net needs a side "
                f"of at least {2 * MIN_POOLED_PLANE} to pool once to {MIN_POOLED_PLANE}. Drop stage {s} from "
                f"uc_stages or enlarge patch_size on axes {axes}")
        depths.append(depth)
    kwargs = {"uc_stages": [int(s) for s in uc_stages], "uc_depths": depths, "uc_slice_axis": slice_axis,
              "uc_fusion": fusion}
    if fusion == "residual":
        kwargs["uc_residual_gain"] = PLANNED_RESIDUAL_GAIN
    return kwargs


def import_path(cls: type) -> str:
    """What a plans file's ``network_class_name`` holds for ``cls`` (nnU-Net resolves it with pydoc.locate)."""
    return f"{cls.__module__}.{cls.__qualname__}"


#: nnU-Net's network class -> its uC version (import paths, as plans files write them)
UC_VERSION: dict[str, str] = {import_path(PlainConvUNet): import_path(UCPlainConvUNet),
                              import_path(ResidualEncoderUNet): import_path(UCResidualEncoderUNet)}
#: the arch_kwargs entries the uC version adds
UC_KWARGS = ("uc_stages", "uc_depths", "uc_slice_axis", "uc_fusion", "uc_residual_gain")


def has_uc_connections(architecture: dict) -> bool:
    """Whether a plans ``architecture`` block names one of the uC versions."""
    return architecture.get("network_class_name") in UC_VERSION.values()


def with_uc_connections(architecture: dict, patch_size: Sequence[int], uc_stages: Sequence[int] | None = None
                        ) -> dict:
    """The uC version of a configuration's ``architecture`` block (a new dict; the input is not changed).

    ``patch_size`` is the configuration's; ``uc_stages`` None takes ``uc_arch_kwargs``'s default stages. Raises
    ``UCPlanError`` (a ``UserError``) naming the entry to fix for a class without a uC version, a 2-D
    configuration or a patch too small for one uC level.
    """
    name = architecture.get("network_class_name")
    if name not in UC_VERSION:
        known = ", ".join(UC_VERSION)
        raise UCPlanError(f"architecture.network_class_name is {name!r}; uC connections exist for {known}. "
                          f"Use a configuration of nnU-Net's default planner or of a ResEnc planner")
    result = copy.deepcopy(architecture)
    result["network_class_name"] = UC_VERSION[name]
    result["arch_kwargs"].update(uc_arch_kwargs(patch_size, architecture["arch_kwargs"]["strides"], uc_stages))
    return result


def without_uc_connections(architecture: dict) -> dict:
    """nnU-Net's network the uC version was made from (a new dict): the class it replaced, no uC entries."""
    base = {uc: plain for plain, uc in UC_VERSION.items()}
    name = architecture.get("network_class_name")
    if name not in base:
        raise UCPlanError(f"architecture.network_class_name is {name!r}, not a uC version of nnU-Net's U-Net "
                          f"({', '.join(base)})")
    result = copy.deepcopy(architecture)
    result["network_class_name"] = base[name]
    for key in UC_KWARGS:
        result["arch_kwargs"].pop(key, None)
    return result


def uc_plans_from(plans: dict, target: str, configurations: Sequence[str] = ("3d_fullres",)) -> dict:
    """``plans`` with uC connections on ``configurations`` and nothing else changed (same patch, batch, topology and
    preprocessed data), named ``target``; only those configurations are kept, resolved (no ``inherits_from``), so no
    2-D configuration trains nnU-Net's plain network under the uC plans name. A configuration the uC network cannot
    take raises UCPlanError naming the plans entry."""
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    manager = PlansManager(plans)
    uc_plans = copy.deepcopy(plans)
    uc_plans["plans_name"] = target
    uc_plans["configurations"] = {}
    for name in configurations:
        configuration = copy.deepcopy(manager.get_configuration(name).configuration)
        configuration.pop("inherits_from", None)
        try:
            configuration["architecture"] = with_uc_connections(configuration["architecture"],
                                                                configuration["patch_size"])
        except UCPlanError as error:
            raise UCPlanError(f"plans {plans.get('plans_name', '?')}, configurations[{name!r}]: {error}") from None
        uc_plans["configurations"][name] = configuration
    return uc_plans
