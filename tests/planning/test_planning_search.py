"""nnU-Net's patch/batch search with another network's shape rule and memory (pure: no nnU-Net, no files)."""
from __future__ import annotations

import math

import numpy as np
import pytest

from nnunetv2_uc.architectures.uxnet import UXNet
from nnunetv2_uc.planning.planners import NoPatchFits, nnunet_initial_patch, round_up, search_patch_and_batch

SIXTEEN = (16, 16, 16)


def problems(patch):
    return UXNet.input_rule.problems(patch)  # every axis a multiple of 16


def voxel_memory(fixed: int, per_voxel: int):
    """Affine memory: fixed bytes + batch x voxels x per_voxel."""
    return lambda patch, batch: fixed + batch * int(np.prod(patch)) * per_voxel


def test_initial_patch_is_nnunets_256_cube_shaped_by_spacing_and_clipped_to_the_median():
    assert nnunet_initial_patch((1.0, 1.0, 1.0), (139, 173, 137)) == (139, 173, 137)
    assert nnunet_initial_patch((1.0, 1.0, 1.0), (400, 400, 400)) == (256, 256, 256)
    # anisotropic: fewer voxels along the coarse axis, same 256^3 volume
    start = nnunet_initial_patch((3.0, 0.78, 0.78), (1000, 1000, 1000))
    assert start[0] < start[1] == start[2]
    assert math.prod(start) == pytest.approx(256 ** 3, rel=0.01)


def test_round_up_to_multiples_of_16_covers_the_input():
    assert round_up((139, 173, 137), SIXTEEN) == (144, 176, 144)
    assert round_up((12, 28, 28), SIXTEEN) == (16, 32, 32)
    assert round_up((160, 16, 33), SIXTEEN) == (160, 16, 48)


def test_a_budget_that_holds_the_median_image_keeps_it_and_fills_the_batch():
    memory = voxel_memory(10, 1)
    found = search_patch_and_batch((1.0, 1.0, 1.0), (139, 173, 137), SIXTEEN, problems, memory,
                                   budget_bytes=10 + 5 * 144 * 176 * 144, dataset_voxels=1e12,
                                   max_dataset_covered=1.0)
    assert found.patch == (144, 176, 144) == found.start
    assert found.batch_size == 5 and found.batch_limited_by == "memory"
    assert found.estimated_bytes == memory(found.patch, 5)


def test_shrinks_the_axis_largest_relative_to_the_median_in_steps_of_16():
    memory = voxel_memory(0, 1)
    median = (64, 256, 128)
    budget = 2 * 64 * 128 * 128
    found = search_patch_and_batch((1.0, 1.0, 1.0), median, SIXTEEN, problems, memory, budget_bytes=budget,
                                   dataset_voxels=1e12, max_dataset_covered=1.0)
    assert all(s % 16 == 0 for s in found.patch)
    assert memory(found.patch, 2) <= budget
    # the patch keeps the median's proportions: relative sizes differ by less than one step
    ratios = [p / m for p, m in zip(found.patch, median)]
    assert max(ratios) - min(ratios) <= 16 / min(median)
    assert found.patch == (48, 224, 96)  # 64x256x128 shrunk last axis first on ties, as nnU-Net's argsort
    assert found.batch_size == 2


def test_batch_is_capped_by_the_dataset_share_and_never_below_two():
    memory = voxel_memory(0, 1)
    capped = search_patch_and_batch((1.0, 1.0, 1.0), (32, 32, 32), SIXTEEN, problems, memory,
                                    budget_bytes=10 ** 9, dataset_voxels=100 * 32 ** 3, max_dataset_covered=0.05)
    assert capped.batch_size == 5 and capped.batch_limited_by == "dataset share"
    tiny_dataset = search_patch_and_batch((1.0, 1.0, 1.0), (32, 32, 32), SIXTEEN, problems, memory,
                                          budget_bytes=10 ** 9, dataset_voxels=3 * 32 ** 3, max_dataset_covered=0.05)
    assert tiny_dataset.batch_size == 2 and tiny_dataset.batch_limited_by == "minimum batch size"


def test_a_tiny_median_image_grows_to_a_patch_the_network_takes():
    found = search_patch_and_batch((1.0, 1.0, 1.0), (10, 12, 9), SIXTEEN, problems, voxel_memory(0, 1),
                                   budget_bytes=10 ** 9, dataset_voxels=1e9, max_dataset_covered=1.0)
    assert not problems(found.patch) and sorted(found.patch) == [16, 16, 32]


def test_no_patch_fits_reports_the_smallest_patch_and_what_it_needs():
    memory = voxel_memory(1000, 1)
    with pytest.raises(NoPatchFits) as info:
        search_patch_and_batch((1.0, 1.0, 1.0), (64, 64, 64), SIXTEEN, problems, memory, budget_bytes=2000,
                               dataset_voxels=1e9, max_dataset_covered=1.0)
    assert not problems(info.value.patch) and math.prod(info.value.patch) == 32 * 16 * 16
    assert info.value.needed_bytes == memory(info.value.patch, 2) > 2000


def test_the_binary_search_stops_where_the_shrink_loop_stops():
    """Same patch as shrinking one step at a time until it fits, with far fewer memory evaluations."""
    from nnunetv2_uc.planning.planners import shrink_sequence

    median, spacing = (128, 512, 512), (3.0, 0.78, 0.78)
    memory = voxel_memory(1000, 3)
    start = round_up(nnunet_initial_patch(spacing, median), SIXTEEN)
    sequence = shrink_sequence(start, median, SIXTEEN, problems)
    assert all(np.prod(b) < np.prod(a) for a, b in zip(sequence, sequence[1:]))
    for budget in (10 ** 5, 10 ** 6, 10 ** 7, 5 * 10 ** 7):
        step_by_step = next(p for p in sequence if memory(p, 2) <= budget)
        evaluated = []
        counting = lambda patch, batch: evaluated.append(patch) or memory(patch, batch)
        found = search_patch_and_batch(spacing, median, SIXTEEN, problems, counting, budget, 1e12, 1.0)
        assert found.patch == step_by_step
        assert len(set(evaluated)) <= math.ceil(math.log2(len(sequence))) + 2 < len(sequence)
