"""`nnunetv2_uc cost -d D -c CONFIG -p PLANS`: a plan's network next to the same plan with uC connections and the
paper networks, the one MAC counter taking a built network (nnunetv2_uc.measure.cost.count_macs), and plans the uC network
cannot take (clear error naming the plans entry, nothing written)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

from helpers.e2e_data import uc_plans_by_hand
from helpers.paths import FIXTURES
from nnunetv2_uc.architectures.registry import network_entry
from nnunetv2_uc.architectures.uc3dunet import UC3DUNet
from nnunetv2_uc.architectures.uc_unet import UCPlainConvUNet, UCPlanError
from nnunetv2_uc.cli import main
from nnunetv2_uc.errors import OverwriteRefused
from nnunetv2_uc.measure.cost import build_network, count_macs, count_parameters
from nnunetv2_uc.planning.uc_plans import with_uc_connections, without_uc_connections

LEGACY = FIXTURES / "legacy_results_0.1.0" / "Dataset901_LegacyUC" / "nnUNetTrainerUC_tiny__nnUNetPlans__3d_fullres"
PATCH = [16, 32, 32]  # the fixture plans' 3d_fullres patch


@pytest.fixture()
def preprocessed(tmp_path, monkeypatch) -> Path:
    """$nnUNet_preprocessed/Dataset901_LegacyUC with the fixture's plans (PlainConvUNet, 3 stages, 3 classes)."""
    folder = tmp_path / "preprocessed" / "Dataset901_LegacyUC"
    folder.mkdir(parents=True)
    shutil.copy(LEGACY / "plans.json", folder / "nnUNetPlans.json")
    shutil.copy(LEGACY / "dataset.json", folder / "dataset.json")
    for variable in ("nnUNet_preprocessed", "nnUNet_raw", "nnUNet_results"):
        monkeypatch.setenv(variable, str(tmp_path / variable.split("_")[1]))
    return folder


def _plans(folder: Path, name: str = "nnUNetPlans") -> dict:
    return json.loads((folder / f"{name}.json").read_text())


def _direct_network(architecture: dict, classes: int = 3) -> torch.nn.Module:
    return get_network_from_plans(architecture["network_class_name"], architecture["arch_kwargs"],
                                  architecture["_kw_requires_import"], 1, classes, deep_supervision=False)


def _cost_rows(capsys, *arguments: str) -> list[dict]:
    assert main(["cost", *arguments, "--json", "-"]) == 0
    return json.loads(capsys.readouterr().out)


def test_count_macs_counts_a_built_network_as_the_registry_name():
    with torch.device("meta"):
        network = build_network("plainunet", 1, 5, [32, 32, 32])
    assert count_macs(network, 1, 0, [32, 32, 32]) == count_macs("plainunet", 1, 5, [32, 32, 32])
    assert network.training  # counted in eval mode, then restored


def test_cost_of_a_plan_and_its_uc_version(preprocessed, capsys):
    rows = _cost_rows(capsys, "-d", "901", "-c", "3d_fullres")
    architecture = _plans(preprocessed)["configurations"]["3d_fullres"]["architecture"]
    plain, uc = _direct_network(architecture), _direct_network(with_uc_connections(architecture, PATCH))
    assert isinstance(uc, UCPlainConvUNet)
    assert [r["network"] for r in rows] == ["plan", "plan with uC", "paper UXNet", "paper UC3DUNet"]
    assert [r["network_class"] for r in rows] == ["PlainConvUNet", "UCPlainConvUNet", "UXNet", "UC3DUNet"]
    assert all(r["patch"] == PATCH for r in rows)
    assert rows[1]["uc_stages"] == [0, 1]  # in-plane 32 and 16 at stages 0 and 1; stage 2 is the bottleneck
    assert rows[0]["parameters"] == count_parameters(plain) == 1_274_406
    assert rows[1]["parameters"] == count_parameters(uc) > rows[0]["parameters"]
    assert rows[0]["gmacs"] == pytest.approx(count_macs(plain, 1, 3, PATCH) / 1e9, rel=1e-12)
    assert rows[1]["gmacs"] == pytest.approx(count_macs(uc, 1, 3, PATCH) / 1e9, rel=1e-12)
    for row, arch in zip(rows[2:], ("uxnet", "uc3dunet")):  # paper widths, the dataset's 3 classes, the plan's patch
        assert row["parameters"] == count_parameters(build_network(arch, 1, 3, PATCH))
        assert row["gmacs"] == pytest.approx(count_macs(arch, 1, 3, PATCH) / 1e9, rel=1e-12)

    assert main(["cost", "-d", "Dataset901_LegacyUC"]) == 0
    table = capsys.readouterr().out
    ratio = rows[1]["gmacs"] / rows[0]["gmacs"]
    assert f"| plan with uC | UCPlainConvUNet | 16x32x32 | 0, 1 | {rows[1]['parameters']:,} |" in table
    assert f"| {ratio:.2f} |" in table and "MACs x plan" in table


