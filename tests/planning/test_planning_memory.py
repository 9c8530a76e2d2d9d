"""The memory model against what this machine can measure: peak memory of real fp32 CPU training steps, and
the dtypes a real CPU autocast run saves; plus the CUDA fp16 autocast emulation's dtype rules."""
from __future__ import annotations

import collections

import pytest
import torch

from nnunetv2_uc.architectures import UC3DUNet, UXNet
from nnunetv2_uc.planning.memory import (
    CPU_FP32, CUDA_FP16_AUTOCAST, GIB, Precision, TrainingMemoryModel, forward_and_loss,
)
from nnunetv2_uc.architectures.registry import entry_for_class
from helpers.planning_measure import measure_cpu_training_peak

NETWORKS = {"uc3dunet": UC3DUNet, "uxnet": UXNet}


def architecture(network_class) -> dict:
    return entry_for_class(network_class).plans_architecture()


def model(network_class, precision: Precision, input_channels=1, num_classes=3, optimizer_slots=2):
    return TrainingMemoryModel(lambda: network_class(input_channels, num_classes), input_channels, precision,
                               optimizer_slots)


# (network, patch, batch, activation checkpointing): activations dominate, so the CPU runtime's own few
# hundred MB stay small beside them; one size per network in the default run, the rest in the `calibration`
# run (~1.5 min each on 2 cores; `pytest -m calibration -s` prints estimate and measurement)
def measured_case(name: str, patch: tuple, batch: int, checkpointing: bool = False, slow: bool = True):
    case_id = f"{name}-{'x'.join(map(str, patch))}-b{batch}{'-checkpointed' if checkpointing else ''}"
    return pytest.param(name, patch, batch, checkpointing, id=case_id, marks=[pytest.mark.calibration] if slow else [])


MEASURED = [
    measured_case("uc3dunet", (48, 64, 64), 2, slow=False), measured_case("uxnet", (48, 64, 64), 2, slow=False),
    measured_case("uc3dunet", (64, 64, 64), 2), measured_case("uxnet", (64, 64, 64), 2),
    measured_case("uc3dunet", (64, 96, 96), 1), measured_case("uxnet", (64, 96, 96), 1),
    measured_case("uc3dunet", (64, 64, 64), 2, checkpointing=True),
    measured_case("uxnet", (64, 64, 64), 2, checkpointing=True),
]


@pytest.mark.parametrize("name,patch,batch,checkpointing", MEASURED)
def test_estimate_is_within_25_percent_of_a_real_fp32_cpu_training_step(name, patch, batch, checkpointing):
    network_class = NETWORKS[name]
    kwargs = {"activation_checkpointing": True} if checkpointing else {}
    estimate = TrainingMemoryModel(lambda: network_class(1, 3, **kwargs), 1, CPU_FP32, 2)(patch, batch).total
    arch = architecture(network_class)
    arch["arch_kwargs"].update(kwargs)
    measured = measure_cpu_training_peak(arch, 1, 3, patch, batch, optimizer_slots=2)
    print(f"{name} {patch} batch {batch}{' checkpointed' if checkpointing else ''}: estimated "
          f"{estimate / GIB:.2f} GiB, measured {measured / GIB:.2f} GiB")
    assert 0.75 * measured <= estimate <= 1.25 * measured


@pytest.mark.parametrize("name", NETWORKS)
def test_emulated_cpu_autocast_saves_what_a_real_cpu_autocast_run_saves(name):
    network_class, patch = NETWORKS[name], (32, 32, 32)
    emulated = model(network_class, Precision("cpu", torch.bfloat16)).saved_tensors(patch, 2)

    torch.manual_seed(0)
    network = network_class(1, 3)
    real = []
    with torch.autocast("cpu", dtype=torch.bfloat16):
        forward_and_loss(network, torch.randn(2, 1, *patch), lambda t: real.append((t.dtype, tuple(t.shape))))
    # the same tensors (as a multiset: one op may save its inputs in another order)
    assert collections.Counter(shape for _, shape in emulated) == collections.Counter(shape for _, shape in real)
    assert {torch.bfloat16, torch.float32} <= {dtype for dtype, _ in real}  # autocast did change dtypes
    # Known difference: fake (meta) kernels return a norm's saved statistics (mean, 1/std: one value per
    # channel or per voxel, not per feature) in the input's dtype where the CPU kernels keep them fp32.
    # Everything else has the real dtype, and the statistics are a small share of the bytes.
    only_emulated = collections.Counter(emulated) - collections.Counter(real)
    only_real = collections.Counter(real) - collections.Counter(emulated)
    assert all(dtype == torch.bfloat16 and _is_statistic(shape) for dtype, shape in only_emulated)
    assert collections.Counter({(torch.float32, shape): n for (_, shape), n in only_emulated.items()}) == only_real
    assert sum(_nbytes(e) * n for e, n in only_real.items()) < 0.05 * sum(_nbytes(e) for e in real)


def _is_statistic(shape: tuple[int, ...]) -> bool:
    """(B, C) / (C,) per-channel or (B, *spatial, 1) per-voxel statistics of a norm."""
    return len(shape) <= 2 or shape[-1] == 1


def _nbytes(entry) -> int:
    dtype, shape = entry
    n = 1
    for s in shape:
        n *= s
    return n * torch.empty((), dtype=dtype).element_size()


