"""nnU-Net's GPU memory target, expressed in bytes of the memory model (``memory.py``).

nnU-Net's planners do not count bytes: they compare ``compute_conv_feature_map_size(patch)`` (elements per
sample) of their own U-Net with a reference calibrated on a GPU (``UNet_reference_val_3d`` elements fit
``UNet_reference_val_corresp_GB`` at batch size ``UNet_reference_val_corresp_bs_3d``), scaled linearly to
``-gpu_memory_target``. Estimating nnU-Net's own network with the memory model gives its bytes per element;
the reference in those bytes is the budget any other network must fit, with the same precision and the same
accounting. One function for the planners and the trainers.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from nnunetv2_uc.planning.memory import GIB, TrainingMemoryModel


@dataclass(frozen=True)
class NnUNetReference:
    """A planner's calibration: ``elements_3d`` feature-map elements per sample fit ``gb`` GB at ``batch_size``."""

    elements_3d: float
    gb: float
    batch_size: int

    @classmethod
    def of_planner(cls, planner) -> "NnUNetReference":
        """Read from an nnU-Net ExperimentPlanner (or subclass) instance; the values differ per planner
        (default 560e6 per 8 GB at batch 2; ResEnc M 680e6 per 8 GB, L 2100e6 per 24 GB, XL 3600e6 per 40 GB)."""
        return cls(float(planner.UNet_reference_val_3d), float(planner.UNet_reference_val_corresp_GB),
                   int(planner.UNet_reference_val_corresp_bs_3d))

    def elements_at(self, gpu_target_gb: float) -> float:
        """nnU-Net's limit for ``compute_conv_feature_map_size`` (per sample, at ``batch_size``) at a target."""
        return self.elements_3d * gpu_target_gb / self.gb


@dataclass(frozen=True)
class MemoryBudget:
    """The bytes a network may use in one training step, and where the number comes from."""

    bytes: int
    gpu_target_gb: float
    reference: NnUNetReference
    nnunet_bytes_per_element: float  # batch-dependent bytes of nnU-Net's network per feature-map element
    nnunet_fixed_bytes: int          # nnU-Net's network's weights, gradients and SGD momentum

    def describe(self) -> str:
        return (f"{self.bytes / GIB:.2f} GiB (nnU-Net's reference {self.reference.elements_3d:.3g} elements per "
                f"{self.reference.gb:g} GB at batch {self.reference.batch_size}, scaled to {self.gpu_target_gb:g} GB)")


def memory_budget(reference: NnUNetReference, gpu_target_gb: float, nnunet_memory: TrainingMemoryModel,
                  nnunet_patch: Sequence[int], nnunet_elements_per_sample: float) -> MemoryBudget:
    """The budget in bytes for ``gpu_target_gb``.

    ``nnunet_memory`` models nnU-Net's own network of the plan (deep supervision on, SGD) and
    ``nnunet_elements_per_sample`` is that network's ``compute_conv_feature_map_size(nnunet_patch)``. Its
    batch-dependent bytes per element at the reference batch size, times the reference scaled to the target,
    plus its fixed bytes, is what nnU-Net's network would use where nnU-Net's planner puts its limit.
    """
    if gpu_target_gb <= 0:
        raise ValueError(f"the GPU memory target must be positive, got {gpu_target_gb} GB")
    fixed = nnunet_memory(nnunet_patch, 0).total
    per_reference_batch = nnunet_memory(nnunet_patch, reference.batch_size).total - fixed
    per_element = per_reference_batch / float(nnunet_elements_per_sample)
    budget = fixed + per_element * reference.elements_at(gpu_target_gb)
    return MemoryBudget(int(budget), float(gpu_target_gb), reference, per_element, fixed)


def nnunet_configuration_budget(configuration: dict, nnunet_memory: TrainingMemoryModel, reference: NnUNetReference,
                                gpu_target_gb: float) -> MemoryBudget:
    """The budget from a configuration nnU-Net planned for its own U-Net (``patch_size``, ``architecture``),
    whose memory model is ``nnunet_memory`` (``memory.memory_model_for(configuration["architecture"], ...,
    optimizer_slots=1, deep_supervision=True)``)."""
    patch = [int(s) for s in configuration["patch_size"]]
    elements = float(nnunet_memory.network.compute_conv_feature_map_size(patch))
    return memory_budget(reference, gpu_target_gb, nnunet_memory, patch, elements)
