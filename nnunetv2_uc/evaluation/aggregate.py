"""Per-case metrics -> the JSON structure of issue 5 (both aggregation orders, empty-mask counts)."""
from __future__ import annotations

import math

import numpy as np

from nnunetv2_uc.evaluation.metrics import (CLASS_METRICS, DISTANCE_METRIC_UNITS, EXTRA_CLASS_METRICS,
                                            STATUS_ABSENT, STATUS_FALSE_POSITIVE, STATUS_MISSED, STATUS_OK,
                                            CaseMetrics, EmptyMaskPolicy)

ALL_CLASS_METRICS: tuple[str, ...] = CLASS_METRICS + EXTRA_CLASS_METRICS

CONVENTIONS: dict[str, str] = {
    "dice": "2TP/(2TP+FP+FN), fraction",
    "iou": "TP/(TP+FP+FN), fraction; mIoU = mean over foreground classes",
    "voe": "1 - IoU, fraction",
    "hd95": "max of the two directed 95th percentiles of surface distances, mm (MONAI / MetricsReloaded)",
    "hd95_pooled_vox": "95th percentile of the pooled two-way surface distances, voxel units "
                       "(uC repository: medpy hd95 without voxelspacing)",
    "assd": "0.5 * (mean d(P->G) + mean d(G->P)), mm",
    "ari_binary": "adjusted Rand index of the binary masks gt==c vs pred==c over all voxels; "
                  "ari_binary_mean = uC 'AdjRand'",
    "ari": "multi-class adjusted Rand index over all voxels (background included), per case",
    "hd95_pooled_mm": "pooled 95th percentile, mm",
    "hd_mm": "Hausdorff distance (max of both directions), mm",
    "assd_vox": "ASSD in voxel units (uC-compatible)",
    "surface": "voxels of the mask not in its 6-connected erosion; outside the image counts as background",
    "mean": "class-first: per class mean over cases, then mean over classes (nnU-Net summary.json order)",
    "mean_case_first": "case-first: per case mean over classes, then mean over cases (uC tables' order)",
    "nan": "null = undefined (class absent from GT and prediction, or a 'nan' empty-mask fill); "
           "excluded from every mean",
}


def _nanmean(values) -> float:
    values = np.asarray(list(values), dtype=np.float64)
    if values.size == 0 or np.all(np.isnan(values)):
        return math.nan
    return float(np.nanmean(values))


def _nanstat(values, function) -> float:
    values = np.asarray(list(values), dtype=np.float64)
    values = values[~np.isnan(values)]
    return float(function(values)) if values.size else math.nan


def _class_metrics(case: CaseMetrics, label: int) -> tuple[dict[str, float], str]:
    """Metrics and status of ``label`` in ``case``; a class the worker never saw is absent (all NaN)."""
    if label in case.per_class:
        return case.per_class[label], case.status[label]
    return {k: math.nan for k in ALL_CLASS_METRICS}, STATUS_ABSENT


def summarize(cases: list[tuple[str, CaseMetrics]], labels: dict[int, str], policy: EmptyMaskPolicy) -> dict:
    """The evaluation JSON (NaN still as float NaN; ``to_json_compatible`` turns it into null).

    ``cases``: (case name, metrics) in output order; ``labels``: foreground label id -> name.
    """
    label_ids = sorted(labels)
    per_case = []
    statuses: dict[int, dict[str, list[str]]] = {label: {} for label in label_ids}
    for name, case in cases:
        entry = {"case": name, "ari": case.ari, "per_class": {}}
        for label in label_ids:
            metrics, status = _class_metrics(case, label)
            entry["per_class"][str(label)] = {k: metrics[k] for k in ALL_CLASS_METRICS}
            statuses[label].setdefault(status, []).append(name)
        per_case.append(entry)

    def values(label: int, metric: str) -> list[float]:
        return [entry["per_class"][str(label)][metric] for entry in per_case]

    per_class_mean = {str(label): {m: _nanmean(values(label, m)) for m in ALL_CLASS_METRICS} for label in label_ids}
    mean = {m: _nanmean(per_class_mean[str(label)][m] for label in label_ids) for m in ALL_CLASS_METRICS}
    case_means = [{m: _nanmean(entry["per_class"][str(label)][m] for label in label_ids) for m in ALL_CLASS_METRICS}
                  | {"ari": entry["ari"]} for entry in per_case]
    keys = ALL_CLASS_METRICS + ("ari",)
    mean_case_first = {m: _nanmean(c[m] for c in case_means) for m in keys}
    mean["ari"] = _nanmean(entry["ari"] for entry in per_case)
    for target in (mean, mean_case_first):
        target["mIoU"] = target["iou"]
        target["ari_binary_mean"] = target["ari_binary"]

    return {
        "per_case": per_case,
        "per_class_mean": per_class_mean,
        "mean": mean,
        "mean_case_first": mean_case_first,
        "std_case_first": {m: _nanstat((c[m] for c in case_means), np.std) for m in keys},
        "median_case_first": {m: _nanstat((c[m] for c in case_means), np.median) for m in keys},
        "labels": {str(label): labels[label] for label in label_ids},
        "n_cases": len(per_case),
        "empty_masks": _empty_mask_report(per_case, statuses, label_ids, policy),
        "conventions": CONVENTIONS,
    }


def _empty_mask_report(per_case: list[dict], statuses: dict[int, dict[str, list[str]]], label_ids: list[int],
                       policy: EmptyMaskPolicy) -> dict:
    """Counts of absent / one-sided classes and the distance means WITHOUT the policy's fills."""
    filled = {label: set(statuses[label].get(STATUS_MISSED, []) + statuses[label].get(STATUS_FALSE_POSITIVE, []))
              for label in label_ids}
    without_fills = {}
    for label in label_ids:
        kept = [entry for entry in per_case if entry["case"] not in filled[label]]
        without_fills[str(label)] = {m: _nanmean(e["per_class"][str(label)][m] for e in kept)
                                     for m in DISTANCE_METRIC_UNITS}
    mean_without_fills = {m: _nanmean(without_fills[str(label)][m] for label in label_ids)
                          for m in DISTANCE_METRIC_UNITS}
    return {
        "policy": policy.describe(),
        "n_absent": {str(label): len(statuses[label].get(STATUS_ABSENT, [])) for label in label_ids},
        "n_missed": {str(label): len(statuses[label].get(STATUS_MISSED, [])) for label in label_ids},
        "n_false_positive": {str(label): len(statuses[label].get(STATUS_FALSE_POSITIVE, [])) for label in label_ids},
        "n_filled": sum(len(cases) for cases in filled.values()),
        "filled_cases": {str(label): sorted(filled[label]) for label in label_ids if filled[label]},
        "per_class_mean_without_fills": without_fills,
        "mean_without_fills": mean_without_fills,
        "n_ok": {str(label): len(statuses[label].get(STATUS_OK, [])) for label in label_ids},
    }


def to_json_compatible(value):
    """Recursively replace float NaN/inf by None and numpy scalars by Python numbers."""
    if isinstance(value, dict):
        return {str(k): to_json_compatible(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_json_compatible(v) for v in value]
    if isinstance(value, (float, np.floating)):
        value = float(value)
        return value if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value