@pytest.mark.parametrize("name", NETWORKS)
def test_cuda_fp16_autocast_saves_fp16_conv_inputs_and_fp32_norms_and_loss(name):
    saved = model(NETWORKS[name], CUDA_FP16_AUTOCAST).saved_tensors((64, 64, 64), 2)
    dtypes = collections.Counter(dtype for dtype, _ in saved)
    assert dtypes[torch.float16] > 0 and dtypes[torch.float32] > 0
    # the loss's softmax / log-softmax of the (2, 3, 64, 64, 64) logits are fp32
    assert (torch.float32, (2, 3, 64, 64, 64)) in saved
    # full-resolution conv inputs are fp16
    assert any(dtype == torch.float16 and shape[0] == 2 and shape[2:] == (64, 64, 64) for dtype, shape in saved)


@pytest.mark.parametrize("name", NETWORKS)
def test_fp16_autocast_keeps_less_than_fp32_and_more_than_half(name):
    patch = (64, 64, 64)
    fp16 = model(NETWORKS[name], CUDA_FP16_AUTOCAST)(patch, 2).activations
    fp32 = model(NETWORKS[name], Precision("cuda", None))(patch, 2).activations
    assert 0.5 * fp32 < fp16 < fp32


def test_activations_scale_with_batch_and_parameters_do_not():
    m = model(UC3DUNet, CUDA_FP16_AUTOCAST)
    one, four = m((32, 48, 48), 1), m((32, 48, 48), 4)
    assert four.activations == 4 * one.activations and four.parameters == one.parameters
    params = sum(p.numel() for p in UC3DUNet(1, 3).parameters())
    assert one.parameters == params * 4 * (2 + 2)  # fp32 weights, gradients, two AdamW slots


@pytest.mark.parametrize("name", NETWORKS)
def test_activation_checkpointing_lowers_the_estimate(name):
    network_class = NETWORKS[name]
    plain = model(network_class, CUDA_FP16_AUTOCAST)((64, 64, 64), 2).activations
    checkpointed = TrainingMemoryModel(lambda: network_class(1, 3, activation_checkpointing=True), 1,
                                       CUDA_FP16_AUTOCAST, 2)((64, 64, 64), 2).activations
    assert 0 < checkpointed < plain


def test_each_saved_storage_is_counted_once_views_and_in_place_results_included():
    class Saves(torch.nn.Module):
        """exp saves its result; optionally relu_ on it (saves the same storage) and sin/cos on two views of y."""

        def __init__(self, views: bool = False, in_place: bool = False):
            super().__init__()
            self.views, self.in_place = views, in_place
            self.scale = torch.nn.Parameter(torch.ones(()))

        def forward(self, x):
            y = x * self.scale  # saves x (the input, counted anyway) and the parameter (counted apart)
            r = y.exp()
            if self.in_place:
                r = torch.relu_(r)
            if self.views:
                r = r + y[:, :, :8].sin().sum() + y.transpose(2, 3).cos().sum()
            return torch.cat([r, r], dim=1)

    def activations(**kwargs) -> int:
        return TrainingMemoryModel(lambda: Saves(**kwargs), 1, CPU_FP32, 0).per_sample((16, 16, 16))[0]

    voxel_bytes = 16 ** 3 * 4
    assert activations(views=True) - activations() == voxel_bytes  # y once, though two views of it are saved
    assert activations(in_place=True) == activations()               # relu_'s result is exp's storage


def test_the_residual_uc_branch_is_counted():
    """uC on nnU-Net's network (uc_fusion "residual"): the estimate counts the uC branch on top of nnU-Net's network,
    and the decoder stages' 2C inputs, which the former "replace" network halves."""
    from nnunetv2_uc.architectures.registry import nnunet_topology
    from nnunetv2_uc.planning.uc_plans import uc_arch_kwargs
    from nnunetv2_uc.planning.memory import memory_model_for, parameter_bytes

    patch, topology = (32, 64, 64), nnunet_topology((32, 64, 64))
    plain = {"network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
             "_kw_requires_import": ["conv_op", "norm_op", "nonlin"],
             "arch_kwargs": {**topology, "features_per_stage": [8, 16, 32, 64, 128][:topology["n_stages"]],
                             "conv_op": "torch.nn.modules.conv.Conv3d", "n_conv_per_stage": 2,
                             "n_conv_per_stage_decoder": 2, "conv_bias": True,
                             "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d",
                             "norm_op_kwargs": {"eps": 1e-5, "affine": True}, "nonlin": "torch.nn.LeakyReLU",
                             "nonlin_kwargs": {"inplace": True}}}
    estimates, networks = {}, {}
    for fusion in ("residual", "replace", None):
        architecture = json_copy(plain)
        if fusion:
            architecture["network_class_name"] = "nnunetv2_uc.architectures.uc_unet.UCPlainConvUNet"
            architecture["arch_kwargs"].update(uc_arch_kwargs(patch, topology["strides"], fusion=fusion))
        model = memory_model_for(architecture, 1, 3, CUDA_FP16_AUTOCAST, 1, deep_supervision=True)
        estimates[fusion], networks[fusion] = model(patch, 2), model.network
    uc_parameters = sum(p.numel() for n, p in networks["residual"].named_parameters() if "uc_fusions" in n)
    assert uc_parameters > 0
    assert estimates["residual"].parameters - estimates[None].parameters == \
        parameter_bytes(networks["residual"], 1) - parameter_bytes(networks[None], 1) > 0
    assert estimates["residual"].activations > estimates["replace"].activations > estimates[None].activations


def json_copy(value):
    import json

    return json.loads(json.dumps(value))
