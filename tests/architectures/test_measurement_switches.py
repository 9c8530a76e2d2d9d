"""The measurement switches (architectures/building_blocks/switches.py: NNUNETV2_UC_FAST_PATHS, NNUNETV2_UC_LAYOUT):
the same outputs and state dicts whichever is set, the layout they ask for, and a clear error for a bad value."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from nnunetv2_uc.architectures import UC3DUNet, UXNet
from nnunetv2_uc.architectures.building_blocks import switches
from nnunetv2_uc.architectures.building_blocks.fast_layers import use_fast_path
from nnunetv2_uc.architectures.building_blocks.layout import map_format


def _outputs(net_class, shape, **kwargs):
    torch.manual_seed(0)
    net = net_class(1, 3, **kwargs).eval()
    x = torch.randn(*shape)
    with torch.no_grad():
        return net, net(x)


@pytest.mark.parametrize("net_class, kwargs", [
    (UXNet, {"feature_sizes": (8, 16, 32, 64), "hidden_size": 64}),
    (UC3DUNet, {"features": (4, 8, 16, 32, 64, 4)}),
])
def test_switches_change_speed_not_values(monkeypatch, net_class, kwargs):
    shape = (2, 1, 32, 32, 32)
    reference_net, reference = _outputs(net_class, shape, **kwargs)
    assert reference_net.head.seg_layers.weight.is_contiguous(memory_format=torch.channels_last_3d)
    for fast_paths, layout in [("none", "channels_last"), ("all", "contiguous"), ("cpu", "contiguous")]:
        monkeypatch.setattr(switches, "FAST_PATHS", fast_paths)
        monkeypatch.setattr(switches, "LAYOUT", layout)
        net, out = _outputs(net_class, shape, **kwargs)
        assert net.state_dict().keys() == reference_net.state_dict().keys()
        torch.testing.assert_close(out, reference, rtol=1e-4, atol=1e-4)
        if layout == "contiguous":
            assert all(p.is_contiguous() for p in net.parameters())


def test_contiguous_layout_keeps_contiguous_maps_without_fast_paths(monkeypatch):
    monkeypatch.setattr(switches, "FAST_PATHS", "none")
    monkeypatch.setattr(switches, "LAYOUT", "contiguous")
    _, out = _outputs(UC3DUNet, (1, 1, 32, 32, 32), features=(4, 8, 16, 32, 64, 4))
    assert out.is_contiguous() and map_format() == torch.contiguous_format


def test_fast_path_follows_the_setting(monkeypatch):
    x = torch.zeros(1)
    for setting, expected in [("cpu", True), ("all", True), ("none", False)]:
        monkeypatch.setattr(switches, "FAST_PATHS", setting)
        assert use_fast_path(x) is expected
    monkeypatch.setattr(switches, "FAST_PATHS", "cpu")
    assert use_fast_path(torch.zeros(1, device="meta")) is False


def test_bad_switch_value_is_named_at_import():
    env_run = subprocess.run([sys.executable, "-c", "import nnunetv2_uc.architectures"], capture_output=True, text=True,
                             env={**os.environ, "NNUNETV2_UC_FAST_PATHS": "gpu"})
    assert env_run.returncode != 0
    assert "NNUNETV2_UC_FAST_PATHS='gpu': choose one of cpu, all, none (default cpu)" in env_run.stderr
