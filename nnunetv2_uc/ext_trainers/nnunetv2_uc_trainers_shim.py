"""nnUNet_extTrainer shim for nnunetv2-uc: re-exports the trainers (absolute imports only, no logic).

Keep old names in ``nnunetv2_uc.trainers`` as aliases if a trainer is ever renamed: results folders and checkpoints
store names.
"""
from nnunetv2_uc.trainers import *  # noqa: F401,F403  (every trainer that nnunetv2_uc.trainers exports)
