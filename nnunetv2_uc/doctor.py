"""Is this installation ready for nnU-Net training and prediction with this plugin? (`nnunetv2_uc doctor`)

Each check is a small function that returns a ``Check`` (name, status, detail, fix); ``run_checks`` runs them
all and ``blocking`` says whether one failed. The checks take what they inspect as arguments (the environment,
the CUDA facts gathered by ``cuda_facts``, a compiler probe, ...), so every branch is testable without a GPU.

torch, torchvision and nnU-Net are imported inside the checks, never at the top: the doctor has to report a
broken install, not crash on it.
"""
from __future__ import annotations

import contextlib
import ctypes
import importlib
import importlib.metadata
import importlib.util
import inspect
import io
import json
import os
import platform
import shutil
import subprocess
import sysconfig
import tempfile
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Mapping

from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import InvalidVersion, Version

from nnunetv2_uc import provenance
from nnunetv2_uc.provenance import DIST
from nnunetv2_uc.registration import ENV_VAR as EXT_TRAINER_VAR
from nnunetv2_uc.registration import export_line, ext_trainer_value, shim_directory

OK, WARN, FAIL, SKIP = "ok", "warn", "fail", "skip"
NNUNET_PATHS = {
    "nnUNet_raw": "raw datasets, read by nnUNetv2_plan_and_preprocess",
    "nnUNet_preprocessed": "plans and preprocessed data, written by planning and read by training",
    "nnUNet_results": "trained models, written by nnUNetv2_train and read by nnUNetv2_predict",
}
# The lowest Linux driver of each CUDA major release (NVIDIA's "CUDA Compatibility" guide, table "CUDA Toolkit
# 11.x, 12.x, and 13.x Driver Version Ranges"); within a major release, minor-version compatibility applies.
MIN_LINUX_DRIVER = {13: 580, 12: 525, 11: 450}
# torch build to suggest for a driver of each CUDA major release (pytorch.org's index names the CUDA flavour)
TORCH_FLAVOUR_FOR_DRIVER = {12: "cu126", 11: "cu118"}
TORCH_INDEX = "https://download.pytorch.org/whl"
LOW_DISK_WARN_GIB = 50  # a preprocessed CT dataset takes tens of GB
LOW_DISK_FAIL_GIB = 1
GIB = 1024 ** 3


@dataclass(frozen=True)
class Check:
    """One line of the report: ``status`` is ok, warn, fail (blocks) or skip (does not apply here)."""
    name: str
    status: str
    detail: str
    fix: str = ""


def blocking(checks: Iterable[Check]) -> bool:
    return any(c.status == FAIL for c in checks)


# ---------------------------------------------------------------------------------------- package metadata

def installed_version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def runtime_requirements(dist: str = DIST) -> list[Requirement]:
    """The install requirements of ``dist`` that apply here (extras such as [test] left out), from its metadata."""
    requirements = [Requirement(r) for r in importlib.metadata.requires(dist) or []]
    return [r for r in requirements if r.marker is None or r.marker.evaluate({"extra": ""})]


def _not_installed_check(name: str) -> Check:
    return Check(name, WARN, f"{DIST} is not installed in this environment (a source tree on PYTHONPATH?), so its "
                             "supported ranges are unknown", f"pip install . in the checkout (or: make install)")


def check_python(version: str | None = None, requires_python: str | None = None) -> Check:
    version = version or platform.python_version()
    if requires_python is None:
        try:
            requires_python = importlib.metadata.metadata(DIST)["Requires-Python"] or ""
        except importlib.metadata.PackageNotFoundError:
            return _not_installed_check("python")
    if SpecifierSet(requires_python).contains(version, prereleases=True):
        return Check("python", OK, f"{version} ({DIST} needs {requires_python})")
    return Check("python", FAIL, f"{version}, but {DIST} needs {requires_python}",
                 f"create the virtual environment with a Python {requires_python}")


def _requirement_problem(requirement: Requirement, version_of: Callable[[str], str | None]) -> str | None:
    version = version_of(requirement.name)
    if version is None:
        return f"{requirement.name} is not installed (needs {requirement.specifier or 'any version'})"
    if not requirement.specifier.contains(version, prereleases=True):
        return f"{requirement.name} {version} is outside {requirement.specifier}"
    return None


