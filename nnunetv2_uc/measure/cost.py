"""Parameters, MACs, latency and peak memory of UX-Net / uC 3DU-Net next to nnU-Net's PlainConvUNet, and parameters and
MACs of an nnU-Net plan's network next to the same plan with uC connections (``plans_cost_report``).

MACs follow fvcore's conventions (the spec's reference numbers): convolutions from torch.utils.flop_counter
(1 multiply-add = 1 MAC; transposed convs counted over input voxels), the grouped 1x1x1 "DCS" layers as the
convs they are in the original, InstanceNorm/GroupNorm/LayerNorm modules as numel x (5 if affine else 4),
and nothing for activations, pooling or the original's hand-written channels-first LayerNorm (fvcore does
not see it). The papers quote thop (uC: 286.43 G) and ptflops (UX-Net: 639.4 G); those counters overcount
transposed convolutions 8x in 3-D, see the README.

First the networks to compare and how to time them (``build_network``, ``measure_step``), shared by `nnunetv2_uc
cost` and `nnunetv2_uc bench`.

Each measurement runs in a fresh process (``run_in_fresh_process``) so its peak memory is its own.
"""
from __future__ import annotations

import contextlib
import copy
import json
import multiprocessing
import os
import resource
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name
from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
from torch import nn
from torch.profiler import ProfilerActivity, profile
from torch.utils.flop_counter import FlopCounterMode

from nnunetv2_uc.architectures.building_blocks.layout import to_channels_last
from nnunetv2_uc.architectures.registry import network_entry, original_networks
from nnunetv2_uc.architectures.uc_unet import UCPlanError
from nnunetv2_uc.architectures.uxnet import DepthwiseChannelScaling
from nnunetv2_uc.errors import UserError
from nnunetv2_uc.planning.uc_plans import UC_VERSION, has_uc_connections, with_uc_connections, without_uc_connections


def build_network(name: str, input_channels: int, num_classes: int, patch: Sequence[int],
                  checkpointing: bool = False) -> nn.Module:
    """The registry's network ``name`` as cost and bench run it (no DS heads); ``checkpointing`` turns on
    activation checkpointing where the network has it."""
    entry = network_entry(name)
    if checkpointing and not entry.supports_checkpointing:
        raise ValueError(f"{name} has no activation checkpointing option")
    return entry.build_for_patch(input_channels, num_classes, patch, checkpointing)


def request_problem(names: Sequence[str], patch: Sequence[int], device: str) -> str | None:
    """Why these networks cannot be run at ``patch`` on ``device`` (None if they can): checked before any work."""
    for name in names:
        problems = network_entry(name).input_problems(patch)
        if problems:
            return f"{name} cannot take patch {list(patch)}: " + "; ".join(problems)
    if device == "cuda" and not torch.cuda.is_available():
        return "--device cuda but no CUDA device is visible; use --device cpu"
    return None


@dataclass
class StepSetup:
    """How one network is run: batch, device, mixed precision ('off', 'bf16', 'fp16'), compile, memory format."""
    name: str
    patch: tuple[int, ...]
    input_channels: int = 1
    num_classes: int = 5
    batch: int = 1
    device: str = "cpu"
    amp: str = "off"
    compile: bool = False
    channels_last: bool = False
    checkpointing: bool = False


def prepare(setup: StepSetup):
    """(model, optimizer, loss function, autocast context factory, grad scaler or None) for ``setup``."""
    torch.manual_seed(0)
    device = torch.device(setup.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # as nnUNetv2_train sets it: cuDNN picks the fastest kernels per shape
    model = build_network(setup.name, setup.input_channels, setup.num_classes, setup.patch,
                          setup.checkpointing).to(device)
    if setup.channels_last:
        to_channels_last(model)
    if setup.compile:
        model = torch.compile(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.99, nesterov=True)
    dtype = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}[setup.amp]
    autocast = (lambda: torch.autocast(device.type, dtype=dtype)) if dtype else contextlib.nullcontext
    scaler = torch.amp.GradScaler(device.type) if setup.amp == "fp16" else None
    return model, optimizer, torch.nn.CrossEntropyLoss(), autocast, scaler


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def median_seconds(fn: Callable[[], None], device: str, repeats: int, warmup: int) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def peak_memory_start(device: str) -> int:
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
        return 0
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


def peak_memory_bytes(device: str, start: int) -> tuple[int, str]:
    """CUDA max allocated, or on CPU how far the peak RSS rose above ``start``."""
    if device.startswith("cuda"):
        return int(torch.cuda.max_memory_allocated()), "cuda max allocated"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - start, "peak RSS growth"


