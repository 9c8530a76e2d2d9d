"""Helpers for finding a release's folders and files, shared by the dataset modules."""
from __future__ import annotations

import re
from pathlib import Path

from nnunetv2_uc.conversion.pipeline import ConversionError

NIFTI_SUFFIXES = (".nii.gz", ".nii")


def input_folder(path: str) -> Path:
    """The --input folder, or a ConversionError naming it."""
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise ConversionError([f"--input {folder} is not a folder; point it at the extracted release"])
    return folder


def find_subfolder(root: Path, *names: str, depth: int = 2) -> Path | None:
    """First folder named like one of ``names`` (case-insensitive) at ``root`` or up to ``depth`` levels below."""
    wanted = [n.lower() for n in names]
    level = [root]
    for _ in range(depth + 1):
        for name in wanted:
            for folder in level:
                if folder.name.lower() == name:
                    return folder
        level = sorted(child for folder in level for child in folder.iterdir()
                       if child.is_dir() and not child.name.startswith("."))
    return None


def nifti_files(folder: Path) -> list[Path]:
    """The NIfTI files directly in ``folder``, sorted, hidden files ignored."""
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")
                  and p.name.endswith(NIFTI_SUFFIXES))


def nifti_stem(path: Path) -> str:
    """File name without .nii/.nii.gz."""
    for suffix in NIFTI_SUFFIXES:
        if path.name.endswith(suffix):
            return path.name[: -len(suffix)]
    return path.stem


def match_files(folder: Path, pattern: str) -> dict[str, Path]:
    """Files in ``folder`` whose stem fully matches ``pattern``, keyed by the pattern's first group."""
    regex = re.compile(pattern)
    found = {}
    for path in nifti_files(folder):
        match = regex.fullmatch(nifti_stem(path))
        if match:
            found[match.group(1)] = path
    return found


def unmatched_problems(images: dict[str, Path], labels: dict[str, Path], *, images_need_labels: bool = True
                       ) -> list[str]:
    """Problems for labels without an image and (optionally) images without a label."""
    problems = [f"label {labels[key]} has no matching image" for key in sorted(set(labels) - set(images))]
    if images_need_labels:
        problems += [f"image {images[key]} has no matching label" for key in sorted(set(images) - set(labels))]
    return problems