def check_nnunetv2(requirements: list[Requirement] | None = None,
                   version_of: Callable[[str], str | None] = installed_version) -> Check:
    try:
        requirements = runtime_requirements() if requirements is None else requirements
    except importlib.metadata.PackageNotFoundError:
        return _not_installed_check("nnunetv2")
    requirement = next(r for r in requirements if r.name == "nnunetv2")
    problem = _requirement_problem(requirement, version_of)
    if problem:
        return Check("nnunetv2", FAIL, problem, f'pip install "nnunetv2{requirement.specifier}"')
    return Check("nnunetv2", OK, f"{version_of('nnunetv2')} (supported: {requirement.specifier})")


def check_dependencies(requirements: list[Requirement] | None = None,
                       version_of: Callable[[str], str | None] = installed_version) -> Check:
    """Every other install requirement of the package within its range (nnunetv2 has its own line)."""
    try:
        requirements = runtime_requirements() if requirements is None else requirements
    except importlib.metadata.PackageNotFoundError:
        return _not_installed_check("dependencies")
    others = [r for r in requirements if r.name != "nnunetv2"]
    problems = {r: p for r in others if (p := _requirement_problem(r, version_of))}
    if problems:
        wanted = " ".join(f'"{r.name}{r.specifier}"' for r in problems)
        return Check("dependencies", FAIL, "; ".join(problems.values()), f"pip install {wanted}")
    return Check("dependencies", OK, f"{len(others)} requirements of {DIST} within their ranges")


# ------------------------------------------------------------------------------------------ torch pairing

def public_version(version: str) -> str:
    """'2.14.1+cu130' -> '2.14.1'."""
    return version.split("+", 1)[0]


def local_tag(version: str) -> str:
    """'2.14.1+cu130' -> 'cu130' ('' for a version without a build tag)."""
    return version.split("+", 1)[1] if "+" in version else ""


def matching_torchvision(torch_version: str) -> str | None:
    """The torchvision release of a torch 2.x release: 0.(minor + 15).patch (2.14.1 -> 0.29.1)."""
    try:
        v = Version(public_version(torch_version))
    except InvalidVersion:
        return None
    return f"0.{v.minor + 15}.{v.micro}" if v.major == 2 else None


def torch_pair_command(torch_version: str | None, index_url: str | None = None) -> str:
    """pip command installing a torch/torchvision pair of one release and one build (from ``index_url``)."""
    torch_public = public_version(torch_version) if torch_version else None
    vision = matching_torchvision(torch_version) if torch_version else None
    pair = f"torch=={torch_public} torchvision=={vision}" if torch_public and vision else "-r requirements-pins.txt"
    index = f" --index-url {index_url}" if index_url else ""
    return f"pip install {pair}{index}"


def check_torch_torchvision(import_module: Callable = importlib.import_module) -> Check:
    """torch and torchvision import together: nnU-Net's -tr lookup imports timm, which imports torchvision, and a
    torchvision of another torch build fails with 'operator torchvision::nms does not exist'."""
    name = "torch+torchvision"
    try:
        torch = import_module("torch")
    except Exception as error:  # an import can fail with any error (missing CUDA libraries, ABI mismatch)
        return Check(name, FAIL, f"torch does not import: {type(error).__name__}: {error}",
                     "reinstall the pinned pair: pip install -c requirements-pins.txt -r requirements-pins.txt")
    fix = (f"install the torchvision of this torch from the same index: {torch_pair_command(torch.__version__)} "
           "(add the --index-url torch came from, e.g. make install TORCH_INDEX_URL=...)")
    try:
        torchvision = import_module("torchvision")
    except Exception as error:
        return Check(name, FAIL, f"torchvision does not import with torch {torch.__version__}: "
                                 f"{type(error).__name__}: {error}", fix)
    expected = matching_torchvision(torch.__version__)
    got = public_version(torchvision.__version__)
    if expected and Version(got).release[:2] != Version(expected).release[:2]:
        return Check(name, FAIL, f"torchvision {torchvision.__version__} is not the partner of torch "
                                 f"{torch.__version__} (torchvision {expected})", fix)
    if local_tag(torch.__version__) != local_tag(torchvision.__version__):
        return Check(name, WARN, f"torch {torch.__version__} and torchvision {torchvision.__version__} are "
                                 "different builds (they import now, but a CPU/CUDA mix breaks torchvision::nms)",
                     fix)
    return Check(name, OK, f"torch {torch.__version__} and torchvision {torchvision.__version__} import together")


# ------------------------------------------------------------------------------------------ nnU-Net setup

