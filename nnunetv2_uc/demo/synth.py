"""Write a small synthetic abdominal-CT dataset (4 organs, HU, anisotropic) in nnU-Net raw format.

Every case is a miniature abdomen defined in physical millimetres and sampled on its own grid:
air around a body outline, a subcutaneous fat layer, soft tissue, a vertebra and ribs (bone),
and four labelled organ-like structures (liver, kidneys, spleen, pancreas) whose shape, size,
orientation and position are random. Intensities are in HU with Gaussian noise, a smooth additive
bias and slight partial-volume blur. Slice spacing (2.5-5 mm) and in-plane spacing (0.7-0.9 mm)
vary per case, so nnU-Net's fingerprint and planning (target spacing, resampling, patch size) do
real work. Held-out test cases go to imagesTs with their labels in labelsTs.

The output is deterministic for a seed: case i is drawn from its own random stream, so the same
case is identical whatever --cases is. The dataset is written into a temporary folder and moved
into place at the end (:mod:`nnunetv2_uc.conversion.raw_dataset`, as ``convert`` does): an existing dataset of the same
folder is replaced only with --overwrite, and an ID used by another dataset name is refused.

Example:
    nnunetv2_uc synth --dataset-id 990 --cases 24 --test-cases 6 --seed 0
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy.ndimage import gaussian_filter

from nnunetv2_uc.errors import UserError
from nnunetv2_uc.conversion.raw_dataset import FILE_ENDING, RawDatasetTarget, write_dataset_json

LABELS: dict[str, int] = {"background": 0, "liver": 1, "kidney": 2, "spleen": 3, "pancreas": 4}
# tissue classes of the (unlabelled) anatomy, returned with every case for inspection and tests
TISSUES: dict[str, int] = {"air": 0, "fat": 1, "soft_tissue": 2, "bone": 3}
# mean HU of each tissue / organ before the per-case jitter
TISSUE_HU: dict[str, float] = {"air": -1000.0, "fat": -100.0, "soft_tissue": 40.0, "bone_cortex": 850.0,
                               "bone_marrow": 250.0}
ORGAN_HU: dict[str, float] = {"liver": 75.0, "kidney": 210.0, "spleen": 150.0, "pancreas": 110.0}
HU_RANGE: tuple[int, int] = (-1024, 3071)
SLICE_SPACING_MM: tuple[float, float] = (2.5, 5.0)
INPLANE_SPACING_MM: tuple[float, float] = (0.7, 0.9)
SLICES: tuple[int, int] = (24, 40)
INPLANE_VOXELS: tuple[int, int] = (96, 128)
DEFAULT_NAME = "SyntheticCT"


@dataclass
class SyntheticCase:
    """One synthetic case; arrays are (z, y, x) like SimpleITK's numpy view."""

    image: np.ndarray          # int16 HU
    label: np.ndarray          # uint8, values in LABELS
    tissue: np.ndarray         # uint8, values in TISSUES (anatomy under the organs)
    spacing_zyx: tuple[float, float, float]


# ----------------------------------------------------------------------------- geometry helpers

def _grid(shape: tuple[int, int, int], spacing: tuple[float, float, float]) -> tuple[np.ndarray, ...]:
    """Physical coordinates (mm) of the voxel centres, centred on the volume, as broadcastable arrays."""
    axes = [(np.arange(n, dtype=np.float32) - (n - 1) / 2.0) * s for n, s in zip(shape, spacing)]
    return np.ix_(*axes)


def _rotation(rng: np.random.Generator, max_inplane_deg: float, max_tilt_deg: float) -> np.ndarray:
    """Random rotation matrix acting on (z, y, x) vectors: in-plane turn plus a small tilt."""
    a = np.deg2rad(rng.uniform(-max_inplane_deg, max_inplane_deg))
    t = np.deg2rad(rng.uniform(-max_tilt_deg, max_tilt_deg))
    inplane = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    tilt = np.array([[np.cos(t), -np.sin(t), 0], [np.sin(t), np.cos(t), 0], [0, 0, 1]])
    return (inplane @ tilt).astype(np.float32)


