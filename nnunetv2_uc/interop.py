"""Convert an original 3D UX-Net / uC 3DU-Net checkpoint into weights nnUNetv2_train -pretrained_weights accepts.

Python API: ``load_original(arch, state_dict_or_path, **original_kwargs)`` returns our network, configured to
reproduce the original exactly (uC: the original's slice axis), in eval mode. ``original_kwargs`` use the
ORIGINAL constructors' names (UX-Net: in_chans, out_chans, depths, feat_size, hidden_size, drop_path_rate,
layer_scale_init_value, spatial_dims, ...; uC: in_channels, out_channels, features, ...). Channel counts and
widths not given are read off the checkpoint.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any, Callable, Mapping

ARCHITECTURES = ("uxnet", "uc3dunet")
CHECKPOINT_WRAPPER_KEYS = ("state_dict", "model_state_dict", "network_weights", "model", "net")
WRAPPER_PREFIXES = ("module.", "_orig_mod.")


class CheckpointError(ValueError):
    """A checkpoint that does not fit the requested architecture; the message lists every problem."""


# ----------------------------------------------------------------------------------------------------------
# key mapping: our parameter name -> the original state-dict key
# ----------------------------------------------------------------------------------------------------------
Rule = tuple[str, Callable[[re.Match], str]]

_RESBLOCK = {"conv1.conv": "conv1.conv", "conv2.conv": "conv2.conv", "skip.0.conv": "conv3.conv"}
_MONAI_ADN = {"conv": "conv", "norm": "adn.N"}


def _uc_double_conv(index: str, part: str) -> str:
    # original 2-D DoubleConv is one Sequential: conv 0, GN 1, ReLU 2, conv 3, GN 4, ReLU 5
    return str(3 * int(index) + (0 if part == "conv" else 1))


UXNET_RULES: list[Rule] = [
    (r"encoder\.downsample\.(.*)", lambda m: f"uxnet_3d.downsample_layers.{m[1]}"),
    (r"encoder\.stages\.(.*)", lambda m: f"uxnet_3d.stages.{m[1]}"),
    (r"encoder\.norms\.(\d+)\.(.*)", lambda m: f"uxnet_3d.norm{m[1]}.{m[2]}"),
    (r"skip_blocks\.(\d+)\.(conv1\.conv|conv2\.conv|skip\.0\.conv)\.(.*)",
     lambda m: f"encoder{int(m[1]) + 1}.layer.{_RESBLOCK[m[2]]}.{m[3]}"),
    (r"bottleneck\.(conv1\.conv|conv2\.conv|skip\.0\.conv)\.(.*)", lambda m: f"encoder5.layer.{_RESBLOCK[m[1]]}.{m[2]}"),
    (r"up_blocks\.(\d+)\.upsample\.(.*)", lambda m: f"decoder{5 - int(m[1])}.transp_conv.conv.{m[2]}"),
    (r"up_blocks\.(\d+)\.block\.(conv1\.conv|conv2\.conv|skip\.0\.conv)\.(.*)",
     lambda m: f"decoder{5 - int(m[1])}.conv_block.{_RESBLOCK[m[2]]}.{m[3]}"),
    (r"head_block\.(conv1\.conv|conv2\.conv)\.(.*)", lambda m: f"decoder1.layer.{_RESBLOCK[m[1]]}.{m[2]}"),
    (r"head\.seg_layers\.(.*)", lambda m: f"out.conv.conv.{m[1]}"),
]

UC3DUNET_RULES: list[Rule] = [
    (r"stem\.convs\.(\d)\.(conv|norm)\.(.*)", lambda m: f"conv_0.conv_{m[1]}.{_MONAI_ADN[m[2]]}.{m[3]}"),
    (r"down\.(\d)\.1\.convs\.(\d)\.(conv|norm)\.(.*)",
     lambda m: f"down_{int(m[1]) + 1}.convs.conv_{m[2]}.{_MONAI_ADN[m[3]]}.{m[4]}"),
    (r"u_connections\.(\d)\.unet\.encoder\.(\d+)\.1\.convs\.(\d)\.(conv|norm)\.(.*)",
     lambda m: f"uC_skip{m[1]}.unet.downs.{m[2]}.down.1.conv.{_uc_double_conv(m[3], m[4])}.{m[5]}"),
    (r"u_connections\.(\d)\.unet\.upsample\.(\d+)\.(.*)", lambda m: f"uC_skip{m[1]}.unet.ups.{m[2]}.up.{m[3]}"),
    (r"u_connections\.(\d)\.unet\.decoder\.(\d+)\.convs\.(\d)\.(conv|norm)\.(.*)",
     lambda m: f"uC_skip{m[1]}.unet.ups.{m[2]}.conv.conv.{_uc_double_conv(m[3], m[4])}.{m[5]}"),
    (r"gated_up\.(\d)\.upsample\.(.*)", lambda m: f"upcat_{4 - int(m[1])}.upsample.deconv.{m[2]}"),
    (r"gated_up\.(\d)\.fusion\.(fuse|gate_up|gate_skip)\.(.*)",
     lambda m: f"upcat_{4 - int(m[1])}.dfi.{ {'fuse': 'conv1', 'gate_up': 'conv2', 'gate_skip': 'conv3'}[m[2]] }.{m[3]}"),
    (r"concat_up\.upsample\.(.*)", lambda m: f"upcat_1.upsample.deconv.{m[1]}"),
    (r"concat_up\.convs\.convs\.(\d)\.(conv|norm)\.(.*)", lambda m: f"upcat_1.convs.conv_{m[1]}.{_MONAI_ADN[m[2]]}.{m[3]}"),
    (r"head\.seg_layers\.(.*)", lambda m: f"final_conv.{m[1]}"),
]

RULES = {"uxnet": UXNET_RULES, "uc3dunet": UC3DUNET_RULES}


def original_key(arch: str, name: str) -> str:
    """The original state-dict key of our parameter ``name``."""
    for pattern, to_original in RULES[arch]:
        match = re.fullmatch(pattern, name)
        if match:
            return to_original(match)
    raise KeyError(f"no original key known for {arch} parameter {name!r}")


# ----------------------------------------------------------------------------------------------------------
# reading checkpoints
# ----------------------------------------------------------------------------------------------------------
def read_state_dict(state_dict_or_path: Any, weights_only: bool = True) -> dict:
    """A flat {key: tensor} from a state dict, a wrapping checkpoint dict, or a file path.

    Unwraps 'state_dict' / 'model_state_dict' / 'network_weights' / 'model' / 'net' and strips DDP 'module.'
    and torch.compile '_orig_mod.' prefixes.
    """
    import torch

    source = state_dict_or_path
    if isinstance(source, (str, Path)):
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"checkpoint {path} does not exist")
        try:
            source = torch.load(path, map_location="cpu", weights_only=weights_only)
        except Exception as error:  # torch raises several unpickling error types
            hint = (" The file holds pickled Python objects besides tensors; if you trust its origin, load it with "
                    "weights_only=False (CLI: --trust-pickle).") if weights_only else ""
            raise CheckpointError(f"cannot read checkpoint {path}: {error}.{hint}") from error
    if not isinstance(source, Mapping):
        raise CheckpointError(f"expected a state dict (a mapping of names to tensors), got {type(source).__name__}")
    for wrapper in CHECKPOINT_WRAPPER_KEYS:
        if wrapper in source and isinstance(source[wrapper], Mapping):
            source = source[wrapper]
            break
    state = {}
    for key, value in source.items():
        if not isinstance(value, torch.Tensor):
            continue
        for prefix in WRAPPER_PREFIXES:
            if key.startswith(prefix):
                key = key[len(prefix):]
        state[key] = value
    if not state:
        raise CheckpointError("the checkpoint holds no tensors")
    return state


# ----------------------------------------------------------------------------------------------------------
# original constructor arguments -> ours
# ----------------------------------------------------------------------------------------------------------
def _take(kwargs: dict, name: str, default: Any) -> Any:
    return kwargs.pop(name) if name in kwargs else default


def _shape0(state: dict, key: str, fallback: int) -> int:
    return int(state[key].shape[0]) if key in state else fallback


def _uxnet_kwargs(original: dict, state: dict) -> dict:
    kw = dict(original)
    feat = _take(kw, "feat_size", [_shape0(state, f"uxnet_3d.downsample_layers.{i}.{0 if i == 0 else 1}.weight", d)
                                   for i, d in enumerate((48, 96, 192, 384))])
    depths = _take(kw, "depths", [len({k.split(".")[3] for k in state if k.startswith(f"uxnet_3d.stages.{i}.")}) or 2
                                  for i in range(4)])
    stem = state.get("uxnet_3d.downsample_layers.0.0.weight")
    ours = {
        "input_channels": _take(kw, "in_chans", int(stem.shape[1]) if stem is not None else 1),
        "num_classes": _take(kw, "out_chans", _shape0(state, "out.conv.conv.weight", 13)),
        "feature_sizes": list(feat),
        "depths": list(depths),
        "hidden_size": _take(kw, "hidden_size", _shape0(state, "encoder5.layer.conv1.conv.weight", 768)),
        "drop_path_rate": float(_take(kw, "drop_path_rate", 0.0)),
        # the original ignores its layer_scale_init_value argument and always builds with 1e-6
        "layer_scale_init_value": 1e-6,
    }
    kw.pop("layer_scale_init_value", None)
    fixed = {"spatial_dims": 3, "norm_name": "instance", "res_block": True, "conv_block": True}
    _check_fixed(kw, fixed, "UXNET")
    return ours


def _uc3dunet_kwargs(original: dict, state: dict) -> dict:
    kw = dict(original)
    stem = state.get("conv_0.conv_0.conv.weight")
    default_features = [_shape0(state, "conv_0.conv_0.conv.weight", 24)]
    default_features += [_shape0(state, f"down_{i}.convs.conv_0.conv.weight", d) for i, d in zip(range(1, 5), (48, 96, 192, 384))]
    default_features += [_shape0(state, "upcat_1.convs.conv_0.conv.weight", 32)]
    ours = {
        "input_channels": _take(kw, "in_channels", int(stem.shape[1]) if stem is not None else 1),
        "num_classes": _take(kw, "out_channels", _shape0(state, "final_conv.weight", 2)),
        "features": list(_take(kw, "features", default_features)),
        "slice_axis": "last",  # the original folds the last axis of its (x, y, z) tensors
    }
    for ignored in ("depths", "drop_path_rate", "hidden_size", "layer_scale_init_value", "conv_block", "res_block",
                    "norm_name", "spatial_dims"):
        kw.pop(ignored, None)  # accepted and unused by the original constructor
    _check_fixed(kw, {"bias": True, "dropout": 0.0, "upsample": "deconv"}, "uC_3DUNet")
    return ours


def _check_fixed(remaining: dict, fixed: dict, original_name: str) -> None:
    problems = []
    for name, value in remaining.items():
        if name not in fixed:
            problems.append(f"unknown argument {name!r}")
        elif value != fixed[name]:
            problems.append(f"{name}={value!r} is not supported (only {fixed[name]!r}, as in the papers)")
    if problems:
        raise CheckpointError(f"{original_name} arguments: " + "; ".join(problems))


# ----------------------------------------------------------------------------------------------------------
# loading
# ----------------------------------------------------------------------------------------------------------
def build_from_original_kwargs(arch: str, state: dict, **original_kwargs):
    """Our network for the original constructor arguments (missing widths read off ``state``)."""
    from nnunetv2_uc.architectures import UC3DUNet, UXNet

    if arch == "uxnet":
        return UXNet(**_uxnet_kwargs(original_kwargs, state))
    if arch == "uc3dunet":
        return UC3DUNet(**_uc3dunet_kwargs(original_kwargs, state))
    raise ValueError(f"arch must be one of {ARCHITECTURES}, got {arch!r}")


def convert_state_dict(arch: str, model, original_state: dict) -> dict:
    """Our state dict (keys of ``model.state_dict()``) filled from the original keys; raises on any mismatch."""
    aliases = _alias_table(model)
    canonical = {aliases.get(name, name): tensor for name, tensor in model.state_dict().items()}
    found, problems = {}, []
    for name, tensor in canonical.items():
        source = original_key(arch, name)
        if source not in original_state:
            problems.append(f"missing {source} (for {name})")
        elif tuple(original_state[source].shape) != tuple(tensor.shape):
            problems.append(f"shape of {source} is {tuple(original_state[source].shape)}, expected {tuple(tensor.shape)}")
        else:
            found[name] = original_state[source].to(tensor.dtype)
    used = {original_key(arch, name) for name in canonical}
    problems += [f"unexpected key {key}" for key in sorted(set(original_state) - used)]
    if problems:
        raise CheckpointError(f"checkpoint does not match {arch} ({len(problems)} problem(s)):\n  " + "\n  ".join(problems))
    return {name: found[aliases.get(name, name)] for name in model.state_dict()}


def _alias_table(model) -> dict:
    """state-dict name -> parameter name: dynamic-network-architectures registers each conv twice
    (``conv`` and ``all_modules.0``), so one parameter can appear under two state-dict keys."""
    canonical = {id(p): n for n, p in model.named_parameters()}
    return {n: canonical[id(t)] for n, t in model.state_dict(keep_vars=True).items() if id(t) in canonical}


def load_original(arch: str, state_dict_or_path: Any, weights_only: bool = True, **original_kwargs):
    """Our network with the original checkpoint's weights, reproducing the original's outputs, in eval mode."""
    state = read_state_dict(state_dict_or_path, weights_only=weights_only)
    model = build_from_original_kwargs(arch, state, **original_kwargs)
    model.load_state_dict(convert_state_dict(arch, model, state))
    return model.eval()


# ----------------------------------------------------------------------------------------------------------
# CLI: import-weights
# ----------------------------------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--arch", required=True, choices=ARCHITECTURES, help="which original network the checkpoint is")
    parser.add_argument("--checkpoint", required=True, type=Path, help="the original checkpoint (.pth/.pt)")
    parser.add_argument("--original-kwargs", default="{}", metavar="JSON",
                        help="the ORIGINAL constructor's keyword arguments as JSON, e.g. '{\"out_chans\": 14}'; "
                             "channel counts and widths not given are read off the checkpoint")
    parser.add_argument("-o", "--output", required=True, type=Path, help="where to write the nnU-Net weights file")
    parser.add_argument("--trust-pickle", action="store_true",
                        help="allow checkpoints that pickle Python objects besides tensors (only for trusted files)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output file")


def run(args: argparse.Namespace) -> int:
    import torch

    if args.output.exists() and not args.overwrite:
        print(f"error: {args.output} exists; pass --overwrite to replace it", file=sys.stderr)
        return 2
    try:
        original_kwargs = json.loads(args.original_kwargs)
        if not isinstance(original_kwargs, dict):
            raise ValueError("not a JSON object")
    except ValueError as error:
        print(f"error: --original-kwargs must be a JSON object ({error})", file=sys.stderr)
        return 2
    try:
        model = load_original(args.arch, args.checkpoint, weights_only=not args.trust_pickle, **original_kwargs)
    except (CheckpointError, FileNotFoundError, TypeError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    payload = {
        "network_weights": model.state_dict(),
        "nnunetv2_uc": {"arch": args.arch, "source": str(args.checkpoint), "original_kwargs": original_kwargs,
                        "network_kwargs": _network_kwargs(model)},
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    partial = args.output.with_name(args.output.name + ".partial")
    torch.save(payload, partial)
    partial.replace(args.output)
    count = sum(p.numel() for p in model.parameters())
    print(f"wrote {args.output}: {type(model).__name__}, {count:,} parameters. Fine-tune with "
          f"nnUNetv2_train DATASET CONFIG FOLD -tr <trainer> -pretrained_weights {args.output} "
          f"(the segmentation head is skipped by nnU-Net if the class count differs).")
    return 0


def _network_kwargs(model) -> dict:
    keys = ("input_channels", "num_classes", "slice_axis", "uc_levels")
    return {k: getattr(model, k) for k in keys if hasattr(model, k)}
