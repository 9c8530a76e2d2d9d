"""Load the authors' 3D UX-Net / uC 3DU-Net checkpoints into our networks, and write nnU-Net pretrained weights.

Python API: ``load_original(network, state_dict_or_path, **original_kwargs)`` returns our network, configured to
reproduce the original exactly (uC: the original's slice axis), in eval mode. ``original_kwargs`` use the
ORIGINAL constructors' names (UX-Net: in_chans, out_chans, depths, feat_size, hidden_size, drop_path_rate,
layer_scale_init_value, spatial_dims, ...; uC: in_channels, out_channels, features, ...). Channel counts and
widths not given are read off the checkpoint. How each network's keys map is defined next to the network
(``ORIGINAL_CHECKPOINT`` in its file); this module reads checkpoints and applies that map.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from nnunetv2_uc.architectures.original_checkpoints import CheckpointError
from nnunetv2_uc.architectures.registry import network_entry, original_networks
from nnunetv2_uc.errors import OverwriteRefused
from nnunetv2_uc.files import atomic_torch_save

CHECKPOINT_WRAPPER_KEYS = ("state_dict", "model_state_dict", "network_weights", "model", "net")
WRAPPER_PREFIXES = ("module.", "_orig_mod.")

__all__ = ["CheckpointError", "read_state_dict", "convert_state_dict", "load_original", "write_nnunet_weights"]


def read_state_dict(state_dict_or_path: Any, weights_only: bool = True) -> dict:
    """A flat {key: tensor} from a state dict, a wrapping checkpoint dict, or a file path.

    Unwraps 'state_dict' / 'model_state_dict' / 'network_weights' / 'model' / 'net' and strips DDP 'module.'
    and torch.compile '_orig_mod.' prefixes.
    """
    source = state_dict_or_path
    if isinstance(source, (str, Path)):
        source = _load_file(Path(source), weights_only)
    if not isinstance(source, Mapping):
        raise CheckpointError(f"expected a state dict (a mapping of names to tensors), got {type(source).__name__}")
    for wrapper in CHECKPOINT_WRAPPER_KEYS:
        if wrapper in source and isinstance(source[wrapper], Mapping):
            source = source[wrapper]
            break
    state = {_strip_prefixes(key): value for key, value in source.items() if isinstance(value, torch.Tensor)}
    if not state:
        raise CheckpointError("the checkpoint holds no tensors")
    return state


def _load_file(path: Path, weights_only: bool) -> Any:
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=weights_only)
    except Exception as error:  # torch raises several unpickling error types
        hint = (" The file holds pickled Python objects besides tensors; if you trust its origin, load it with "
                "weights_only=False (CLI: --trust-pickle).") if weights_only else ""
        raise CheckpointError(f"cannot read checkpoint {path}: {error}.{hint}") from error


def _strip_prefixes(key: str) -> str:
    for prefix in WRAPPER_PREFIXES:
        if key.startswith(prefix):
            key = key[len(prefix):]
    return key


def convert_state_dict(network: str, model: nn.Module, original_state: dict) -> dict:
    """Our state dict (keys of ``model.state_dict()``) filled from the original keys of registry network ``network``;
    raises on any mismatch, listing every problem."""
    original = network_entry(network).original
    aliases = _alias_table(model)
    canonical = {aliases.get(name, name): tensor for name, tensor in model.state_dict().items()}
    found, problems = {}, []
    for name, tensor in canonical.items():
        source = original.original_key(name)
        if source not in original_state:
            problems.append(f"missing {source} (for {name})")
        elif tuple(original_state[source].shape) != tuple(tensor.shape):
            problems.append(f"shape of {source} is {tuple(original_state[source].shape)}, expected {tuple(tensor.shape)}")
        else:
            found[name] = original_state[source].to(tensor.dtype)
    used = {original.original_key(name) for name in canonical}
    problems += [f"unexpected key {key}" for key in sorted(set(original_state) - used)]
    if problems:
        raise CheckpointError(f"checkpoint does not match {network} ({original.source}; {len(problems)} problem(s)):\n  "
                              + "\n  ".join(problems))
    return {name: found[aliases.get(name, name)] for name in model.state_dict()}


def _alias_table(model: nn.Module) -> dict:
    """state-dict name -> parameter name: dynamic-network-architectures registers each conv twice
    (``conv`` and ``all_modules.0``), so one parameter can appear under two state-dict keys."""
    canonical = {id(p): n for n, p in model.named_parameters()}
    return {n: canonical[id(t)] for n, t in model.state_dict(keep_vars=True).items() if id(t) in canonical}


def build_from_original_kwargs(network: str, state: dict, **original_kwargs) -> nn.Module:
    """Our network for the original constructor arguments (missing widths read off ``state``)."""
    if network not in original_networks():
        raise CheckpointError(f"network must be one of {', '.join(original_networks())}, got {network!r}")
    entry = network_entry(network)
    return entry.network_class(**entry.original.our_kwargs(original_kwargs, state))


def load_original(network: str, state_dict_or_path: Any, weights_only: bool = True, **original_kwargs) -> nn.Module:
    """Our network with the original checkpoint's weights, reproducing the original's outputs, in eval mode."""
    state = read_state_dict(state_dict_or_path, weights_only=weights_only)
    model = build_from_original_kwargs(network, state, **original_kwargs)
    model.load_state_dict(convert_state_dict(network, model, state))
    return model.eval()


def write_nnunet_weights(network: str, checkpoint: Path, output: Path, original_kwargs: dict, trust_pickle: bool = False,
                         overwrite: bool = False) -> nn.Module:
    """Write ``{"network_weights": ...}`` (what ``nnUNetv2_train -pretrained_weights`` loads) for an original
    checkpoint; returns the loaded network. Refuses to replace ``output`` without ``overwrite``."""
    if output.exists() and not overwrite:
        raise OverwriteRefused(f"{output} exists; pass --overwrite to replace it")
    model = load_original(network, checkpoint, weights_only=not trust_pickle, **original_kwargs)
    payload = {
        "network_weights": model.state_dict(),
        "nnunetv2_uc": {"arch": network, "source": str(checkpoint), "original_kwargs": original_kwargs,
                        "network_kwargs": _network_kwargs(model)},
    }
    atomic_torch_save(payload, output)
    return model


def _network_kwargs(model: nn.Module) -> dict:
    keys = ("input_channels", "num_classes", "uc_slice_axis", "uc_stages")
    return {k: getattr(model, k) for k in keys if hasattr(model, k)}