def _smooth_field(rng: np.random.Generator, coords: tuple[np.ndarray, ...], n_waves: int,
                  wavelength_mm: tuple[float, float]) -> np.ndarray:
    """A smooth random field in [-1, 1] made of plane waves in physical space (grid independent)."""
    z, y, x = coords
    field = np.zeros(np.broadcast_shapes(z.shape, y.shape, x.shape), dtype=np.float32)
    for _ in range(n_waves):
        direction = rng.normal(size=3)
        direction /= np.linalg.norm(direction)
        k = 2 * np.pi / rng.uniform(*wavelength_mm)
        phase = rng.uniform(0, 2 * np.pi)
        field += np.sin(k * (direction[0] * z + direction[1] * y + direction[2] * x) + phase).astype(np.float32)
    return field / n_waves


def _blob(rng: np.random.Generator, coords: tuple[np.ndarray, ...], center: np.ndarray,
          semi_axes: np.ndarray, roughness: float = 0.18) -> np.ndarray:
    """A randomly rotated, smoothly deformed ellipsoid (boolean mask)."""
    z, y, x = coords
    rot = _rotation(rng, 35.0, 12.0)
    rel = (z - center[0], y - center[1], x - center[2])
    dist2 = np.zeros(np.broadcast_shapes(z.shape, y.shape, x.shape), dtype=np.float32)
    for i in range(3):
        component = rot[i, 0] * rel[0] + rot[i, 1] * rel[1] + rot[i, 2] * rel[2]
        dist2 += (component / semi_axes[i]) ** 2
    wobble = _smooth_field(rng, coords, 4, (0.8 * semi_axes.max(), 2.5 * semi_axes.max()))
    return np.sqrt(dist2) * (1.0 + roughness * wobble) < 1.0


def _jitter(rng: np.random.Generator, base: tuple[float, float, float], spread: tuple[float, float, float]
            ) -> np.ndarray:
    return np.asarray(base, dtype=np.float32) + rng.uniform(-1, 1, 3).astype(np.float32) * np.asarray(spread)


# ----------------------------------------------------------------------------- anatomy

def _sample_geometry(rng: np.random.Generator) -> tuple[tuple[int, int, int], tuple[float, float, float],
                                                        tuple[float, float]]:
    """Per-case grid: shape (z, y, x), spacing (z, y, x) in mm and body semi-axes (ap, lr) in mm."""
    sz = float(rng.uniform(*SLICE_SPACING_MM))
    sxy = float(rng.uniform(*INPLANE_SPACING_MM))
    body_lr = float(rng.uniform(36.0, 42.0))
    body_ap = float(rng.uniform(27.0, 32.0))
    n_xy = int(np.clip(round(2 * body_lr * rng.uniform(1.12, 1.25) / sxy), *INPLANE_VOXELS))
    n_z = int(np.clip(round(rng.uniform(95.0, 125.0) / sz), *SLICES))
    return (n_z, n_xy, n_xy), (sz, sxy, sxy), (body_ap, body_lr)


