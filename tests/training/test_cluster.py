"""trainers/cluster.py without training: the atomic writer, the resume order, the settings (seconds).

The behaviour under real kills and signals is tests/training/test_cluster_faults.py (slow)."""
from __future__ import annotations

import os

import pytest
import torch

from nnunetv2_uc.demo.schedule import STOPPED_EXIT_CODE
from nnunetv2_uc.trainers import TRAINER_NAMES
from nnunetv2_uc.trainers import cluster
from nnunetv2_uc.trainers.demo_trainers import nnUNetTrainerUC_demo, nnUNetTrainerUXNet_demo


def test_every_plugin_trainer_has_the_cluster_behaviour():
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    import nnunetv2_uc.trainers as trainers

    for cls in [getattr(trainers, name) for name in TRAINER_NAMES] + [nnUNetTrainerUC_demo, nnUNetTrainerUXNet_demo]:
        assert issubclass(cls, cluster.ClusterSurvivalMixin), cls
        mro = cls.__mro__
        assert mro.index(cluster.ClusterSurvivalMixin) < mro.index(nnUNetTrainer)
        for method in ("save_checkpoint", "load_checkpoint", "run_training", "train_step", "validation_step"):
            assert getattr(cls, method) is getattr(cluster.ClusterSurvivalMixin, method), (cls, method)


def test_exit_code_is_distinct_from_the_demo_and_from_signal_deaths():
    assert cluster.STOPPED_BY_SIGNAL_EXIT_CODE not in (0, 1, 2, STOPPED_EXIT_CODE)
    assert cluster.STOPPED_BY_SIGNAL_EXIT_CODE < 128


def test_commit_file_replaces_atomically_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "checkpoint_latest.pth"
    torch.save({"current_epoch": 1}, target)
    temporary = cluster.temporary_name(str(target))
    assert os.path.dirname(temporary) == str(tmp_path) and os.path.basename(temporary).startswith(".")
    torch.save({"current_epoch": 2}, temporary)
    cluster.commit_file(temporary, str(target))
    assert torch.load(target)["current_epoch"] == 2 and sorted(os.listdir(tmp_path)) == [target.name]


def test_stale_temporaries_are_removed_and_named(tmp_path):
    (tmp_path / ".checkpoint_latest.pth.tmp-123").write_bytes(b"half")
    (tmp_path / "checkpoint_best.pth").write_bytes(b"keep")
    assert cluster.remove_stale_temporaries(str(tmp_path)) == [".checkpoint_latest.pth.tmp-123"]
    assert sorted(os.listdir(tmp_path)) == ["checkpoint_best.pth"]


def test_resume_falls_back_in_nnunets_order():
    assert cluster.fallbacks("/r/fold_0/checkpoint_final.pth") == ["/r/fold_0/checkpoint_latest.pth",
                                                                  "/r/fold_0/checkpoint_best.pth"]
    assert cluster.fallbacks("/r/fold_0/checkpoint_latest.pth") == ["/r/fold_0/checkpoint_best.pth"]
    assert cluster.fallbacks("/r/fold_0/checkpoint_best.pth") == []
    assert cluster.fallbacks("/elsewhere/model.pth") == []


def test_read_checkpoint_rejects_truncated_and_incomplete_files(tmp_path):
    good = {key: 0 for key in cluster.REQUIRED_KEYS}
    path = tmp_path / "c.pth"
    torch.save(good, path)
    assert cluster.read_checkpoint(str(path), torch.device("cpu")) == good
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(Exception):
        cluster.read_checkpoint(str(path), torch.device("cpu"))
    torch.save({"network_weights": {}}, path)
    with pytest.raises(ValueError, match="missing"):
        cluster.read_checkpoint(str(path), torch.device("cpu"))


@pytest.mark.parametrize("raw, minutes", [(None, 30.0), ("", 30.0), ("0.05", 0.05), ("0", 0.0)])
def test_checkpoint_minutes_setting(monkeypatch, raw, minutes):
    if raw is None:
        monkeypatch.delenv(cluster.CHECKPOINT_MINUTES_ENV, raising=False)
    else:
        monkeypatch.setenv(cluster.CHECKPOINT_MINUTES_ENV, raw)
    assert cluster.checkpoint_minutes() == minutes


def test_checkpoint_minutes_rejects_garbage(monkeypatch):
    monkeypatch.setenv(cluster.CHECKPOINT_MINUTES_ENV, "half an hour")
    with pytest.raises(ValueError, match=cluster.CHECKPOINT_MINUTES_ENV):
        cluster.checkpoint_minutes()
