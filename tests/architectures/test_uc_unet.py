"""uC on nnU-Net's own plans (UCPlainConvUNet, UCResidualEncoderUNet): topology vs the network nnU-Net builds from
the same plan, deep supervision at nnU-Net's scales, gradients, compile, He init, plan errors."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
from torch import nn

from helpers.e2e_data import SHAPE_ZYX, write_raw_dataset
from nnunetv2_uc.architectures.building_blocks.u_connection import SkipUNet2d
from nnunetv2_uc.architectures.uc_unet import (
    ResidualUShapedSkip, UCPlainConvUNet, UCPlanError, UCResidualEncoderUNet, UShapedSkipFusion,
)
from nnunetv2_uc.planning.uc_plans import uc_arch_kwargs
from nnunetv2_uc.errors import UserError

MODULE = "nnunetv2_uc.architectures.uc_unet"
OURS = {"PlainConvUNet": f"{MODULE}.UCPlainConvUNet", "ResidualEncoderUNet": f"{MODULE}.UCResidualEncoderUNet"}
PLANNERS = {"ExperimentPlanner": "nnUNetPlans", "nnUNetPlannerResEncM": "nnUNetResEncUNetMPlans"}
# (dataset id, name, channel, fingerprint shape (z, y, x), spacing (z, y, x)): the e2e test data as it is, and a
# CT-like fingerprint (the project's synthetic CT: ~3 mm slices, 0.8 mm in-plane) for a deep anisotropic plan
DATASETS = {
    "tiny": (501, "Aniso", "MRI", SHAPE_ZYX, (3.0, 1.0, 1.0)),
    "ct": (502, "CTLike", "CT", (48, 192, 192), (3.0, 0.8, 0.8)),
}

_PLAN_SCRIPT = """
from nnunetv2.experiment_planning.plan_and_preprocess_api import plan_experiments
for planner in {planners!r}:
    plan_experiments({ids!r}, planner)
"""


def _write_fingerprint(folder: Path, shape, spacing, n_cases: int = 4) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    fingerprint = {
        "foreground_intensity_properties_per_channel": {"0": {
            "max": 390.0, "mean": 114.0, "median": 95.0, "min": -13.0, "percentile_00_5": 40.0,
            "percentile_99_5": 239.0, "std": 51.0}},
        "median_relative_size_after_cropping": 1.0,
        "shapes_after_crop": [list(shape)] * n_cases,
        "spacings": [list(spacing)] * n_cases,
    }
    (folder / "dataset_fingerprint.json").write_text(json.dumps(fingerprint))


@pytest.fixture(scope="module")
def plans(tmp_path_factory) -> dict:
    """{(dataset, planner): the plans nnU-Net's planner writes}. The fingerprints are written directly (the planner
    reads only shapes, spacings and intensities from it), so planning takes seconds, not a fingerprint run."""
    root = tmp_path_factory.mktemp("uc_plans")
    for dataset_id, name, channel, shape, spacing in DATASETS.values():
        folder = write_raw_dataset(root / "raw", dataset_id, name, n_train=2)
        dataset_json = json.loads((folder / "dataset.json").read_text())
        dataset_json["channel_names"] = {"0": channel}
        (folder / "dataset.json").write_text(json.dumps(dataset_json))
        _write_fingerprint(root / "preprocessed" / folder.name, shape, spacing)
    env = {k: v for k, v in os.environ.items() if k != "nnUNet_n_proc_DA"}  # 0 crashes nnU-Net's planning
    env.update(nnUNet_raw=str(root / "raw"), nnUNet_preprocessed=str(root / "preprocessed"),
               nnUNet_results=str(root / "results"))
    script = _PLAN_SCRIPT.format(planners=list(PLANNERS), ids=[d[0] for d in DATASETS.values()])
    subprocess.run([sys.executable, "-c", script], env=env, check=True, capture_output=True, cwd=root)
    return {(key, planner): json.loads((root / "preprocessed" / f"Dataset{d[0]:03d}_{d[1]}" / f"{plans_name}.json")
                                       .read_text())
            for key, d in DATASETS.items() for planner, plans_name in PLANNERS.items()}


def _configuration(plans: dict, config: str = "3d_fullres") -> dict:
    return plans["configurations"][config]


def _build(configuration: dict, ours: bool, deep_supervision: bool = True, classes: int = 3, init: bool = True,
           **uc) -> nn.Module:
    """The network nnU-Net's get_network_from_plans builds from the configuration (ours: with the uC entries)."""
    arch = configuration["architecture"]
    kwargs = dict(arch["arch_kwargs"])
    name = arch["network_class_name"]
    if ours:
        kwargs.update(uc_arch_kwargs(configuration["patch_size"], kwargs["strides"], **uc))
        name = OURS[name.rsplit(".", 1)[1]]
    return get_network_from_plans(name, kwargs, arch["_kw_requires_import"], 1, classes, allow_init=init,
                                  deep_supervision=deep_supervision)


