"""Start uC on nnU-Net's network from a trained nnU-Net model: weights for the stock nnUNetv2_train -pretrained_weights.

  nnunetv2_uc uc-init --checkpoint PLAIN.pth -d D -p UC_PLANS -o uc_init.pth [-c 3d_fullres] [--overwrite]

PLAIN.pth is a checkpoint of nnU-Net's own network (PlainConvUNet or ResidualEncoderUNet plans), e.g.
$nnUNet_results/DatasetX/nnUNetTrainer__nnUNetPlans__3d_fullres/fold_0/checkpoint_final.pth. The output holds every
parameter of that network plus the uC parameters at their initialisation (residual scales at zero), so training
starts from the trained network's function:

  nnUNetv2_train D 3d_fullres FOLD -p UC_PLANS -pretrained_weights uc_init.pth

If $nnUNet_preprocessed/D/UC_PLANS.json does not exist, it is written from the plans the checkpoint was trained with
(same patch, batch, topology and preprocessed data, plus uC connections). Existing uC plans must share the
checkpoint's topology; otherwise the command names what differs and writes nothing.
"""
from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, type=Path,
                        help="nnU-Net checkpoint of nnU-Net's own network (fold_X/checkpoint_final.pth)")
    parser.add_argument("-d", dest="dataset", required=True, metavar="DATASET", help="dataset name or id")
    parser.add_argument("-p", dest="plans", default="nnUNetPlans_UCUNet",
                        help="uC plans identifier (default nnUNetPlans_UCUNet); made from the checkpoint's plans "
                             "if the file does not exist")
    parser.add_argument("-c", dest="configuration", default="3d_fullres", help="configuration (default 3d_fullres)")
    parser.add_argument("-o", dest="output", required=True, type=Path, help="the weights file to write")
    parser.add_argument("--trust-pickle", action="store_true",
                        help="also load checkpoints that pickle Python objects besides tensors and numpy scalars "
                             "(nnU-Net's own load without it; only for files you trust)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output file")


def run(args: argparse.Namespace) -> int:
    from nnunetv2_uc.weights.uc_init import describe, write_uc_init

    result = write_uc_init(checkpoint=args.checkpoint, dataset=args.dataset, plans_name=args.plans,
                           output=args.output, configuration=args.configuration, overwrite=args.overwrite,
                           trust_pickle=args.trust_pickle)
    print(describe(result))
    return 0
