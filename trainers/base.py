"""Shared behaviour of the plugin trainers: plans preparation (the trained network named in the plans), AdamW +
poly LR, deep supervision only where the network has it, training that survives the cluster (trainers/cluster.py)."""
from __future__ import annotations

import os
from typing import Any

import torch
from torch import distributed as dist
from torch import nn

from nnunetv2.paths import nnUNet_preprocessed
from nnunetv2.training.lr_scheduler.polylr import PolyLRScheduler
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager, PlansManager

from nnunetv2_uc import registration
from nnunetv2_uc.architectures.registry import NetworkEntry
from nnunetv2_uc.planning.memory import GIB
from nnunetv2_uc.trainers.cluster import ClusterSurvivalMixin
from nnunetv2_uc.planning.trainer_plans import PreparedPlans, prepare_plans, trained_architecture
from nnunetv2_uc.planning.uc_plans import has_uc_connections


def build_from_plans(network: NetworkEntry, configuration_manager: ConfigurationManager, num_input_channels: int,
                     num_output_channels: int, enable_deep_supervision: bool = False) -> nn.Module:
    """Build the network the configuration's ``architecture`` block names, with nnU-Net's
    ``get_network_from_plans`` (0.1.x results folders: ``network`` with the kwargs they stored).

    Used by training and (through ``build_network_architecture``) by nnUNetv2_predict, so both
    build the identical network. Deep supervision only where the network has it (uC on nnU-Net's U-Net).
    """
    architecture = trained_architecture(network, configuration_manager.configuration)
    deep_supervision = enable_deep_supervision and has_uc_connections(architecture)
    return get_network_from_plans(architecture["network_class_name"], architecture["arch_kwargs"],
                                  architecture["_kw_requires_import"], num_input_channels, num_output_channels,
                                  allow_init=True, deep_supervision=deep_supervision)


def _preprocessed_base(plans: dict) -> str | None:
    if not nnUNet_preprocessed:
        return None
    return os.path.join(nnUNet_preprocessed.get(), plans["dataset_name"])


def _ddp_world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1



ADAMW_WEIGHT_DECAY = 3e-5
ADAMW_EPS = 1e-4


def adamw_with_poly_lr(parameters, initial_lr: float, num_epochs: int, weight_decay: float = ADAMW_WEIGHT_DECAY,
                       eps: float = ADAMW_EPS) -> tuple[torch.optim.Optimizer, PolyLRScheduler]:
    """The plugin recipe's optimizer: AdamW with nnU-Net's poly LR (exponent 0.9) over ``num_epochs``."""
    optimizer = torch.optim.AdamW(parameters, lr=initial_lr, weight_decay=weight_decay, eps=eps)
    return optimizer, PolyLRScheduler(optimizer, initial_lr, num_epochs)