def test_cost_of_uc_plans_reports_the_base_network_beside_them(preprocessed, capsys):
    plans = _plans(preprocessed)
    config = plans["configurations"]["3d_fullres"]
    config["architecture"] = with_uc_connections(config["architecture"], config["patch_size"])
    plans["plans_name"] = "nnUNetPlans_UCUNet"
    (preprocessed / "nnUNetPlans_UCUNet.json").write_text(json.dumps(plans))
    uc_rows = _cost_rows(capsys, "-d", "901", "-p", "nnUNetPlans_UCUNet")
    base_rows = _cost_rows(capsys, "-d", "901")
    assert [r["network"] for r in uc_rows][:2] == ["plan", "plan without uC"]
    assert uc_rows[0]["parameters"] == base_rows[1]["parameters"] and uc_rows[1]["gmacs"] == base_rows[0]["gmacs"]
    assert without_uc_connections(config["architecture"]) == _plans(preprocessed)["configurations"]["3d_fullres"][
        "architecture"]


def test_plans_of_a_paper_network_get_no_uc_version(preprocessed, capsys):
    plans = _plans(preprocessed)
    plans["configurations"]["3d_fullres"]["architecture"] = network_entry("uc3dunet").plans_architecture(
        features=[2, 4, 8, 16, 32, 2])  # as `nnunetv2_uc plan --network uc3dunet` names it
    (preprocessed / "nnUNetPlans_UC3DUNet.json").write_text(json.dumps({**plans, "plans_name": "nnUNetPlans_UC3DUNet"}))
    rows = _cost_rows(capsys, "-d", "901", "-p", "nnUNetPlans_UC3DUNet")
    assert [(r["network"], r["network_class"]) for r in rows] == [
        ("plan", "UC3DUNet"), ("paper UXNet", "UXNet"), ("paper UC3DUNet", "UC3DUNet")]
    assert rows[0]["parameters"] == count_parameters(UC3DUNet(1, 3, features=[2, 4, 8, 16, 32, 2])) == 152_539


def test_a_paper_network_that_cannot_take_the_plans_patch_gets_no_counts(preprocessed, capsys):
    plans = _plans(preprocessed)
    plans["configurations"]["3d_fullres"]["patch_size"] = [16, 40, 40]  # UX-Net needs multiples of 16 on every axis
    (preprocessed / "nnUNetPlans.json").write_text(json.dumps(plans))
    rows = {r["network"]: r for r in _cost_rows(capsys, "-d", "901")}
    assert rows["paper UXNet"]["parameters"] is None and rows["paper UXNet"]["gmacs"] is None
    assert "axis 1 has size 40, which is not a multiple of 16" in rows["paper UXNet"]["problem"]
    assert rows["paper UC3DUNet"]["parameters"] > 0 and rows["plan with uC"]["uc_stages"] == [0, 1]
    assert main(["cost", "-d", "901"]) == 0
    table = capsys.readouterr().out
    assert "| paper UXNet | UXNet | 16x40x40 | - | n/a | n/a | n/a | n/a |" in table
    assert "paper UXNet: cannot take patch 16x40x40: axis 1 has size 40" in table


