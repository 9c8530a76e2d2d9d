"""GPU memory of one nnU-Net training step, estimated without a GPU and without running the step.

What a training step holds at its peak (the start of the backward pass):

- parameters: fp32 weights, their fp32 gradients and the optimizer's state (SGD momentum: 1 tensor per
  parameter, AdamW: 2);
- activations: every tensor autograd saves for the backward pass of the network AND of nnU-Net's loss
  (Dice + cross-entropy, on every deep-supervision output), with the dtypes autocast really produces on the
  target device (on CUDA under fp16 autocast: convolutions save fp16 inputs and fp16 weight copies, norms,
  softmax and what follows them fp32; autocast's fp16 weight copies are among the saved tensors), each
  storage counted once (views share storage), plus the network's outputs, the input batch and the targets;
  with activation checkpointing, the segments' stored inputs plus the largest segment's recomputation;
- transient: what the backward pass allocates on top (see ``BACKWARD_WORKING_SET``).

The activations come from one forward pass on fake tensors (``torch._subclasses.fake_tensor``): shapes,
dtypes and device are real, nothing is computed or allocated. Autocast's real per-op rules for a device are
applied by switching autocast on for that device directly, which works for "cuda" without a GPU. A fake
"cuda" network also takes the networks' CUDA code paths (the CPU fast paths check ``x.device``).

nnU-Net's GPU memory target in the same bytes (``memory_budget``, ``nnunet_configuration_budget``).

nnU-Net's planners do not count bytes: they compare ``compute_conv_feature_map_size(patch)`` (elements per
sample) of their own U-Net with a reference calibrated on a GPU (``UNet_reference_val_3d`` elements fit
``UNet_reference_val_corresp_GB`` at batch size ``UNet_reference_val_corresp_bs_3d``), scaled linearly to
``-gpu_memory_target``. Estimating nnU-Net's own network with the memory model gives its bytes per element;
the reference in those bytes is the budget any other network must fit, with the same precision and the same
accounting. One function for the planners and the trainers.
"""
from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
from nnunetv2.training.loss.compound_losses import DC_and_CE_loss
from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper
from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss
from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
from torch import nn
from torch._subclasses.fake_tensor import FakeTensorMode

GIB = 2 ** 30
BYTES_FP32 = 4
#: The backward pass holds, on top of what was saved, the gradients in flight: the incoming and outgoing
#: gradient of the op being differentiated and pending skip-connection gradients. Modelled as this many copies
#: of the largest saved activation. Calibrated on real fp32 CPU training steps (peak RSS, fresh process; both
#: networks at 48x64x64 b2, 64^3 b2, 64x96x96 b1, and 64^3 b2 checkpointed): the total came within -2%..+5%
#: (tests/planning/test_planning_memory.py). Not measured on a GPU.
BACKWARD_WORKING_SET = 2


@dataclass(frozen=True)
class Precision:
    """Where a training step runs and autocast's low-precision dtype there (None: fp32 throughout)."""

    device: str
    autocast_dtype: torch.dtype | None

    def __str__(self) -> str:
        dtype = str(self.autocast_dtype).replace("torch.", "") if self.autocast_dtype else "off"
        return f"{self.device}, autocast {dtype}"


#: nnU-Net's trainer on a GPU: fp16 autocast + GradScaler (nnUNetTrainer.train_step)
CUDA_FP16_AUTOCAST = Precision("cuda", torch.float16)
#: nnU-Net's trainer on the CPU: no autocast
CPU_FP32 = Precision("cpu", None)


@dataclass(frozen=True)
class StepMemory:
    """Bytes one training step holds at its peak, by kind."""

    parameters: int   # weights + gradients + optimizer state, fp32
    activations: int  # saved for backward (network and loss), outputs, input batch and targets
    transient: int    # backward working set

    @property
    def total(self) -> int:
        return self.parameters + self.activations + self.transient


def parameter_bytes(network: nn.Module, optimizer_slots: int) -> int:
    """fp32 weights + gradients + ``optimizer_slots`` state tensors per parameter (SGD momentum 1, AdamW 2)."""
    n = sum(p.numel() for p in network.parameters())
    return n * BYTES_FP32 * (2 + optimizer_slots)