def _describe(module: nn.Module) -> dict:
    """The topology facts of a module: class, conv geometry and parameter shapes."""
    facts = {"type": type(module)}
    for attr in ("in_channels", "out_channels", "kernel_size", "stride", "padding", "num_features", "eps", "affine"):
        if hasattr(module, attr):
            facts[attr] = getattr(module, attr)
    facts["params"] = {n: tuple(p.shape) for n, p in module.named_parameters(recurse=False)}
    return facts


# ---- topology: nnU-Net's plan, unchanged except the uC skips ------------------------------------------------
@pytest.mark.parametrize("dataset, expected_uc", [("tiny", {"uc_stages": [0], "uc_depths": [2]}),
                                                  ("ct", {"uc_stages": [0, 1, 2, 3], "uc_depths": [5, 4, 3, 2]})])
@pytest.mark.parametrize("planner", list(PLANNERS))
@pytest.mark.parametrize("fusion", ["residual", "replace"])
def test_topology_equals_the_network_nnunet_builds_from_the_plan(plans, dataset, expected_uc, planner, fusion):
    configuration = _configuration(plans[dataset, planner])
    arch = configuration["architecture"]["arch_kwargs"]
    assert [1, 2, 2] in arch["strides"]  # an anisotropic plan
    assert uc_arch_kwargs(configuration["patch_size"], arch["strides"]) == {
        **expected_uc, "uc_slice_axis": "first", "uc_fusion": "residual", "uc_residual_gain": 0.1}
    reference = _build(configuration, ours=False, init=False)
    ours = _build(configuration, ours=True, init=False, fusion=fusion)
    assert type(ours).__name__ == "UC" + type(reference).__name__
    assert type(ours.encoder) is type(reference.encoder) and isinstance(ours.decoder, type(reference.decoder))

    # below the network and decoder classes (compared above), every module of nnU-Net's network is in ours
    theirs = {n: _describe(m) for n, m in reference.named_modules() if n not in ("", "decoder")}
    mine = {n: _describe(m) for n, m in ours.named_modules() if n not in ("", "decoder")}
    # modules that only the uC network has: the uC skips with their DFi fusions, nothing else
    assert {n.split(".")[:2] == ["decoder", "uc_fusions"] for n in set(mine) - set(theirs)} == {True}
    assert set(theirs) <= set(mine)
    # residual: every module of nnU-Net's is unchanged. replace: the decoder stage fed by a uC skip takes the
    # fused C channels instead of cat[up, skip] (2C); all else equal
    n_stages = arch["n_stages"]
    replaced = expected_uc["uc_stages"] if fusion == "replace" else []
    changed = {f"decoder.stages.{n_stages - 2 - s}.convs.0.conv" for s in replaced}
    changed |= {f"decoder.stages.{n_stages - 2 - s}.convs.0.all_modules.0" for s in replaced}
    for name in theirs:
        if name in changed:
            channels = arch["features_per_stage"][n_stages - 2 - int(name.split(".")[2])]
            assert (theirs[name]["in_channels"], mine[name]["in_channels"]) == (2 * channels, channels)
            assert {k: v for k, v in mine[name].items() if k not in ("in_channels", "params")} == \
                   {k: v for k, v in theirs[name].items() if k not in ("in_channels", "params")}
        else:
            assert mine[name] == theirs[name], name
    # and the uC widths: the stage's width, doubling per 2-D level, capped at the plan's largest width
    widest = max(arch["features_per_stage"])
    for stage, depth in zip(expected_uc["uc_stages"], expected_uc["uc_depths"]):
        width = arch["features_per_stage"][stage]
        assert ours.decoder.uc_fusions[str(stage)].u_connection.unet.channels == \
               [min(width * 2 ** i, widest) for i in range(depth + 1)]


