"""Reading NIfTI volumes and their geometry, repairing non-orthonormal headers, and turning masks into labels.

Arrays follow SimpleITK's numpy convention, (z, y, x); geometry sizes follow SimpleITK's (x, y, z).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
import nibabel as nib
import numpy as np
import SimpleITK as sitk

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