def training_step_runner(setup: StepSetup):
    """(model, one training step as a function) for ``setup``: forward, CE loss, backward, SGD step."""
    model, optimizer, loss_fn, autocast, scaler = prepare(setup)
    fmt = torch.channels_last_3d if setup.channels_last else torch.contiguous_format
    x = torch.randn(setup.batch, setup.input_channels, *setup.patch, device=setup.device).contiguous(memory_format=fmt)
    target = torch.randint(0, setup.num_classes, (setup.batch, *setup.patch), device=setup.device)

    def train_step():
        optimizer.zero_grad(set_to_none=True)
        with autocast():
            loss = loss_fn(model(x), target)
        if scaler is None:
            loss.backward()
            optimizer.step()
        else:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()

    def forward():
        with torch.no_grad(), autocast():
            model(x)

    return model, train_step, forward


def measure_step(setup: StepSetup, repeats: int = 3, warmup: int = 1) -> dict:
    """Median seconds of a forward pass (no grad) and of a training step (fwd, CE loss, bwd, SGD), peak memory."""
    model, train_step, forward = training_step_runner(setup)
    start = peak_memory_start(setup.device)
    model.eval()
    forward_s = median_seconds(forward, setup.device, repeats, warmup)
    model.train()
    step_s = median_seconds(train_step, setup.device, repeats, warmup)
    peak, kind = peak_memory_bytes(setup.device, start)
    return {"forward_s": forward_s, "train_step_s": step_s, "peak_memory_bytes": peak, "memory_kind": kind}


def _is_depthwise(input_shape: Sequence[int], weight_shape: Sequence[int]) -> bool:
    """A conv whose groups equal its (more than one) input channels: weight (C, 1, *k) on a C-channel input."""
    return (len(weight_shape) >= 3 and weight_shape[1] == 1 and len(input_shape) == len(weight_shape)
            and input_shape[1] == weight_shape[0] > 1)


def depthwise_share(setup: StepSetup, warmup: int = 2) -> dict:
    """Share of one training step's time spent in depthwise convolutions (forward and backward), from the
    torch profiler: CUDA kernel time on a GPU, operator time on CPU."""
    model, train_step, _ = training_step_runner(setup)
    model.train()
    for _ in range(warmup):
        train_step()
    cuda = setup.device.startswith("cuda")
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities, record_shapes=True) as prof:
        train_step()
        synchronize(setup.device)
    events = prof.events()
    if cuda:
        total = sum(e.self_device_time_total for e in events)
        timed = lambda e: e.device_time_total
    else:
        total = sum(e.self_cpu_time_total for e in events)
        timed = lambda e: e.cpu_time_total
    depthwise = 0.0
    for e in events:
        shapes = e.input_shapes or []
        if e.name == "aten::convolution" and len(shapes) > 1 and _is_depthwise(shapes[0], shapes[1]):
            depthwise += timed(e)
        elif e.name == "aten::convolution_backward" and len(shapes) > 2 and _is_depthwise(shapes[1], shapes[2]):
            depthwise += timed(e)
    return {"depthwise_share": depthwise / total if total else 0.0, "profiled_step_s": total / 1e6,
            "profiled_time_kind": "CUDA kernel time" if cuda else "CPU operator time"}


def run_in_fresh_process(fn: Callable, *args, **kwargs):
    """``fn(*args, **kwargs)`` in a new spawned interpreter (its own peak memory and allocator state)."""
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(fn, *args, **kwargs).result()


DEFAULT_NETWORKS = ("uxnet", "uc3dunet", "plainunet")


def count_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())


def count_macs(network: str | nn.Module, input_channels: int, num_classes: int, patch: Sequence[int],
               batch: int = 1) -> int:
    """MACs of one forward pass (fvcore conventions, see the module docstring) on ``batch`` inputs of ``patch``.

    ``network``: a registry name (built for ``patch`` on the meta device; ``num_classes`` is used only then) or a
    built network, run as it is on the device of its parameters (build it on the meta device to count without
    compute: ``with torch.device("meta"): ...``).
    """
    if isinstance(network, str):
        with torch.device("meta"):
            network = build_network(network, input_channels, num_classes, patch)
    device = next(network.parameters()).device
    x = torch.empty(batch, input_channels, *patch, device=device)
    norms = (nn.InstanceNorm3d, nn.InstanceNorm2d, nn.GroupNorm, nn.LayerNorm)
    extra = [0]

    def count_module(module, _inputs, output):
        if isinstance(module, DepthwiseChannelScaling):
            extra[0] += output.numel() * module.weight.shape[1]
        else:
            extra[0] += output.numel() * (5 if getattr(module, "weight", None) is not None else 4)

    hooks = [m.register_forward_hook(count_module) for m in network.modules()
             if isinstance(m, norms + (DepthwiseChannelScaling,))]
    was_training = network.training
    network.eval()
    counter = FlopCounterMode(display=False)
    try:
        with counter, torch.no_grad():
            network(x)
    finally:
        for hook in hooks:
            hook.remove()
        network.train(was_training)
    return counter.get_total_flops() // 2 + extra[0]