@pytest.mark.parametrize("fusion", ["residual", "replace"])
def test_ct_like_plan_parameter_counts_and_widths(plans, fusion):
    configuration = _configuration(plans["ct", "ExperimentPlanner"])
    ours = _build(configuration, ours=True, init=False, fusion=fusion)
    assert ours.decoder.uc_fusions["0"].u_connection.unet.channels == [32, 64, 128, 256, 320, 320]
    extra = sum(p.numel() for p in ours.decoder.uc_fusions.parameters())
    reference = _build(configuration, ours=False, init=False)
    # the uC skips add their parameters (residual: with one scale per channel); with replace the decoder stages
    # they feed lose the skip half of their first conv
    removed = sum(reference.decoder.stages[len(reference.decoder.stages) - 1 - s].convs[0].conv.weight.numel() // 2
                  for s in (0, 1, 2, 3)) if fusion == "replace" else 0
    scales = sum(p.numel() for n, p in ours.named_parameters() if n.endswith("residual_scale"))
    assert scales == (sum(arch_width for arch_width in configuration["architecture"]["arch_kwargs"][
        "features_per_stage"][:4]) if fusion == "residual" else 0)  # one per channel of each uC stage
    count = lambda net: sum(p.numel() for p in net.parameters())
    assert count(ours) == count(reference) + extra - removed


# ---- deep supervision ----------------------------------------------------------------------------------------
def _nnunet_ds_scales(strides) -> list:
    """nnU-Net's own _get_deep_supervision_scales for these strides."""
    trainer = SimpleNamespace(enable_deep_supervision=True,
                              configuration_manager=SimpleNamespace(pool_op_kernel_sizes=strides))
    return nnUNetTrainer._get_deep_supervision_scales(trainer)


def _set_deep_supervision(network: nn.Module, enabled: bool) -> None:
    """As nnU-Net's trainer does it (unwrapping torch.compile)."""
    nnUNetTrainer.set_deep_supervision_enabled(SimpleNamespace(is_ddp=False, network=network), enabled)


SMALL_STRIDES = [[1, 1, 1], [1, 2, 2], [2, 2, 2], [2, 2, 2]]
SMALL_PATCH = (8, 32, 32)


def small_network(cls=UCPlainConvUNet, deep_supervision=True, initialize=True, **uc) -> nn.Module:
    """A narrow 4-stage anisotropic plan with three uC stages (2-D depths 3, 2, 1), He-initialised like nnU-Net's."""
    uc = uc or uc_arch_kwargs(SMALL_PATCH, SMALL_STRIDES, uc_stages=[0, 1, 2])
    blocks = {"n_conv_per_stage": 2} if cls is UCPlainConvUNet else {"n_blocks_per_stage": [1, 1, 2, 1]}
    torch.manual_seed(0)
    net = cls(input_channels=1, n_stages=4, features_per_stage=[4, 8, 16, 24], conv_op=nn.Conv3d,
              kernel_sizes=[[1, 3, 3], [3, 3, 3], [3, 3, 3], [3, 3, 3]], strides=SMALL_STRIDES,
              n_conv_per_stage_decoder=[1, 2, 1], conv_bias=True, norm_op=nn.InstanceNorm3d,
              norm_op_kwargs={"eps": 1e-5, "affine": True}, nonlin=nn.LeakyReLU, nonlin_kwargs={"inplace": True},
              num_classes=3, deep_supervision=deep_supervision, **blocks, **uc)
    if initialize:
        net.apply(net.initialize)
    return net


@pytest.mark.parametrize("cls", [UCPlainConvUNet, UCResidualEncoderUNet])
def test_deep_supervision_outputs_are_at_nnunets_scales_and_off_gives_the_full_resolution_logits(cls):
    net = small_network(cls)
    assert net.uc_stages == [0, 1, 2] and net.uc_depths == [3, 2, 1]
    x = torch.randn(2, 1, *SMALL_PATCH)
    with torch.no_grad():
        outputs = net(x)
        scales = _nnunet_ds_scales(SMALL_STRIDES)
        assert isinstance(outputs, list) and len(outputs) == len(scales) == 3
        for out, scale in zip(outputs, scales):
            assert out.shape == (2, 3, *np.round(np.array(SMALL_PATCH) * scale).astype(int))
        _set_deep_supervision(net, False)
        full = net(x)
    assert isinstance(full, torch.Tensor) and full.shape == (2, 3, *SMALL_PATCH)
    torch.testing.assert_close(full, outputs[0])


