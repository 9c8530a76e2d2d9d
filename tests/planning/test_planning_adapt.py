"""The trainers' adaptation of nnU-Net's default plans (no `nnunetv2_uc plan`), on nnU-Net's own plans for
fingerprints shaped like public datasets: the budget follows the target the plans were made for and the
planner's reference, the batch goes down before the patch shrinks, and each DDP worker holds its share."""
from __future__ import annotations

import contextlib
import io
import math

import pytest
import example_datasets as examples
from helpers.planning_examples import nnunet_folders_with_examples

from nnunetv2_uc.architectures.registry import network_entry
from nnunetv2_uc.planning.planners import get_base_planner, get_network, paper_network, planner_reference
from nnunetv2_uc.planning.trainer_plans import adapt_configuration, per_gpu_batch


@pytest.fixture(scope="module")
def nnunet_plans(tmp_path_factory):
    """(example, planner, target) -> (nnU-Net's resolved 3d_fullres configuration, channels, classes, reference,
    the planner's default target)."""
    from nnunetv2.experiment_planning.plan_and_preprocess_api import plan_experiment_dataset

    root = tmp_path_factory.mktemp("nnunet")
    cache: dict[tuple, tuple] = {}
    with pytest.MonkeyPatch.context() as mp:
        nnunet_folders_with_examples(root, mp)

        def planned(example: str, planner: str, target: float | None):
            key = (example, planner, target)
            if key not in cache:
                dataset = getattr(examples, example)
                with contextlib.redirect_stdout(io.StringIO()):
                    plans, _ = plan_experiment_dataset(dataset.dataset_id, get_base_planner(planner), target)
                    reference, default_target = planner_reference(planner, dataset.dataset_id)
                cache[key] = (plans["configurations"]["3d_fullres"], len(dataset.channel_names), dataset.num_labels,
                              reference, default_target)
            return cache[key]

        yield planned


def adapt(planned, network: str, world_size: int = 1, planner_readable: bool = True):
    configuration, channels, classes, reference, default_target = planned
    if not planner_readable:
        reference = default_target = None
    return adapt_configuration(configuration, paper_network(network_entry(network)), channels, classes, reference,
                               default_target, world_size)


@pytest.mark.parametrize("network", ["uc3dunet", "uxnet"])
def test_plans_made_for_80_gb_keep_a_larger_patch_than_plans_for_8_gb(nnunet_plans, network):
    """The issue's BraTS case: the old trainers cut the 80 GB plans to the 8 GB patch."""
    large = adapt(nnunet_plans("BRATS_LIKE", "ExperimentPlanner", 80.0), network)
    small = adapt(nnunet_plans("BRATS_LIKE", "ExperimentPlanner", None), network)
    assert large.budget_bytes > 5 * small.budget_bytes
    assert math.prod(large.patch) * large.batch_size > 4 * math.prod(small.patch) * small.batch_size
    assert large.estimated_bytes <= large.budget_bytes and small.estimated_bytes <= small.budget_bytes
    assert all(s % 16 == 0 for s in large.patch + small.patch)


@pytest.mark.parametrize("network", ["uc3dunet", "uxnet"])
def test_the_batch_goes_down_before_the_patch_shrinks(nnunet_plans, network):
    """The issue's hippocampus case with ResEnc M plans ([56, 40, 40] batch 58): the old trainers kept the batch
    and shrank the patch to 32^3, smaller than the image."""
    planned = nnunet_plans("HIPPOCAMPUS_LIKE", "nnUNetPlannerResEncM", None)
    configuration = planned[0]
    adaptation = adapt(planned, network)
    rounded_up = tuple(-(-s // 16) * 16 for s in configuration["patch_size"])
    assert adaptation.patch == rounded_up  # the planned patch, rounded up to multiples of 16, not shrunk
    assert 2 <= adaptation.batch_size < configuration["batch_size"]
    assert any("lowered the batch" in r for r in adaptation.reasons)


def test_resenc_references_are_the_planners_own(nnunet_plans):
    """ResEnc L's 2100e6 elements per 24 GB, not the default planner's 560e6 per 8 GB."""
    resenc_l = nnunet_plans("ABDOMEN_CT_LIKE", "nnUNetPlannerResEncL", None)
    assert (resenc_l[3].elements_3d, resenc_l[3].gb, resenc_l[4]) == (2100e6, 24.0, 24.0)
    adaptation = adapt(resenc_l, "uxnet")
    assert adaptation.budget_source.startswith("the planner's target") and "24 GB" in adaptation.budget_source


def test_each_ddp_worker_holds_its_share_of_the_batch(nnunet_plans):
    planned = nnunet_plans("BRATS_LIKE", "ExperimentPlanner", 40.0)
    one = adapt(planned, "uc3dunet")
    four = adapt(planned, "uc3dunet", world_size=4)
    assert per_gpu_batch(planned[0]["batch_size"], 4) == math.ceil(planned[0]["batch_size"] / 4)
    assert four.batch_size_per_gpu <= math.ceil(four.batch_size / 4)
    # with a quarter of the batch per GPU, the patch can stay at least as large
    assert math.prod(four.patch) >= math.prod(one.patch)


def test_without_the_planner_the_budget_is_what_nnunets_network_needs(nnunet_plans):
    adaptation = adapt(nnunet_plans("ABDOMEN_CT_LIKE", "ExperimentPlanner", None), "uxnet", planner_readable=False)
    assert adaptation.budget_source.startswith("what nnU-Net's PlainConvUNet needs at the planned patch x batch")
    assert adaptation.estimated_bytes <= adaptation.budget_bytes


def test_uc_on_nnunet_keeps_nnunets_topology_and_only_lowers_the_batch(nnunet_plans):
    planned = nnunet_plans("ABDOMEN_CT_LIKE", "ExperimentPlanner", None)
    configuration, channels, classes, reference, target = planned
    adaptation = adapt_configuration(configuration, get_network("uc_nnunet"), channels, classes, reference, target)
    strides = configuration["architecture"]["arch_kwargs"]["strides"]
    for axis, size in enumerate(adaptation.patch):
        assert size % math.prod(s[axis] for s in strides) == 0
    assert math.prod(adaptation.patch) * adaptation.batch_size <= (
        math.prod(configuration["patch_size"]) * configuration["batch_size"])