def cost_report(networks: Sequence[str], patch: Sequence[int], input_channels: int, num_classes: int,
                device: str = "cpu", repeats: int = 3, timing: bool = True) -> list[dict]:
    rows = []
    for name in networks:
        model_params = count_parameters(build_network(name, input_channels, num_classes, patch))
        row = {"arch": name, "patch": list(patch), "input_channels": input_channels, "num_classes": num_classes,
               "parameters": model_params, "gmacs": count_macs(name, input_channels, num_classes, patch) / 1e9}
        if timing:
            setup = StepSetup(name, tuple(patch), input_channels, num_classes, device=device)
            row.update(run_in_fresh_process(measure_step, setup, repeats))
            row["device"] = device
        rows.append(row)
    return rows


def format_table(rows: list[dict]) -> str:
    baseline = next((r for r in rows if r["arch"] == "plainunet"), None)
    header = ["arch", "params", "GMACs"]
    timed = "forward_s" in rows[0]
    if timed:
        header += ["forward s", "train step s", "peak mem MiB"]
    if baseline:
        header += ["MACs x plain"] + (["step x plain"] if timed else [])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        cells = [r["arch"], f"{r['parameters']:,}", f"{r['gmacs']:.3f}"]
        if timed:
            cells += [f"{r['forward_s']:.3f}", f"{r['train_step_s']:.3f}", f"{r['peak_memory_bytes'] / 2**20:.0f}"]
        if baseline:
            cells.append(f"{r['gmacs'] / baseline['gmacs']:.2f}")
            if timed:
                cells.append(f"{r['train_step_s'] / baseline['train_step_s']:.2f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------------
# a plan's network
# ----------------------------------------------------------------------------------------------------------
def plans_network(plans: dict, configuration: str, dataset_json: dict, trainer_class: type = nnUNetTrainer
                  ) -> tuple[nn.Module, int, list[int]]:
    """The network nnU-Net's predictor builds for ``configuration`` of ``plans`` (``trainer_class``'s static
    ``build_network_architecture``, deep supervision off), on the meta device: (network, input channels, patch)."""
    plans_manager = PlansManager(plans)
    configuration_manager = plans_manager.get_configuration(configuration)
    input_channels = determine_num_input_channels(plans_manager, configuration_manager, dataset_json)
    outputs = plans_manager.get_label_manager(dataset_json).num_segmentation_heads
    with torch.device("meta"):
        network = trainer_class.build_network_architecture(plans_manager, configuration_manager, input_channels,
                                                           outputs, enable_deep_supervision=False)
    return network, input_channels, list(configuration_manager.patch_size)


def network_cost(network: nn.Module, input_channels: int, patch: Sequence[int]) -> dict:
    """{"parameters", "gmacs"} of a built network for one input of ``patch``."""
    return {"parameters": count_parameters(network),
            "gmacs": count_macs(network, input_channels, 0, patch) / 1e9}


def preprocessed_dataset_folder(dataset: str) -> str:
    """$nnUNet_preprocessed/DatasetXXX_Name for a dataset name or id; an unset variable or unknown id names the fix."""
    preprocessed = os.environ.get("nnUNet_preprocessed")
    if not preprocessed:
        raise UserError("$nnUNet_preprocessed is not set; export it to the folder nnUNetv2_plan_and_preprocess wrote")
    try:
        dataset_name = maybe_convert_to_dataset_name(dataset)
    except RuntimeError as error:
        raise UserError(f"dataset {dataset!r}: {error}") from error
    return os.path.join(preprocessed, dataset_name)


def load_dataset_plans(dataset: str, plans_identifier: str) -> tuple[dict, dict]:
    """(plans, dataset.json) of a preprocessed dataset, from $nnUNet_preprocessed; missing files name the fix."""
    folder = preprocessed_dataset_folder(dataset)
    paths = {"plans": os.path.join(folder, f"{plans_identifier}.json"),
             "dataset.json": os.path.join(folder, "dataset.json")}
    for what, path in paths.items():
        if not os.path.isfile(path):
            fix = f"check -p {plans_identifier} or run" if what == "plans" else "run"
            raise UserError(f"{path}: no such file; {fix} nnUNetv2_plan_and_preprocess -d {dataset}")
    with open(paths["plans"]) as f:
        plans = json.load(f)
    with open(paths["dataset.json"]) as f:
        dataset_json = json.load(f)
    return plans, dataset_json


def _uc_variant(plans: dict, configuration: str) -> tuple[str, dict] | None:
    """(row name, plans) of the other side of ``configuration``: its uC version, or for uC plans nnU-Net's network
    they were made from; None for plans of another network (e.g. a paper network's, from ``nnunetv2_uc plan``).
    A configuration the uC network cannot take is a UCPlanError naming the plans entry."""
    resolved = PlansManager(plans).get_configuration(configuration).configuration
    architecture = resolved["architecture"]
    if not has_uc_connections(architecture) and architecture.get("network_class_name") not in UC_VERSION:
        return None
    where = f"plans {plans.get('plans_name', '?')}, configurations[{configuration!r}]"
    try:
        if has_uc_connections(architecture):
            name, other = "plan without uC", without_uc_connections(architecture)
        else:
            name, other = "plan with uC", with_uc_connections(architecture, resolved["patch_size"])
    except UCPlanError as error:
        raise UCPlanError(f"{where}: {error}") from None
    variant = copy.deepcopy(plans)
    variant["configurations"][configuration]["architecture"] = other
    return name, variant


def _paper_rows(patch: Sequence[int], input_channels: int, num_classes: int) -> list[dict]:
    """The paper networks (registry, paper configuration) at the plan's patch; one that cannot take the patch
    gets a row with ``problem`` and no counts."""
    rows = []
    for arch in original_networks():
        entry = network_entry(arch)
        row = {"network": f"paper {entry.network_class.__name__}", "network_class": entry.network_class.__name__,
               "patch": list(patch), "input_channels": input_channels, "uc_stages": None,
               "parameters": None, "gmacs": None}
        problems = entry.input_problems(patch)
        if problems:
            row["problem"] = "; ".join(problems)
        else:
            counted = cost_report([arch], patch, input_channels, num_classes, timing=False)[0]
            row.update(parameters=counted["parameters"], gmacs=counted["gmacs"])
        rows.append(row)
    return rows


def plans_cost_report(plans: dict, configuration: str, dataset_json: dict) -> list[dict]:
    """Parameters and MACs at the configuration's patch of the plan's network, of the same plan with uC connections
    (for a plan that already has them: without them; none for a plan of another network) and of the paper networks
    (paper widths). The plan's row first.

    Raises UserError for a missing configuration, UCPlanError for one the uC network cannot take (2-D, a patch
    too small for one uC level, another network class), before anything is built.
    """
    available = sorted(plans.get("configurations", {}))
    if configuration not in available:
        raise UserError(f"plans {plans.get('plans_name', '?')} have no configuration {configuration!r} "
                        f"(available: {', '.join(available) or 'none'}); choose one with -c")
    variant = _uc_variant(plans, configuration)
    rows = []
    for name, these_plans in [("plan", plans)] + ([variant] if variant else []):
        network, input_channels, patch = plans_network(these_plans, configuration, dataset_json)
        arch_kwargs = PlansManager(these_plans).get_configuration(configuration).network_arch_init_kwargs
        rows.append({"network": name, "network_class": type(network).__name__,
                     "plans_name": plans.get("plans_name"), "configuration": configuration, "patch": patch,
                     "input_channels": input_channels, "uc_stages": arch_kwargs.get("uc_stages"),
                     **network_cost(network, input_channels, patch)})
    num_classes = PlansManager(plans).get_label_manager(dataset_json).num_segmentation_heads
    return rows + _paper_rows(rows[0]["patch"], rows[0]["input_channels"], num_classes)


def format_plans_table(rows: list[dict]) -> str:
    """Markdown: one row per network, with the ratios to the first row (the plan's own network); a network that
    cannot take the patch says why under the table."""
    plan = rows[0]
    header = ["network", "class", "patch", "uC stages", "params", "GMACs", "params x plan", "MACs x plan"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    notes = []
    for r in rows:
        stages = "-" if r["uc_stages"] is None else ", ".join(str(s) for s in r["uc_stages"])
        cells = [r["network"], r["network_class"], "x".join(str(s) for s in r["patch"]), stages]
        if r["parameters"] is None:
            cells += ["n/a"] * 4
            notes.append(f"{r['network']}: cannot take patch {'x'.join(str(s) for s in r['patch'])}: {r['problem']}")
        else:
            cells += [f"{r['parameters']:,}", f"{r['gmacs']:.3f}", f"{r['parameters'] / plan['parameters']:.2f}",
                      f"{r['gmacs'] / plan['gmacs']:.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "GMACs: one forward pass of one patch, deep supervision off (fvcore conventions). Paper networks: "
              "their papers' widths (the plan's rows: the plan's widths)."] + notes
    return "\n".join(lines)
