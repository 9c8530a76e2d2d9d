"""Trainers of experiments/uc_on_nnunet_evidence.sh (EXPERIMENT ONLY): one short schedule for all three networks.

The folder holding this file goes on ``nnUNet_extTrainer`` (next to this plugin's shim folder); nnU-Net imports it
as a bare module. Each trainer keeps its parent's recipe and changes only the schedule and mirroring, alike for all:

- ``EPOCHS`` x ``ITERATIONS`` training iterations (poly LR over the epochs), 2 validation iterations per epoch;
  the script sets them through $UC_EVIDENCE_EPOCHS / $UC_EVIDENCE_ITERATIONS (default 20 x 40, the demo's);
- no mirroring, neither as augmentation nor at test time (the synthetic anatomy is lateralised; the demo trainers
  do the same, docs/demo_schedule.md).

``nnUNetTrainer_evidence``: nnU-Net's ``nnUNetTrainer`` (SGD Nesterov 0.99, lr 1e-2, poly LR, deep supervision);
it trains whatever network the plans name: nnU-Net's PlainConvUNet, or its uC version with ``-p ..._UCUNet``.
``nnUNetTrainerAdamW_evidence``: the same nnU-Net trainer with only the optimizer changed to the plugin's AdamW recipe
(eps 1e-4, wd 3e-5, poly LR) at lr 3e-3, so that the nnU-Net networks, with and without uC, can also be compared
under the recipe of the paper network (deep supervision stays on).
``nnUNetTrainerUC_evidence``: the plugin's ``nnUNetTrainerUC`` (paper UC3DUNet, no deep supervision, AdamW eps 1e-4,
wd 3e-5, poly LR) at the demo's AdamW lr 3e-3 (the plugin default 5e-4 is tuned for 1000 x 250 iterations; 3e-3 is
what the demo measured to converge within 800 iterations at this width).
"""
import os

import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunetv2_uc.trainers.base import adamw_with_poly_lr
from nnunetv2_uc.trainers.paper_trainers import nnUNetTrainerUC

EPOCHS = int(os.environ.get("UC_EVIDENCE_EPOCHS", "20"))
ITERATIONS = int(os.environ.get("UC_EVIDENCE_ITERATIONS", "40"))
VAL_ITERATIONS = 2


class EvidenceScheduleMixin:
    """EPOCHS x ITERATIONS, VAL_ITERATIONS validation iterations per epoch, no mirroring."""

    evidence_initial_lr: float | None = None  # None: the parent recipe's

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = EPOCHS
        self.num_iterations_per_epoch = ITERATIONS
        self.num_val_iterations_per_epoch = VAL_ITERATIONS
        if self.evidence_initial_lr is not None:
            self.initial_lr = self.evidence_initial_lr

    def configure_rotation_dummyDA_mirroring_and_inital_patch_size(self):
        rotation, dummy_2d, initial_patch, _ = super().configure_rotation_dummyDA_mirroring_and_inital_patch_size()
        self.inference_allowed_mirroring_axes = None
        return rotation, dummy_2d, initial_patch, None


class nnUNetTrainer_evidence(EvidenceScheduleMixin, nnUNetTrainer):
    """nnU-Net's default recipe (SGD, deep supervision) on the evidence schedule."""


class nnUNetTrainerAdamW_evidence(EvidenceScheduleMixin, nnUNetTrainer):
    """nnU-Net's recipe (deep supervision, loss, sampling) with the plugin's AdamW at lr 3e-3 instead of SGD."""

    evidence_initial_lr = 3e-3

    def configure_optimizers(self):
        return adamw_with_poly_lr(self.network.parameters(), self.initial_lr, self.num_epochs)


class nnUNetTrainerUC_evidence(EvidenceScheduleMixin, nnUNetTrainerUC):
    """The paper UC3DUNet (plugin recipe: AdamW, no deep supervision) on the evidence schedule, AdamW lr 3e-3."""

    evidence_initial_lr = 3e-3
