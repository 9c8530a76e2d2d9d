"""The networks the project knows, one entry each; trainers, planning, cost, bench, interop and the demo read it.

Facts about a network live on its class (constructor defaults, ``input_rule``, ``checkpoint_segments``) and in its
own file (the blocks, ``ORIGINAL_CHECKPOINT``); an entry here only ties them to a name. Adding a network means its
file plus one entry in ``NETWORKS``. nnU-Net's own networks are entries too (``reference=True``): cost and bench
compare against them, built with the topology nnU-Net's planners pick for a patch.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Callable, Sequence

from dynamic_network_architectures.architectures.unet import PlainConvUNet, ResidualEncoderUNet
from nnunetv2.experiment_planning.experiment_planners.network_topology import get_pool_and_conv_props
from torch import nn

from nnunetv2_uc.architectures.original_checkpoints import OriginalCheckpoint
from nnunetv2_uc.architectures import uc3dunet, uc_unet, uxnet
from nnunetv2_uc.planning.uc_plans import uc_arch_kwargs

#: (input_channels, num_classes, patch, activation_checkpointing) -> network, for cost and bench
PatchBuilder = Callable[[int, int, Sequence[int], bool], nn.Module]

#: the suffixes of a network's trainers after its entry's ``trainer`` name (trainers/__init__.py says what each is)
TRAINER_VARIANTS = ("", "_SGD", "_tiny", "_SGD_tiny", "_checkpointed", "_checkpointed_tiny", "_demo")

#: constructor arguments every network takes that are not configuration
_DATA_ARGUMENTS = ("self", "input_channels", "num_classes", "deep_supervision")


#: optimizer state tensors per parameter: the plugin trainers' AdamW keeps 2, nnU-Net's SGD with momentum 1
ADAMW_SLOTS, SGD_SLOTS = 2, 1


@dataclass(frozen=True)
class NetworkEntry:
    """One network: its class, how cost/bench build it for a patch, how nnU-Net and the plugin reach it, and
    what ``nnunetv2_uc plan`` needs to know (planning/planners.py turns these facts into the planner's view).

    planned_topology: "own" (a fixed topology: the paper networks), "nnunet" (the topology of the configuration
        nnU-Net planned, plus uC connections chosen for the patch) or None (``plan`` does not plan it).
    plans_suffix: appended to the base planner's plans name by ``plan``.
    deep_supervision, optimizer_slots: how the trainer meant for it trains (the planner's memory depends on both).
    """

    name: str
    network_class: type[nn.Module]
    summary: str
    build_for_patch: PatchBuilder
    trainer: str | None = None  # the -tr name of its trainer; variants append a suffix (TRAINER_VARIANTS)
    legacy_kwargs_key: str | None = None
    original: OriginalCheckpoint | None = None
    reference: bool = False
    planned_topology: str | None = None
    plans_suffix: str | None = None
    deep_supervision: bool = False
    optimizer_slots: int = ADAMW_SLOTS

    @property
    def import_path(self) -> str:
        """What a plans file's ``network_class_name`` holds (nnU-Net resolves it with pydoc.locate)."""
        return f"{self.network_class.__module__}.{self.network_class.__qualname__}"

    def default_kwargs(self) -> dict:
        """The constructor's configuration defaults (the paper configuration for the paper networks)."""
        parameters = inspect.signature(self.network_class.__init__).parameters.values()
        return {p.name: _plain(p.default) for p in parameters
                if p.name not in _DATA_ARGUMENTS and p.default is not inspect.Parameter.empty}

    def plans_architecture(self, **kwargs) -> dict:
        """The ``architecture`` block of a plans configuration that names this network: nnU-Net's
        ``get_network_from_plans`` builds it from there. ``kwargs`` override the defaults."""
        return {"network_class_name": self.import_path, "arch_kwargs": {**self.default_kwargs(), **kwargs},
                "_kw_requires_import": []}

    @property
    def demo_trainer(self) -> str | None:
        """The trainer `nnunetv2_uc demo` trains it with (trainers/demo_trainers.py)."""
        return f"{self.trainer}_demo" if self.trainer else None

    @property
    def supports_checkpointing(self) -> bool:
        return "activation_checkpointing" in inspect.signature(self.network_class.__init__).parameters

    def input_problems(self, spatial: Sequence[int]) -> list[str]:
        """Why the network cannot take this spatial size (empty if it can, or if the class states no rule)."""
        rule = getattr(self.network_class, "input_rule", None)
        return rule.problems(spatial) if rule is not None else []


def _plain(value):
    """Tuples as lists, so defaults compare equal to what a plans JSON file holds."""
    return list(value) if isinstance(value, tuple) else value


def _paper_network(network_class: type[nn.Module]) -> PatchBuilder:
    def build(input_channels: int, num_classes: int, patch: Sequence[int], checkpointing: bool) -> nn.Module:
        return network_class(input_channels, num_classes, activation_checkpointing=checkpointing)
    return build


def nnunet_topology(patch: Sequence[int], spacing: Sequence[float] = (1.0, 1.0, 1.0)) -> dict:
    """What nnU-Net's planners pick for this patch: stages, kernel sizes, strides, widths (32 .. 320)."""
    _, strides, kernels, _, _ = get_pool_and_conv_props(list(spacing), list(patch), 4, 999999)
    n_stages = len(kernels)
    return {
        "n_stages": n_stages,
        "features_per_stage": [min(320, 32 * 2 ** i) for i in range(n_stages)],
        "kernel_sizes": [list(k) for k in kernels],
        "strides": [list(s) for s in strides],
    }


RESENC_M_BLOCKS = (1, 3, 4, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6)  # nnUNetPlannerResEncM's encoder blocks per stage


def _nnunet_network(residual: bool, with_uc: bool = False) -> PatchBuilder:
    """nnU-Net's plain or ResEnc M U-Net as its planners build it for a patch (no DS heads); ``with_uc`` puts uC
    connections on it with the defaults a planner derives from the patch."""
    def build(input_channels: int, num_classes: int, patch: Sequence[int], checkpointing: bool) -> nn.Module:
        if checkpointing:
            raise ValueError("nnU-Net's networks have no activation checkpointing option")
        topology = nnunet_topology(patch)
        n = topology["n_stages"]
        common = dict(conv_bias=True, norm_op=nn.InstanceNorm3d, norm_op_kwargs={"eps": 1e-5, "affine": True},
                      nonlin=nn.LeakyReLU, nonlin_kwargs={"inplace": True}, deep_supervision=False)
        if with_uc:
            common.update(uc_arch_kwargs(patch, topology["strides"]))
        args = (input_channels, n, topology["features_per_stage"], nn.Conv3d, topology["kernel_sizes"],
                topology["strides"])
        if residual:
            network_class = uc_unet.UCResidualEncoderUNet if with_uc else ResidualEncoderUNet
            return network_class(*args, list(RESENC_M_BLOCKS[:n]), num_classes, [1] * (n - 1), **common)
        network_class = uc_unet.UCPlainConvUNet if with_uc else PlainConvUNet
        return network_class(*args, [2] * n, num_classes, [2] * (n - 1), **common)
    return build


NETWORKS: dict[str, NetworkEntry] = {entry.name: entry for entry in (
    NetworkEntry("uxnet", uxnet.UXNet, "3D UX-Net (ICLR 2023), paper configuration", _paper_network(uxnet.UXNet),
                 trainer="nnUNetTrainerUXNet",
                 legacy_kwargs_key="uxnet_kwargs", original=uxnet.ORIGINAL_CHECKPOINT,
                 planned_topology="own", plans_suffix="UXNet"),
    NetworkEntry("uc3dunet", uc3dunet.UC3DUNet, "uC 3DU-Net (NeurIPS 2024), paper configuration",
                 _paper_network(uc3dunet.UC3DUNet), trainer="nnUNetTrainerUC",
                 legacy_kwargs_key="uc3dunet_kwargs", original=uc3dunet.ORIGINAL_CHECKPOINT,
                 planned_topology="own", plans_suffix="UC3DUNet"),
    NetworkEntry("uc_nnunet", uc_unet.UCPlainConvUNet,
                 "uC connections on nnU-Net's planned U-Net (plain or ResEnc), with deep supervision",
                 _nnunet_network(residual=False, with_uc=True), planned_topology="nnunet", plans_suffix="UCUNet",
                 deep_supervision=True, optimizer_slots=SGD_SLOTS),  # trained by nnU-Net's stock trainers
    NetworkEntry("plainunet", PlainConvUNet, "nnU-Net's default U-Net (PlainConvUNet) as planned for the patch",
                 _nnunet_network(residual=False), reference=True),
    NetworkEntry("resenc_m", ResidualEncoderUNet, "nnU-Net's ResEnc M U-Net as planned for the patch",
                 _nnunet_network(residual=True), reference=True),
)}


def network_entry(name: str) -> NetworkEntry:
    """The entry called ``name``; an unknown name is a ValueError that lists the known ones."""
    if name not in NETWORKS:
        raise ValueError(f"unknown network {name!r}; choose from {', '.join(NETWORKS)}")
    return NETWORKS[name]


def entry_for_class(network_class: type) -> NetworkEntry | None:
    """The entry of a network class (None for a class the registry does not know)."""
    return next((e for e in NETWORKS.values() if e.network_class is network_class), None)


def plannable_networks() -> list[str]:
    """Names of the networks ``nnunetv2_uc plan --network`` plans."""
    return [name for name, entry in NETWORKS.items() if entry.planned_topology is not None]


def demo_networks() -> dict[str, str]:
    """Network name -> the trainer `nnunetv2_uc demo` trains it with."""
    return {name: entry.demo_trainer for name, entry in NETWORKS.items() if entry.demo_trainer}


def original_networks() -> list[str]:
    """Names of the networks that reproduce an original implementation (their checkpoints load)."""
    return [name for name, entry in NETWORKS.items() if entry.original is not None]
