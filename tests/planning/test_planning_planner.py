"""`nnunetv2_uc plan`'s planning on fingerprints shaped like public datasets (dataset.json + fingerprint only,
no images), next to nnU-Net's own plan for its U-Net, which each plan records."""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
import example_datasets as examples
from helpers.planning_examples import nnunet_folders_with_examples

from nnunetv2_uc.errors import UserError
from nnunetv2_uc.planning.api import plan_datasets
from nnunetv2_uc.planning.planners import PLANNING_KEY

NETWORKS = ("uc3dunet", "uxnet")
SMALL_TARGETS = [("BRATS_LIKE", "ExperimentPlanner", None), ("HIPPOCAMPUS_LIKE", "nnUNetPlannerResEncM", None),
                 ("ABDOMEN_CT_LIKE", "ExperimentPlanner", None), ("PROSTATE_LIKE", "ExperimentPlanner", None)]
ALL_CASES = SMALL_TARGETS + [("BRATS_LIKE", "ExperimentPlanner", 40.0), ("BRATS_LIKE", "ExperimentPlanner", 80.0),
                             ("ABDOMEN_CT_LIKE", "nnUNetPlannerResEncL", None)]


@pytest.fixture(scope="module")
def plan(tmp_path_factory):
    """(example, planner, target, network) -> the written 3d_fullres configuration (planned once per module)."""
    root = tmp_path_factory.mktemp("nnunet")
    cache: dict[tuple, dict] = {}
    with pytest.MonkeyPatch.context() as mp:
        nnunet_folders_with_examples(root, mp)

        def planned(example: str, planner: str, target: float | None, network: str) -> dict:
            key = (example, planner, target, network)
            if key not in cache:
                dataset = getattr(examples, example)
                [result] = plan_datasets([dataset.dataset_id], network, planner, target, overwrite=True)
                plans = json.loads(result.plans_file.read_text())
                cache[key] = {"plans": plans, "result": result, **plans["configurations"]["3d_fullres"]}
            return cache[key]

        yield planned


def voxels(patch) -> int:
    return math.prod(int(s) for s in patch)


@pytest.mark.parametrize("network", NETWORKS)
@pytest.mark.parametrize("case", ALL_CASES, ids=lambda c: f"{c[0]}-{c[1]}-{c[2]}")
def test_patch_is_a_multiple_of_16_batch_at_least_2_and_the_estimate_fits(plan, case, network):
    config = plan(*case, network)
    record = config[PLANNING_KEY]
    assert all(s % 16 == 0 and s >= 16 for s in config["patch_size"])
    assert config["batch_size"] >= 2
    assert record["estimated_bytes"] <= record["budget_bytes"]


@pytest.mark.parametrize("network", NETWORKS)
def test_a_large_target_covers_the_median_image(plan, network):
    config = plan("BRATS_LIKE", "ExperimentPlanner", 80.0, network)
    assert all(p >= m for p, m in zip(config["patch_size"], config["median_image_size_in_voxels"]))
    assert config["patch_size"] == [144, 176, 144]