def test_deep_supervision_on_the_real_plan(plans):
    configuration = _configuration(plans["tiny", "nnUNetPlannerResEncM"])
    net = _build(configuration, ours=True)
    patch = configuration["patch_size"]
    with torch.no_grad():
        outputs = net(torch.randn(1, 1, *patch))
    scales = _nnunet_ds_scales(configuration["architecture"]["arch_kwargs"]["strides"])
    assert [tuple(o.shape[2:]) for o in outputs] == [tuple(np.round(np.array(patch) * s).astype(int)) for s in scales]


def test_state_dict_does_not_depend_on_deep_supervision():
    """nnU-Net's predictor builds with deep supervision off and loads the trained weights strictly."""
    trained = small_network(deep_supervision=True)
    predictor = small_network(deep_supervision=False)
    predictor.load_state_dict(trained.state_dict(), strict=True)
    assert list(trained.state_dict()) == list(predictor.state_dict())


# ---- gradients, compile -----------------------------------------------------------------------------------
def _parameters_without_gradient(net: nn.Module, x: torch.Tensor) -> set[str]:
    net.zero_grad(set_to_none=True)
    out = net(x)
    sum(o.square().mean() for o in (out if isinstance(out, list) else [out])).backward()
    return {n for n, p in net.named_parameters() if p.grad is None or not torch.any(p.grad != 0)}


@pytest.mark.parametrize("cls", [UCPlainConvUNet, UCResidualEncoderUNet])
def test_every_parameter_gets_a_gradient(cls):
    """Every parameter takes part (DDP without find_unused_parameters). Checked at torch's default init: nnU-Net's
    ResEnc init zeroes each residual block's last norm, which zeroes the gradients of the convs before it. The
    residual scales are moved off zero first (at zero the uC parameters' gradients are zero; next test)."""
    x = torch.randn(2, 1, *SMALL_PATCH)
    for uc in ({}, _uc(uc_fusion="replace")):
        net = small_network(cls, initialize=False, **uc)
        _open_residual_scales(net)
        assert _parameters_without_gradient(net, x) == set()
        # deep supervision off: as nnU-Net's decoder, only the lower-resolution segmentation layers are idle
        net = small_network(cls, deep_supervision=False, initialize=False, **uc)
        _open_residual_scales(net)
        idle = _parameters_without_gradient(net, x)
        assert idle == {f"decoder.seg_layers.{i}.{p}" for i in (0, 1) for p in ("weight", "bias")}


def _uc(**change) -> dict:
    return {**uc_arch_kwargs(SMALL_PATCH, SMALL_STRIDES, uc_stages=[0, 1, 2]), **change}


def _open_residual_scales(net: nn.Module) -> None:
    with torch.no_grad():
        for module in net.decoder.uc_fusions.values():
            if isinstance(module, ResidualUShapedSkip):
                module.residual_scale.fill_(0.5)


def _forward_backward(net: nn.Module, x: torch.Tensor):
    net.zero_grad(set_to_none=True)
    outputs = net(x)
    loss = sum(o.square().mean() * w for o, w in zip(outputs, (1.0, 0.5, 0.25)))
    loss.backward()
    return [o.detach() for o in outputs], [p.grad.clone() for p in net.parameters()]


def test_training_step_compiles_with_fullgraph_and_matches_eager():
    """fullgraph=True fails on any graph break; aot_eager traces forward and backward like inductor does."""
    net = small_network()
    x = torch.randn(2, 1, *SMALL_PATCH)
    expected, expected_grads = _forward_backward(net, x)
    compiled = torch.compile(net, fullgraph=True, backend="aot_eager")
    outputs, grads = _forward_backward(compiled, x)
    for got, want in zip(outputs, expected):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    for got, want in zip(grads, expected_grads):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    _set_deep_supervision(compiled, False)  # nnU-Net's trainer toggles the flag through the compiled wrapper
    assert net.decoder.deep_supervision is False


# ---- initialisation ---------------------------------------------------------------------------------------
def test_get_network_from_plans_applies_nnunets_he_init(plans):
    for planner in PLANNERS:
        configuration = _configuration(plans["tiny", planner])
        torch.manual_seed(0)
        net = _build(configuration, ours=True)
        convs = [m for m in net.modules() if isinstance(m, (nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d,
                                                              nn.ConvTranspose3d))]
        assert all(torch.all(m.bias == 0) for m in convs if m.bias is not None)  # torch's default is not zero
        conv = net.decoder.uc_fusions["0"].u_connection.unet.encoder[1][1].convs[0].conv  # 64 -> 128, 3x3
        fan_in = conv.weight[0].numel()
        he_std = (2 / (1 + 1e-2 ** 2)) ** 0.5 / fan_in ** 0.5
        assert conv.weight.std().item() == pytest.approx(he_std, rel=0.05)
        # ResEnc: nnU-Net also zeroes the last norm of every residual block (n_blocks_per_stage [1, 3, 4])
        residual = [m for m in net.encoder.modules() if type(m).__name__ == "BasicBlockD"]
        assert len(residual) == (8 if planner == "nnUNetPlannerResEncM" else 0)
        assert all(torch.all(b.conv2.norm.weight == 0) and torch.all(b.conv2.norm.bias == 0) for b in residual)


