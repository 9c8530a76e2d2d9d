"""Patch and batch size by nnU-Net's algorithm (``ExperimentPlanner.get_plans_for_configuration``), for any
network given its shape rule and memory model. Pure functions: no nnU-Net, no files.

nnU-Net's algorithm: start from the median image at the target spacing (at most a 256^3-voxel patch shaped by
the spacing), made valid for the network; while the network does not fit the memory budget at the minimum
batch size, shrink the axis that is largest relative to the median image by one step; then fill what remains
with batch, capped so that one step sees at most ``max_dataset_covered`` of the dataset, and at least the
minimum batch size.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

#: nnU-Net's cap on the starting patch: the volume of 256^3 voxels, shaped by the spacing
INITIAL_PATCH_VOXELS = 256 ** 3
#: nnU-Net's minimum batch size (ExperimentPlanner.UNet_min_batch_size)
MIN_BATCH_SIZE = 2

MemoryFn = Callable[[tuple[int, ...], int], int]          # (patch, batch size) -> bytes
ShapeProblemsFn = Callable[[Sequence[int]], list[str]]     # patch -> why the network cannot take it ([] if it can)


class NoValidPatch(ValueError):
    """The network takes no patch near the start (e.g. uC levels that need a larger in-plane map)."""


class NoPatchFits(Exception):
    """Even the smallest patch the network takes needs more than the budget at the minimum batch size."""

    def __init__(self, patch: tuple[int, ...], batch_size: int, needed_bytes: int, budget_bytes: int) -> None:
        super().__init__(f"patch {list(patch)} at batch size {batch_size} needs {needed_bytes} bytes, budget "
                         f"{budget_bytes}")
        self.patch, self.batch_size = patch, batch_size
        self.needed_bytes, self.budget_bytes = needed_bytes, budget_bytes


@dataclass(frozen=True)
class PatchAndBatch:
    """The search's result: patch (voxels per axis), batch size, estimated bytes, and how it got there."""

    patch: tuple[int, ...]
    batch_size: int
    estimated_bytes: int
    start: tuple[int, ...]    # the valid patch the search started from
    batch_limited_by: str     # "memory", "dataset share" or "minimum batch size"


def nnunet_initial_patch(spacing: Sequence[float], median_shape: Sequence[float]) -> tuple[float, ...]:
    """nnU-Net's starting patch: 256^3 voxels with the aspect ratio of 1/spacing, clipped to the median image."""
    inverse = 1 / np.asarray(spacing, dtype=float)
    scaled = inverse * (INITIAL_PATCH_VOXELS / np.prod(inverse)) ** (1 / len(spacing))
    return tuple(min(round(float(s)), float(m)) for s, m in zip(scaled, median_shape))


def round_up(patch: Sequence[float], divisors: Sequence[int]) -> tuple[int, ...]:
    """Each axis up to the next multiple of its divisor (at least one divisor)."""
    return tuple(max(d, math.ceil(s / d) * d) for s, d in zip(patch, divisors))


def valid_start(patch: tuple[int, ...], median_shape: Sequence[float], divisors: Sequence[int],
                 problems: ShapeProblemsFn) -> tuple[int, ...]:
    """Grow the axes of the largest median extent (one step each) until the network takes the patch, e.g.
    16^3 -> 32x16x16 for a network that needs more than one voxel at its coarsest resolution."""
    order = sorted(range(len(patch)), key=lambda a: median_shape[a] / patch[a], reverse=True)
    for _ in range(64):
        if not problems(patch):
            return patch
        axis = order[0]
        patch = tuple(s + divisors[a] if a == axis else s for a, s in enumerate(patch))
        order = sorted(range(len(patch)), key=lambda a: median_shape[a] / patch[a], reverse=True)
    raise NoValidPatch(f"no valid patch near {list(patch)}: {'; '.join(problems(patch))}")


def _shrink_order(patch: tuple[int, ...], median_shape: Sequence[float]) -> list[int]:
    """Axes by patch/median, largest first; ties go to the last axis, as nnU-Net's ``np.argsort(...)[-1]``."""
    ratios = [p / m for p, m in zip(patch, median_shape)]
    return list(np.argsort(ratios, kind="stable")[::-1])