@pytest.mark.parametrize("network", NETWORKS)
@pytest.mark.parametrize("case", SMALL_TARGETS, ids=lambda c: f"{c[0]}-{c[1]}")
def test_a_small_target_gives_no_more_than_nnunets_own_network_and_does_not_collapse(plan, case, network):
    config = plan(*case, network)
    nnunet = config[PLANNING_KEY]["nnunet"]
    ours = voxels(config["patch_size"]) * config["batch_size"]
    assert ours <= voxels(nnunet["patch_size"]) * nnunet["batch_size"]
    # sensible: every axis at least 32 voxels, or the median extent in whole steps of 16 where that is less
    # (prostate: 16 of 20 slices), and at least 1/8 of nnU-Net's patch
    median = config["median_image_size_in_voxels"]
    assert all(p >= min(32, max(16, m // 16 * 16)) for p, m in zip(config["patch_size"], median))
    assert voxels(config["patch_size"]) >= voxels(nnunet["patch_size"]) / 8


@pytest.mark.parametrize("network", NETWORKS)
def test_more_memory_gives_a_larger_patch_or_batch(plan, network):
    sizes = [plan("BRATS_LIKE", "ExperimentPlanner", target, network) for target in (None, 40.0, 80.0)]
    patches = [voxels(c["patch_size"]) for c in sizes]
    work = [voxels(c["patch_size"]) * c["batch_size"] for c in sizes]
    assert patches == sorted(patches) and work[0] < work[1] < work[2]
    abdomen_8, abdomen_24 = (plan("ABDOMEN_CT_LIKE", planner, None, network)
                             for planner in ("ExperimentPlanner", "nnUNetPlannerResEncL"))
    assert voxels(abdomen_24["patch_size"]) > voxels(abdomen_8["patch_size"])


@pytest.mark.parametrize("network", NETWORKS)
def test_small_images_lower_the_batch_not_the_patch(plan, network):
    """Hippocampus with ResEnc M: nnU-Net's U-Net gets a large batch; ours covers the image at a lower batch."""
    config = plan("HIPPOCAMPUS_LIKE", "nnUNetPlannerResEncM", None, network)
    nnunet = config[PLANNING_KEY]["nnunet"]
    assert all(p >= m for p, m in zip(config["patch_size"], config["median_image_size_in_voxels"]))
    assert 2 <= config["batch_size"] < nnunet["batch_size"]


@pytest.mark.parametrize("case", [("BRATS_LIKE", "ExperimentPlanner", None), ("ABDOMEN_CT_LIKE", "nnUNetPlannerResEncL", None)])
def test_budget_is_what_nnunets_own_network_uses_at_its_plan(plan, case):
    """nnU-Net's own plan estimated with the same model lands near the budget (its batch is rounded)."""
    config = plan(*case, "uc3dunet")
    record = config[PLANNING_KEY]
    assert 0.6 * record["budget_bytes"] <= record["nnunet"]["estimated_bytes"] <= 1.15 * record["budget_bytes"]


def test_plans_name_architecture_and_shared_data(plan):
    uc = plan("ABDOMEN_CT_LIKE", "nnUNetPlannerResEncL", None, "uc3dunet")
    assert uc["plans"]["plans_name"] == "nnUNetResEncUNetLPlans_UC3DUNet"
    assert uc["architecture"] == {
        "network_class_name": "nnunetv2_uc.architectures.uc3dunet.UC3DUNet",
        "arch_kwargs": {"features": [24, 48, 96, 192, 384, 32], "uc_stages": [0, 1, 2], "uc_slice_axis": "first",
                        "activation_checkpointing": False},
        "_kw_requires_import": []}
    assert uc["data_identifier"] == "nnUNetPlans_3d_fullres"  # nnU-Net's (and ResEnc's) preprocessed data
    assert list(uc["plans"]["configurations"]) == ["3d_fullres"]
    ux = plan("BRATS_LIKE", "ExperimentPlanner", None, "uxnet")
    assert ux["plans"]["plans_name"] == "nnUNetPlans_UXNet"
    assert ux["architecture"]["network_class_name"] == "nnunetv2_uc.architectures.uxnet.UXNet"
    assert ux["architecture"]["arch_kwargs"] == {
        "feature_sizes": [48, 96, 192, 384], "depths": [2, 2, 2, 2], "hidden_size": 768, "kernel_size": 7,
        "drop_path_rate": 0.0, "layer_scale_init_value": 1e-6,
        "activation_checkpointing": False}
    # everything but patch, batch and network is nnU-Net's plan
    assert ux["spacing"] == [1.0, 1.0, 1.0] and ux["normalization_schemes"] == ["ZScoreNormalization"] * 4
    assert ux["result"].to_preprocess == ["3d_fullres"]  # no preprocessed data yet


def test_a_target_too_small_for_the_smallest_patch_says_how_much_memory_it_needs(plan):
    plan("BRATS_LIKE", "ExperimentPlanner", None, "uxnet")  # the module's nnU-Net folders are set up
    plans_file = (Path(os.environ["nnUNet_preprocessed"]) / examples.BRATS_LIKE.folder_name / "tooSmall.json")
    with pytest.raises(UserError, match=r"needs an estimated [0-9.]+ GiB .* smallest patch .*"
                                        r"-gpu_memory_target [0-9]+ or more") as info:
        plan_datasets([examples.BRATS_LIKE.dataset_id], "uxnet", "ExperimentPlanner", 0.5, plans_name="tooSmall")
    assert not plans_file.exists()
    needed = float(str(info.value).rsplit("-gpu_memory_target ", 1)[1].split()[0])
    # the target it names is enough
    [result] = plan_datasets([examples.BRATS_LIKE.dataset_id], "uxnet", "ExperimentPlanner", needed,
                             plans_name="tooSmall")
    assert result.decisions[0].batch_size >= 2 and plans_file.is_file()


@pytest.mark.parametrize("planner,expected", [
    ("ExperimentPlanner", (560e6, 8.0, 2, 8.0)), ("nnUNetPlannerResEncM", (680e6, 8.0, 2, 8.0)),
    ("nnUNetPlannerResEncL", (2100e6, 24.0, 2, 24.0)), ("nnUNetPlannerResEncXL", (3600e6, 40.0, 2, 40.0)),
])
def test_planner_references_are_read_from_nnunets_planners(plan, planner, expected):
    from nnunetv2_uc.planning.planners import planner_reference

    plan("HIPPOCAMPUS_LIKE", "nnUNetPlannerResEncM", None, "uc3dunet")  # the module's nnU-Net folders are set up
    reference, default_target = planner_reference(planner, examples.HIPPOCAMPUS_LIKE.dataset_id)
    assert (reference.elements_3d, reference.gb, reference.batch_size, default_target) == expected


def test_a_network_that_takes_nnunets_topology_is_one_table_entry(plan):
    """The hook for uC on nnU-Net's U-Net (issue 12): architecture from the base plan, patch steps from its
    strides. Here with nnU-Net's own PlainConvUNet."""
    import contextlib
    import io

    import numpy as np
    from nnunetv2.experiment_planning.experiment_planners.default_experiment_planner import ExperimentPlanner
    from nnunetv2.experiment_planning.plan_and_preprocess_api import plan_experiment_dataset

    from nnunetv2_uc.planning.planners import PlannableNetwork, network_planner_class

    plan("PROSTATE_LIKE", "ExperimentPlanner", None, "uxnet")  # the module's nnU-Net folders are set up
    def divisors(configuration: dict) -> tuple[int, ...]:
        return tuple(int(d) for d in np.prod(configuration["architecture"]["arch_kwargs"]["strides"], 0))

    def problems(configuration: dict, patch) -> list[str]:
        bottleneck = [p // d for p, d in zip(patch, divisors(configuration))]
        return [] if math.prod(bottleneck) > 1 else [f"bottleneck {bottleneck} is a single voxel"]

    on_nnunet_topology = PlannableNetwork(
        name="plain-nnunet", plans_suffix="PlainCopy",
        architecture=lambda configuration, patch: configuration["architecture"],
        patch_divisors=divisors, patch_problems=problems, optimizer_slots=2)
    planner = network_planner_class(ExperimentPlanner, on_nnunet_topology)
    with contextlib.redirect_stdout(io.StringIO()):
        plans, name = plan_experiment_dataset(examples.PROSTATE_LIKE.dataset_id, planner)
    config = plans["configurations"]["3d_fullres"]
    nnunet = config[PLANNING_KEY]["nnunet"]
    assert name == "nnUNetPlans_PlainCopy"
    assert config["architecture"]["network_class_name"].endswith("PlainConvUNet")
    divisors = np.prod(config["architecture"]["arch_kwargs"]["strides"], 0)
    assert all(p % d == 0 for p, d in zip(config["patch_size"], divisors))
    # nnU-Net's own network (deep supervision off, AdamW) planned our way gets nnU-Net's own decision: the
    # budget conversion and the search reproduce nnU-Net's planner (also on BraTS-, abdomen- and ResEnc L-shaped
    # plans when tried)
    assert config["patch_size"] == nnunet["patch_size"] == [20, 320, 256]
    assert config["batch_size"] == nnunet["batch_size"] == 2


@pytest.mark.parametrize("example, planner, uc_class", [
    ("ABDOMEN_CT_LIKE", "ExperimentPlanner", "UCPlainConvUNet"),
    ("HIPPOCAMPUS_LIKE", "nnUNetPlannerResEncM", "UCResidualEncoderUNet"),
])
def test_uc_on_nnunet_keeps_nnunets_topology_and_adds_uc_connections(plan, example, planner, uc_class):
    config = plan(example, planner, None, "uc_nnunet")
    record = config[PLANNING_KEY]
    architecture = config["architecture"]
    assert architecture["network_class_name"] == f"nnunetv2_uc.architectures.uc_unet.{uc_class}"
    assert config["plans"]["plans_name"].endswith("_UCUNet")
    kwargs = architecture["arch_kwargs"]
    assert kwargs["uc_stages"] and len(kwargs["uc_depths"]) == len(kwargs["uc_stages"])
    assert kwargs["n_stages"] == len(kwargs["strides"]) == len(kwargs["features_per_stage"])
    for axis, size in enumerate(config["patch_size"]):
        assert size % math.prod(s[axis] for s in kwargs["strides"]) == 0
    assert config["batch_size"] >= 2 and record["estimated_bytes"] <= record["budget_bytes"]
    # more memory per voxel than nnU-Net's own network: never more voxels x batch than nnU-Net planned
    nnunet = record["nnunet"]
    assert voxels(config["patch_size"]) * config["batch_size"] <= voxels(nnunet["patch_size"]) * nnunet["batch_size"]
