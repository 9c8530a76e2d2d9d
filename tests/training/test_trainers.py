"""Unit tests of the plugin trainers: adaptation of nnU-Net's plans, truthful plans, bad input, DS, gradients,
compile."""
from __future__ import annotations

import copy
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from nnunetv2.training.loss.compound_losses import DC_and_CE_loss
from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

import nnunetv2_uc
from nnunetv2_uc.architectures import UC3DUNet, UXNet
from nnunetv2_uc.registration import Record, read_record
from nnunetv2_uc.trainers import (
    TRAINER_NAMES, nnUNetTrainerUC, nnUNetTrainerUC_SGD, nnUNetTrainerUC_checkpointed, nnUNetTrainerUC_tiny,
    nnUNetTrainerUXNet, nnUNetTrainerUXNet_checkpointed, nnUNetTrainerUXNet_tiny,
)
import json

from nnunetv2_uc.planning.memory import GIB
from helpers.e2e_data import DATASET_JSON, tiny_plans

TRAINERS = [nnUNetTrainerUC, nnUNetTrainerUXNet]


@pytest.fixture
def nnunet_dirs(tmp_path, monkeypatch) -> Path:
    """nnU-Net folders with the raw dataset.json and the fingerprint of tiny_plans' dataset, so the trainers can
    read the planner's memory reference (nnU-Net's planner reads both)."""
    for key in ("raw", "preprocessed", "results"):
        (tmp_path / key).mkdir()
        monkeypatch.setenv(f"nnUNet_{key}", str(tmp_path / key))
    raw = tmp_path / "raw" / "Dataset901_Aniso"
    raw.mkdir()
    (raw / "dataset.json").write_text(json.dumps({**DATASET_JSON, "dataset": {}}))
    fingerprint = tmp_path / "preprocessed" / "Dataset901_Aniso" / "dataset_fingerprint.json"
    fingerprint.parent.mkdir()
    fingerprint.write_text(json.dumps({"spacings": [[3.0, 1.0, 1.0]], "shapes_after_crop": [[12, 28, 28]]}))
    return tmp_path


def make_trainer(cls, plans=None, configuration="3d_fullres", fold=0, dataset_json=None):
    plans = copy.deepcopy(plans or tiny_plans())
    plans["continue_training"] = False
    return cls(plans=plans, configuration=configuration, fold=fold,
               dataset_json=dataset_json or DATASET_JSON, device=torch.device("cpu"))


def results_files(root: Path) -> list[Path]:
    return [p for p in (root / "results").rglob("*")]


# ---------------------------------------------------------------- trainers on plans

@pytest.mark.parametrize("cls", [nnUNetTrainerUC_tiny, nnUNetTrainerUXNet])
def test_trainer_records_itself_in_the_plans_it_saves(cls, nnunet_dirs, monkeypatch):
    """on_train_start hands nnU-Net plans carrying the record (package version, trainer, network) to save."""
    saved = {}
    monkeypatch.setattr(nnUNetTrainer, "on_train_start", lambda self: saved.update(self.plans_manager.plans))
    make_trainer(cls).on_train_start()
    assert read_record(saved) == Record(nnunetv2_uc.__version__, cls.__name__, cls.__module__,
                                        cls.registry_entry.name, cls.registry_entry.import_path)
    assert saved["configurations"]["3d_fullres"]["architecture"]["network_class_name"] == cls.registry_entry.import_path


@pytest.mark.parametrize("cls", TRAINERS)
def test_trainer_adapts_the_patch_and_names_the_trained_network_in_the_plans(cls, nnunet_dirs):
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

    trainer = make_trainer(cls)
    assert trainer.configuration_manager.patch_size == [16, 32, 32]
    saved = trainer.plans_manager.plans["configurations"]["3d_fullres"]  # what on_train_start writes to plans.json
    assert saved["patch_size"] == [16, 32, 32] and saved["batch_size"] == 2
    entry = cls.registry_entry
    assert saved["architecture"] == {"network_class_name": entry.import_path, "arch_kwargs": entry.default_kwargs(),
                                     "_kw_requires_import": []}
    assert entry.legacy_kwargs_key not in saved
    # nnU-Net's own builder makes the trained network from the plans, and the trainer's weights load strictly
    arch = saved["architecture"]
    rebuilt = get_network_from_plans(arch["network_class_name"], arch["arch_kwargs"], arch["_kw_requires_import"],
                                     1, 3, deep_supervision=False)
    trained = trainer.build_network_architecture(trainer.plans_manager, trainer.configuration_manager, 1, 3,
                                                 trainer.enable_deep_supervision)  # what initialize() builds
    assert type(rebuilt) is type(trained) is entry.network_class
    rebuilt.load_state_dict(trained.state_dict(), strict=True)
    assert trainer.enable_deep_supervision is False
    assert trainer._get_deep_supervision_scales() is None
    adaptation = trainer.prepared_plans.adaptation
    assert adaptation.planned_patch == (12, 28, 28) and adaptation.budget_source.startswith("the planner's target")
    log = Path(trainer.log_file).read_text()
    assert "[12, 28, 28] -> [16, 32, 32]" in log and "estimated training memory" in log
    assert f"nnunetv2_uc plan -d 901 --network {entry.name}" in log


