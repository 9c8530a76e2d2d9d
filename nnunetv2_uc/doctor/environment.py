"""The installed packages: Python, nnU-Net and the other requirements, the torch/torchvision pair, disk space."""
from __future__ import annotations

import importlib
import importlib.metadata
import os
import platform
import shutil
from typing import Callable, Mapping

from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import InvalidVersion, Version

from nnunetv2_uc.doctor.checks import FAIL, OK, SKIP, WARN, Check
from nnunetv2_uc.registration import DIST

# torch build to suggest for a driver of each CUDA major release (pytorch.org's index names the CUDA flavour)
TORCH_FLAVOUR_FOR_DRIVER = {12: "cu126", 11: "cu118"}
TORCH_INDEX = "https://download.pytorch.org/whl"
LOW_DISK_WARN_GIB = 50  # a preprocessed CT dataset takes tens of GB
LOW_DISK_FAIL_GIB = 1
GIB = 1024 ** 3


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
                             "supported ranges are unknown", "pip install . in the checkout (or: make install)")


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
