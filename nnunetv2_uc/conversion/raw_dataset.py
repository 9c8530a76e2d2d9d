"""One nnU-Net raw dataset folder, written the one way this project writes them (``convert`` and ``synth``).

``$nnUNet_raw/Dataset{id:03d}_{name}/`` is named and checked here (nnU-Net's rules: id 1..999, a name of letters,
digits, '_' and '-'; an id may belong to one dataset name only), built in a hidden temporary folder next to the
target, given its ``dataset.json`` by nnU-Net's ``generate_dataset_json`` and moved into place at the end. An
existing dataset of the same folder is replaced only with ``overwrite`` and stays intact until the new one is
complete; nothing is left behind when writing fails.
"""
from __future__ import annotations

import re
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from nnunetv2.dataset_conversion.generate_dataset_json import generate_dataset_json

from nnunetv2_uc.errors import OverwriteRefused, UserError
from nnunetv2_uc.files import directory_in_the_making, replace_directory

#: the file ending of every image and label this project writes
FILE_ENDING = ".nii.gz"
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")
MAX_DATASET_ID = 999


def dataset_folder_name(dataset_id: int, name: str) -> str:
    """nnU-Net's folder name of a dataset, e.g. ``Dataset501_FLARE2021``."""
    return f"Dataset{dataset_id:03d}_{name}"


@dataclass(frozen=True)
class RawDatasetTarget:
    """Where a dataset goes: ``raw_root/Dataset{id:03d}_{name}``; ``preprocessed_root`` (if any) is searched too
    when looking for another dataset name with the same id."""

    raw_root: Path
    dataset_id: int
    name: str
    preprocessed_root: Path | None = None

    @property
    def folder_name(self) -> str:
        return dataset_folder_name(self.dataset_id, self.name)

    @property
    def path(self) -> Path:
        return self.raw_root / self.folder_name

    def naming_problems(self) -> list[str]:
        """The id and name against nnU-Net's rules."""
        problems = []
        if not 1 <= self.dataset_id <= MAX_DATASET_ID:
            problems.append(f"--dataset-id {self.dataset_id} is outside nnU-Net's range 1..{MAX_DATASET_ID}")
        if not NAME_PATTERN.fullmatch(self.name):
            problems.append(f"--name {self.name!r}: use letters, digits, '_' and '-' only")
        return problems

    def id_clash_problems(self) -> list[str]:
        """Other dataset names with this id in nnUNet_raw or nnUNet_preprocessed (nnU-Net finds datasets by id)."""
        problems = []
        for root in (self.raw_root, self.preprocessed_root):
            if root is None or not root.is_dir():
                continue
            for other in sorted(root.glob(f"Dataset{self.dataset_id:03d}_*")):
                if other.is_dir() and other.name != self.folder_name:
                    problems.append(f"dataset id {self.dataset_id} is already used by {other}; choose another "
                                    f"--dataset-id or --name {other.name.split('_', 1)[1]}")
        return problems

    def overwrite_problems(self, overwrite: bool) -> list[str]:
        """The target folder itself exists and may not be replaced."""
        if self.path.exists() and not overwrite:
            return [f"{self.path} already exists; pass --overwrite to replace it (it is left untouched)"]
        return []

    def check(self, overwrite: bool) -> None:
        """Raise ``UserError`` (bad id or name, id of another dataset) or ``OverwriteRefused`` (the folder exists
        and ``overwrite`` is False), listing every problem."""
        problems = self.naming_problems() + self.id_clash_problems()
        if problems:
            raise UserError("\n".join(problems))
        refused = self.overwrite_problems(overwrite)
        if refused:
            raise OverwriteRefused("\n".join(refused))

    @contextmanager
    def writing(self) -> Iterator[Path]:
        """A hidden temporary folder in ``raw_root`` to write the dataset into; when the block succeeds it replaces
        ``path`` (an existing dataset is kept until then), when it fails it is removed and ``path`` is untouched."""
        with directory_in_the_making(self.raw_root, self.folder_name) as work_dir:
            yield work_dir
            replace_directory(work_dir, self.path)


def write_dataset_json(folder: Path, *, channel_names: dict, labels: dict[str, int], num_training_cases: int,
                       dataset_name: str, reference: str, licence: str, description: str, converted_by: str,
                       **extras) -> None:
    """``folder/dataset.json`` through nnU-Net's ``generate_dataset_json`` (``extras`` become extra keys)."""
    generate_dataset_json(
        str(folder), channel_names=dict(channel_names), labels=dict(labels), num_training_cases=num_training_cases,
        file_ending=FILE_ENDING, dataset_name=dataset_name, reference=reference, license=licence,
        description=description, converted_by=converted_by, **extras,
    )