def check_nnunet_path(variable: str, environ: Mapping[str, str]) -> Check:
    """``variable`` is set to an existing folder this user can write."""
    value = environ.get(variable)
    purpose = NNUNET_PATHS[variable]
    if not value:
        return Check(variable, FAIL, f"not set ({purpose})",
                     f"export {variable}=/path/to/{variable} and mkdir -p it "
                     "(nnU-Net's documentation/setting_up_paths.md)")
    path = Path(value)
    if not path.is_dir():
        state = "is not a folder" if path.exists() else "does not exist"
        return Check(variable, FAIL, f"{value} {state}", f"mkdir -p {value} (or point {variable} to a folder)")
    try:
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as error:
        return Check(variable, FAIL, f"{value} is not writable ({error.strerror})",
                     f"fix the permissions of {value} or point {variable} to a folder you can write")
    return Check(variable, OK, value)


def check_ext_trainer(environ: Mapping[str, str], shim: str | None = None) -> Check:
    """nnUNet_extTrainer lists this plugin's shim folder, so the stock nnUNetv2_* commands find its trainers."""
    shim = shim or shim_directory()
    existing = environ.get(EXT_TRAINER_VAR)
    entries = [e for e in (existing or "").split(os.pathsep) if e]
    if any(os.path.abspath(e) == shim for e in entries):
        return Check(EXT_TRAINER_VAR, OK, f"includes {shim}")
    return Check(EXT_TRAINER_VAR, WARN,
                 "does not include this plugin: the stock nnUNetv2_train/nnUNetv2_predict will not find "
                 "-tr nnUNetTrainerUC / nnUNetTrainerUXNet (nnunetv2_uc predict finds them anyway)",
                 f'eval "$(nnunetv2_uc env)"   (it runs: {export_line(existing)})')


@contextlib.contextmanager
def plugin_trainers_findable():
    """nnUNet_extTrainer with this plugin's shim folder appended, for the duration (as nnunetv2_uc predict does)."""
    before = os.environ.get(EXT_TRAINER_VAR)
    os.environ[EXT_TRAINER_VAR] = ext_trainer_value(before)
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(EXT_TRAINER_VAR, None)
        else:
            os.environ[EXT_TRAINER_VAR] = before


def find_trainer_class(trainer_name: str):
    """nnU-Net's own trainer lookup (its search log silenced), with this plugin's trainers findable."""
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

    with plugin_trainers_findable(), contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # deprecation notes of modules the lookup imports
        return recursive_find_trainer_class_by_name(trainer_name)


def _lookup_fix(message: str) -> str:
    if "torchvision::nms" in message or "torchvision" in message:
        return f"install a torch/torchvision pair that imports together: {torch_pair_command(_torch_version())}"
    return "reinstall nnunetv2 and this plugin (make install); the error above names the module that failed"


def _torch_version() -> str | None:
    with contextlib.suppress(Exception):
        import torch
        return torch.__version__
    return None


def check_trainer_lookup(find_trainer: Callable[[str], type] | None = None,
                         trainer_name: str = "nnUNetTrainerUC") -> Check:
    """nnU-Net's -tr lookup (it imports every nnU-Net trainer module first) resolves this plugin's trainer."""
    try:
        trainer = (find_trainer or find_trainer_class)(trainer_name)
    except Exception as error:
        message = f"{type(error).__name__}: {error}"
        return Check("trainer lookup", FAIL, f"nnU-Net's -tr lookup of {trainer_name} fails: {message}",
                     _lookup_fix(message))
    return Check("trainer lookup", OK, f"nnU-Net's -tr lookup finds {trainer_name} ({trainer.__module__})")


# ------------------------------------------------------------------------------------------------- CUDA

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


# ------------------------------------------------------------------------------------------------- disk

def check_disk(environ: Mapping[str, str], free_bytes: Callable[[str], int] = lambda p: shutil.disk_usage(p).free
               ) -> Check:
    folder = environ.get("nnUNet_preprocessed")
    if not folder or not os.path.isdir(folder):
        return Check("disk", SKIP, "nnUNet_preprocessed is not an existing folder (see its line)")
    free = free_bytes(folder)
    detail = f"{free / GIB:.1f} GiB free in {folder}"
    if free < LOW_DISK_FAIL_GIB * GIB:
        return Check("disk", FAIL, detail, "free space there, or point nnUNet_preprocessed to a larger disk")
    if free < LOW_DISK_WARN_GIB * GIB:
        return Check("disk", WARN, f"{detail} (a preprocessed CT dataset takes tens of GB)",
                     "free space there, or point nnUNet_preprocessed to a larger disk")
    return Check("disk", OK, detail)


