"""nnUNet_extTrainer shim for nnunetv2-uc: re-exports the trainers (absolute imports only, no logic).

Keep old names here as aliases if a trainer is ever renamed: results folders and checkpoints store names.
"""
from nnunetv2_uc.trainers import (  # noqa: F401
    nnUNetTrainerUC, nnUNetTrainerUC_SGD, nnUNetTrainerUC_SGD_tiny, nnUNetTrainerUC_checkpointed,
    nnUNetTrainerUC_checkpointed_tiny, nnUNetTrainerUC_tiny, nnUNetTrainerUXNet, nnUNetTrainerUXNet_SGD,
    nnUNetTrainerUXNet_SGD_tiny, nnUNetTrainerUXNet_checkpointed, nnUNetTrainerUXNet_checkpointed_tiny,
    nnUNetTrainerUXNet_tiny,
)
from nnunetv2_uc.trainers.demo_trainers import nnUNetTrainerUC_demo, nnUNetTrainerUXNet_demo  # noqa: F401