def test_uc_slice_axis_and_widths_come_from_the_plans(nnunet_dirs):
    plans = tiny_plans()
    plans["configurations"]["3d_fullres"]["uc3dunet_kwargs"] = {"slice_axis": "last", "uc_levels": [0, 1]}
    trainer = make_trainer(nnUNetTrainerUC, plans)
    cm = trainer.configuration_manager
    net = nnUNetTrainerUC.build_network_architecture(trainer.plans_manager, cm, 1, 3, enable_deep_supervision=True)
    assert isinstance(net, UC3DUNet) and net.uc_slice_axis == "last" and net.uc_stages == (0, 1)
    # the static build used by nnUNetv2_predict sees exactly what training used: strict load works
    net2 = nnUNetTrainerUC.build_network_architecture(PlansManager(trainer.plans_manager.plans), cm, 1, 3, False)
    net2.load_state_dict(net.state_dict(), strict=True)


def test_shrinks_within_the_gpu_target(nnunet_dirs):
    plans = tiny_plans(patch=(96, 96, 96))
    cfg = plans["configurations"]["3d_fullres"]
    cfg["median_image_size_in_voxels"] = [96.0, 96.0, 96.0]
    cfg["uc_gpu_memory_target_gb"] = 2
    trainer = make_trainer(nnUNetTrainerUXNet, plans)
    adaptation = trainer.prepared_plans.adaptation
    assert adaptation.patch != (96, 96, 96) and all(s % 16 == 0 for s in adaptation.patch)
    assert adaptation.estimated_bytes <= adaptation.budget_bytes
    assert "shrank the patch" in Path(trainer.log_file).read_text()


def test_fixed_patch_is_used_as_given(nnunet_dirs):
    plans = tiny_plans()
    plans["configurations"]["paper"] = {"inherits_from": "3d_fullres", "patch_size": [32, 48, 64],
                                        "batch_size": 1, "uc_fixed_patch": True}
    trainer = make_trainer(nnUNetTrainerUXNet, plans, configuration="paper")
    assert trainer.configuration_manager.patch_size == [32, 48, 64]
    assert trainer.configuration_manager.batch_size == 1


@pytest.mark.parametrize("cls", TRAINERS)
def test_tiny_and_sgd_variants(cls, nnunet_dirs):
    tiny = make_trainer(nnUNetTrainerUC_tiny if cls is nnUNetTrainerUC else nnUNetTrainerUXNet_tiny)
    assert (tiny.num_epochs, tiny.num_iterations_per_epoch, tiny.num_val_iterations_per_epoch) == (2, 4, 2)
    assert tiny.initial_lr == 5e-4
    sgd = make_trainer(nnUNetTrainerUC_SGD)
    assert sgd.initial_lr == 1e-2
    sgd.network = torch.nn.Linear(2, 2)
    optimizer, scheduler = sgd.configure_optimizers()
    assert isinstance(optimizer, torch.optim.SGD) and optimizer.defaults["nesterov"]
    tiny.network = torch.nn.Linear(2, 2)
    optimizer, scheduler = tiny.configure_optimizers()
    assert isinstance(optimizer, torch.optim.AdamW) and optimizer.defaults["eps"] == 1e-4
    assert type(scheduler).__name__ == "PolyLRScheduler"