# ------------------------------------------------------------------------------------------ a model folder

def check_model_record(record: provenance.Record | None) -> Check:
    """The record of the code that trained the model (plans.json), against the installed version."""
    if record is None:
        return Check("model record", SKIP, f"plans.json names no {DIST} version (a model of nnU-Net's own trainers, "
                                           f"or of an {DIST} version that wrote no record)")
    if note := provenance.version_note(record):
        return Check("model record", WARN, f"trained with {record.describe()}", note)
    return Check("model record", OK, f"trained with {record.describe()}, the installed version")


def _network_fix(folder: Path, configuration: str, record: provenance.Record | None, error: str) -> str:
    network_path = provenance.needed_network(folder, configuration, record)
    return (provenance.missing_network_message(network_path, configuration, record, error)
            or f"{network_path} is not a class of {DIST}: the package that provides it may be another version "
               "than the one that trained the model")


def load_checkpoint(path: Path) -> dict:
    import torch

    return torch.load(path, map_location="cpu", weights_only=False)  # nnU-Net's checkpoints hold more than tensors


def build_network_from_folder(trainer_class, folder: Path, configuration: str):
    """The network as nnU-Net's predictor builds it: the trainer's static build_network_architecture on the
    folder's plans.json and dataset.json, deep supervision off."""
    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    plans_manager = PlansManager(json.loads((folder / "plans.json").read_text()))
    dataset_json = json.loads((folder / "dataset.json").read_text())
    config = plans_manager.get_configuration(configuration)
    channels_in = determine_num_input_channels(plans_manager, config, dataset_json)
    channels_out = plans_manager.get_label_manager(dataset_json).num_segmentation_heads
    if "plans_manager" in inspect.signature(trainer_class.build_network_architecture).parameters:
        return trainer_class.build_network_architecture(plans_manager, config, channels_in, channels_out,
                                                        enable_deep_supervision=False)
    return trainer_class.build_network_architecture(  # the signature of nnU-Net < 2.6
        config.network_arch_class_name, config.network_arch_init_kwargs, config.network_arch_init_kwargs_req_import,
        channels_in, channels_out, enable_deep_supervision=False)


def _state_dict_mismatch(error: Exception) -> str:
    text = str(error).strip().splitlines()
    return " ".join(line.strip() for line in text[:3])[:400]


def check_model_folder(folder: str | os.PathLike, find_trainer: Callable[[str], type] | None = None
                       ) -> list[Check]:
    """A trained model folder (…/DatasetXXX/TRAINER__PLANS__CONFIG): its files, the trainer class, the network
    rebuilt from its plans, and a strict load of every fold_*/checkpoint_*.pth."""
    folder = Path(folder)
    missing = [name for name in ("plans.json", "dataset.json") if not (folder / name).is_file()]
    checkpoints = sorted(folder.glob("fold_*/checkpoint_*.pth"))
    if missing or not checkpoints:
        lacking = missing + ([] if checkpoints else ["fold_*/checkpoint_*.pth"])
        return [Check("model files", FAIL, f"{folder} lacks {', '.join(lacking)}",
                      "give the folder nnUNetv2_train wrote: $nnUNet_results/DatasetXXX_Name/TRAINER__PLANS__CONFIG")]
    record = provenance.load_record(folder)
    results = [Check("model files", OK, f"{folder}: plans.json, dataset.json, {len(checkpoints)} checkpoint(s)"),
               check_model_record(record)]
    try:
        first = load_checkpoint(checkpoints[0])
        trainer_name, configuration = first["trainer_name"], first["init_args"]["configuration"]
    except Exception as error:
        return results + [Check("model checkpoint", FAIL, f"{checkpoints[0]} is not an nnU-Net checkpoint: "
                                                          f"{type(error).__name__}: {error}",
                                "copy the checkpoint again from where it was trained")]
    try:
        trainer_class = (find_trainer or find_trainer_class)(trainer_name)
    except Exception as error:
        return results + [Check("model trainer", FAIL, f"{trainer_name} does not resolve: {type(error).__name__}: "
                                                       f"{str(error)[:300]}",
                                provenance.missing_trainer_message(trainer_name, record))]
    results.append(Check("model trainer", OK, f"{trainer_name} ({trainer_class.__module__})"))
    try:
        network = build_network_from_folder(trainer_class, folder, configuration)
    except Exception as error:
        message = f"{type(error).__name__}: {error}"
        return results + [Check("model network", FAIL, f"{trainer_name} cannot build the network of plans.json "
                                                       f"configuration {configuration}: {message[:400]}",
                                _network_fix(folder, configuration, record, message[:400]))]
    n_params = sum(p.numel() for p in network.parameters())
    results.append(Check("model network", OK, f"{type(network).__name__} ({n_params:,} parameters) from plans.json "
                                              f"configuration {configuration}"))
    for path in checkpoints:
        name = f"model {path.parent.name}/{path.name}"
        try:
            weights = (first if path == checkpoints[0] else load_checkpoint(path))["network_weights"]
            network.load_state_dict(weights, strict=True)
        except Exception as error:
            results.append(Check(name, FAIL, f"does not load into the rebuilt network: {_state_dict_mismatch(error)}",
                                 f"the checkpoint comes from another network or {DIST} version: "
                                 + _network_fix(folder, configuration, record, _state_dict_mismatch(error))))
        else:
            results.append(Check(name, OK, f"{len(weights)} tensors, strict load"))
    return results