# ---- the feature-map count nnU-Net's planner uses ----------------------------------------------------------
def test_feature_map_count_adds_the_ucs_2d_maps_and_fused_maps(plans):
    configuration = _configuration(plans["tiny", "ExperimentPlanner"])
    patch = configuration["patch_size"]
    ours, reference = _build(configuration, ours=True), _build(configuration, ours=False)
    measured = {"2d": [], "fused": []}

    def count(kind):
        return lambda module, inputs, output: measured[kind].append(output.numel())  # batch 1: per sample

    for module in ours.decoder.uc_fusions.modules():
        if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):  # every 2-D conv and up-conv, over all slices
            module.register_forward_hook(count("2d"))
        elif isinstance(module, UShapedSkipFusion):  # residual: its output is cat[up, skip'], the two full maps
            module.register_forward_hook(count("fused"))
    with torch.no_grad():
        ours(torch.randn(1, 1, *patch))
    assert len(measured["2d"]) == 10  # 2-D depth 2: 2 encoder DoubleConvs (4 convs), 2 up-convs, 2 DoubleConvs (4)
    assert ours.compute_conv_feature_map_size(patch) == (reference.compute_conv_feature_map_size(patch)
                                                         + sum(measured["2d"]) + sum(measured["fused"]))


# ---- errors: plans the network cannot take ------------------------------------------------------------------
def test_errors_are_user_errors_with_exit_code_2():
    assert issubclass(UCPlanError, UserError) and issubclass(UCPlanError, ValueError)
    assert UCPlanError.exit_code == 2


def test_2d_configuration_is_refused_naming_conv_op_and_the_fix(plans):
    configuration = _configuration(plans["tiny", "ExperimentPlanner"], "2d")
    arch = configuration["architecture"]
    kwargs = {**arch["arch_kwargs"], "uc_stages": [0], "uc_depths": [1]}
    with pytest.raises(UCPlanError, match=r"conv_op is torch.nn.modules.conv.Conv2d.*3d_fullres"):
        get_network_from_plans(OURS["PlainConvUNet"], kwargs, arch["_kw_requires_import"], 1, 3)
    with pytest.raises(UCPlanError, match=r"patch_size \[28, 28\] has 2 axes.*3d_fullres"):
        uc_arch_kwargs(configuration["patch_size"], arch["arch_kwargs"]["strides"])


@pytest.mark.parametrize("patch, uc_stages, message", [
    ((8, 12, 12), None, r"patch_size \[8, 12, 12\].*no skip stage.*at least 16 voxels.*\[12, 6, 3\]"),
    ((8, 24, 24), [2], r"uc_stages includes stage 2.*\[6, 6\] voxels.*strides\[0..2\].*Drop stage 2"),
    ((8, 32, 32), [3], r"uc_stages \[3\] must be distinct skip stages among \[0, 1, 2\].*bottleneck"),
    ((8, 32, 32), [0, 0], r"must be distinct"),
])
def test_patch_too_small_or_bad_uc_stages_name_the_entry(patch, uc_stages, message):
    with pytest.raises(UCPlanError, match=message):
        uc_arch_kwargs(patch, SMALL_STRIDES, uc_stages=uc_stages)