@pytest.mark.parametrize("plain, checkpointed", [
    (nnUNetTrainerUC, nnUNetTrainerUC_checkpointed), (nnUNetTrainerUXNet, nnUNetTrainerUXNet_checkpointed),
])
def test_checkpointed_variant_needs_less_shrinking_and_persists_the_option(plain, checkpointed, nnunet_dirs):
    plans = tiny_plans(patch=(96, 96, 96))
    cfg = plans["configurations"]["3d_fullres"]
    cfg["median_image_size_in_voxels"] = [96.0, 96.0, 96.0]
    cfg["uc_gpu_memory_target_gb"] = 2
    decisions = {cls: make_trainer(cls, plans) for cls in (plain, checkpointed)}
    small, large = (decisions[cls].prepared_plans.adaptation for cls in (plain, checkpointed))
    assert small.patch != (96, 96, 96)  # the plain network had to shrink the planned patch ...
    assert np.prod(large.patch) > np.prod(small.patch)  # ... the checkpointed one keeps more of it
    assert large.estimated_bytes <= large.budget_bytes
    trainer = decisions[checkpointed]
    saved = trainer.plans_manager.plans["configurations"]["3d_fullres"]["architecture"]["arch_kwargs"]
    assert saved["activation_checkpointing"] is True
    net = checkpointed.build_network_architecture(trainer.plans_manager, trainer.configuration_manager, 1, 3, False)
    assert net.activation_checkpointing is True  # nnUNetv2_predict builds it the same way (inactive in eval)


def test_trainer_names_have_no_double_underscore():
    assert all("__" not in name for name in TRAINER_NAMES)


# ---------------------------------------------------------------- bad input: clear error, nothing written

def _plans_without_3d():
    plans = tiny_plans()
    plans["configurations"] = {"2d": {**plans["configurations"]["3d_fullres"], "patch_size": [28, 28]}}
    return plans


def _plans_tiny_budget():
    plans = tiny_plans()
    plans["configurations"]["3d_fullres"]["uc_memory_budget_gib"] = 0.01
    return plans


@pytest.mark.parametrize("cls", TRAINERS)
@pytest.mark.parametrize("kwargs, message", [
    ({"plans": _plans_without_3d()}, r"no configuration '3d_fullres' \(available: 2d\).*3-D configuration"),
    ({"plans": _plans_without_3d(), "configuration": "2d"}, r"is 2-D.*Use 3d_fullres"),
    ({"dataset_json": {**DATASET_JSON, "numTraining": 3}}, r"3 training case\(s\), too few.*fold `all`"),
    ({"plans": _plans_tiny_budget()}, r"smallest valid patch.*budget.*-gpu_memory_target"),
])
def test_bad_input_is_a_clear_error_and_writes_nothing(cls, kwargs, message, nnunet_dirs):
    with pytest.raises(ValueError, match=message):
        make_trainer(cls, **kwargs)
    assert results_files(nnunet_dirs) == []


def test_too_few_cases_is_fine_with_fold_all_or_own_split(nnunet_dirs):
    few = {**DATASET_JSON, "numTraining": 3}
    assert make_trainer(nnUNetTrainerUC, fold="all", dataset_json=few).fold == "all"
    split_dir = nnunet_dirs / "preprocessed" / "Dataset901_Aniso"
    (split_dir / "splits_final.json").write_text('[{"train": ["a", "b"], "val": ["c"]}]')
    assert make_trainer(nnUNetTrainerUC, fold=0, dataset_json=few).fold == 0


# ---------------------------------------------------------------- networks inside the trainer contract

def _build(cls, patch=(16, 32, 32)):
    plans = tiny_plans()
    cfg = plans["configurations"]["3d_fullres"]
    cfg["patch_size"] = list(patch)
    cfg[cls.registry_entry.legacy_kwargs_key] = cls.registry_entry.default_kwargs()
    pm = PlansManager(plans)
    return cls.build_network_architecture(pm, pm.get_configuration("3d_fullres"), 1, 3, True)


@pytest.mark.parametrize("cls, network_class", [(nnUNetTrainerUC, UC3DUNet), (nnUNetTrainerUXNet, UXNet)])
def test_every_parameter_gets_a_gradient(cls, network_class):
    """nnU-Net's DDP runs with find_unused_parameters=False: one training step must reach every parameter."""
    torch.manual_seed(0)
    net = _build(cls)
    assert type(net) is network_class and not hasattr(net, "initialize")
    assert not hasattr(net, "decoder")  # nothing for nnU-Net's DS toggle to touch
    x = torch.randn(2, 1, 16, 32, 32)
    target = torch.randint(0, 3, (2, 1, 16, 32, 32))
    loss_fn = DC_and_CE_loss({"batch_dice": False, "smooth": 1e-5, "do_bg": False, "ddp": False}, {},
                             weight_ce=1, weight_dice=1, ignore_label=None, dice_class=MemoryEfficientSoftDiceLoss)
    out = net(x)
    assert isinstance(out, torch.Tensor) and out.shape == (2, 3, 16, 32, 32)
    loss_fn(out, target).backward()
    missing = [name for name, p in net.named_parameters() if p.grad is None]
    assert missing == []
    assert all(torch.isfinite(p.grad).all() for p in net.parameters())
    nonzero = sum(int(p.grad.abs().sum() > 0) for p in net.parameters())
    assert nonzero >= 0.9 * len(list(net.parameters()))


