"""Convert an original 3D UX-Net / uC 3DU-Net checkpoint into weights nnUNetv2_train -pretrained_weights accepts.

The output holds {"network_weights": ...}; nnU-Net re-initialises the segmentation head (".seg_layers.") when it
loads pretrained weights, so a checkpoint for another label set can be fine-tuned. Channel counts and widths not
given in --original-kwargs are read off the checkpoint.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from nnunetv2_uc.architectures.registry import original_networks
from nnunetv2_uc.deprecation import add_network_argument
from nnunetv2_uc.errors import UserError
from nnunetv2_uc.weights.original import write_nnunet_weights


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_network_argument(parser, required=True, choices=original_networks(),
                         help="which original network the checkpoint is")
    parser.add_argument("--checkpoint", required=True, type=Path, help="the original checkpoint (.pth/.pt)")
    parser.add_argument("--original-kwargs", default="{}", metavar="JSON",
                        help="the ORIGINAL constructor's keyword arguments as JSON, e.g. '{\"out_chans\": 14}'; "
                             "channel counts and widths not given are read off the checkpoint")
    parser.add_argument("-o", "--output", required=True, type=Path, help="where to write the nnU-Net weights file")
    parser.add_argument("--trust-pickle", action="store_true",
                        help="allow checkpoints that pickle Python objects besides tensors (only for trusted files)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output file")


def _original_kwargs(text: str) -> dict:
    try:
        value = json.loads(text)
    except ValueError as error:
        raise UserError(f"--original-kwargs must be a JSON object ({error})") from error
    if not isinstance(value, dict):
        raise UserError(f"--original-kwargs must be a JSON object, got {type(value).__name__}")
    return value


def run(args: argparse.Namespace) -> int:
    original_kwargs = _original_kwargs(args.original_kwargs)
    try:
        model = write_nnunet_weights(network=args.network, checkpoint=args.checkpoint, output=args.output,
                                     original_kwargs=original_kwargs, trust_pickle=args.trust_pickle,
                                     overwrite=args.overwrite)
    except TypeError as error:  # an original argument our translation does not know
        raise UserError(str(error)) from error
    count = sum(p.numel() for p in model.parameters())
    print(f"wrote {args.output}: {type(model).__name__}, {count:,} parameters. Fine-tune with "
          f"nnUNetv2_train DATASET CONFIG FOLD -tr <trainer> -pretrained_weights {args.output} "
          f"(the segmentation head is skipped by nnU-Net if the class count differs).")
    return 0
