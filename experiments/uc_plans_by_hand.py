"""Plans for uC on nnU-Net's own network, written by hand (EXPERIMENT AND TEST HELPER).

``write_uc_plans`` gives an EXISTING plans file's configurations uC connections and nothing else (same patch, batch,
topology and data; ``nnunetv2_uc.planning.uc_plans.with_uc_connections``) and saves them under a new plans name. For a
plan of nnU-Net's own planner use ``nnunetv2_uc plan -d D --network uc_nnunet`` instead: it re-plans patch and batch
for a GPU memory target. The evidence experiment (``experiments/uc_on_nnunet_evidence.sh``) needs the uC version of
its CPU-sized plans at the same patch and batch, so it uses this.

``write_small_plans`` (the evidence experiment only) makes a CPU-sized configuration of a plan: nnU-Net's topology
for a given patch (``get_pool_and_conv_props`` with the configuration's spacing, as nnU-Net's planner derives it),
a given batch size and narrower widths, plus the plugin keys that give the paper ``UC3DUNet`` the same patch,
batch and a matching width.

Both refuse to replace an existing plans file with other content (``--overwrite`` does), and a configuration the
uC network cannot take is an error naming the plans entry; nothing is written then.

    python experiments/uc_plans_by_hand.py uc DATASET_DIR SOURCE_PLANS TARGET_PLANS [-c 3d_fullres]
    python experiments/uc_plans_by_hand.py small DATASET_DIR SOURCE_PLANS TARGET_PLANS --patch 32 64 64 --batch 2 \
        --features 8 16 32 64 128 --uc3dunet-features 8 16 32 64 128 8
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Sequence

from nnunetv2.experiment_planning.experiment_planners.network_topology import get_pool_and_conv_props
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

from nnunetv2_uc.errors import OverwriteRefused, UserError
from nnunetv2_uc.files import atomic_write_json
from nnunetv2_uc.planning.uc_plans import uc_plans_from


def _load(dataset_dir: Path, plans_name: str) -> dict:
    return json.loads((Path(dataset_dir) / f"{plans_name}.json").read_text())


def _save(dataset_dir: Path, plans: dict, overwrite: bool) -> Path:
    """{plans_name}.json in ``dataset_dir``; an existing different file is kept unless ``overwrite``."""
    path = Path(dataset_dir) / f"{plans['plans_name']}.json"
    if path.exists() and not overwrite and json.loads(path.read_text()) != json.loads(json.dumps(plans)):
        raise OverwriteRefused(f"{path} exists with other content; choose another plans name or pass --overwrite")
    atomic_write_json(str(path), plans)
    return path


def write_uc_plans(dataset_dir: Path, source: str = "nnUNetPlans", target: str = "nnUNetPlans_UCUNet",
                   configurations: Sequence[str] = ("3d_fullres",), overwrite: bool = False) -> Path:
    """$nnUNet_preprocessed/DatasetX/{target}.json: ``source`` with uC connections on ``configurations`` (only
    those are kept, resolved, so no 2-D configuration trains nnU-Net's plain network under the uC plans name).
    A configuration the uC network cannot take raises UCPlanError naming the plans entry; nothing is written."""
    uc_plans = uc_plans_from(_load(dataset_dir, source), target, configurations)
    return _save(dataset_dir, uc_plans, overwrite)


def write_small_plans(dataset_dir: Path, source: str, target: str, patch: Sequence[int], batch_size: int,
                      features: Sequence[int], uc3dunet_features: Sequence[int],
                      configuration: str = "3d_fullres", overwrite: bool = False) -> Path:
    """{target}.json with ``configuration`` only: nnU-Net's topology for ``patch`` at the configuration's spacing,
    ``batch_size``, ``features`` per stage (as many as the topology has stages), and for the plugin's paper trainers
    ``uc_fixed_patch`` (same patch and batch) and ``uc3dunet_kwargs.features``."""
    plans = _load(dataset_dir, source)
    config = PlansManager(plans).get_configuration(configuration).configuration
    config.pop("inherits_from", None)
    _, strides, kernels, patch_out, _ = get_pool_and_conv_props(config["spacing"], list(patch), 4, 999999)
    if list(patch_out) != list(patch):
        raise UserError(f"nnU-Net's topology needs patch {list(patch_out)}, not {list(patch)}; use that patch")
    n_stages = len(kernels)
    if len(features) != n_stages:
        raise UserError(f"patch {list(patch)} gives {n_stages} stages; give {n_stages} features, not {len(features)}")
    arch = config["architecture"]["arch_kwargs"]
    arch.update(n_stages=n_stages, features_per_stage=list(features), kernel_sizes=[list(k) for k in kernels],
                strides=[list(s) for s in strides], n_conv_per_stage=[2] * n_stages,
                n_conv_per_stage_decoder=[2] * (n_stages - 1))
    config.update(patch_size=list(patch), batch_size=batch_size, uc_fixed_patch=True,
                  uc3dunet_kwargs={"features": list(uc3dunet_features)})
    plans["plans_name"] = target
    plans["configurations"] = {configuration: config}
    return _save(dataset_dir, plans, overwrite)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("kind", choices=("uc", "small"))
    parser.add_argument("dataset_dir", type=Path, help="$nnUNet_preprocessed/DatasetXXX_Name")
    parser.add_argument("source")
    parser.add_argument("target")
    parser.add_argument("-c", dest="configuration", default="3d_fullres")
    parser.add_argument("--patch", nargs=3, type=int)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--features", nargs="+", type=int)
    parser.add_argument("--uc3dunet-features", nargs=6, type=int)
    parser.add_argument("--overwrite", action="store_true", help="replace an existing TARGET with other content")
    args = parser.parse_args()
    try:
        if args.kind == "uc":
            path = write_uc_plans(args.dataset_dir, args.source, args.target, [args.configuration], args.overwrite)
        else:
            path = write_small_plans(args.dataset_dir, args.source, args.target, args.patch, args.batch,
                                     args.features, args.uc3dunet_features, args.configuration, args.overwrite)
    except UserError as error:
        parser.exit(error.exit_code, f"{parser.prog}: error: {error}\n")
    print(path)


if __name__ == "__main__":
    main()