class PaperNetworkTrainer(ClusterSurvivalMixin, nnUNetTrainer):
    """nnU-Net's full pipeline with a paper network (or the plugin network the plans name), AdamW + poly LR.

    On nnU-Net's default plans the trainer's network replaces nnU-Net's U-Net, with patch and batch adapted
    by the planner's code; plans from ``nnunetv2_uc plan`` are trained as planned. Deep supervision is on only
    for networks that have it (uC on nnU-Net's U-Net); the paper networks have none.

    Optimizer recipe (see README): AdamW lr 5e-4, eps 1e-4, weight decay 3e-5, poly LR (exponent 0.9) over
    nnU-Net's 1000 x 250 schedule, as in DKFZ's nnU-Net wrapper of 3D UX-Net (MIC-DKFZ/MedNeXt,
    ``nnUNetTrainerV2_3DUXNet``). Everything else (loss, augmentation, sampling, validation) is nnU-Net's.

    Cluster survival (``ClusterSurvivalMixin``, trainers/cluster.py): atomic checkpoints, checkpoint_latest.pth also
    by time ($NNUNETV2_UC_CHECKPOINT_MINUTES, default 30), a clean stop with exit code 85 on SIGTERM/SIGUSR1, a
    resume that names and skips a checkpoint that does not load.
    """

    registry_entry: NetworkEntry  # the network this trainer trains (set by the concrete trainers)
    optimizer_slots = 2  # AdamW keeps two state tensors per parameter (for the memory estimate)

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        self.adjust_plans(plans, configuration, device)
        # runs before super().__init__ creates the results folder: a bad request leaves nothing behind
        prepared = prepare_plans(plans, configuration, fold, dataset_json, self.registry_entry, self.optimizer_slots,
                                 self.__class__.__name__, _preprocessed_base(plans), _ddp_world_size(),
                                 self.network_overrides(device))
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.enable_deep_supervision = prepared.deep_supervision
        self.initial_lr = 5e-4
        self.weight_decay = ADAMW_WEIGHT_DECAY
        self.adam_eps = ADAMW_EPS
        self.prepared_plans = prepared
        self._log_preparation(prepared)
        self.configure_recipe()

    @classmethod
    def build_network_architecture(cls, plans_manager: PlansManager, configuration_manager: ConfigurationManager,
                                   num_input_channels: int, num_output_channels: int,
                                   enable_deep_supervision: bool = True) -> nn.Module:
        """Build from the plans only (nnUNetv2_predict calls it on the class, as nnU-Net's static method)."""
        return build_from_plans(cls.registry_entry, configuration_manager, num_input_channels, num_output_channels,
                                enable_deep_supervision)

    @classmethod
    def adjust_plans(cls, plans: dict, configuration: str, device: torch.device) -> None:
        """Hook for variants: edit the plans before they are validated and read (default: nothing)."""

    @classmethod
    def network_overrides(cls, device: torch.device) -> dict:
        """Hook for variants: constructor kwargs of the trainer's network to set (default: none)."""
        return {}

    def configure_recipe(self) -> None:
        """Hook for variants: set optimizer/schedule attributes after nnU-Net's __init__ (default: nothing).

        Mixins override it cooperatively (``super().configure_recipe()`` first), so the variant classes need no
        ``__init__`` of their own and keep nnU-Net's exact constructor signature.
        """

    def _log_preparation(self, prepared: PreparedPlans) -> None:
        for note in prepared.notes:
            self.print_to_log_file(f"[nnunetv2_uc] {note}")
        adaptation = prepared.adaptation
        if adaptation is not None:
            for reason in adaptation.reasons:
                self.print_to_log_file(f"[nnunetv2_uc] {reason}")
            self.print_to_log_file(
                f"[nnunetv2_uc] planned patch {list(adaptation.planned_patch)} x batch {adaptation.planned_batch_size}; "
                f"estimated training memory {adaptation.estimated_bytes / GIB:.2f} GiB per GPU (fp16 autocast) of a "
                f"{adaptation.budget_bytes / GIB:.2f} GiB budget: {adaptation.budget_source}")
        architecture = prepared.architecture
        self.print_to_log_file(
            f"[nnunetv2_uc] training {architecture['network_class_name']}: patch {list(prepared.patch_size)}, batch "
            f"size {prepared.batch_size}, deep supervision {'on' if prepared.deep_supervision else 'off'}; "
            f"arch_kwargs {architecture['arch_kwargs']}")

    def on_train_start(self) -> None:
        # the record of the code that trains (nnunetv2_uc/registration.py); nnU-Net saves these plans as plans.json
        registration.stamp(self.plans_manager.plans, type(self), self.prepared_plans.architecture["network_class_name"])
        super().on_train_start()

    def configure_optimizers(self) -> tuple[torch.optim.Optimizer, Any]:
        return adamw_with_poly_lr(self.network.parameters(), self.initial_lr, self.num_epochs, self.weight_decay,
                                  self.adam_eps)

    def set_deep_supervision_enabled(self, enabled: bool) -> None:
        """nnU-Net's switch where the network has deep supervision; the paper networks have none (stays off)."""
        if self.prepared_plans.deep_supervision:
            super().set_deep_supervision_enabled(enabled)


class SGDRecipeMixin:
    """nnU-Net's default optimizer: SGD (Nesterov, momentum 0.99), lr 1e-2, weight decay 3e-5, poly LR."""

    optimizer_slots = 1

    def configure_recipe(self) -> None:
        super().configure_recipe()
        self.initial_lr = 1e-2
        self.weight_decay = 3e-5

    def configure_optimizers(self):
        return nnUNetTrainer.configure_optimizers(self)


class ActivationCheckpointingMixin:
    """Activation checkpointing on: the network recomputes each stage's activations in the backward pass.

    The memory estimate then counts the stored stage inputs plus one recomputed stage, so the planned patch
    needs less (often no) shrinking; each step costs about one more forward pass (BENCHMARKS.md).
    """

    @classmethod
    def network_overrides(cls, device: torch.device) -> dict:
        return {**super().network_overrides(device), "activation_checkpointing": True}


class TinyScheduleMixin:
    """Smoke tests and CI only, NOT for real training: 2 epochs x 4 iterations, 2 validation iterations."""

    def configure_recipe(self) -> None:
        super().configure_recipe()
        self.num_epochs = 2
        self.num_iterations_per_epoch = 4
        self.num_val_iterations_per_epoch = 2
        self.save_every = 1  # a checkpoint_latest.pth after epoch 0, so `--c` can be exercised
