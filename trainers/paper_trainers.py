"""nnU-Net trainers for the paper networks: uC 3DU-Net (``-tr nnUNetTrainerUC`` and variants), then 3D UX-Net
(``-tr nnUNetTrainerUXNet`` and the same variants)."""
from __future__ import annotations

from nnunetv2_uc.architectures.registry import network_entry
from nnunetv2_uc.trainers.base import (
    ActivationCheckpointingMixin, PaperNetworkTrainer, SGDRecipeMixin, TinyScheduleMixin,
)

UC_NETWORK = network_entry("uc3dunet")


class nnUNetTrainerUC(PaperNetworkTrainer):
    """uC 3DU-Net (paper configuration) in nnU-Net; AdamW + poly LR recipe."""

    registry_entry = UC_NETWORK


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


UXNET_NETWORK = network_entry("uxnet")


class nnUNetTrainerUXNet(PaperNetworkTrainer):
    """3D UX-Net (paper configuration) in nnU-Net; AdamW + poly LR recipe."""

    registry_entry = UXNET_NETWORK


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
