"""nnU-Net trainers for 3D UX-Net (``-tr nnUNetTrainerUXNet`` and variants)."""
from __future__ import annotations

from torch import nn

from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager, PlansManager

from nnunetv2_uc.architectures import UXNet
from nnunetv2_uc.trainers.base import (
    ActivationCheckpointingMixin, PaperNetworkTrainer, SGDRecipeMixin, TinyScheduleMixin, build_from_plans,
)
from nnunetv2_uc.trainers.plans_preparation import NetworkSpec

UXNET_SPEC = NetworkSpec(UXNet, "uxnet_kwargs",
                         {"feature_sizes": [48, 96, 192, 384], "depths": [2, 2, 2, 2], "hidden_size": 768,
                          "kernel_size": 7, "drop_path_rate": 0.0, "layer_scale_init_value": 1e-6})


class nnUNetTrainerUXNet(PaperNetworkTrainer):
    """3D UX-Net (paper configuration) in nnU-Net; AdamW + poly LR recipe."""

    spec = UXNET_SPEC

    @staticmethod
    def build_network_architecture(plans_manager: PlansManager, configuration_manager: ConfigurationManager,
                                   num_input_channels: int, num_output_channels: int,
                                   enable_deep_supervision: bool = True) -> nn.Module:
        """Build from the plans only (called on the class by nnUNetv2_predict); DS is never enabled."""
        return build_from_plans(UXNET_SPEC, configuration_manager, num_input_channels, num_output_channels)


class nnUNetTrainerUXNet_SGD(SGDRecipeMixin, nnUNetTrainerUXNet):
    """3D UX-Net with nnU-Net's default SGD recipe."""


class nnUNetTrainerUXNet_tiny(TinyScheduleMixin, nnUNetTrainerUXNet):
    """Smoke tests / CI only (2 epochs x 4 iterations, 2 val iterations); NOT for real training."""


class nnUNetTrainerUXNet_SGD_tiny(TinyScheduleMixin, nnUNetTrainerUXNet_SGD):
    """Smoke tests / CI only, SGD recipe; NOT for real training."""


class nnUNetTrainerUXNet_checkpointed(ActivationCheckpointingMixin, nnUNetTrainerUXNet):
    """Activation checkpointing for large patches: less training memory, about one more forward per step."""


class nnUNetTrainerUXNet_checkpointed_tiny(TinyScheduleMixin, nnUNetTrainerUXNet_checkpointed):
    """Smoke tests / CI only, activation checkpointing on; NOT for real training."""
