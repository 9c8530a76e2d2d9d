"""Plan patch and batch size for uC 3DU-Net, 3D UX-Net or uC on nnU-Net's U-Net with nnU-Net's planners; writes an
nnU-Net plans file.

Usage: nnunetv2_uc plan -d D [D ...] --network {uc3dunet,uxnet,uc_nnunet} [-pl ExperimentPlanner|nnUNetPlannerResEncM|
       nnUNetPlannerResEncL|nnUNetPlannerResEncXL] [-gpu_memory_target GB] [-overwrite_plans_name NAME]
       [-c 3d_fullres ...] [--overwrite]

Runs nnU-Net's planning (same fingerprint, target spacing, normalisation and resampling as -pl), then chooses
patch and batch for the network with nnU-Net's algorithm against the memory nnU-Net's own U-Net is allowed at
-gpu_memory_target (default: the planner's), estimated for fp16 mixed-precision training on a CUDA GPU. The
plans (default name e.g. nnUNetPlans_UC3DUNet) name the network in their `architecture` block. uc_nnunet keeps
the topology nnU-Net planned (plain or ResEnc U-Net) and adds uC connections; the stock trainers train it
(nnUNetv2_train D 3d_fullres F -p nnUNetPlans_UCUNet), the paper networks train with -tr nnUNetTrainerUC /
nnUNetTrainerUXNet. Where the preprocessed data of the base plans fits, it is reused; otherwise the
nnUNetv2_preprocess command is printed. Needs the dataset fingerprint (nnUNetv2_extract_fingerprint -d D).
"""
from __future__ import annotations

import argparse

from nnunetv2_uc.architectures.registry import plannable_networks
from nnunetv2_uc.deprecation import network_name


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-d", nargs="+", type=int, required=True, metavar="D", help="dataset id(s)")
    parser.add_argument("--network", required=True, type=network_name,
                        metavar="{" + ",".join(plannable_networks()) + "}",
                        help="uc3dunet / uxnet (the paper networks) or uc_nnunet (uC connections on the U-Net "
                             "nnU-Net planned)")
    parser.add_argument("-pl", default="ExperimentPlanner",
                        help="nnU-Net planner whose fingerprint handling and memory reference are used: "
                             "ExperimentPlanner (default), nnUNetPlannerResEncM, nnUNetPlannerResEncL, "
                             "nnUNetPlannerResEncXL")
    parser.add_argument("-gpu_memory_target", type=float, default=None, metavar="GB",
                        help="GPU memory to plan for, in GB (default: the planner's, e.g. 8; ResEnc L 24)")
    parser.add_argument("-overwrite_plans_name", default=None, metavar="NAME",
                        help="plans name (default: the planner's plans name + _UC3DUNet / _UXNet, e.g. "
                             "nnUNetPlans_UC3DUNet)")
    parser.add_argument("-c", nargs="+", default=["3d_fullres"], metavar="CONFIGURATION",
                        help="configurations to plan (default 3d_fullres; also 3d_lowres, 3d_cascade_fullres)")
    parser.add_argument("-preprocessor_name", default="DefaultPreprocessor", help="as nnUNetv2_plan_experiment's")
    parser.add_argument("-overwrite_target_spacing", nargs=3, type=float, default=None, metavar="MM",
                        help="as nnUNetv2_plan_experiment's (then the data must be preprocessed for these plans)")
    parser.add_argument("--overwrite", action="store_true", help="replace a plans file of the same name")
    parser.add_argument("--verbose", action="store_true", help="show nnU-Net's planner output")


def run(args: argparse.Namespace) -> int:
    from nnunetv2_uc.planning.api import describe, plan_datasets

    results = plan_datasets(dataset_ids=args.d, network=args.network, planner=args.pl,
                            gpu_memory_target_gb=args.gpu_memory_target, plans_name=args.overwrite_plans_name,
                            configurations=args.c, overwrite=args.overwrite, preprocessor_name=args.preprocessor_name,
                            overwrite_target_spacing=args.overwrite_target_spacing, verbose=args.verbose)
    for result in results:
        print(describe(result))
    return 0
