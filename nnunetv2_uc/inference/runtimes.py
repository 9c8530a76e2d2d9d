"""Runtimes that run an exported fold on sliding-window tiles, and the network stand-in nnU-Net's predictor calls.

nnU-Net's predictor calls ``network(tiles)`` on a (B, C, *patch) float tensor (B tiles, mirrored copies included)
and expects the (B, num_classes, *patch) logits as a tensor; it also calls ``network.to(device)``, ``.eval()`` and,
once per fold, ``network.load_state_dict(fold_parameters)``. ``FoldSwitch`` answers all of these: the "parameters" of
a fold are that fold's runtime, so nnU-Net's own fold loop ensembles the folds.
"""
from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from nnunetv2_uc.errors import UserError

BACKENDS = ("torch", "onnxruntime", "openvino")
#: the runtimes, fastest first, as measured on this project's 2-core CPU (BENCHMARKS.md, "One CT-sized case"):
#: ``--backend auto`` on the CPU takes the first one installed, else torch
FASTEST_FIRST = ("openvino", "onnxruntime")
#: runtime -> networks (registry names) for which it was measured slower than torch fp32 (BENCHMARKS.md, "Predicting
#: one case": UX-Net tiles take 7.7 s in onnxruntime, 7.0 s in torch): ``--backend auto`` passes over it for them
SLOWER_THAN_TORCH = {"onnxruntime": ("uxnet",)}
#: the number formats a network can run in on the CPU; bf16 needs a CPU with native bf16 (see ``native_bf16``)
PRECISIONS = ("fp32", "bf16")
#: what each runtime can run: onnxruntime's CPU provider has no bf16 convolutions
RUNTIME_PRECISIONS = {"onnxruntime": ("fp32",), "openvino": PRECISIONS}
#: backend -> (module to import, the pip extra that installs it)
_BACKEND_PACKAGES = {"onnxruntime": ("onnxruntime", "onnx"), "openvino": ("openvino", "openvino"),
                     "onnx": ("onnx", "onnx"), "onnxscript": ("onnxscript", "onnx")}


def require(package: str):
    """Import ``package`` (onnx, onnxscript, onnxruntime, openvino); a UserError with the install command if missing."""
    module_name, extra = _BACKEND_PACKAGES[package]
    try:
        return importlib.import_module(module_name)
    except ImportError as error:
        raise UserError(f"{package} is not installed ({error}); install it with: pip install \"nnunetv2-uc[{extra}]\"") \
            from error


def installed(package: str) -> bool:
    """Whether ``package`` (a key of the table above) can be imported, without importing it."""
    return importlib.util.find_spec(_BACKEND_PACKAGES[package][0]) is not None


def fastest_installed_runtime(precision: str = "fp32", for_export: bool = False,
                              network: str | None = None) -> str | None:
    """The fastest runtime installed that runs ``precision`` (``RUNTIME_PRECISIONS``); ``for_export``: only if
    export-onnx can run too (onnx, onnxscript and onnxruntime for its self-check); ``network`` (the registry's name,
    e.g. ``uxnet``): not one measured slower than torch for it (``SLOWER_THAN_TORCH``). None: no such runtime."""
    if for_export and not all(installed(p) for p in ("onnx", "onnxscript", "onnxruntime")):
        return None
    for backend in FASTEST_FIRST:
        if (installed(backend) and precision in RUNTIME_PRECISIONS[backend]
                and network not in SLOWER_THAN_TORCH.get(backend, ())):
            return backend
    return None


def native_bf16(cpuinfo: str | Path = "/proc/cpuinfo") -> bool:
    """Whether this CPU computes in bf16 natively (x86 AVX512_BF16 or AMX-BF16, read from Linux's ``cpuinfo``); on
    other CPUs bf16 would be emulated, slower than fp32."""
    try:
        flags = Path(cpuinfo).read_text()
    except OSError:
        return False
    return any(flag in flags.split() for flag in ("avx512_bf16", "amx_bf16"))