@pytest.mark.parametrize("change, message", [
    (dict(features_per_stage=[4, 8, 16]), r"features_per_stage has 3 entries but needs 4 \(n_stages\)"),
    (dict(strides=[[1, 1, 1], [1, 2, 2], [2, 2, 2]]), r"strides has 3 entries but needs 4"),
    (dict(kernel_sizes=[[3, 3], [3, 3, 3], [3, 3, 3], [3, 3, 3]]), r"kernel_sizes\[0\] = \[3, 3\] is not 3-D"),
    (dict(n_conv_per_stage_decoder=[2, 2, 2, 2]), r"n_conv_per_stage_decoder has 4 entries but needs 3"),
    (dict(uc_stages=None), r"needs arch_kwargs uc_stages and uc_depths.*uc_arch_kwargs\(patch_size, strides\)"),
    (dict(uc_depths=[3, 2]), r"uc_depths \[3, 2\] needs one 2-D pooling count >= 1 per entry of uc_stages \[0, 1, 2\]"),
    (dict(uc_depths=[3, 0, 1]), r"uc_depths"),
    (dict(uc_slice_axis="middle"), r"uc_slice_axis must be one of"),
    (dict(uc_fusion="add"), r"uc_fusion must be one of \('residual', 'replace'\), got 'add'"),
])
def test_mismatched_arch_kwargs_name_the_entry(change, message):
    kwargs = dict(input_channels=1, n_stages=4, features_per_stage=[4, 8, 16, 24], conv_op=nn.Conv3d,
                  kernel_sizes=[[1, 3, 3], [3, 3, 3], [3, 3, 3], [3, 3, 3]], strides=SMALL_STRIDES,
                  n_conv_per_stage=2, n_conv_per_stage_decoder=[1, 2, 1], num_classes=3,
                  uc_stages=[0, 1, 2], uc_depths=[3, 2, 1])
    with pytest.raises(UCPlanError, match=message):
        UCPlainConvUNet(**{**kwargs, **change})


def test_input_smaller_than_the_ucs_need_is_a_clear_error():
    net = small_network()
    with pytest.raises(ValueError, match=r"in-plane axes \(1, 2\) of at least \[8, 8\].*Use the plan's patch_size"):
        net(torch.zeros(1, 1, 8, 4, 32))


# ---- the generalised 2-D U-Net -------------------------------------------------------------------------------
def test_skip_unet_with_capped_widths_maps_each_level_to_the_one_above():
    unet = SkipUNet2d([8, 16, 16, 16])
    assert [tuple(u.weight.shape[:2]) for u in unet.upsample] == [(16, 16), (16, 16), (16, 8)]
    assert [d.convs[0].conv.in_channels for d in unet.decoder] == [32, 32, 16]
    assert unet(torch.randn(3, 8, 20, 24)).shape == (3, 8, 20, 24)


def test_skip_unet_with_doubling_widths_keeps_the_originals_shapes():
    unet = SkipUNet2d([4, 8, 16])
    shapes = {n: tuple(p.shape) for n, p in unet.named_parameters() if n.startswith(("upsample", "decoder"))
              and n.endswith("conv.weight") or n.startswith("upsample") and n.endswith("weight")}
    assert shapes == {"upsample.0.weight": (16, 8, 2, 2), "upsample.1.weight": (8, 4, 2, 2),
                      "decoder.0.convs.0.conv.weight": (8, 16, 3, 3), "decoder.0.convs.1.conv.weight": (8, 8, 3, 3),
                      "decoder.1.convs.0.conv.weight": (4, 8, 3, 3), "decoder.1.convs.1.conv.weight": (4, 4, 3, 3)}


def test_slice_axis_last_folds_the_last_axis_and_plans_on_axes_0_and_1():
    strides = [[1, 1, 1], [2, 2, 1], [2, 2, 2]]
    # in-plane maps (axes 0, 1): 32x16 at stage 0, 16x8 at stage 1; the smaller side decides
    assert uc_arch_kwargs((32, 16, 6), strides, slice_axis="last") == {
        "uc_stages": [0], "uc_depths": [2], "uc_slice_axis": "last", "uc_fusion": "residual",
        "uc_residual_gain": 0.1}
    uc = uc_arch_kwargs((32, 16, 6), strides, uc_stages=[0, 1], slice_axis="last")
    assert uc["uc_depths"] == [2, 1]
    net = UCPlainConvUNet(input_channels=1, n_stages=3, features_per_stage=[4, 8, 16], conv_op=nn.Conv3d,
                          kernel_sizes=3, strides=strides, n_conv_per_stage=1, n_conv_per_stage_decoder=1,
                          num_classes=2, norm_op=nn.InstanceNorm3d, nonlin=nn.ReLU, **uc)
    assert net(torch.randn(1, 1, 32, 16, 6)).shape == (1, 2, 32, 16, 6)
    with pytest.raises(ValueError, match=r"in-plane axes \(0, 1\) of at least \[4, 4\]"):
        net(torch.randn(1, 1, 2, 16, 6))