# ---------------------------------------------------------------------------------------------- all checks

def _guarded(name: str, check: Callable[..., Check | list[Check]], *args) -> list[Check]:
    """Run one check; a crash of the check itself becomes a failed line instead of ending the report."""
    try:
        result = check(*args)
    except Exception as error:
        return [Check(name, FAIL, f"the check itself crashed: {type(error).__name__}: {error}",
                      "report this with the output of nnunetv2_uc doctor --json")]
    return result if isinstance(result, list) else [result]


def _cuda_checks(environ: Mapping[str, str]) -> list[Check]:
    try:
        facts = cuda_facts()
    except Exception as error:
        reason = f"torch unusable ({type(error).__name__}: {error})"
        return [Check(name, SKIP, reason) for name in ("cuda device", "cuda driver", "cudnn", "bf16", "torch.compile")]
    checks = [check_cuda_device(facts), check_cuda_driver(facts), check_cudnn(facts), check_bf16(facts)]
    return checks + _guarded("torch.compile", check_compile, bool(facts.devices), environ)


def run_checks(model_folder: str | os.PathLike | None = None, environ: Mapping[str, str] | None = None
               ) -> list[Check]:
    """Every check, in report order; with ``model_folder`` also the trained model's."""
    environ = os.environ if environ is None else environ
    checks = [*_guarded("python", check_python), *_guarded("torch+torchvision", check_torch_torchvision),
              *_guarded("nnunetv2", check_nnunetv2), *_guarded("dependencies", check_dependencies)]
    for variable in NNUNET_PATHS:
        checks += _guarded(variable, check_nnunet_path, variable, environ)
    checks += _guarded(EXT_TRAINER_VAR, check_ext_trainer, environ)
    checks += _guarded("trainer lookup", check_trainer_lookup)
    checks += _guarded("cuda", _cuda_checks, environ)
    checks += _guarded("disk", check_disk, environ)
    if model_folder is not None:
        checks += _guarded("model", check_model_folder, model_folder)
    return checks


LABELS = {OK: "[ ok ]", WARN: "[warn]", FAIL: "[FAIL]", SKIP: "[skip]"}


def format_line(check: Check) -> str:
    fix = f" -- fix: {check.fix}" if check.fix and check.status in (WARN, FAIL) else ""
    return f"{LABELS[check.status]} {check.name}: {check.detail}{fix}"


def format_report(checks: list[Check]) -> str:
    counts = {s: sum(c.status == s for c in checks) for s in (OK, WARN, FAIL, SKIP)}
    verdict = (f"{counts[FAIL]} check(s) failed: fix them before training or predicting" if counts[FAIL]
               else "nothing blocks")
    summary = (f"doctor: {counts[OK]} ok, {counts[WARN]} warning(s), {counts[FAIL]} failed, {counts[SKIP]} skipped; "
               f"{verdict}")
    return "\n".join([*(format_line(c) for c in checks), summary])


def report_json(checks: list[Check]) -> str:
    return json.dumps({"blocking": blocking(checks), "checks": [asdict(c) for c in checks]}, indent=2)
