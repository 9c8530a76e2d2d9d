"""Case sources: where one case's image and label come from, how to check them cheaply and how to write them.

The pipeline calls :meth:`CaseSource.inspect` on every case before writing anything (headers only), then
:meth:`CaseSource.write` once per case in a worker process. Instances are small frozen dataclasses so that
they pickle to worker processes; no voxel data is held outside ``write``.

First the volumes a case is made of: reading NIfTI volumes and their geometry, repairing non-orthonormal headers,
and turning masks into labels.

Arrays follow SimpleITK's numpy convention, (z, y, x); geometry sizes follow SimpleITK's (x, y, z).
"""
from __future__ import annotations

import abc
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
import SimpleITK as sitk

from nnunetv2_uc.conversion.raw_dataset import FILE_ENDING

# Spacings closer than this (relative) are the same spacing written with float rounding.
SPACING_RTOL = 1e-3
ORIGIN_ATOL = 1e-3
DIRECTION_ATOL = 1e-4
# nnU-Net masks are written as uint8, so label ids above this cannot be stored.
MAX_LABEL_ID = 255


class UnconvertibleCase(Exception):
    """One or more problems that make a case unconvertible; the message names the file(s) and the fix."""


@dataclass(frozen=True)
class Geometry:
    """Voxel grid of a volume in SimpleITK conventions (size is x, y, z)."""

    size: tuple[int, ...]
    spacing: tuple[float, ...]
    origin: tuple[float, ...]
    direction: tuple[float, ...]

    @classmethod
    def of_image(cls, image: sitk.Image) -> "Geometry":
        return cls(tuple(image.GetSize()), tuple(image.GetSpacing()), tuple(image.GetOrigin()),
                   tuple(image.GetDirection()))

    def apply_to(self, image: sitk.Image) -> sitk.Image:
        """Give ``image`` (same size) this geometry, in place; returns it for chaining."""
        image.SetSpacing(self.spacing)
        image.SetOrigin(self.origin)
        image.SetDirection(self.direction)
        return image

    def same_spacing(self, other: "Geometry") -> bool:
        return np.allclose(self.spacing, other.spacing, rtol=SPACING_RTOL, atol=0)

    def alignment_warnings(self, other: "Geometry", what: str) -> list[str]:
        """Origin/direction differences: nnU-Net only warns about these, and so do we."""
        warnings = []
        if not np.allclose(self.origin, other.origin, atol=ORIGIN_ATOL):
            warnings.append(f"{what}: origin differs between image {self.origin} and label {other.origin}; "
                            f"the label gets the image's origin")
        if not np.allclose(self.direction, other.direction, atol=DIRECTION_ATOL):
            warnings.append(f"{what}: direction differs between image and label; the label gets the image's")
        return warnings


def read_sitk_geometry(path: Path) -> Geometry:
    """Header-only read with SimpleITK (raises RuntimeError if SimpleITK rejects the file)."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.ReadImageInformation()
    return Geometry(tuple(reader.GetSize()), tuple(reader.GetSpacing()), tuple(reader.GetOrigin()),
                    tuple(reader.GetDirection()))


def _nibabel_image(path: Path):
    image = nib.load(str(path))
    if len(image.shape) != 3:
        raise UnconvertibleCase(f"{path}: expected a 3-D volume, found shape {image.shape}")
    return image


def repaired_geometry_from_affine(affine: np.ndarray, shape: tuple[int, ...]) -> Geometry:
    """SimpleITK geometry from a NIfTI affine whose rotation part is not orthonormal.

    The column norms of the 3x3 part are the spacings; the nearest orthonormal matrix to the remaining
    direction matrix (polar decomposition via SVD) becomes the direction. NIfTI is RAS, ITK is LPS, hence the
    sign flip of the first two rows.
    """
    lps = np.diag([-1.0, -1.0, 1.0]) @ np.asarray(affine, dtype=float)[:3, :]
    linear, origin = lps[:, :3], lps[:, 3]
    spacing = np.linalg.norm(linear, axis=0)
    if np.any(spacing <= 0):
        raise UnconvertibleCase(f"affine has a zero-length axis: {affine.tolist()}")
    u, _, vt = np.linalg.svd(linear / spacing)
    direction = u @ vt
    return Geometry(tuple(int(s) for s in shape), tuple(float(s) for s in spacing),
                    tuple(float(o) for o in origin), tuple(float(d) for d in direction.ravel()))


def read_repaired_geometry(path: Path) -> Geometry:
    """Header-only read with nibabel, geometry orthonormalised (for files SimpleITK rejects)."""
    image = _nibabel_image(path)
    return repaired_geometry_from_affine(image.affine, image.shape)


def read_repaired_image(path: Path) -> sitk.Image:
    """Full read with nibabel, keeping the stored dtype when no intensity scaling applies."""
    image = _nibabel_image(path)
    array = np.asanyarray(image.dataobj)
    sitk_image = sitk.GetImageFromArray(np.ascontiguousarray(array.transpose(2, 1, 0)))
    return repaired_geometry_from_affine(image.affine, image.shape).apply_to(sitk_image)


def describe_read_error(path: Path, error: Exception) -> str:
    """The last meaningful line of a SimpleITK/nibabel error, prefixed with the file."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return f"{path}: cannot be read ({lines[-1] if lines else type(error).__name__})"


def to_label_array(array: np.ndarray, where: str, mapping: dict[int, int] | None = None) -> np.ndarray:
    """Round a (possibly float) mask, optionally remap ids, and return it as uint8.

    Raises UnconvertibleCase for NaNs and for values that cannot be label ids (negative, > 255, or, with a
    mapping, not in it).
    """
    if np.issubdtype(array.dtype, np.floating):
        if not np.all(np.isfinite(array)):
            raise UnconvertibleCase(f"{where}: mask contains NaN/inf values")
        array = np.rint(array)
    values = np.unique(array)
    bad = [v for v in values.tolist() if v < 0 or v > MAX_LABEL_ID]
    if bad:
        raise UnconvertibleCase(f"{where}: mask values {bad} cannot be label ids (expected 0..{MAX_LABEL_ID})")
    labels = array.astype(np.uint8, copy=False)
    if mapping is None:
        return labels
    unknown = sorted(int(v) for v in values if int(v) not in mapping)
    if unknown:
        raise UnconvertibleCase(f"{where}: unexpected label values {unknown} (known: {sorted(mapping)})")
    lookup = np.zeros(MAX_LABEL_ID + 1, dtype=np.uint8)
    for source_id, target_id in mapping.items():
        lookup[source_id] = target_id
    return lookup[labels]


def write_label(labels: np.ndarray, geometry: Geometry, destination: Path) -> None:
    """Write a uint8 (z, y, x) label array with the given geometry, compressed."""
    image = sitk.GetImageFromArray(labels)
    if tuple(image.GetSize()) != tuple(geometry.size):
        raise UnconvertibleCase(f"{destination.name}: label size {image.GetSize()} does not match the image size "
                          f"{geometry.size}")
    sitk.WriteImage(geometry.apply_to(image), str(destination), useCompression=True)


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
