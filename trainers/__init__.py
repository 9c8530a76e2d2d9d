"""nnU-Net v2 trainers for the paper networks (resolved by name via ``nnUNet_extTrainer``; see ``nnunetv2_uc env``).

- ``nnUNetTrainerUC`` / ``nnUNetTrainerUXNet``: AdamW (lr 5e-4, eps 1e-4, wd 3e-5) + poly LR, 1000 x 250.
- ``*_SGD``: nnU-Net's default SGD recipe.
- ``*_checkpointed``: activation checkpointing (less memory for large patches, about one more forward per step).
- ``*_tiny``: 2 epochs x 4 iterations, for smoke tests and CI only (not for real training).
"""
from nnunetv2_uc.trainers.uc_trainers import (
    nnUNetTrainerUC, nnUNetTrainerUC_SGD, nnUNetTrainerUC_SGD_tiny, nnUNetTrainerUC_checkpointed,
    nnUNetTrainerUC_checkpointed_tiny, nnUNetTrainerUC_tiny,
)
from nnunetv2_uc.trainers.uxnet_trainers import (
    nnUNetTrainerUXNet, nnUNetTrainerUXNet_SGD, nnUNetTrainerUXNet_SGD_tiny, nnUNetTrainerUXNet_checkpointed,
    nnUNetTrainerUXNet_checkpointed_tiny, nnUNetTrainerUXNet_tiny,
)

TRAINER_NAMES = (
    "nnUNetTrainerUC", "nnUNetTrainerUC_SGD", "nnUNetTrainerUC_tiny", "nnUNetTrainerUC_SGD_tiny",
    "nnUNetTrainerUC_checkpointed", "nnUNetTrainerUC_checkpointed_tiny",
    "nnUNetTrainerUXNet", "nnUNetTrainerUXNet_SGD", "nnUNetTrainerUXNet_tiny", "nnUNetTrainerUXNet_SGD_tiny",
    "nnUNetTrainerUXNet_checkpointed", "nnUNetTrainerUXNet_checkpointed_tiny",
)

__all__ = list(TRAINER_NAMES)
