"""The old spellings of issue 21's renames keep working for one release, each with a message naming the new one:
``--arch`` (now ``--network``), the network name ``uc-nnunet`` (now ``uc_nnunet``), and the demo's lowercase
environment variables (now ``NNUNETV2_UC_DEMO_*``)."""
from __future__ import annotations

import json

import pytest

from nnunetv2_uc.demo import schedule as demo_schedule
from nnunetv2_uc.cli import main
from nnunetv2_uc.deprecation import network_name


def _cost_rows(capsys, flag: str) -> tuple[list[dict], str]:
    assert main(["cost", flag, "uxnet", "uc3dunet", "--patch", "32", "32", "32", "--no-timing", "--json", "-"]) == 0
    captured = capsys.readouterr()
    return json.loads(captured.out[captured.out.index("["):]), captured.err


def test_arch_still_chooses_the_networks_and_says_it_is_deprecated(capsys):
    new_rows, new_err = _cost_rows(capsys, "--network")
    old_rows, old_err = _cost_rows(capsys, "--arch")
    assert old_rows == new_rows and [r["arch"] for r in new_rows] == ["uxnet", "uc3dunet"]
    assert "deprecated" not in new_err
    assert "--arch is deprecated and will be removed in the next release; use --network" in old_err


def test_arch_of_the_demo_reaches_the_demo(capsys, tmp_path):
    assert main(["demo", "--dry-run", "--arch", "uxnet", "--workdir", str(tmp_path), "--device", "cpu"]) == 0
    captured = capsys.readouterr()
    assert "nnUNetTrainerUXNet_demo" in captured.out and "use --network" in captured.err


def test_old_network_name_maps_to_the_registry_name(capsys):
    assert network_name("uc-nnunet") == "uc_nnunet"
    assert "the network name 'uc-nnunet' is deprecated" in capsys.readouterr().err
    assert network_name("uc_nnunet") == "uc_nnunet" and capsys.readouterr().err == ""


def test_lowercase_demo_variables_still_work_and_say_so(capsys):
    name = demo_schedule.WHEN_SHORT_ENV
    assert name == "NNUNETV2_UC_DEMO_WHEN_SHORT"
    assert demo_schedule.environment_value(name, "stop", {name.lower(): "fewer"}) == "fewer"
    assert "nnunetv2_uc_demo_when_short is deprecated" in capsys.readouterr().err
    assert demo_schedule.environment_value(name, "stop", {name: "fewer", name.lower(): "stop"}) == "fewer"
    assert demo_schedule.environment_value(name, "stop", {}) == "stop" and capsys.readouterr().err == ""


def test_plan_help_lists_the_new_name(capsys):
    with pytest.raises(SystemExit):
        main(["plan", "--help"])
    assert "uc_nnunet" in capsys.readouterr().out


def test_uc3dunet_takes_its_old_keyword_names_with_a_warning():
    """Plans written before the rename hold uc_levels / slice_axis in arch_kwargs: they build the same network."""
    import torch

    from nnunetv2_uc.architectures.uc3dunet import UC3DUNet

    small = dict(features=(4, 8, 16, 32, 64, 8))
    with pytest.warns(FutureWarning, match="uc_levels is deprecated .* use uc_stages"):
        old = UC3DUNet(1, 3, uc_levels=[0, 1], slice_axis="last", **small)
    torch.manual_seed(0)
    new = UC3DUNet(1, 3, uc_stages=[0, 1], uc_slice_axis="last", **small)
    assert old.uc_stages == new.uc_stages == (0, 1) and old.uc_slice_axis == new.uc_slice_axis == "last"
    assert old.state_dict().keys() == new.state_dict().keys()
    old.load_state_dict(new.state_dict())
    x = torch.randn(1, 1, 16, 32, 32)
    assert torch.equal(old.eval()(x), new.eval()(x))
    with pytest.raises(TypeError, match="unexpected keyword arguments \\['uc_level'\\]"):
        UC3DUNet(1, 3, uc_level=[0], **small)
