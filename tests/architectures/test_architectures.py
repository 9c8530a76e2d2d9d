"""The faithful networks: sizes, MACs, shapes, gradients, input errors, and the fast paths vs plain torch."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from nnunetv2_uc.architectures import UC3DUNet, UXNet
from nnunetv2_uc.architectures.building_blocks.fast_layers import (
    FastInstanceNorm3d, PatchConvTranspose2d, PatchConvTranspose3d, PointwiseConv3d,
)
from nnunetv2_uc.architectures.building_blocks.input_rules import InputRule
from nnunetv2_uc.architectures.building_blocks.normalization import LayerNormChannelsFirst
from nnunetv2_uc.architectures.building_blocks.u_connection import DFi, UShapedConnection
from nnunetv2_uc.architectures.uxnet import DepthwiseChannelScaling
from nnunetv2_uc.measure.cost import count_macs, count_parameters

SMALL_UX = dict(feature_sizes=(16, 16, 32, 32), depths=(1, 1, 1, 1), hidden_size=32)
SMALL_UC = dict(features=(4, 8, 16, 32, 64, 8))


@pytest.mark.parametrize("cls, classes, expected", [
    (UXNet, 5, 53_006_069), (UXNet, 14, 53_006_510), (UC3DUNet, 5, 21_716_235), (UC3DUNet, 14, 21_716_532),
])
def test_parameter_counts_match_the_originals(cls, classes, expected):
    assert count_parameters(cls(1, classes)) == expected


@pytest.mark.parametrize("arch, patch, expected_gmacs", [
    ("uxnet", (96, 96, 96), 579.169), ("uc3dunet", (96, 96, 96), 248.441),
    ("uxnet", (64, 64, 64), 171.606), ("uc3dunet", (64, 64, 64), 73.612),
])
def test_macs_match_fvcore_to_the_third_decimal(arch, patch, expected_gmacs):
    assert count_macs(arch, 1, 5, patch) / 1e9 == pytest.approx(expected_gmacs, abs=5e-4)


def test_networks_have_no_initialize_hook_for_nnunet():
    # nnU-Net's get_network_from_plans applies network.initialize (He init) if present; the originals use torch defaults
    assert not hasattr(UXNet(1, 2, **SMALL_UX), "initialize")
    assert not hasattr(UC3DUNet(1, 2, **SMALL_UC), "initialize")


@pytest.mark.parametrize("model, shape", [
    (UXNet(2, 3, **SMALL_UX), (2, 2, 32, 48, 64)),
    (UC3DUNet(2, 3, **SMALL_UC), (2, 2, 33, 40, 47)),
    (UC3DUNet(1, 4, uc_slice_axis="last", **SMALL_UC), (1, 1, 16, 32, 48)),
])
def test_output_is_logits_of_the_input_size_and_every_parameter_gets_a_gradient(model, shape):
    torch.manual_seed(0)
    x = torch.randn(shape)
    out = model(x)
    assert out.shape == (shape[0], model.num_classes, *shape[2:])
    out.square().mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.any(p.grad != 0)]
    assert missing == []


@pytest.mark.parametrize("cls, kwargs", [(UXNet, SMALL_UX), (UC3DUNet, SMALL_UC)])
def test_wrong_channel_count_is_a_clear_error(cls, kwargs):
    with pytest.raises(ValueError, match="built for 1 input channel.*has 2"):
        cls(1, 2, **kwargs)(torch.zeros(1, 2, 32, 32, 32))


def test_uxnet_rejects_non_multiples_of_16_naming_axis_size_and_nearest():
    with pytest.raises(ValueError) as error:
        UXNet(1, 2, **SMALL_UX)(torch.zeros(1, 1, 32, 40, 64))
    assert "axis 1 has size 40" in str(error.value) and "32 or 48" in str(error.value)


@pytest.mark.parametrize("spatial, multiple, fragment", [
    ((16, 16, 16), True, "single voxel at 1/16"),
    ((16, 16, 16), False, "single voxel at 1/16"),
    ((12, 64, 64), False, "axis 0 has size 12 < 16"),
    ((56, 64, 64), True, "nearest valid: 48 or 64"),
])
def test_input_rule_problems(spatial, multiple, fragment):
    assert any(fragment in p for p in InputRule(16, every_axis_multiple=multiple).problems(spatial))


@pytest.mark.parametrize("spatial", [(32, 48, 64), (16, 16, 32), (96, 96, 96)])
def test_valid_sizes_have_no_problems(spatial):
    assert UXNet.input_rule.problems(spatial) == [] and UC3DUNet.input_rule.problems(spatial) == []


def test_odd_sizes_run_through_uc():
    assert UC3DUNet(1, 2, **SMALL_UC)(torch.randn(1, 1, 17, 33, 21)).shape == (1, 2, 17, 33, 21)


def test_uc_widths_must_double_as_in_the_original():
    with pytest.raises(ValueError, match="each double the previous"):
        UC3DUNet(1, 2, features=(6, 8, 16, 32, 64, 8))


def test_deep_supervision_is_refused():
    with pytest.raises(ValueError, match="no deep-supervision"):
        UXNet(1, 2, deep_supervision=True, **SMALL_UX)


@pytest.mark.parametrize("cin, cout", [(8, 32), (32, 8)])
def test_dcs_equals_the_grouped_conv_it_replaces(cin, cout):
    torch.manual_seed(0)
    dcs = DepthwiseChannelScaling(cin, cout)
    conv = nn.Conv3d(cin, cout, 1, groups=min(cin, cout))
    conv.load_state_dict(dcs.state_dict())
    x = torch.randn(2, cin, 3, 4, 5)
    torch.testing.assert_close(dcs(x.movedim(1, -1)).movedim(-1, 1), conv(x), rtol=1e-5, atol=1e-6)


def test_channels_first_layernorm_equals_the_formula():
    torch.manual_seed(0)
    norm = LayerNormChannelsFirst(6)
    with torch.no_grad():
        norm.weight.normal_()
        norm.bias.normal_()
    x = torch.randn(2, 6, 3, 4, 5)
    mean, var = x.mean(1, keepdim=True), x.var(1, keepdim=True, unbiased=False)
    expected = (x - mean) / torch.sqrt(var + 1e-6) * norm.weight.view(1, -1, 1, 1, 1) + norm.bias.view(1, -1, 1, 1, 1)
    torch.testing.assert_close(norm(x), expected, rtol=1e-5, atol=1e-5)


def test_slice_axis_first_runs_the_2d_unet_on_planes_of_axis_1_and_2():
    torch.manual_seed(0)
    first = UShapedConnection([4, 8, 16], slice_axis="first").eval()
    last = UShapedConnection([4, 8, 16], slice_axis="last").eval()
    last.load_state_dict(first.state_dict())
    x = torch.randn(2, 4, 5, 16, 20)  # 5 slices of 16x20 along axis 0
    expected = last(x.permute(0, 1, 3, 4, 2)).permute(0, 1, 4, 2, 3)  # same planes, folded as the original does
    torch.testing.assert_close(first(x), expected)
    # and each slice is processed on its own
    torch.testing.assert_close(first(x)[:, :, 2:3], first(x[:, :, 2:3]))


# ---- drop-in layers with CPU fast paths: same values and gradients as the torch layer they subclass --------
def _forward_backward(module: nn.Module, *inputs: torch.Tensor):
    module.zero_grad(set_to_none=True)
    inputs = [x.detach().clone().requires_grad_(True) for x in inputs]
    out = module(*inputs)
    out.backward(torch.linspace(-1, 1, out.numel()).view(out.shape))
    grads = [x.grad for x in inputs] + [p.grad for p in module.parameters()]
    return out, grads


def _assert_same_forward_backward(fast: nn.Module, reference: nn.Module, *inputs: torch.Tensor) -> torch.Tensor:
    reference.load_state_dict(fast.state_dict())
    out, grads = _forward_backward(fast, *inputs)
    expected, expected_grads = _forward_backward(reference, *inputs)
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-5)
    for got, want in zip(grads, expected_grads):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    return out


def _layouts(x: torch.Tensor):
    cl = torch.channels_last_3d if x.ndim == 5 else torch.channels_last
    return [x.contiguous(), x.contiguous(memory_format=cl)]


@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize("affine", [False, True])
def test_fast_instance_norm_equals_instance_norm_in_both_layouts(batch, affine):
    torch.manual_seed(0)
    fast = FastInstanceNorm3d(6, eps=1e-5, affine=affine)
    if affine:
        with torch.no_grad():
            fast.weight.normal_()
            fast.bias.normal_()
    for x in _layouts(torch.randn(batch, 6, 5, 6, 7) * 3 + 1):
        out = _assert_same_forward_backward(fast, nn.InstanceNorm3d(6, eps=1e-5, affine=affine), x)
        assert out.is_contiguous(memory_format=torch.channels_last_3d) == (
            not x.is_contiguous()), "the norm must keep the layout it was given"


@pytest.mark.parametrize("bias", [False, True])
def test_patch_transposed_convs_equal_torch_and_return_channels_last(bias):
    torch.manual_seed(0)
    for fast, reference, x in (
        (PatchConvTranspose3d(6, 4, bias=bias), nn.ConvTranspose3d(6, 4, 2, stride=2, bias=bias),
         torch.randn(2, 6, 3, 4, 5)),
        (PatchConvTranspose2d(6, 4, bias=bias), nn.ConvTranspose2d(6, 4, 2, stride=2, bias=bias),
         torch.randn(3, 6, 4, 5)),
    ):
        for layout in _layouts(x):
            out = _assert_same_forward_backward(fast, reference, layout)
            cl = torch.channels_last_3d if out.ndim == 5 else torch.channels_last
            assert out.is_contiguous(memory_format=cl)


def test_patch_transposed_conv_refuses_overlapping_kernels():
    fast = PatchConvTranspose3d(4, 4)
    fast.stride = (1, 1, 1)  # kernel 2, stride 1: output blocks would overlap and the GEMM path would be wrong
    with pytest.raises(ValueError, match="kernel == stride"):
        fast._check_patch_geometry()


def test_pointwise_conv_and_head_equal_conv3d():
    torch.manual_seed(0)
    for x in _layouts(torch.randn(2, 6, 3, 4, 5)):
        _assert_same_forward_backward(PointwiseConv3d(6, 3), nn.Conv3d(6, 3, 1), x)
        _assert_same_forward_backward(PointwiseConv3d(6, 3, bias=False), nn.Conv3d(6, 3, 1, bias=False), x)


def test_dfi_single_gemm_equals_the_three_convs():
    torch.manual_seed(0)
    dfi = DFi(6)
    up, skip = torch.randn(2, 6, 3, 4, 5), torch.randn(2, 6, 3, 4, 5)
    up, skip = up.contiguous(memory_format=torch.channels_last_3d), skip.contiguous(memory_format=torch.channels_last_3d)

    class ThreeConvs(nn.Module):  # the formula, written with the torch convs
        def __init__(self) -> None:
            super().__init__()
            self.fuse, self.gate_up, self.gate_skip = nn.Conv3d(12, 6, 1, bias=False), nn.Conv3d(6, 1, 1), nn.Conv3d(6, 1, 1)

        def forward(self, a, b):
            return self.fuse(torch.cat([a, b], 1)) * torch.sigmoid(self.gate_up(a) + self.gate_skip(b))

    _assert_same_forward_backward(dfi, ThreeConvs(), up, skip)


@pytest.mark.parametrize("slice_axis", ["first", "last"])
def test_u_connection_equals_a_loop_over_slices(slice_axis):
    torch.manual_seed(0)
    uc = UShapedConnection([4, 8, 16], slice_axis=slice_axis).eval()
    x = torch.randn(2, 4, 6, 8, 12)
    for layout in _layouts(x):
        out = uc(layout)
        dim = 2 if slice_axis == "first" else 4
        expected = torch.stack([uc.unet(s) for s in layout.unbind(dim)], dim=dim)
        torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
        assert out.is_contiguous(memory_format=torch.channels_last_3d)


def test_u_connection_on_first_axis_of_a_channels_last_map_folds_without_copying():
    uc = UShapedConnection([4, 8], slice_axis="first").eval()
    x = torch.randn(2, 4, 3, 8, 8).contiguous(memory_format=torch.channels_last_3d)
    seen = []
    uc.unet.register_forward_hook(lambda module, inputs, output: seen.append(inputs[0]))
    uc(x)
    assert seen[0].data_ptr() == x.data_ptr() and seen[0].is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("cls, kwargs", [(UXNet, SMALL_UX), (UC3DUNet, SMALL_UC)])
def test_activation_checkpointing_changes_memory_not_values_or_gradients(cls, kwargs):
    from nnunetv2_uc.planning.memory import CPU_FP32, TrainingMemoryModel

    torch.manual_seed(0)
    plain = cls(1, 3, **kwargs)
    checkpointed = cls(1, 3, activation_checkpointing=True, **kwargs)
    checkpointed.load_state_dict(plain.state_dict())
    x = torch.randn(2, 1, 16, 32, 32)
    out, grads = _forward_backward(checkpointed, x)
    expected, expected_grads = _forward_backward(plain, x)
    torch.testing.assert_close(out, expected)
    for got, want in zip(grads, expected_grads):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    sizes = {flag: TrainingMemoryModel(lambda: cls(1, 3, activation_checkpointing=flag, **kwargs), 1, CPU_FP32,
                                       2)((64, 64, 64), 2).activations for flag in (False, True)}
    assert sizes[True] < 0.75 * sizes[False]


@pytest.mark.parametrize("cls, kwargs", [(UXNet, SMALL_UX), (UC3DUNet, SMALL_UC)])
def test_training_step_compiles_without_graph_breaks_with_checkpointing_and_fast_paths(cls, kwargs):
    """fullgraph=True fails on any graph break (the CPU fast-path branches, checkpoint regions); aot_eager
    traces like inductor without its C++ build (minutes on 2 cores)."""
    torch.manual_seed(0)
    net = cls(1, 3, activation_checkpointing=True, **kwargs)
    x = torch.randn(2, 1, 16, 32, 32)
    expected, expected_grads = _forward_backward(net, x)
    out, grads = _forward_backward(torch.compile(net, fullgraph=True, backend="aot_eager"), x)
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-5)
    for got, want in zip(grads, expected_grads):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