@pytest.mark.parametrize("cls", TRAINERS)
def test_torch_compile_fullgraph_matches_eager_on_cpu(cls):
    """No graph breaks (fullgraph=True) and the compiled network equals eager; nnU-Net compiles on CUDA.

    The ``aot_eager`` backend traces through dynamo and AOTAutograd like inductor does, without inductor's
    C++ code generation (minutes on 2 CPU cores); set UC_TEST_INDUCTOR=1 to use inductor.
    """
    torch.manual_seed(0)
    net = _build(cls).eval()
    backend = "inductor" if os.environ.get("UC_TEST_INDUCTOR") == "1" else "aot_eager"
    compiled = torch.compile(net, fullgraph=True, backend=backend)
    x = torch.randn(1, 1, 16, 32, 32)
    with torch.no_grad():
        eager = net(x)
        out = compiled(x)
    torch.testing.assert_close(out, eager, rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------- plans that name the network (nnunetv2_uc plan)

def _planned_plans(architecture: dict, patch=(16, 32, 32), batch_size=3) -> dict:
    plans = tiny_plans(patch=patch, batch_size=batch_size)
    plans["configurations"]["3d_fullres"]["architecture"] = architecture
    return plans


def test_plans_that_name_the_network_are_trained_as_planned(nnunet_dirs):
    entry = nnUNetTrainerUC.registry_entry
    architecture = entry.plans_architecture(features=[8, 16, 32, 64, 128, 8])
    trainer = make_trainer(nnUNetTrainerUC, _planned_plans(architecture))
    saved = trainer.plans_manager.plans["configurations"]["3d_fullres"]
    assert saved["architecture"] == architecture
    assert (saved["patch_size"], saved["batch_size"]) == ([16, 32, 32], 3)
    assert trainer.prepared_plans.adaptation is None
    assert "as the plans give them (planned by nnunetv2_uc plan)" in Path(trainer.log_file).read_text()


def test_plans_for_another_paper_network_name_the_right_trainer(nnunet_dirs):
    plans = _planned_plans(nnUNetTrainerUXNet.registry_entry.plans_architecture())
    with pytest.raises(ValueError, match=r"name .*UXNet in their architecture block; train them with -tr "
                                         r"nnUNetTrainerUXNet"):
        make_trainer(nnUNetTrainerUC, plans)
    assert results_files(nnunet_dirs) == []


def test_uc_on_nnunets_network_trains_with_deep_supervision_under_the_adamw_trainer(nnunet_dirs):
    from nnunetv2_uc.architectures.uc_unet import UCPlainConvUNet
    from nnunetv2_uc.planning.uc_plans import with_uc_connections

    plain = tiny_plans()["configurations"]["3d_fullres"]["architecture"]
    plans = _planned_plans(with_uc_connections(plain, (16, 32, 32)), batch_size=2)
    trainer = make_trainer(nnUNetTrainerUC, plans)
    assert trainer.enable_deep_supervision is True
    trainer.network = trainer.build_network_architecture(trainer.plans_manager, trainer.configuration_manager, 1, 3,
                                                         True)  # what initialize() builds
    assert isinstance(trainer.network, UCPlainConvUNet) and trainer.network.decoder.deep_supervision is True
    assert trainer._get_deep_supervision_scales() == [[1.0, 1.0, 1.0], [1.0, 0.5, 0.5]]
    trainer.set_deep_supervision_enabled(False)  # nnU-Net's validation switch reaches the decoder
    assert trainer.network.decoder.deep_supervision is False
    outputs = nnUNetTrainerUC.build_network_architecture(trainer.plans_manager, trainer.configuration_manager, 1, 3,
                                                         True)(torch.randn(1, 1, 16, 32, 32))
    assert [tuple(o.shape[2:]) for o in outputs] == [(16, 32, 32), (16, 16, 16)]


def test_checkpointed_variant_on_uc_on_nnunet_plans_is_refused(nnunet_dirs):
    from nnunetv2_uc.planning.uc_plans import with_uc_connections

    plain = tiny_plans()["configurations"]["3d_fullres"]["architecture"]
    plans = _planned_plans(with_uc_connections(plain, (16, 32, 32)), batch_size=2)
    with pytest.raises(ValueError, match=r"sets \['activation_checkpointing'\].*has no such option"):
        make_trainer(nnUNetTrainerUC_checkpointed, plans)