@contextlib.contextmanager
def emulated_autocast(precision: Precision) -> Iterator[None]:
    """Autocast's op rules of ``precision.device`` without ``torch.autocast`` (which refuses "cuda" without a
    GPU): the same thread-local switches it sets."""
    if precision.autocast_dtype is None:
        yield
        return
    device = precision.device
    was_enabled = torch.is_autocast_enabled(device)
    old_dtype = torch.get_autocast_dtype(device)
    torch.set_autocast_enabled(device, True)
    torch.set_autocast_dtype(device, precision.autocast_dtype)
    torch.autocast_increment_nesting()
    try:
        yield
    finally:
        if torch.autocast_decrement_nesting() == 0:
            torch.clear_autocast_cache()
        torch.set_autocast_enabled(device, was_enabled)
        torch.set_autocast_dtype(device, old_dtype)


def nnunet_loss(deep_supervision_outputs: int) -> nn.Module:
    """nnU-Net's default training loss (nnUNetTrainer._build_loss, labels not regions, no ignore label)."""
    loss = DC_and_CE_loss({"batch_dice": False, "smooth": 1e-5, "do_bg": False, "ddp": False}, {},
                          weight_ce=1, weight_dice=1, ignore_label=None, dice_class=MemoryEfficientSoftDiceLoss)
    if deep_supervision_outputs <= 1:
        return loss
    weights = np.array([1 / 2 ** i for i in range(deep_supervision_outputs)])
    weights[-1] = 0
    return DeepSupervisionWrapper(loss, weights / weights.sum())


class _StorageLedger:
    """Storages seen by autograd's pack hook, each counted once; parameters are excluded (counted apart)."""

    def __init__(self, excluded: set[int]) -> None:
        self.excluded = excluded
        self.sizes: dict[int, int] = {}

    def add(self, t: torch.Tensor) -> None:
        storage = t.untyped_storage()
        key = storage._cdata
        if key not in self.excluded:
            self.sizes[key] = storage.nbytes()

    @property
    def total(self) -> int:
        return sum(self.sizes.values())

    @property
    def largest(self) -> int:
        return max(self.sizes.values(), default=0)


def forward_and_loss(network: nn.Module, x: torch.Tensor, on_saved: Callable[[torch.Tensor], object]) -> None:
    """nnU-Net's training forward: network, then its loss on every output (all-background targets), with
    ``on_saved`` called on the input, the outputs, the targets and every tensor autograd saves."""
    on_saved(x)
    with torch.autograd.graph.saved_tensors_hooks(lambda t: on_saved(t) or t, lambda t: t):
        out = network(x)
        outputs = list(out) if isinstance(out, (list, tuple)) else [out]
        targets = [torch.zeros((o.shape[0], 1, *o.shape[2:]), dtype=torch.int16, device=o.device) for o in outputs]
        for t in (*outputs, *targets):
            on_saved(t)
        loss = nnunet_loss(len(outputs))
        loss(outputs, targets) if len(outputs) > 1 else loss(outputs[0], targets[0])


def _checkpoint_segments_bytes(network: nn.Module, batch_shape: Sequence[int], precision: Precision,
                               excluded: set[int]) -> int:
    """Bytes the largest activation-checkpointing segment saves when it runs normally: the backward pass
    recomputes one segment at a time, and that is what its recomputation adds."""
    ledgers: list[_StorageLedger] = []
    active: list[_StorageLedger] = []
    hooks = []
    for segment in network.checkpoint_segments():
        hooks.append(segment.register_forward_pre_hook(lambda m, i: active.append(_StorageLedger(excluded))))
        hooks.append(segment.register_forward_hook(lambda m, i, o: ledgers.append(active.pop())))

    def record(t: torch.Tensor) -> torch.Tensor:
        if active:
            active[-1].add(t)
        return t

    network.activation_checkpointing = False
    try:
        x = torch.empty(tuple(batch_shape), device=precision.device)
        with emulated_autocast(precision), torch.autograd.graph.saved_tensors_hooks(record, lambda t: t):
            network(x)
    finally:
        network.activation_checkpointing = True
        for hook in hooks:
            hook.remove()
    return max((ledger.total for ledger in ledgers), default=0)