def _one_step_smaller(patch: tuple[int, ...], median_shape: Sequence[float], divisors: Sequence[int],
                      problems: ShapeProblemsFn) -> tuple[int, ...] | None:
    for axis in _shrink_order(patch, median_shape):
        if patch[axis] - divisors[axis] < divisors[axis]:
            continue
        smaller = tuple(s - divisors[axis] if a == axis else s for a, s in enumerate(patch))
        if not problems(smaller):
            return smaller
    return None


def shrink_sequence(start: tuple[int, ...], median_shape: Sequence[float], divisors: Sequence[int],
                    problems: ShapeProblemsFn) -> list[tuple[int, ...]]:
    """Every patch nnU-Net's shrink loop visits from ``start`` down to the smallest valid one, in order.

    The order depends on shapes only (not on memory), so the loop "shrink while it does not fit" stops at
    the first patch of this sequence that fits.
    """
    sequence = [start]
    while (smaller := _one_step_smaller(sequence[-1], median_shape, divisors, problems)) is not None:
        sequence.append(smaller)
    return sequence


def first_that_fits(sequence: list[tuple[int, ...]], fits: Callable[[tuple[int, ...]], bool]) -> int | None:
    """Index of the first patch that fits (memory falls along the sequence: binary search), None if none."""
    if not fits(sequence[-1]):
        return None
    low, high = 0, len(sequence) - 1  # sequence[high] fits
    while low < high:
        middle = (low + high) // 2
        if fits(sequence[middle]):
            high = middle
        else:
            low = middle + 1
    return high


def largest_batch_that_fits(memory: MemoryFn, patch: tuple[int, ...], budget_bytes: int) -> int:
    """The largest batch whose ``memory(patch, batch)`` (affine in the batch) stays within the budget."""
    fixed = memory(patch, 0)
    return int((budget_bytes - fixed) // (memory(patch, 1) - fixed))


def search_patch_and_batch(spacing: Sequence[float], median_shape: Sequence[float], divisors: Sequence[int],
                           problems: ShapeProblemsFn, memory: MemoryFn, budget_bytes: int,
                           dataset_voxels: float, max_dataset_covered: float, min_batch_size: int = MIN_BATCH_SIZE
                           ) -> PatchAndBatch:
    """nnU-Net's patch/batch search with ``memory(patch, batch)`` against ``budget_bytes``.

    ``memory`` must be affine in the batch size (fixed bytes + per-sample bytes): the batch is the largest that
    fits; and it must not grow when the patch shrinks (so the shrink loop can be a binary search over the
    patches it would visit). ``dataset_voxels`` is nnU-Net's ``approximate_n_voxels_dataset`` (median image
    voxels x cases). Raises NoPatchFits when the smallest patch does not fit at ``min_batch_size``.
    """
    median_shape = [float(m) for m in median_shape]
    start = valid_start(round_up(nnunet_initial_patch(spacing, median_shape), divisors), median_shape,
                         divisors, problems)
    sequence = shrink_sequence(start, median_shape, divisors, problems)
    index = first_that_fits(sequence, lambda patch: memory(patch, min_batch_size) <= budget_bytes)
    if index is None:
        smallest = sequence[-1]
        raise NoPatchFits(smallest, min_batch_size, memory(smallest, min_batch_size), budget_bytes)
    patch = sequence[index]
    by_memory = largest_batch_that_fits(memory, patch, budget_bytes)
    by_dataset = round(dataset_voxels * max_dataset_covered / float(np.prod(patch, dtype=np.float64)))
    batch = max(min(by_memory, by_dataset), min_batch_size)
    limited_by = ("minimum batch size" if batch == min_batch_size and min(by_memory, by_dataset) < min_batch_size
                  else "dataset share" if by_dataset < by_memory else "memory")
    return PatchAndBatch(patch, batch, memory(patch, batch), start, limited_by)