# ---- uc_fusion="residual": starts as nnU-Net's network, trains from there -------------------------------------
def _outputs(net: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    with torch.no_grad():
        out = net(x)
    return out if isinstance(out, list) else [out]


def _max_difference(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    assert [o.shape for o in a] == [o.shape for o in b]
    return max((x - y).abs().max().item() for x, y in zip(a, b))


@pytest.mark.parametrize("deep_supervision", [True, False])
@pytest.mark.parametrize("planner", list(PLANNERS))
def test_residual_fusion_with_plain_weights_computes_nnunets_network(plans, planner, deep_supervision):
    """nnU-Net's trained weights (here: perturbed He init) load with only uC parameters missing, and the outputs
    equal those of nnU-Net's network of the same plan (eval mode, max abs difference <= 1e-5)."""
    configuration = _configuration(plans["tiny", planner])
    plain = _build(configuration, ours=False, deep_supervision=deep_supervision)
    with torch.no_grad():
        for p in plain.parameters():
            p.add_(0.1 * torch.randn_like(p))  # no zero-initialised norms: every path of the network carries signal
    ours = _build(configuration, ours=True, deep_supervision=deep_supervision)
    assert ours.uc_fusion == "residual"
    loaded = ours.load_state_dict(plain.state_dict(), strict=False)
    assert loaded.unexpected_keys == []
    assert loaded.missing_keys and all(k.startswith("decoder.uc_fusions.") for k in loaded.missing_keys)
    assert {k.rsplit(".", 1)[1] for k in loaded.missing_keys} >= {"residual_scale"}
    x = torch.randn(2, 1, *configuration["patch_size"])
    expected = _outputs(plain.eval(), x)
    assert len(expected) == (len(configuration["architecture"]["arch_kwargs"]["strides"]) - 1 if deep_supervision
                             else 1)
    assert _max_difference(_outputs(ours.eval(), x), expected) <= 1e-5
    _open_residual_scales(ours)  # the uC path is live: opening it changes the outputs
    assert _max_difference(_outputs(ours, x), expected) > 1e-3


@pytest.mark.parametrize("planner", list(PLANNERS))
def test_residual_fusion_under_one_seed_initialises_nnunets_parts_as_nnunets_network(plans, planner):
    configuration = _configuration(plans["tiny", planner])
    torch.manual_seed(7)
    plain = _build(configuration, ours=False).state_dict()
    torch.manual_seed(7)
    ours = _build(configuration, ours=True).state_dict()
    assert all(torch.equal(ours[k], v) for k, v in plain.items())


def _ds_cross_entropy(outputs: list[torch.Tensor], target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of every deep-supervision output against the target resampled to its scale."""
    loss = 0
    for out, weight in zip(outputs, (1.0, 0.5, 0.25)):
        scaled = torch.nn.functional.interpolate(target[:, None].float(), size=out.shape[2:], mode="nearest")
        loss = loss + weight * torch.nn.functional.cross_entropy(out, scaled[:, 0].long())
    return loss


@pytest.mark.parametrize("cls", [UCPlainConvUNet, UCResidualEncoderUNet])
def test_zero_scale_gets_a_gradient_and_after_one_sgd_step_every_parameter_does(cls):
    net = small_network(cls)  # nnU-Net's He init (ResEnc: last norm of every residual block zeroed)
    x, target = torch.randn(2, 1, *SMALL_PATCH), torch.randint(0, 3, (2, *SMALL_PATCH))
    optimizer = torch.optim.SGD(net.parameters(), lr=1e-2, momentum=0.99, nesterov=True)  # nnU-Net's
    _ds_cross_entropy(net(x), target).backward()
    scales = {n: p for n, p in net.named_parameters() if n.endswith("residual_scale")}
    assert len(scales) == 3 and all(torch.all(p == 0) for p in scales.values())
    assert all(p.grad is not None and torch.any(p.grad != 0) for p in scales.values())
    # every parameter is in the graph (DDP needs no find_unused_parameters), the uC ones with zero gradient
    assert all(p.grad is not None for p in net.parameters())
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    _ds_cross_entropy(net(x), target).backward()
    assert {n for n, p in net.named_parameters() if p.grad is None or not torch.any(p.grad != 0)} == set()


@pytest.mark.parametrize("name", ["UCPlainConvUNet", "UCResidualEncoderUNet"])
def test_plans_without_uc_fusion_build_and_predict_as_before(name):
    """Plans written before uc_fusion existed (fixture made with the code of 2b79b8d) build the "replace" network
    and give the same outputs from the same weights: identical to the network built with uc_fusion="replace" on this
    machine, and the fixture's outputs up to the rounding of another CPU's convolution kernels (on a Xeon with AMX the
    fixture's outputs, range ~17, are met within 2.1e-5, i.e. 1.3e-6 of the range)."""
    from helpers.paths import fixture_path
    saved = torch.load(fixture_path("uc_unet_replace_2b79b8d.pt"))[name]
    assert "uc_fusion" not in saved["arch_kwargs"]

    def build(arch_kwargs: dict) -> nn.Module:
        net = get_network_from_plans(f"{MODULE}.{name}", arch_kwargs, ["conv_op", "norm_op", "nonlin"], 1, 3,
                                     allow_init=True, deep_supervision=False)
        net.load_state_dict(saved["state_dict"], strict=True)
        return net.eval()

    net = build(saved["arch_kwargs"])
    assert net.uc_fusion == "replace"
    outputs = _outputs(net, saved["input"])
    assert _max_difference(outputs, _outputs(build({**saved["arch_kwargs"], "uc_fusion": "replace"}),
                                             saved["input"])) == 0
    output_range = (saved["output"].max() - saved["output"].min()).item()
    assert _max_difference(outputs, [saved["output"]]) <= 1e-5 * output_range


def test_diagnostics_report_the_gates_and_the_residual_scales():
    net = small_network()
    assert [level["gate_mean"] for level in net.uc_diagnostics()] == [None] * 3
    net.record_uc_gates()
    outputs = _outputs(net, torch.randn(1, 1, *SMALL_PATCH))
    levels = net.uc_diagnostics()
    assert [level["stage"] for level in levels] == [0, 1, 2]
    assert all(0 < level["gate_mean"] < 1 and 0 <= level["gate_below_0.01"] <= 1 for level in levels)
    assert [level["residual_scale_norm"] for level in levels] == [0.0] * 3
    with torch.no_grad():  # a closed gate at stage 0: every gate value below 0.01
        net.decoder.uc_fusions["0"].fusion.gate_up.bias.fill_(-20.0)
        level_1 = net.decoder.uc_fusions["1"]
        assert level_1.gain == 0.1  # what uc_arch_kwargs plans
        level_1.residual_scale.fill_(0.5 / level_1.gain)  # 8 channels at gamma 0.5: norm sqrt(8) / 2
    _outputs(net, torch.randn(1, 1, *SMALL_PATCH))
    levels = net.uc_diagnostics()
    assert levels[0]["gate_below_0.01"] == 1.0 and levels[0]["gate_mean"] < 0.01
    assert levels[1]["residual_scale_norm"] == pytest.approx(8 ** 0.5 / 2)
    net.record_uc_gates(False)
    assert all(level["gate_mean"] is None for level in net.uc_diagnostics())
    assert len(outputs) == 3


def test_residual_plans_without_a_gain_keep_gain_1_and_the_planned_gain_only_rescales_the_scale():
    """Residual plans written before uc_residual_gain existed build gamma = residual_scale (gain 1); a planned gain
    g gives the same network as gain 1 with the scale multiplied by g, and a bad gain names the entry."""
    planned = uc_arch_kwargs(SMALL_PATCH, SMALL_STRIDES, uc_stages=[0, 1, 2])
    old = {k: v for k, v in planned.items() if k != "uc_residual_gain"}
    old_net, new_net = small_network(**old), small_network(**planned)
    assert [m.gain for m in old_net.decoder.uc_fusions.values()] == [1.0] * 3
    assert [m.gain for m in new_net.decoder.uc_fusions.values()] == [planned["uc_residual_gain"]] * 3 == [0.1] * 3
    x = torch.randn(1, 1, *SMALL_PATCH)
    with torch.no_grad():
        for stage, module in new_net.decoder.uc_fusions.items():
            module.residual_scale.normal_()
            old_net.decoder.uc_fusions[stage].residual_scale.copy_(0.1 * module.residual_scale)
        new_net.eval(), old_net.eval()
        assert _max_difference(_outputs(new_net, x), _outputs(old_net, x)) <= 1e-5
        assert _max_difference(_outputs(new_net, x), _outputs(small_network(**planned).eval(), x)) > 1e-3
    with pytest.raises(UCPlanError, match="uc_residual_gain must be a number > 0"):
        small_network(**{**planned, "uc_residual_gain": 0})
