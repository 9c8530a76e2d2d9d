"""Loading the originals' checkpoints: reference fixtures, other configurations, checkpoint formats, errors."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from helpers.paths import fixture_path
from nnunetv2_uc.architectures import UC3DUNet, UXNet
from nnunetv2_uc.architectures.registry import network_entry
from nnunetv2_uc.weights.original import CheckpointError, load_original
from helpers.original_semantics import OriginalUC3DUNet, OriginalUXNet, perturb_


def relative_error(ours: torch.Tensor, reference: torch.Tensor) -> float:
    return ((ours - reference).norm() / reference.norm()).item()


def load_fixture(name: str):
    data = np.load(fixture_path(name))
    config = json.loads(str(data["config"]))
    state = {k[3:]: torch.from_numpy(data[k]) for k in data.files if k.startswith("sd/")}
    return config, state, torch.from_numpy(data["input"]), torch.from_numpy(data["output"])


@pytest.mark.parametrize("name", ["uxnet_small.npz", "uc3dunet_small.npz"])
def test_reference_fixture_outputs_are_reproduced(name):
    config, state, x, expected = load_fixture(name)
    model = load_original(config["arch"], state, **config["original_kwargs"])
    assert not model.training
    with torch.no_grad():
        assert relative_error(model(x), expected) < 1e-5


@pytest.mark.parametrize("arch, cls, name", [
    ("uxnet", UXNet, "uxnet_default_state_dict_keys.txt"), ("uc3dunet", UC3DUNet, "uc3dunet_default_state_dict_keys.txt"),
])
def test_default_configuration_maps_onto_every_original_key_with_its_shape(arch, cls, name):
    expected = {}
    for line in fixture_path(name).read_text().splitlines():
        if line and not line.startswith("#"):
            key, shape = line.split(" ", 1)
            expected[key] = tuple(json.loads(shape.replace("(", "[").replace(",)", "]").replace(")", "]")))
    model = cls(1, 5)
    params = dict(model.named_parameters())
    mapped = {network_entry(arch).original.original_key(n): tuple(p.shape) for n, p in params.items()}
    assert mapped == expected


# other configurations, batch sizes, channel counts and odd sizes, against the original-semantics re-statement
@pytest.mark.parametrize("kwargs, shape", [
    (dict(in_chans=2, out_chans=4, depths=[1, 1, 2, 1], feat_size=[48, 16, 32, 32], hidden_size=24), (2, 2, 32, 48, 64)),
    (dict(in_chans=1, out_chans=3, depths=[2, 1, 1, 1], feat_size=[48, 24, 24, 48], hidden_size=48), (1, 1, 32, 32, 48)),
])
def test_uxnet_matches_original_semantics_on_other_configurations(kwargs, shape):
    torch.manual_seed(1)
    reference = perturb_(OriginalUXNet(**kwargs), seed=1)
    ours = load_original("uxnet", reference.state_dict(), **kwargs)
    x = torch.randn(shape)
    with torch.no_grad():
        # fp32 sums in another order (channels-last kernels, thread count): ~1e-5 apart; a wrong layer is ~1e-1
        assert relative_error(ours(x), reference(x)) < 3e-5


@pytest.mark.parametrize("kwargs, shape", [
    (dict(in_channels=2, out_channels=3, features=[4, 8, 16, 32, 64, 10]), (2, 2, 33, 40, 47)),
    (dict(in_channels=1, out_channels=2, features=[4, 8, 16, 32, 64, 8]), (1, 1, 48, 32, 17)),
])
def test_uc3dunet_matches_original_semantics_on_other_configurations(kwargs, shape):
    torch.manual_seed(2)
    reference = perturb_(OriginalUC3DUNet(**kwargs), seed=2)
    ours = load_original("uc3dunet", reference.state_dict(), **kwargs)
    assert ours.uc_slice_axis == "last"
    x = torch.randn(shape)
    with torch.no_grad():
        assert relative_error(ours(x), reference(x)) < 1e-5


def test_widths_and_channels_are_read_off_the_checkpoint_when_not_given():
    reference = perturb_(OriginalUC3DUNet(in_channels=2, out_channels=3, features=[8, 16, 32, 64, 128, 10]))
    ours = load_original("uc3dunet", reference.state_dict())
    assert (ours.input_channels, ours.num_classes) == (2, 3)


@pytest.mark.parametrize("wrapper", ["state_dict", "model_state_dict", "network_weights", None])
def test_checkpoint_files_with_wrappers_and_ddp_prefix(tmp_path, wrapper):
    config, state, x, expected = load_fixture("uc3dunet_small.npz")
    state = {f"module.{k}": v for k, v in state.items()}
    payload = {wrapper: state, "epoch": 7} if wrapper else state
    torch.save(payload, tmp_path / "ckpt.pth")
    model = load_original("uc3dunet", tmp_path / "ckpt.pth", **config["original_kwargs"])
    with torch.no_grad():
        assert relative_error(model(x), expected) < 1e-5


def test_missing_and_unexpected_keys_are_all_listed():
    config, state, _, _ = load_fixture("uxnet_small.npz")
    del state["encoder1.layer.conv1.conv.weight"], state["uxnet_3d.norm2.bias"]
    state["decoder9.bogus.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointError) as error:
        load_original("uxnet", state, **config["original_kwargs"])
    message = str(error.value)
    for fragment in ("missing encoder1.layer.conv1.conv.weight", "missing uxnet_3d.norm2.bias",
                     "unexpected key decoder9.bogus.weight", "3 problem(s)"):
        assert fragment in message


def test_unknown_original_arguments_are_refused():
    _, state, _, _ = load_fixture("uxnet_small.npz")
    with pytest.raises(CheckpointError, match="unknown argument 'kernel'"):
        load_original("uxnet", state, kernel=5)


def test_import_weights_cli_writes_a_file_nnunet_can_fine_tune_from(tmp_path):
    from nnunetv2.run.load_pretrained_weights import load_pretrained_weights

    config, state, _, _ = load_fixture("uxnet_small.npz")
    torch.save({"state_dict": state}, tmp_path / "original.pth")
    out = tmp_path / "weights.pth"
    cmd = [sys.executable, "-m", "nnunetv2_uc", "import-weights", "--network", "uxnet", "--checkpoint",
           str(tmp_path / "original.pth"), "--original-kwargs", json.dumps(config["original_kwargs"]), "-o", str(out)]
    result = subprocess.run(cmd, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    kw = config["original_kwargs"]
    original = load_original("uxnet", state, **kw)
    for classes in (3, 7):  # same label set, and another one
        fresh = UXNet(1, classes, feature_sizes=kw["feat_size"], depths=kw["depths"], hidden_size=kw["hidden_size"])
        load_pretrained_weights(fresh, str(out))
        loaded, source = fresh.state_dict(), original.state_dict()
        # nnU-Net re-initialises '.seg_layers.' (the head) when fine-tuning; everything else is the original's
        transferred = [k for k in source if ".seg_layers." not in k]
        assert len(transferred) == len(source) - 2
        assert all(torch.equal(loaded[k], source[k]) for k in transferred)
    # refuses to overwrite without --overwrite
    again = subprocess.run(cmd, capture_output=True, text=True)
    assert again.returncode == 3 and "--overwrite" in again.stderr


def test_import_weights_cli_reports_a_mismatching_checkpoint(tmp_path):
    _, state, _, _ = load_fixture("uc3dunet_small.npz")
    torch.save(state, tmp_path / "uc.pth")
    result = subprocess.run([sys.executable, "-m", "nnunetv2_uc", "import-weights", "--network", "uxnet", "--checkpoint",
                             str(tmp_path / "uc.pth"), "-o", str(tmp_path / "x.pth")], capture_output=True, text=True)
    assert result.returncode == 2
    assert "does not match uxnet" in result.stderr and "unexpected key conv_0.conv_0.conv.weight" in result.stderr
    assert not (tmp_path / "x.pth").exists()
