"""The GPU: device, driver against torch's CUDA build, cuDNN, bf16, and the C compiler torch.compile needs."""
from __future__ import annotations

import ctypes
import importlib.util
import os
import shutil
import subprocess
import sysconfig
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping

from nnunetv2_uc.doctor.checks import FAIL, OK, SKIP, WARN, Check, guarded
from nnunetv2_uc.doctor.environment import GIB, TORCH_FLAVOUR_FOR_DRIVER, TORCH_INDEX, torch_pair_command

# The lowest Linux driver of each CUDA major release (NVIDIA's "CUDA Compatibility" guide, table "CUDA Toolkit
# 11.x, 12.x, and 13.x Driver Version Ranges"); within a major release, minor-version compatibility applies.
MIN_LINUX_DRIVER = {13: 580, 12: 525, 11: 450}


@dataclass
class CudaFacts:
    """What the CUDA checks inspect (``cuda_facts`` gathers them here; tests build them by hand)."""
    torch_version: str
    torch_cuda: str | None                  # the CUDA version torch was built for (torch.version.cuda)
    devices: list[str] = field(default_factory=list)  # "NVIDIA H200 (sm_90, 139.8 GiB)", one per visible GPU
    driver_cuda: tuple[int, int] | None = None      # the newest CUDA the driver supports (cuDriverGetVersion)
    driver_version: str | None = None       # e.g. "550.54.15" (nvidia-smi)
    cudnn_version: int | None = None        # torch.backends.cudnn.version(), e.g. 92400
    bf16: bool | None = None                # torch.cuda.is_bf16_supported() on device 0
    init_warning: str | None = None         # what torch said when CUDA did not come up


def driver_cuda_version(library: str = "libcuda.so.1") -> tuple[int, int] | None:
    """(major, minor) of the newest CUDA the installed driver supports, from the driver library itself
    (``cuDriverGetVersion`` needs no ``cuInit``); None without an NVIDIA driver."""
    try:
        cuda = ctypes.CDLL(library)
        version = ctypes.c_int()
        if cuda.cuDriverGetVersion(ctypes.byref(version)) != 0:
            return None
    except (OSError, AttributeError):
        return None
    return version.value // 1000, (version.value % 1000) // 10