def _as_numpy(tiles: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(tiles.detach().to("cpu", torch.float32).numpy())


class TileRunner:
    """One exported fold on one runtime: (B, C, *patch) float tensor -> (B, num_classes, *patch) float32 logits
    on the tiles' device. Any other tile shape is a UserError that names the file."""

    def __init__(self, path: Path, tile_shape: Sequence[int], run: Callable[[np.ndarray], np.ndarray]) -> None:
        self.path = Path(path)
        self.tile_shape = tuple(int(s) for s in tile_shape)  # (C, *patch)
        self._run = run

    def __call__(self, tiles: torch.Tensor) -> torch.Tensor:
        if tuple(tiles.shape[1:]) != self.tile_shape:
            raise UserError(f"{self.path} takes tiles of shape (B, {', '.join(map(str, self.tile_shape))}), got "
                            f"{tuple(tiles.shape)}: predict with the plans.json next to it (its patch size), or "
                            f"export the model again with nnunetv2_uc export-onnx")
        return torch.from_numpy(self._run(_as_numpy(tiles))).to(tiles.device)


def onnxruntime_runner(path: Path, tile_shape: Sequence[int], threads: int | None = None,
                       precision: str = "fp32") -> TileRunner:
    """``path`` in an onnxruntime CPU InferenceSession (``threads`` intra-op threads; None: onnxruntime's default).
    fp32 only: onnxruntime's CPU provider has no bf16 convolutions."""
    if precision not in RUNTIME_PRECISIONS["onnxruntime"]:
        raise UserError(f"--backend onnxruntime runs fp32 only (its CPU provider has no {precision} convolutions); "
                        f"use --backend openvino or torch for --precision {precision}")
    ort = require("onnxruntime")
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    try:
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as error:  # onnxruntime raises its own Fail/InvalidGraph/... classes
        raise UserError(f"onnxruntime cannot load {path} ({type(error).__name__}: {str(error)[:300]}); export the "
                        f"model again with nnunetv2_uc export-onnx") from error
    input_name = session.get_inputs()[0].name
    return TileRunner(path, tile_shape, lambda x: session.run(None, {input_name: x})[0])


def openvino_runner(path: Path, tile_shape: Sequence[int], threads: int | None = None,
                    precision: str = "fp32") -> TileRunner:
    """``path`` compiled by OpenVINO for its CPU plugin in ``precision`` (asked for explicitly: OpenVINO's own CPU
    default is bf16 wherever the CPU has it, fp32 elsewhere)."""
    ov = require("openvino")
    config = {"INFERENCE_PRECISION_HINT": {"fp32": "f32", "bf16": "bf16"}[precision]}
    if threads:
        config["INFERENCE_NUM_THREADS"] = threads
    try:
        compiled = ov.Core().compile_model(str(path), "CPU", config)
    except Exception as error:
        raise UserError(f"OpenVINO cannot load {path} ({type(error).__name__}: {str(error)[:300]}); export the "
                        f"model again with nnunetv2_uc export-onnx") from error
    request = compiled.create_infer_request()
    return TileRunner(path, tile_shape, lambda x: np.asarray(request.infer([x])[0]))


RUNNERS = {"onnxruntime": onnxruntime_runner, "openvino": openvino_runner}


class FoldSwitch:
    """What nnU-Net's predictor takes for its network when each fold is a runtime (see the module docstring)."""

    def __init__(self, runners: Sequence[TileRunner]) -> None:
        self.runners = list(runners)
        self.active = self.runners[0]

    def load_state_dict(self, runner: TileRunner, *args, **kwargs) -> None:
        self.active = runner

    def __call__(self, tiles: torch.Tensor) -> torch.Tensor:
        return self.active(tiles)

    def to(self, *args, **kwargs) -> "FoldSwitch":
        return self

    def eval(self) -> "FoldSwitch":
        return self