class TrainingMemoryModel:
    """(patch, batch size) -> StepMemory of one network's nnU-Net training step; results are cached.

    ``build`` makes the network (it is called once, under the fake mode, on ``precision.device``).
    Activations are measured at batch size 1 and scale linearly with the batch (every saved tensor has the
    batch axis first); parameters do not scale.
    """

    def __init__(self, build: Callable[[], nn.Module], input_channels: int, precision: Precision,
                 optimizer_slots: int) -> None:
        self.input_channels = input_channels
        self.precision = precision
        self._mode = FakeTensorMode(allow_non_fake_inputs=True)
        with self._mode, torch.device(precision.device):
            self.network = build()
        self.network.train()
        self.parameter_bytes = parameter_bytes(self.network, optimizer_slots)
        self._param_storages = {p.untyped_storage()._cdata for p in self.network.parameters()}
        self._per_sample: dict[tuple[int, ...], tuple[int, int]] = {}

    def per_sample(self, patch: Sequence[int]) -> tuple[int, int]:
        """(activation bytes, largest saved storage) for one sample of ``patch``."""
        key = tuple(int(s) for s in patch)
        if key not in self._per_sample:
            shape = (1, self.input_channels, *key)
            ledger = self._saved_in_training_forward(shape)
            total = ledger.total
            if getattr(self.network, "activation_checkpointing", False):
                with self._mode:
                    total += _checkpoint_segments_bytes(self.network, shape, self.precision, self._param_storages)
            self._per_sample[key] = (total, ledger.largest)
        return self._per_sample[key]

    def _saved_in_training_forward(self, batch_shape: tuple[int, ...]) -> _StorageLedger:
        ledger = _StorageLedger(self._param_storages)

        def keep_inputs(module: nn.Module, inputs: tuple) -> None:
            for t in inputs:
                ledger.add(t)

        # checkpointed segments keep their inputs for the recomputation (autograd's pack hook does not see them)
        checkpointing = getattr(self.network, "activation_checkpointing", False)
        hooks = [segment.register_forward_pre_hook(keep_inputs)
                 for segment in (self.network.checkpoint_segments() if checkpointing else [])]
        try:
            with self._mode, emulated_autocast(self.precision):
                forward_and_loss(self.network, torch.empty(batch_shape, device=self.precision.device), ledger.add)
        finally:
            for hook in hooks:
                hook.remove()
        return ledger

    def saved_tensors(self, patch: Sequence[int], batch_size: int) -> list[tuple[torch.dtype, tuple[int, ...]]]:
        """(dtype, shape) of what one training forward saves, in order (``forward_and_loss``): to inspect or
        compare the emulated autocast with a real one."""
        seen: list[tuple[torch.dtype, tuple[int, ...]]] = []
        shape = (batch_size, self.input_channels, *patch)
        with self._mode, emulated_autocast(self.precision):
            forward_and_loss(self.network, torch.empty(shape, device=self.precision.device),
                             lambda t: seen.append((t.dtype, tuple(t.shape))))
        return seen

    def __call__(self, patch: Sequence[int], batch_size: int) -> StepMemory:
        activations, largest = self.per_sample(patch)
        return StepMemory(self.parameter_bytes, activations * batch_size,
                          BACKWARD_WORKING_SET * largest * batch_size)


def memory_model_for(architecture: dict, input_channels: int, num_classes: int, precision: Precision,
                     optimizer_slots: int, deep_supervision: bool) -> TrainingMemoryModel:
    """The memory model of the network a plans ``architecture`` block describes, built as nnU-Net builds it
    (``get_network_from_plans``): nnU-Net's U-Net with deep supervision on, our networks with it off."""
    return TrainingMemoryModel(
        lambda: get_network_from_plans(architecture["network_class_name"], architecture["arch_kwargs"],
                                       architecture["_kw_requires_import"], input_channels, num_classes,
                                       allow_init=False, deep_supervision=deep_supervision),
        input_channels, precision, optimizer_slots)


class MemoryModels:
    """Memory models of several architectures for one dataset (channels, classes) and precision, each built
    once: the planner and the trainers' adaptation ask for the same architecture many times."""

    def __init__(self, input_channels: int, num_classes: int, precision: Precision) -> None:
        self.input_channels, self.num_classes, self.precision = input_channels, num_classes, precision
        self._models: dict[str, TrainingMemoryModel] = {}

    def __call__(self, architecture: dict, deep_supervision: bool, optimizer_slots: int) -> TrainingMemoryModel:
        key = json.dumps([architecture, deep_supervision, optimizer_slots], sort_keys=True, default=str)
        if key not in self._models:
            self._models[key] = memory_model_for(architecture, self.input_channels, self.num_classes,
                                                 self.precision, optimizer_slots, deep_supervision)
        return self._models[key]


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
