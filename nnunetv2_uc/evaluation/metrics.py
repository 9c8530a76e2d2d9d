"""Segmentation metrics of the uC paper, computed per case on the reference grid.

Arrays are label maps of identical shape (any number of spatial axes, usually (z, y, x) or nnU-Net's (x, y, z));
``spacing`` is the voxel size in mm in the same axis order. Definitions follow spec/metrics.md:

- counts (TP/FP/FN/TN for every class) and both ARIs come from ONE confusion matrix over the whole grid;
- surfaces are ``mask & ~erode(mask)`` with the face-connected structuring element, outside = background;
- distances between surface voxels are exact Euclidean nearest-neighbour distances (KD-tree, which gives the same
  values as an EDT of the complement of the other surface), computed inside the union bounding box of P and G padded
  by one voxel: all surface voxels lie inside it, so the crop is exact.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

#: per-class metric keys written for every class (the JSON schema of issue 5)
CLASS_METRICS: tuple[str, ...] = ("dice", "iou", "voe", "hd95", "hd95_pooled_vox", "assd", "ari_binary")
#: labelled extra keys (spec/metrics.md section 4)
EXTRA_CLASS_METRICS: tuple[str, ...] = ("hd95_pooled_mm", "hd_mm", "assd_vox")
#: distance metrics and their unit; worst-case fills use the image diagonal in that unit
DISTANCE_METRIC_UNITS: dict[str, str] = {
    "hd95": "mm", "hd95_pooled_vox": "vox", "assd": "mm", "hd95_pooled_mm": "mm", "hd_mm": "mm", "assd_vox": "vox",
}

# Status of a class in one case (see EmptyMaskPolicy).
STATUS_OK = "ok"
STATUS_ABSENT = "absent"            # neither GT nor prediction contains the class
STATUS_MISSED = "missed"            # GT contains it, prediction does not
STATUS_FALSE_POSITIVE = "false_positive"  # prediction contains it, GT does not


@dataclass(frozen=True)
class EmptyMaskPolicy:
    """What distance metrics become when exactly one of GT / prediction is empty for a class.

    ``mode`` is ``"worst"`` (the image diagonal in the metric's unit), ``"nan"`` (excluded from means, counted) or
    ``"value"`` (the fixed ``fill_value``). Overlap metrics are always Dice = IoU = 0, VOE = 1 in that situation and
    the binary ARI is computed normally; a class absent from both sides is NaN for every metric.
    """

    mode: str = "worst"
    fill_value: float = math.nan

    @classmethod
    def parse(cls, text: str) -> "EmptyMaskPolicy":
        """Parse ``worst``, ``nan`` or ``value:<x>``; raises ValueError with the accepted forms."""
        text = text.strip().lower()
        if text in ("worst", "nan"):
            return cls(mode=text)
        if text.startswith("value:"):
            try:
                return cls(mode="value", fill_value=float(text.split(":", 1)[1]))
            except ValueError:
                pass
        raise ValueError(f"empty-mask policy {text!r} not understood; use 'worst', 'nan' or 'value:<number>'")

    def describe(self) -> str:
        if self.mode == "worst":
            return "worst (image diagonal: mm for *_mm/hd95/assd, voxels for *_vox)"
        if self.mode == "nan":
            return "nan (excluded from means, counted)"
        return f"value:{self.fill_value:g}"

    def distance_fill(self, diagonal_mm: float, diagonal_vox: float) -> dict[str, float]:
        """Fill values of every distance metric for a one-sided empty class."""
        if self.mode == "worst":
            return {k: diagonal_mm if unit == "mm" else diagonal_vox for k, unit in DISTANCE_METRIC_UNITS.items()}
        value = math.nan if self.mode == "nan" else self.fill_value
        return {k: value for k in DISTANCE_METRIC_UNITS}


# ----------------------------------------------------------------------------------------------- counting, ARI
def confusion_matrix(gt: np.ndarray, pred: np.ndarray, num_values: int) -> np.ndarray:
    """(num_values, num_values) int64 matrix; entry [i, j] counts voxels with gt == i and pred == j.

    Both arrays must hold integers in [0, num_values).
    """
    if num_values <= 16:  # i * K + j fits in uint8: one cheap pass instead of an int64 temporary
        combined = gt.astype(np.uint8, copy=False) * np.uint8(num_values) + pred.astype(np.uint8, copy=False)
    else:
        combined = gt.astype(np.int64) * num_values + pred.astype(np.int64, copy=False)
    counts = np.bincount(combined.ravel(), minlength=num_values * num_values)
    return counts.reshape(num_values, num_values).astype(np.int64, copy=False)


def _sum_pairs(counts: np.ndarray) -> float:
    """Sum of C(n, 2) over ``counts``, in float64 (int64 products overflow for 1e8 voxels)."""
    counts = np.asarray(counts, dtype=np.float64)
    return float(np.sum(counts * (counts - 1.0) / 2.0))


def adjusted_rand_index(contingency: np.ndarray) -> float:
    """Adjusted Rand index of two labelings given their contingency table (rows: GT clusters, cols: prediction).

    Returns 1.0 when the denominator vanishes (both labelings are one cluster), like scikit-learn.
    """
    contingency = np.asarray(contingency, dtype=np.float64)
    n = contingency.sum()
    index = _sum_pairs(contingency)
    sum_rows = _sum_pairs(contingency.sum(axis=1))
    sum_cols = _sum_pairs(contingency.sum(axis=0))
    expected = sum_rows * sum_cols / (n * (n - 1.0) / 2.0) if n > 1 else 0.0
    denominator = 0.5 * (sum_rows + sum_cols) - expected
    if denominator == 0.0:
        return 1.0
    return float((index - expected) / denominator)


def class_counts(confusion: np.ndarray, label: int) -> tuple[int, int, int, int]:
    """(TP, FP, FN, TN) of class ``label`` over the whole grid, read off the confusion matrix."""
    tp = int(confusion[label, label])
    fn = int(confusion[label, :].sum()) - tp
    fp = int(confusion[:, label].sum()) - tp
    tn = int(confusion.sum()) - tp - fp - fn
    return tp, fp, fn, tn


def binary_ari(tp: int, fp: int, fn: int, tn: int) -> float:
    """ARI of the binary labelings (gt == c) vs (pred == c): what the uC repository's "AdjRand" averages."""
    return adjusted_rand_index(np.array([[tn, fp], [fn, tp]], dtype=np.float64))


def overlap_metrics(tp: int, fp: int, fn: int) -> dict[str, float]:
    """Dice, IoU and VOE as fractions; NaN when the class is absent from both sides (TP + FP + FN = 0)."""
    union = tp + fp + fn
    if union == 0:
        return {"dice": math.nan, "iou": math.nan, "voe": math.nan}
    iou = tp / union
    return {"dice": 2 * tp / (2 * tp + fp + fn), "iou": iou, "voe": 1.0 - iou}


# ----------------------------------------------------------------------------------------------- surfaces
def surface_mask(mask: np.ndarray) -> np.ndarray:
    """Voxels of ``mask`` not in its erosion by the face-connected structuring element (outside = background)."""
    structure = ndimage.generate_binary_structure(mask.ndim, 1)
    return mask & ~ndimage.binary_erosion(mask, structure=structure, border_value=0)


def padded_union_box(box_a: tuple[slice, ...] | None, box_b: tuple[slice, ...] | None,
                     shape: tuple[int, ...]) -> tuple[slice, ...]:
    """Union of two bounding boxes (either may be None), grown by one voxel and clipped to ``shape``."""
    boxes = [b for b in (box_a, box_b) if b is not None]
    return tuple(
        slice(max(min(b[axis].start for b in boxes) - 1, 0), min(max(b[axis].stop for b in boxes) + 1, size))
        for axis, size in enumerate(shape)
    )


def directed_surface_distances(from_surface: np.ndarray, to_surface: np.ndarray, spacing: np.ndarray,
                               workers: int = 1) -> np.ndarray:
    """Distance from every voxel of ``from_surface`` to the nearest voxel of ``to_surface``, in units of ``spacing``.

    Both are boolean masks of the same shape; returns a 1-D float64 array with one entry per True of ``from_surface``.
    """
    targets = np.argwhere(to_surface) * spacing
    sources = np.argwhere(from_surface) * spacing
    tree = cKDTree(targets, balanced_tree=False, compact_nodes=False)
    distances, _ = tree.query(sources, k=1, workers=workers)
    return distances


def distance_summary(pred_to_gt: np.ndarray, gt_to_pred: np.ndarray) -> dict[str, float]:
    """HD95 in both conventions, HD and ASSD from the two sets of directed surface distances (same unit)."""
    return {
        "hd95": float(max(np.percentile(pred_to_gt, 95), np.percentile(gt_to_pred, 95))),
        "hd95_pooled": float(np.percentile(np.concatenate([pred_to_gt, gt_to_pred]), 95)),
        "hd": float(max(pred_to_gt.max(), gt_to_pred.max())),
        "assd": float(0.5 * (pred_to_gt.mean() + gt_to_pred.mean())),
    }


def surface_distance_metrics(gt_mask: np.ndarray, pred_mask: np.ndarray, spacing: np.ndarray,
                             workers: int = 1) -> dict[str, float]:
    """Distance metrics of two NON-EMPTY boolean masks (already cropped or not): the distance keys of the schema.

    ``hd95``, ``assd``, ``hd95_pooled_mm``, ``hd_mm`` are in the unit of ``spacing`` (mm); ``hd95_pooled_vox``
    and ``assd_vox`` use unit spacing, i.e. what medpy returns without ``voxelspacing`` (the uC numbers).
    """
    gt_surface, pred_surface = surface_mask(gt_mask), surface_mask(pred_mask)
    spacing = np.asarray(spacing, dtype=np.float64)
    mm = distance_summary(directed_surface_distances(pred_surface, gt_surface, spacing, workers),
                          directed_surface_distances(gt_surface, pred_surface, spacing, workers))
    if np.all(spacing == spacing[0]):  # isotropic: nearest neighbours coincide, voxel distances are a rescale
        vox = {k: v / spacing[0] for k, v in mm.items()}
    else:
        ones = np.ones_like(spacing)
        vox = distance_summary(directed_surface_distances(pred_surface, gt_surface, ones, workers),
                               directed_surface_distances(gt_surface, pred_surface, ones, workers))
    return {"hd95": mm["hd95"], "hd95_pooled_vox": vox["hd95_pooled"], "assd": mm["assd"],
            "hd95_pooled_mm": mm["hd95_pooled"], "hd_mm": mm["hd"], "assd_vox": vox["assd"]}


# ----------------------------------------------------------------------------------------------- one case
@dataclass
class CaseMetrics:
    """Metrics of one case: ``per_class[label][metric]`` (floats, NaN allowed), class status and multi-class ARI."""

    ari: float
    per_class: dict[int, dict[str, float]]
    status: dict[int, str]


def _drop_singleton_axes(gt: np.ndarray, pred: np.ndarray, spacing: np.ndarray
                         ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """2-D data comes as (1, y, x); a size-1 axis would turn every voxel into surface, so distances ignore it."""
    keep = [axis for axis, size in enumerate(gt.shape) if size > 1] or [0]
    squeeze = tuple(axis for axis in range(gt.ndim) if axis not in keep)
    return gt.squeeze(axis=squeeze), pred.squeeze(axis=squeeze), spacing[keep]


def evaluate_label_maps(gt: np.ndarray, pred: np.ndarray, spacing, labels: list[int] | None = None,
                        policy: EmptyMaskPolicy = EmptyMaskPolicy(), workers: int = 1,
                        ignore_mask: np.ndarray | None = None) -> CaseMetrics:
    """All metrics of one case.

    ``gt``/``pred``: integer label maps of the same shape, values >= 0; ``spacing``: mm per axis (same order).
    ``labels``: foreground classes to report; None = every non-zero value present in ``gt`` or ``pred``.
    Values outside ``labels`` still count as their own clusters in the multi-class ARI (validate beforehand).
    ``ignore_mask``: voxels that count for nothing (nnU-Net's ignore label): left out of every count and treated as
    background on both sides for the surfaces.
    """
    if gt.shape != pred.shape:
        raise ValueError(f"shape mismatch: gt {gt.shape} vs pred {pred.shape}")
    if ignore_mask is not None:
        gt, pred = np.where(ignore_mask, 0, gt).astype(gt.dtype), np.where(ignore_mask, 0, pred).astype(pred.dtype)
    gt, pred, spacing = _drop_singleton_axes(gt, pred, np.asarray(spacing, dtype=np.float64))
    num_values = int(max(gt.max(initial=0), pred.max(initial=0), max(labels or [0]))) + 1
    if ignore_mask is None:
        confusion = confusion_matrix(gt, pred, num_values)
    else:
        kept = ~ignore_mask.reshape(gt.shape)
        confusion = confusion_matrix(gt[kept], pred[kept], num_values)
    if labels is None:
        present = (confusion.sum(axis=0) + confusion.sum(axis=1)) > 0
        labels = [int(v) for v in np.flatnonzero(present) if v != 0]

    gt_boxes = ndimage.find_objects(gt.astype(np.int32, copy=False), max_label=num_values - 1)
    pred_boxes = ndimage.find_objects(pred.astype(np.int32, copy=False), max_label=num_values - 1)
    diagonal_vox = float(np.linalg.norm(np.asarray(gt.shape, dtype=np.float64)))
    diagonal_mm = float(np.linalg.norm(np.asarray(gt.shape) * spacing))

    per_class: dict[int, dict[str, float]] = {}
    status: dict[int, str] = {}
    for label in labels:
        tp, fp, fn, tn = class_counts(confusion, label)
        metrics = overlap_metrics(tp, fp, fn)
        in_gt, in_pred = tp + fn > 0, tp + fp > 0
        if not in_gt and not in_pred:
            status[label] = STATUS_ABSENT
            metrics.update({k: math.nan for k in DISTANCE_METRIC_UNITS})
            metrics["ari_binary"] = math.nan
        else:
            metrics["ari_binary"] = binary_ari(tp, fp, fn, tn)
            if in_gt and in_pred:
                status[label] = STATUS_OK
                box = padded_union_box(gt_boxes[label - 1], pred_boxes[label - 1], gt.shape)
                metrics.update(surface_distance_metrics(gt[box] == label, pred[box] == label, spacing, workers))
            else:
                status[label] = STATUS_MISSED if in_gt else STATUS_FALSE_POSITIVE
                metrics.update(policy.distance_fill(diagonal_mm, diagonal_vox))
        per_class[label] = metrics
    return CaseMetrics(ari=adjusted_rand_index(confusion), per_class=per_class, status=status)