def _body_and_tissues(rng: np.random.Generator, coords: tuple[np.ndarray, ...], body_ap: float, body_lr: float
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Tissue map, body mask and the 'inner' (inside the fat layer) mask."""
    z, y, x = coords
    outline = 1.0 + 0.04 * _smooth_field(rng, coords, 3, (40.0, 120.0))
    radius = np.sqrt((y / body_ap) ** 2 + (x / body_lr) ** 2)
    body = radius < outline
    fat_mm = rng.uniform(3.0, 6.0)
    inner = np.sqrt((y / (body_ap - fat_mm)) ** 2 + (x / (body_lr - fat_mm)) ** 2) < outline
    tissue = np.zeros(body.shape, dtype=np.uint8)
    tissue[body] = TISSUES["fat"]
    tissue[inner] = TISSUES["soft_tissue"]
    # visceral fat pockets
    visceral = _smooth_field(rng, coords, 6, (10.0, 25.0)) > 0.55
    tissue[inner & visceral] = TISSUES["fat"]
    # vertebra (posterior midline) and a pair of rib arcs
    spine_c = _jitter(rng, (0.0, 0.62 * body_ap, 0.0), (0.0, 1.5, 1.5))
    vertebra = ((y - spine_c[1]) / 6.0) ** 2 + ((x - spine_c[2]) / 7.0) ** 2 < 1.0
    vertebra = np.broadcast_to(vertebra, body.shape)
    ring = np.abs(radius - 0.86 * outline) < 0.035
    rib_band = (np.abs(np.sin(2 * np.pi * z / rng.uniform(14.0, 20.0) + rng.uniform(0, 6.3))) > 0.8)
    ribs = ring & rib_band & (y < 0.55 * body_ap) & (np.abs(x) > 0.35 * body_lr)
    tissue[(vertebra | ribs) & body] = TISSUES["bone"]
    return tissue, body, inner


def _organ_specs(rng: np.random.Generator, body_ap: float, body_lr: float
                 ) -> list[tuple[str, list[tuple[np.ndarray, np.ndarray]]]]:
    """Random (center, semi-axes) blobs per organ, (z, y, x) in mm; y is anterior(-) to posterior(+),
    x is the patient's right(-) to left(+)."""
    s = body_lr / 40.0
    liver_c = _jitter(rng, (6.0, -2.0, -15.0 * s), (6.0, 3.0, 3.0))
    liver_ax = np.array([rng.uniform(22, 30), rng.uniform(11, 15) * s, rng.uniform(12, 16) * s], np.float32)
    lobe_c = liver_c + np.array([rng.uniform(-6, 2), rng.uniform(-6, -2), rng.uniform(8, 12) * s], np.float32)
    lobe_ax = liver_ax * np.array([0.6, 0.6, 0.55], np.float32)
    kidneys = []
    for side in (-1.0, 1.0):
        c = _jitter(rng, (-8.0, 0.38 * body_ap, side * 14.5 * s), (5.0, 1.5, 1.5))
        kidneys.append((c, np.array([rng.uniform(15, 19), rng.uniform(6.5, 8), rng.uniform(5, 6.5)], np.float32)))
    spleen_c = _jitter(rng, (12.0, 0.15 * body_ap, 22.0 * s), (5.0, 2.0, 2.0))
    spleen_ax = np.array([rng.uniform(15, 20), rng.uniform(9, 12), rng.uniform(6.5, 8)], np.float32)
    pancreas_c = _jitter(rng, (0.0, -0.05 * body_ap, 3.0 * s), (5.0, 2.0, 2.0))
    pancreas_ax = np.array([rng.uniform(10, 13), rng.uniform(5, 6.5), rng.uniform(13, 16) * s], np.float32)
    return [
        ("kidney", kidneys),
        ("spleen", [(spleen_c, spleen_ax)]),
        ("pancreas", [(pancreas_c, pancreas_ax)]),
        ("liver", [(liver_c, liver_ax), (lobe_c, lobe_ax)]),
    ]


def _paint_organs(rng: np.random.Generator, coords: tuple[np.ndarray, ...], tissue: np.ndarray,
                  inner: np.ndarray, body_ap: float, body_lr: float) -> np.ndarray:
    """Label map: organs are painted inside the body wall, never over bone or an earlier organ.
    Updates ``tissue`` in place (organ voxels become soft tissue)."""
    label = np.zeros(tissue.shape, dtype=np.uint8)
    free = inner & (tissue != TISSUES["bone"])
    for name, blobs in _organ_specs(rng, body_ap, body_lr):
        mask = np.zeros(tissue.shape, dtype=bool)
        for center, semi_axes in blobs:
            mask |= _blob(rng, coords, center, semi_axes)
        mask &= free & (label == 0)
        label[mask] = LABELS[name]
    tissue[label > 0] = TISSUES["soft_tissue"]  # organs displace visceral fat
    return label


def _intensities(rng: np.random.Generator, coords: tuple[np.ndarray, ...], tissue: np.ndarray,
                 label: np.ndarray, body: np.ndarray, spacing: tuple[float, float, float]) -> np.ndarray:
    """HU image: tissue and organ means with texture, partial-volume blur, smooth bias and noise."""
    hu = np.full(tissue.shape, TISSUE_HU["air"], dtype=np.float32)
    hu[tissue == TISSUES["fat"]] = TISSUE_HU["fat"] + rng.uniform(-10, 10)
    hu[tissue == TISSUES["soft_tissue"]] = TISSUE_HU["soft_tissue"] + rng.uniform(-8, 8)
    bone = tissue == TISSUES["bone"]
    marrow = gaussian_filter(bone.astype(np.float32), 1.0) > 0.9
    hu[bone] = TISSUE_HU["bone_cortex"] + rng.uniform(-100, 100)
    hu[bone & marrow] = TISSUE_HU["bone_marrow"] + rng.uniform(-40, 40)
    for name, value in ORGAN_HU.items():
        organ = label == LABELS[name]
        texture = 6.0 * _smooth_field(rng, coords, 5, (4.0, 12.0))
        hu[organ] = value + rng.uniform(-8, 8) + texture[organ]
    hu = gaussian_filter(hu, sigma=(0.4, 0.6, 0.6))
    bias = rng.uniform(10, 25) * _smooth_field(rng, coords, 3, (80.0, 200.0))
    hu += np.where(body, bias, 0.0).astype(np.float32)
    noise = rng.normal(0.0, 1.0, size=hu.shape).astype(np.float32)
    noise = gaussian_filter(noise, sigma=(0.0, 0.5, 0.5))
    noise *= rng.uniform(8.0, 18.0) / max(float(noise.std()), 1e-6)
    return np.clip(np.rint(hu + noise), *HU_RANGE).astype(np.int16)


def synthesize_case(seed: int, index: int, held_out: bool = False) -> SyntheticCase:
    """Case ``index`` of the dataset with ``seed``; training and held-out cases use separate streams."""
    rng = np.random.default_rng([seed, int(held_out), index])
    shape, spacing, (body_ap, body_lr) = _sample_geometry(rng)
    coords = _grid(shape, spacing)
    tissue, body, inner = _body_and_tissues(rng, coords, body_ap, body_lr)
    label = _paint_organs(rng, coords, tissue, inner, body_ap, body_lr)
    image = _intensities(rng, coords, tissue, label, body, spacing)
    return SyntheticCase(image=image, label=label, tissue=tissue, spacing_zyx=spacing)


# ----------------------------------------------------------------------------- writing

def _write_nifti(array: np.ndarray, spacing_zyx: tuple[float, float, float], path: Path) -> None:
    img = sitk.GetImageFromArray(array)
    img.SetSpacing(tuple(float(s) for s in reversed(spacing_zyx)))
    img.SetOrigin(tuple(-(n - 1) / 2.0 * s for n, s in zip(reversed(array.shape), reversed(spacing_zyx))))
    sitk.WriteImage(img, str(path), useCompression=True)


def _write_case(case: SyntheticCase, case_id: str, root: Path, images: str, labels: str) -> None:
    _write_nifti(case.image, case.spacing_zyx, root / images / f"{case_id}_0000{FILE_ENDING}")
    _write_nifti(case.label, case.spacing_zyx, root / labels / f"{case_id}{FILE_ENDING}")


def generate_dataset(raw_root: str | os.PathLike, dataset_id: int, n_cases: int = 24, n_test: int = 6,
                     seed: int = 0, name: str = DEFAULT_NAME, overwrite: bool = False,
                     preprocessed_root: str | os.PathLike | None = None) -> Path:
    """Write Dataset<ID>_<name> into ``raw_root`` atomically and return its path.

    Raises ``OverwriteRefused`` if that folder exists and ``overwrite`` is False (it is left untouched), and
    ``UserError`` for a bad id, name or case count, or an id already used by another dataset name in ``raw_root``
    or ``preprocessed_root``.
    """
    if n_cases < 1 or n_test < 0:
        raise UserError(f"need --cases >= 1 and --test-cases >= 0, got {n_cases} and {n_test}")
    target = RawDatasetTarget(Path(raw_root), dataset_id, name,
                              Path(preprocessed_root) if preprocessed_root is not None else None)
    target.check(overwrite)
    with target.writing() as work_dir:
        for sub in ("imagesTr", "labelsTr", "imagesTs", "labelsTs"):
            (work_dir / sub).mkdir()
        for i in range(n_cases):
            _write_case(synthesize_case(seed, i), f"synth_{i:03d}", work_dir, "imagesTr", "labelsTr")
        for i in range(n_test):
            _write_case(synthesize_case(seed, i, held_out=True), f"synthtest_{i:03d}", work_dir, "imagesTs",
                        "labelsTs")
        write_dataset_json(
            work_dir, channel_names={0: "CT"}, labels=LABELS, num_training_cases=n_cases, dataset_name=name,
            description=("Synthetic abdominal CT phantoms (HU) with four organ-like structures, written by "
                         "`nnunetv2_uc synth`. Anisotropic, per-case spacing. Test cases with labels in "
                         "imagesTs/labelsTs."),
            reference="nnunetv2-uc synthetic generator", licence="CC0-1.0 (synthetic, no patient data)",
            converted_by="nnunetv2_uc synth", synthetic_seed=seed, numTest=n_test,
        )
    return target.path
