"""nnU-Net trainers for uC 3DU-Net (``-tr nnUNetTrainerUC`` and variants)."""
from __future__ import annotations

from torch import nn

from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager, PlansManager

from nnunetv2_uc.architectures import UC3DUNet
from nnunetv2_uc.trainers.base import (
    ActivationCheckpointingMixin, PaperNetworkTrainer, SGDRecipeMixin, TinyScheduleMixin, build_from_plans,
)
from nnunetv2_uc.trainers.plans_preparation import NetworkSpec

#: slice_axis "first": the uC 2-D U-Nets run on planes of spatial axes (1, 2). nnU-Net transposes images so
#: that axis 0 is the out-of-plane (largest-spacing) axis, so these are the in-plane slices.
UC_SPEC = NetworkSpec(UC3DUNet, "uc3dunet_kwargs",
                      {"features": [24, 48, 96, 192, 384, 32], "uc_levels": [0, 1, 2], "slice_axis": "first"})


class nnUNetTrainerUC(PaperNetworkTrainer):
    """uC 3DU-Net (paper configuration) in nnU-Net; AdamW + poly LR recipe."""

    spec = UC_SPEC

    @staticmethod
    def build_network_architecture(plans_manager: PlansManager, configuration_manager: ConfigurationManager,
                                   num_input_channels: int, num_output_channels: int,
                                   enable_deep_supervision: bool = True) -> nn.Module:
        """Build from the plans only (called on the class by nnUNetv2_predict); DS is never enabled."""
        return build_from_plans(UC_SPEC, configuration_manager, num_input_channels, num_output_channels)


class nnUNetTrainerUC_SGD(SGDRecipeMixin, nnUNetTrainerUC):
    """uC 3DU-Net with nnU-Net's default SGD recipe."""


class nnUNetTrainerUC_tiny(TinyScheduleMixin, nnUNetTrainerUC):
    """Smoke tests / CI only (2 epochs x 4 iterations, 2 val iterations); NOT for real training."""


class nnUNetTrainerUC_SGD_tiny(TinyScheduleMixin, nnUNetTrainerUC_SGD):
    """Smoke tests / CI only, SGD recipe; NOT for real training."""


class nnUNetTrainerUC_checkpointed(ActivationCheckpointingMixin, nnUNetTrainerUC):
    """Activation checkpointing for large patches: less training memory, about one more forward per step."""


class nnUNetTrainerUC_checkpointed_tiny(TinyScheduleMixin, nnUNetTrainerUC_checkpointed):
    """Smoke tests / CI only, activation checkpointing on; NOT for real training."""