def driver_version() -> str | None:
    """The NVIDIA driver's version as nvidia-smi reports it, e.g. '550.54.15'; None without nvidia-smi."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    lines = out.stdout.strip().splitlines()
    return lines[0].strip() if out.returncode == 0 and lines else None


def cuda_facts() -> CudaFacts:
    import torch

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        available = torch.cuda.is_available()
    facts = CudaFacts(torch.__version__, torch.version.cuda, driver_cuda=driver_cuda_version(),
                      cudnn_version=torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
                      init_warning="; ".join(str(w.message) for w in caught) or None)
    if facts.driver_cuda is not None:
        facts.driver_version = driver_version()
    if available:
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            facts.devices.append(f"{p.name} (sm_{p.major}{p.minor}, {p.total_memory / GIB:.1f} GiB)")
        facts.bf16 = bool(torch.cuda.is_bf16_supported())
    return facts


def _cuda_major_minor(version: str) -> tuple[int, int]:
    major, minor = (version.split(".") + ["0"])[:2]
    return int(major), int(minor)


def torch_build_fix(driver_cuda: tuple[int, int], torch_version: str) -> str:
    """How to get a torch build that runs on a driver supporting CUDA ``driver_cuda``."""
    flavour = TORCH_FLAVOUR_FOR_DRIVER.get(driver_cuda[0])
    if flavour is None:
        newest = max(MIN_LINUX_DRIVER)
        return (f"no current torch build runs on a driver with CUDA {driver_cuda[0]}.{driver_cuda[1]}: have the "
                f"NVIDIA driver upgraded (>= {MIN_LINUX_DRIVER[newest]} for CUDA {newest})")
    url = f"{TORCH_INDEX}/{flavour}"
    return (f"install a torch build for CUDA {driver_cuda[0]}.x: {torch_pair_command(torch_version, url)} "
            f"(or: make install TORCH_INDEX_URL={url}); pytorch.org's install matrix lists the CUDA flavours of "
            f"each torch release")


def _driver_too_old(facts: CudaFacts) -> bool:
    return (facts.driver_cuda is not None and facts.torch_cuda is not None
            and facts.driver_cuda[0] < _cuda_major_minor(facts.torch_cuda)[0])


def check_cuda_device(facts: CudaFacts) -> Check:
    if facts.devices:
        return Check("cuda device", OK, "; ".join(facts.devices))
    if facts.torch_cuda is None:
        return Check("cuda device", WARN, f"torch {facts.torch_version} is a CPU-only build: training and prediction "
                                          "run on CPU (-device cpu), very slowly",
                     "on a GPU machine, install a CUDA build of torch (see the cuda driver line there)")
    if facts.driver_cuda is None:
        return Check("cuda device", WARN, "no NVIDIA driver found (libcuda.so.1): training and prediction run on "
                                          "CPU only (-device cpu), very slowly",
                     "run on a GPU node (e.g. srun --gres=gpu:1 nnunetv2_uc doctor)")
    said = f": {facts.init_warning}" if facts.init_warning else ""
    if _driver_too_old(facts):
        return Check("cuda device", FAIL, f"torch cannot use the GPU, the NVIDIA driver is too old for it{said}",
                     "see the cuda driver line")
    return Check("cuda device", WARN, f"an NVIDIA driver is installed but torch sees no GPU{said}",
                 "request a GPU for the job (e.g. --gres=gpu:1) and check CUDA_VISIBLE_DEVICES")


def check_cuda_driver(facts: CudaFacts) -> Check:
    """The driver runs the CUDA torch was built for: same major release or newer (minor-version compatibility)."""
    if facts.driver_cuda is None:
        return Check("cuda driver", SKIP, "no NVIDIA driver on this machine")
    shown = f"{facts.driver_cuda[0]}.{facts.driver_cuda[1]}"
    driver = f"driver {facts.driver_version or '(version unknown)'} supports CUDA up to {shown}"
    if facts.torch_cuda is None:
        return Check("cuda driver", FAIL, f"{driver}, but torch {facts.torch_version} is a CPU-only build",
                     torch_build_fix(facts.driver_cuda, facts.torch_version))
    built = _cuda_major_minor(facts.torch_cuda)
    if _driver_too_old(facts):
        needed = MIN_LINUX_DRIVER.get(built[0])
        needs = f", which needs an NVIDIA driver >= {needed} on Linux" if needed else ""
        return Check("cuda driver", FAIL, f"torch {facts.torch_version} is built for CUDA {facts.torch_cuda}{needs}; "
                                          f"this {driver}",
                     torch_build_fix(facts.driver_cuda, facts.torch_version)
                     + (f"; or have the driver upgraded to >= {needed}" if needed else ""))
    note = " (minor-version compatibility)" if facts.driver_cuda < built else ""
    return Check("cuda driver", OK, f"{driver}; torch built for CUDA {facts.torch_cuda}{note}")


def format_cudnn(version: int) -> str:
    """92400 -> '9.24.0' (cuDNN >= 9: major*10000 + minor*100 + patch); 8907 -> '8.9.7'."""
    if version >= 90000:
        return f"{version // 10000}.{version % 10000 // 100}.{version % 100}"
    return f"{version // 1000}.{version % 1000 // 100}.{version % 100}"


def check_cudnn(facts: CudaFacts) -> Check:
    if facts.torch_cuda is None:
        return Check("cudnn", SKIP, "CPU-only torch")
    if facts.cudnn_version is None:
        return Check("cudnn", WARN, "torch finds no cuDNN: 3-D convolutions run without it, much slower",
                     f"reinstall torch (its CUDA wheels bring cuDNN): {torch_pair_command(facts.torch_version)}")
    return Check("cudnn", OK, f"cuDNN {format_cudnn(facts.cudnn_version)}")


def check_bf16(facts: CudaFacts) -> Check:
    if facts.bf16 is None:
        return Check("bf16", SKIP, "no CUDA device")
    if facts.bf16:
        return Check("bf16", OK, "supported")
    return Check("bf16", OK, "not supported by this GPU (nnU-Net's fp16 autocast is unaffected)")


def c_compiler(environ: Mapping[str, str]) -> str | None:
    """The C compiler Triton would use: $CC, else gcc, else clang."""
    return environ.get("CC") or shutil.which("gcc") or shutil.which("clang")


def python_include_dir() -> str:
    """Where Triton looks for Python.h (it maps Debian's posix_local scheme to posix_prefix)."""
    scheme = sysconfig.get_default_scheme()
    return sysconfig.get_paths(scheme="posix_prefix" if scheme == "posix_local" else scheme)["include"]


def compile_problem(environ: Mapping[str, str] = os.environ) -> str | None:
    """Why torch.compile's Triton backend cannot build its kernels' launchers here (None if it can): Triton
    compiles a small C extension with the system compiler against Python.h. This compiles such a file."""
    if importlib.util.find_spec("triton") is None:
        return "Triton is not installed (torch's CUDA wheels on Linux bring it)"
    compiler = c_compiler(environ)
    if compiler is None:
        return "no C compiler (Triton uses $CC, else gcc, else clang)"
    include = python_include_dir()
    with tempfile.TemporaryDirectory() as folder:
        source = Path(folder) / "probe.c"
        source.write_text("#include <Python.h>\nint main(void) { return 0; }\n")
        try:
            result = subprocess.run([compiler, "-fsyntax-only", f"-I{include}", str(source)],
                                    capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired) as error:
            return f"the C compiler {compiler} does not run ({error})"
    if result.returncode != 0:
        last = (result.stderr.strip().splitlines() or ["(no message)"])[-1]
        return f"{compiler} cannot compile against Python.h in {include}: {last}"
    return None


def _compile_enabled(environ: Mapping[str, str]) -> tuple[bool, str]:
    value = environ.get("nnUNet_compile")
    if value is None:
        return True, "nnU-Net's default"
    return value.lower() in ("true", "1", "t"), f"nnUNet_compile={value}"


def check_compile(has_cuda_device: bool, environ: Mapping[str, str],
                  problem: Callable[[Mapping[str, str]], str | None] | None = None) -> Check:
    """nnUNetv2_train compiles the network on CUDA unless nnUNet_compile is false: can Triton build here?"""
    enabled, why = _compile_enabled(environ)
    if not enabled:
        return Check("torch.compile", OK, f"off ({why}): training runs eagerly")
    if not has_cuda_device:
        return Check("torch.compile", SKIP, "nnU-Net compiles only on CUDA devices")
    found = (problem or compile_problem)(environ)
    if found:
        return Check("torch.compile", FAIL, f"on ({why}) but would fail: {found}",
                     "install a C compiler and the Python headers (e.g. module load gcc; apt install gcc python3-dev), "
                     "or train without compiling: export nnUNet_compile=f")
    return Check("torch.compile", OK, f"on ({why}); Triton, a C compiler ({c_compiler(environ)}) and Python.h found")


def cuda_checks(environ: Mapping[str, str]) -> list[Check]:
    try:
        facts = cuda_facts()
    except Exception as error:
        reason = f"torch unusable ({type(error).__name__}: {error})"
        return [Check(name, SKIP, reason) for name in ("cuda device", "cuda driver", "cudnn", "bf16", "torch.compile")]
    checks = [check_cuda_device(facts), check_cuda_driver(facts), check_cudnn(facts), check_bf16(facts)]
    return checks + guarded("torch.compile", check_compile, bool(facts.devices), environ)
