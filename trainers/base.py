"""Shared behaviour of the plugin trainers: plans preparation, no deep supervision, AdamW + poly LR."""
from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn

from nnunetv2.paths import nnUNet_preprocessed
from nnunetv2.training.lr_scheduler.polylr import PolyLRScheduler
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager

from nnunetv2_uc import provenance
from nnunetv2_uc.architectures.registry import NetworkEntry
from nnunetv2_uc.trainers.patch_planning import GIB, PatchDecision
from nnunetv2_uc.trainers.plans_preparation import prepare_plans, resolved_kwargs


def build_from_plans(network: NetworkEntry, configuration_manager: ConfigurationManager, num_input_channels: int,
                     num_output_channels: int) -> nn.Module:
    """Build the network from the kwargs the trainer persisted in the plans configuration.

    Used by training and (through the static ``build_network_architecture``) by nnUNetv2_predict, so both
    build the identical network. PyTorch default init is kept (the networks have no ``initialize``).
    """
    kwargs = resolved_kwargs(network, configuration_manager.configuration)
    return network.network_class(num_input_channels, num_output_channels, deep_supervision=False, **kwargs)


def merge_network_kwargs(plans: dict, configuration: str, network: NetworkEntry, kwargs: dict) -> None:
    """Overlay ``kwargs`` on the network kwargs stored in a plans configuration (no-op if it is missing: the
    trainer then reports the missing configuration with the fix)."""
    config = plans.get("configurations", {}).get(configuration)
    if config is not None:
        key = network.legacy_kwargs_key
        config[key] = {**config.get(key, {}), **kwargs}


def _preprocessed_base(plans: dict) -> str | None:
    if not nnUNet_preprocessed:
        return None
    return os.path.join(nnUNet_preprocessed.get(), plans["dataset_name"])


class PaperNetworkTrainer(nnUNetTrainer):
    """nnU-Net's full pipeline with a paper network: DS off, patch adapted to the network, AdamW + poly LR.

    Optimizer recipe (see README): AdamW lr 5e-4, eps 1e-4, weight decay 3e-5, poly LR (exponent 0.9) over
    nnU-Net's 1000 x 250 schedule, as in DKFZ's nnU-Net wrapper of 3D UX-Net (MIC-DKFZ/MedNeXt,
    ``nnUNetTrainerV2_3DUXNet``). Everything else (loss, augmentation, sampling, validation) is nnU-Net's.
    """

    registry_entry: NetworkEntry  # the network this trainer trains (set by the concrete trainers)
    optimizer_slots = 2  # AdamW keeps two state tensors per parameter (for the memory estimate)

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        self.adjust_plans(plans, configuration, device)
        # runs before super().__init__ creates the results folder: a bad request leaves nothing behind
        decision = prepare_plans(plans, configuration, fold, dataset_json, self.registry_entry, self.optimizer_slots,
                                 self.__class__.__name__, _preprocessed_base(plans))
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.enable_deep_supervision = False
        self.initial_lr = 5e-4
        self.weight_decay = 3e-5
        self.adam_eps = 1e-4
        self.patch_decision = decision
        self._log_patch_decision(decision)
        self.configure_recipe()

    @classmethod
    def adjust_plans(cls, plans: dict, configuration: str, device: torch.device) -> None:
        """Hook for variants: edit the plans before they are validated and read (default: nothing)."""

    def configure_recipe(self) -> None:
        """Hook for variants: set optimizer/schedule attributes after nnU-Net's __init__ (default: nothing).

        Mixins override it cooperatively (``super().configure_recipe()`` first), so the variant classes need no
        ``__init__`` of their own and keep nnU-Net's exact constructor signature.
        """

    def _log_patch_decision(self, decision: PatchDecision) -> None:
        for reason in decision.reasons:
            self.print_to_log_file(f"[nnunetv2_uc] {reason}")
        budget = "none (fixed patch)" if decision.budget_bytes is None else f"{decision.budget_bytes / GIB:.2f} GiB"
        self.print_to_log_file(
            f"[nnunetv2_uc] {self.registry_entry.network_class.__name__}: patch {list(decision.patch)} (planned {list(decision.planned)}), "
            f"batch size {decision.batch_size}, estimated training memory {decision.estimate_bytes / GIB:.2f} GiB, "
            f"budget {budget}; network kwargs {self.configuration_manager.configuration[self.registry_entry.legacy_kwargs_key]}"
        )

    def on_train_start(self) -> None:
        provenance.stamp(self.plans_manager.plans, type(self), self.registry_entry)  # nnU-Net saves it as plans.json
        super().on_train_start()

    def configure_optimizers(self) -> tuple[torch.optim.Optimizer, Any]:
        optimizer = torch.optim.AdamW(self.network.parameters(), lr=self.initial_lr,
                                      weight_decay=self.weight_decay, eps=self.adam_eps)
        return optimizer, PolyLRScheduler(optimizer, self.initial_lr, self.num_epochs)

    def set_deep_supervision_enabled(self, enabled: bool) -> None:
        """The paper networks have no deep-supervision heads; DS stays off (enable_deep_supervision=False)."""


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
    def adjust_plans(cls, plans: dict, configuration: str, device: torch.device) -> None:
        super().adjust_plans(plans, configuration, device)
        merge_network_kwargs(plans, configuration, cls.registry_entry, {"activation_checkpointing": True})


class TinyScheduleMixin:
    """Smoke tests and CI only, NOT for real training: 2 epochs x 4 iterations, 2 validation iterations."""

    def configure_recipe(self) -> None:
        super().configure_recipe()
        self.num_epochs = 2
        self.num_iterations_per_epoch = 4
        self.num_val_iterations_per_epoch = 2
        self.save_every = 1  # a checkpoint_latest.pth after epoch 0, so `--c` can be exercised
