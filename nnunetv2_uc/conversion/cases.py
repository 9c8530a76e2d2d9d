"""Case sources: where one case's image and label come from, how to check them cheaply and how to write them.

The pipeline calls :meth:`CaseSource.inspect` on every case before writing anything (headers only), then
:meth:`CaseSource.write` once per case in a worker process. Instances are small frozen dataclasses so that
they pickle to worker processes; no voxel data is held outside ``write``.
"""
from __future__ import annotations

import abc
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from nnunetv2_uc.conversion.volumes import (
    Geometry, UnconvertibleCase, describe_read_error, read_repaired_geometry, read_repaired_image,
    read_sitk_geometry, to_label_array, write_label,
)
from nnunetv2_uc.conversion.raw_dataset import FILE_ENDING

TRAIN, TEST = "Tr", "Ts"


@dataclass
class Inspection:
    """Result of the cheap, header-level check of one case."""

    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


@dataclass
class CaseOutcome:
    """Result of writing one case."""

    case_id: str
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    label_values: tuple[int, ...] = ()
    header_repaired: bool = False
    label_resampled_grid_differs: bool = False


@dataclass(frozen=True)
class CaseSource(abc.ABC):
    """Base class: a case id, its destination subset (imagesTr or imagesTs) and its metadata."""

    case_id: str
    subset: str
    metadata: tuple[tuple[str, object], ...] = ()

    @property
    @abc.abstractmethod
    def has_label(self) -> bool:
        """Whether the case comes with a segmentation."""

    @abc.abstractmethod
    def inspect(self) -> Inspection:
        """Header-level checks (no voxel data): geometry and the problems found."""

    @abc.abstractmethod
    def write(self, image_path: Path, label_path: Path | None) -> CaseOutcome:
        """Write the nnU-Net image (and label) files for this case."""


def _read_geometry(path: Path, allow_repair: bool) -> tuple[Geometry, bool]:
    """Geometry from SimpleITK; with ``allow_repair``, from nibabel with an orthonormalised direction."""
    try:
        return read_sitk_geometry(path), False
    except RuntimeError as sitk_error:
        if not allow_repair:
            raise UnconvertibleCase(describe_read_error(path, sitk_error)) from None
        try:
            return read_repaired_geometry(path), True
        except UnconvertibleCase:
            raise
        except Exception as nibabel_error:  # noqa: BLE001 - any reader failure is a user-facing problem
            raise UnconvertibleCase(describe_read_error(path, nibabel_error)) from None


def _read_label_array(path: Path, allow_repair: bool):
    try:
        return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))
    except RuntimeError as sitk_error:
        if not allow_repair:
            raise UnconvertibleCase(describe_read_error(path, sitk_error)) from None
        return sitk.GetArrayFromImage(read_repaired_image(path))


@dataclass(frozen=True)
class NiftiCase(CaseSource):
    """A case stored as a NIfTI image plus an optional NIfTI mask.

    allow_header_repair: read files SimpleITK rejects with nibabel and orthonormalise their direction
        (AbdomenCT-1K); image and mask then get the same repaired geometry.
    label_mapping: raw mask value -> written label id; values missing from it are an error.
    label_keeps_own_grid: the mask may legitimately have another shape than the image (uC test labels at
        the original resolution); it is then written with its own geometry instead of the image's.
    """

    image: Path = Path()
    label: Path | None = None
    allow_header_repair: bool = False
    label_mapping: tuple[tuple[int, int], ...] | None = None
    label_keeps_own_grid: bool = False

    @property
    def has_label(self) -> bool:
        return self.label is not None

    def inspect(self) -> Inspection:
        result = Inspection()
        geometries = {}
        for role, path in (("image", self.image), ("label", self.label)):
            if path is None:
                continue
            try:
                geometries[role], _ = _read_geometry(path, self.allow_header_repair)
            except UnconvertibleCase as problem:
                result.problems.append(str(problem))
                continue
            if len(geometries[role].size) != 3:
                result.problems.append(f"{path}: expected a 3-D volume, found size {geometries[role].size}")
        if len(geometries) == 2 and not result.problems:
            self._compare_pair(geometries["image"], geometries["label"], result)
        return result

    def _compare_pair(self, image: Geometry, label: Geometry, result: Inspection) -> None:
        if image.size != label.size:
            if not self.label_keeps_own_grid:
                result.problems.append(f"{self.case_id}: shape mismatch, image {self.image} has size {image.size} "
                                       f"but label {self.label} has size {label.size}")
            return
        if not image.same_spacing(label):
            result.problems.append(f"{self.case_id}: spacing mismatch, image {self.image} has {image.spacing} but "
                                   f"label {self.label} has {label.spacing}")
            return
        result.warnings.extend(image.alignment_warnings(label, self.case_id))

    def write(self, image_path: Path, label_path: Path | None) -> CaseOutcome:
        outcome = CaseOutcome(self.case_id)
        try:
            image_geometry, outcome.header_repaired = self._write_image(image_path)
            if self.label is not None and label_path is not None:
                outcome.label_values, outcome.label_resampled_grid_differs = self._write_label(
                    image_geometry, label_path)
        except UnconvertibleCase as problem:
            outcome.problems.append(str(problem))
        except Exception as error:  # noqa: BLE001 - reported per case, the pipeline aborts as a whole
            outcome.problems.append(describe_read_error(self.image, error))
        return outcome

    def _write_image(self, destination: Path) -> tuple[Geometry, bool]:
        """Copy the file byte for byte when possible; otherwise re-encode (repaired or not .nii.gz)."""
        geometry, needs_repair = _read_geometry(self.image, self.allow_header_repair)
        if needs_repair:
            image = read_repaired_image(self.image)
            sitk.WriteImage(image, str(destination), useCompression=True)
            return Geometry.of_image(image), True
        if self.image.name.endswith(FILE_ENDING):
            shutil.copyfile(self.image, destination)
        else:
            sitk.WriteImage(sitk.ReadImage(str(self.image)), str(destination), useCompression=True)
        return geometry, False

    def _write_label(self, image_geometry: Geometry, destination: Path) -> tuple[tuple[int, ...], bool]:
        assert self.label is not None
        mapping = dict(self.label_mapping) if self.label_mapping is not None else None
        labels = to_label_array(_read_label_array(self.label, self.allow_header_repair), str(self.label), mapping)
        values = tuple(int(v) for v in np.unique(labels))
        label_size = tuple(reversed(labels.shape))
        if label_size == image_geometry.size:
            write_label(labels, image_geometry, destination)
            return values, False
        if not self.label_keeps_own_grid:
            raise UnconvertibleCase(f"{self.case_id}: label {self.label} has size {label_size}, image {self.image} "
                              f"has {image_geometry.size}")
        own_geometry, _ = _read_geometry(self.label, self.allow_header_repair)
        write_label(labels, own_geometry, destination)
        return values, True
