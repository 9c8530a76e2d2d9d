"""Print, as markdown, what `nnunetv2_uc plan` decides on fingerprints shaped like public datasets, next to
nnU-Net's own plans for its U-Net (README "Planning").

Usage: python experiments/planning_table.py [--networks uc3dunet uxnet uc_nnunet]

Runs the real planning (nnU-Net's planners + our patch/batch search) on dataset.json + fingerprint files
written to a temporary folder (no images needed). Estimated memory is the plugin's model of one fp16-autocast
training step on a CUDA GPU (nnU-Net's U-Net: SGD and deep supervision; ours: AdamW).
"""
from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

#: (example, nnU-Net planner, -gpu_memory_target or None for the planner's default)
CASES = (
    ("BRATS_LIKE", "ExperimentPlanner", None),
    ("BRATS_LIKE", "ExperimentPlanner", 40.0),
    ("BRATS_LIKE", "ExperimentPlanner", 80.0),
    ("HIPPOCAMPUS_LIKE", "nnUNetPlannerResEncM", None),
    ("ABDOMEN_CT_LIKE", "ExperimentPlanner", None),
    ("ABDOMEN_CT_LIKE", "nnUNetPlannerResEncL", None),
    ("PROSTATE_LIKE", "ExperimentPlanner", None),
)


def _cell(patch, batch, nbytes) -> str:
    return f"{'x'.join(map(str, patch))} b{batch}, {nbytes / 2 ** 30:.1f} GiB"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--networks", nargs="+", default=["uc3dunet", "uxnet", "uc_nnunet"])
    parser.add_argument("--cases", type=int, default=len(CASES), help=f"the first N of the {len(CASES)} rows (smoke test)")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="planning_table_"))
    for key in ("raw", "preprocessed", "results"):
        os.environ[f"nnUNet_{key}"] = str(root / key)

    import example_datasets as examples  # next to this script
    from nnunetv2_uc.planning.api import plan_datasets

    header = ["dataset (shaped like)", "median image (voxels, spacing mm)", "planner, target",
              "nnU-Net's U-Net", *args.networks, "budget"]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for example_name, planner, target in CASES[:args.cases]:
        example = getattr(examples, example_name)
        example.write(root / "raw", root / "preprocessed")
        cells = []
        for network in args.networks:
            [result] = plan_datasets([example.dataset_id], network, planner, target, overwrite=True)
            d = next(d for d in result.decisions if d.configuration == "3d_fullres")
            cells.append(_cell(d.patch_size, d.batch_size, d.estimated_bytes))
        median = "x".join(str(round(s)) for s in d.median_shape)
        spacing = "x".join(f"{s:g}" for s in d.spacing)
        print(f"| {example.like}, {len(example.channel_names)} ch | {median} @ {spacing} | {planner}, "
              f"{result.gpu_memory_target_gb:g} GB | {_cell(d.nnunet_patch_size, d.nnunet_batch_size, d.nnunet_estimated_bytes)} "
              f"| {' | '.join(cells)} | {d.budget_bytes / 2 ** 30:.1f} GiB |", flush=True)


if __name__ == "__main__":
    main()