def test_cost_of_a_plan_bad_input(preprocessed, tmp_path, capsys):
    out = tmp_path / "cost.json"
    assert main(["cost", "-d", "901", "-c", "2d", "--json", str(out)]) == 2
    err = capsys.readouterr().err
    assert "plans nnUNetPlans, configurations['2d']: patch_size [28, 28] has 2 axes" in err
    assert "plan it for a 3-D configuration (3d_fullres or 3d_lowres), not 2d" in err
    plans = _plans(preprocessed)
    plans["configurations"]["3d_fullres"]["patch_size"] = [16, 8, 8]  # in-plane 8 and 4 below the bottleneck
    (preprocessed / "nnUNetPlans_small.json").write_text(json.dumps({**plans, "plans_name": "nnUNetPlans_small"}))
    assert main(["cost", "-d", "901", "-p", "nnUNetPlans_small", "--json", str(out)]) == 2
    err = capsys.readouterr().err
    assert "plans nnUNetPlans_small, configurations['3d_fullres']: patch_size [16, 8, 8]" in err
    assert "plan a patch_size of at least 16 on axes (1, 2)" in err
    assert not out.exists()
    assert main(["cost", "-d", "901", "-c", "3d_lowres"]) == 2
    assert "no configuration '3d_lowres' (available: 2d, 3d_fullres)" in capsys.readouterr().err
    assert main(["cost", "-d", "901", "-p", "nnUNetPlansX"]) == 2
    assert "nnUNetPlansX.json: no such file" in capsys.readouterr().err
    assert main(["cost", "-d", "901", "--patch", "32", "32", "32"]) == 2
    assert "leave out --network/--patch" in capsys.readouterr().err
    assert main(["cost", "-d", "977"]) == 2  # no such dataset
    assert "dataset '977'" in capsys.readouterr().err


def test_uc_version_needs_nnunets_unet():
    architecture = json.loads((LEGACY / "plans.json").read_text())["configurations"]["3d_fullres"]["architecture"]
    other = {**architecture, "network_class_name": "my.package.MyNet"}
    with pytest.raises(UCPlanError, match="architecture.network_class_name is 'my.package.MyNet'"):
        with_uc_connections(other, PATCH)
    with pytest.raises(UCPlanError, match="not a uC version"):
        without_uc_connections(architecture)


def test_uc_plans_of_a_configuration_the_network_cannot_take_name_the_entry_and_write_nothing(preprocessed):
    write_uc_plans = uc_plans_by_hand().write_uc_plans
    with pytest.raises(UCPlanError, match=r"plans nnUNetPlans, configurations\['2d'\]: patch_size \[28, 28\] has 2 "
                                          r"axes.*plan it for a 3-D configuration"):
        write_uc_plans(preprocessed, "nnUNetPlans", "nnUNetPlans_UCUNet", ["2d"])
    plans = _plans(preprocessed)
    plans["configurations"]["3d_fullres"]["patch_size"] = [16, 8, 8]
    (preprocessed / "nnUNetPlans.json").write_text(json.dumps(plans))
    with pytest.raises(UCPlanError, match=r"configurations\['3d_fullres'\]: patch_size \[16, 8, 8\] .* plan a "
                                          r"patch_size of at least 16 on axes \(1, 2\)"):
        write_uc_plans(preprocessed, "nnUNetPlans", "nnUNetPlans_UCUNet", ["3d_fullres"])
    assert sorted(p.name for p in preprocessed.iterdir()) == ["dataset.json", "nnUNetPlans.json"]


def test_uc_plans_by_hand_keep_other_plans_of_the_same_name(preprocessed):
    write_uc_plans = uc_plans_by_hand().write_uc_plans
    path = write_uc_plans(preprocessed, "nnUNetPlans", "nnUNetPlans_UCUNet")
    assert write_uc_plans(preprocessed, "nnUNetPlans", "nnUNetPlans_UCUNet") == path  # same content: fine
    other = {**_plans(preprocessed, "nnUNetPlans_UCUNet"), "note": "edited by the user"}
    path.write_text(json.dumps(other))
    with pytest.raises(OverwriteRefused, match="exists with other content"):
        write_uc_plans(preprocessed, "nnUNetPlans", "nnUNetPlans_UCUNet")
    assert json.loads(path.read_text()) == other
    write_uc_plans(preprocessed, "nnUNetPlans", "nnUNetPlans_UCUNet", overwrite=True)
    assert "note" not in json.loads(path.read_text())
