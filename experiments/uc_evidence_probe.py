"""EXPERIMENT: does a network of the evidence plans fit a few fixed batches, under SGD or AdamW? (README: "uC on
nnU-Net's own network"). Run after experiments/uc_on_nnunet_evidence.sh, with its nnUNet_* folders:

    nnUNet_raw=W/nnUNet_raw nnUNet_preprocessed=W/nnUNet_preprocessed nnUNet_results=/tmp/probe nnUNet_n_proc_DA=1 \
        python experiments/uc_evidence_probe.py nnUNetPlans_evidence_UCUNet 250 sgd

It builds nnU-Net's trainer (nnUNetTrainer_evidence) for PLANS, draws 4 training batches from nnU-Net's data loader
(its augmentation is not seeded, so every run draws other batches), then trains STEPS steps cycling over them with
nnU-Net's loss (deep supervision) and gradient clipping, with the optimizer of nnUNetTrainer_evidence (nnU-Net's SGD,
lr 1e-2, Nesterov 0.99) or of nnUNetTrainerAdamW_evidence (the plugin recipe's AdamW at lr 3e-3), at a constant
learning rate. Every 25 steps it prints the loss and
the fraction of the batch's first case predicted as each foreground label (0 everywhere = background collapse), and
for a uC network, per uC level: the DFi gate's mean, the share of gate values below 0.01 (a closed gate) and the
norm of the residual scale (``uc_fusion="residual"``; 0 at initialisation), so that a collapse is visible.
"""
import os
import sys
import time

import torch
from batchgenerators.utilities.file_and_folder_operations import join, load_json

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "uc_evidence_trainers"))
from uc_evidence_trainers import nnUNetTrainer_evidence, nnUNetTrainerAdamW_evidence  # noqa: E402

N_BATCHES = 4
TRAINERS = {"sgd": nnUNetTrainer_evidence, "adamw": nnUNetTrainerAdamW_evidence}


def main(plans_name: str, steps: int, optimizer: str) -> None:
    folder = join(os.environ["nnUNet_preprocessed"], "Dataset990_SyntheticCT")
    plans = load_json(join(folder, plans_name + ".json"))
    plans["continue_training"] = False  # nnUNetv2_train's run_training adds this entry
    torch.manual_seed(0)
    trainer_class = TRAINERS[optimizer]
    trainer = trainer_class(plans, "3d_fullres", 0, load_json(join(folder, "dataset.json")), torch.device("cpu"))
    trainer.initialize()  # the trainer's optimizer; its poly LR scheduler is never stepped: constant LR
    network = trainer.network
    uc_network = network if hasattr(network, "uc_diagnostics") else None
    if uc_network is not None:
        uc_network.record_uc_gates()
    loader, _ = trainer.get_dataloaders()
    batches = [next(loader) for _ in range(N_BATCHES)]
    start = time.perf_counter()
    for step in range(steps):
        batch = batches[step % N_BATCHES]
        trainer.optimizer.zero_grad(set_to_none=True)
        output = network(batch["data"])
        loss = trainer.loss(output, batch["target"])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(network.parameters(), 12)
        trainer.optimizer.step()
        if step % 25 == 0 or step == steps - 1:
            predicted = output[0][0].argmax(0)
            fractions = [round((predicted == c).float().mean().item(), 4) for c in range(1, output[0].shape[1])]
            print(f"step {step} loss {loss.item():.4f} predicted foreground fractions {fractions} "
                  f"({time.perf_counter() - start:.0f} s)", flush=True)
            if uc_network is not None:
                print(describe_uc_levels(uc_network.uc_diagnostics()), flush=True)


def describe_uc_levels(levels: list[dict]) -> str:
    """One line: per uC level the gate mean, the share of gate values < 0.01 and the residual scale's norm."""
    parts = []
    for level in levels:
        scale = level["residual_scale_norm"]
        parts.append(f"stage {level['stage']}: gate mean {level['gate_mean']:.3f}, below 0.01 "
                     f"{100 * level['gate_below_0.01']:.1f}%, residual scale norm "
                     f"{'-' if scale is None else f'{scale:.3e}'}")
    return "    uC " + "; ".join(parts)


if __name__ == "__main__":
    if len(sys.argv) != 4 or sys.argv[3] not in TRAINERS:
        sys.exit("usage: uc_evidence_probe.py PLANS STEPS sgd|adamw")
    main(sys.argv[1], int(sys.argv[2]), sys.argv[3])
