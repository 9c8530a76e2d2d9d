"""The evaluation result: per-case metrics -> the JSON structure (both aggregation orders, empty-mask counts;
``summarize``), and its writers: JSON (NaN as null), the paper-layout markdown table, per-case CSV.
"""
from __future__ import annotations

import csv
import io
import json
import math

import numpy as np

from nnunetv2_uc.evaluation.metrics import (CLASS_METRICS, DISTANCE_METRIC_UNITS, EXTRA_CLASS_METRICS, STATUS_ABSENT,
                                            STATUS_FALSE_POSITIVE, STATUS_MISSED, STATUS_OK, CaseMetrics,
                                            EmptyMaskPolicy)

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


#: (column title, key, scale): the uC paper's columns (x100 where the paper prints %), then the labelled extras
TABLE_COLUMNS: tuple[tuple[str, str, float], ...] = (
    ("IoU (%)", "iou", 100.0),
    ("Dice (%)", "dice", 100.0),
    ("VOE (%)", "voe", 100.0),
    ("HD95 (mm) [1]", "hd95", 1.0),
    ("HD95 uC (vox) [2]", "hd95_pooled_vox", 1.0),
    ("ASSD (mm)", "assd", 1.0),
    ("AdjRand (%) [3]", "ari_binary", 100.0),
)


def json_text(summary: dict) -> str:
    return json.dumps(to_json_compatible(summary), indent=2, allow_nan=False) + "\n"


def display_name(label: str | int, name: str) -> str:
    """``liver (1)`` when the label has a name, just ``1`` otherwise."""
    return str(label) if name == str(label) else f"{name} ({label})"


def _format(value: float | None, scale: float, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    text = f"{value * scale:.{digits}f}"
    return text.lstrip("-") if float(text) == 0 else text  # no "-0.00" (e.g. an ARI of -1e-6)


def _row(leading: list[str], values: dict, stds: dict | None = None, trailing: tuple[str, ...] = ()) -> str:
    """A markdown row: ``leading`` cells, the TABLE_COLUMNS values (± ``stds``), ``trailing`` cells."""
    cells = list(leading)
    for _, key, scale in TABLE_COLUMNS:
        cell = _format(values.get(key), scale)
        if stds is not None and cell != "n/a" and stds.get(key) is not None and not math.isnan(stds[key]):
            cell += f" ± {_format(stds[key], scale)}"
        cells.append(cell)
    return "| " + " | ".join(cells + list(trailing)) + " |"


def markdown_table(summary: dict, title: str | None = None) -> str:
    """The uC paper's layout (per class, then the means), followed by the definitions of every column."""
    empty = summary["empty_masks"]
    header = ["Class", "n"] + [column for column, _, _ in TABLE_COLUMNS]
    lines = [f"### {title}", ""] if title else []
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for label, name in summary["labels"].items():
        defined = summary["n_cases"] - empty["n_absent"][label]
        lines.append(_row([display_name(label, name), str(defined)], summary["per_class_mean"][label]))
    n = str(summary["n_cases"])
    lines.append(_row(["**Mean, class-first** (mIoU)", n], summary["mean"]))
    lines.append(_row(["**Mean, case-first (uC)** ± SD", n], summary["mean_case_first"], summary["std_case_first"]))
    filled_note = ", ".join(f"{display_name(label, summary['labels'][label])}: {len(cases)}"
                            for label, cases in empty["filled_cases"].items()) or "none"
    absent_note = ", ".join(f"{display_name(label, summary['labels'][label])}: {count}"
                            for label, count in empty["n_absent"].items() if count) or "none"
    lines += [
        "",
        f"Cases: {summary['n_cases']}. Multi-class ARI over all voxels (mean over cases): "
        f"{_format(summary['mean'].get('ari'), 100.0)} %.",
        "",
        "Definitions: Dice = 2TP/(2TP+FP+FN); IoU = TP/(TP+FP+FN), mIoU = its mean over the foreground classes; "
        "VOE = 1 - IoU; all three x100. Counts over the whole native reference grid. "
        "Surfaces: voxels not in the 6-connected erosion (outside = background).",
        "[1] HD95 = max of the two directed 95th percentiles of surface distances, in mm (MONAI / MetricsReloaded).",
        "[2] HD95 uC = 95th percentile of the pooled two-way surface distances in voxel units: what the uC "
        "repository computed (medpy without voxelspacing). Not comparable with [1].",
        "[3] AdjRand = adjusted Rand index of each class's binary masks over all voxels, x100 (the uC 'AdjRand'; "
        "the mean row is the mean of these). ASSD = mean of the two directed mean surface distances, mm.",
        "Aggregation: per-class rows = mean over the cases where the class is defined; class-first mean = mean over "
        "classes of those (nnU-Net); case-first = mean over classes per case, then over cases (uC tables), "
        "± population SD over cases. n = cases in which the class is defined.",
        f"Empty masks: a class absent from both GT and prediction is undefined and excluded (absent: {absent_note}). "
        f"Absent from one side: Dice = IoU = 0, VOE = 100 %, distances = policy {empty['policy']} "
        f"(filled: {filled_note}).",
    ]
    if summary.get("skipped"):
        lines.append(f"Skipped bad cases: {', '.join(item['case'] for item in summary['skipped'])}.")
    return "\n".join(lines) + "\n"


def _model_cells(model: dict | None) -> list[str]:
    """#Params (M), GMACs and training minutes per fold of ``summary["model"]`` (n/a where unknown)."""
    model = model or {}
    seconds = list(model.get("train_seconds", {}).values())
    return [_format(model.get("parameters"), 1e-6), _format(model.get("gmacs"), 1.0, 3),
            _format(sum(seconds) / len(seconds) if seconds else None, 1 / 60, 1)]


def comparison_table(summaries: dict[str, dict], title: str) -> str:
    """One row per evaluation (a model: TRAINER or TRAINER__PLANS) and aggregation order: the network's cost (from
    ``summary["model"]``, see ``nnunet_results.describe_training``), then the paper's columns; definitions as in
    ``markdown_table``."""
    header = (["Model", "#Params (M)", "GMACs", "Train (min/fold)", "Aggregation", "n"]
              + [column for column, _, _ in TABLE_COLUMNS] + ["empty-mask fills"])
    lines = [f"### {title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, summary in summaries.items():
        fills = summary["empty_masks"]["n_filled"]
        cost = _model_cells(summary.get("model"))
        for aggregation, key in (("class-first", "mean"), ("case-first (uC)", "mean_case_first")):
            lines.append(_row([name, *cost, aggregation, str(summary["n_cases"])], summary[key],
                              trailing=(str(fills),)))
    lines += ["", "Columns and conventions as defined under the per-model tables; n = evaluated cases.",
              "#Params: parameters of the network nnUNetv2_predict builds from the results folder's plans.json (the "
              "trainer's build_network_architecture, deep-supervision heads included). GMACs: one forward pass of one "
              "patch of the plans' patch_size, deep supervision off (`nnunetv2_uc cost` conventions: fvcore's, "
              "transposed convolutions over their input voxels; thop/ptflops figures in papers are higher). "
              "Train: sum of nnU-Net's epoch durations in checkpoint_final.pth, mean over the folds (no final "
              "validation); it depends on the machine and on what else ran on it."]
    problems = [f"{name}: {problem}" for name, summary in summaries.items()
                for problem in (summary.get("model") or {}).get("problems", [])]
    if problems:
        lines.append("n/a: " + "; ".join(problems) + ".")
    return "\n".join(lines) + "\n"


def csv_text(summary: dict) -> str:
    """One row per (case, class): every per-class metric plus the case's multi-class ARI."""
    filled = {(case, label) for label, cases in summary["empty_masks"]["filled_cases"].items() for case in cases}
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["case", "label", "name", "filled_by_policy", *ALL_CLASS_METRICS, "ari_case"])
    for entry in summary["per_case"]:
        for label, metrics in entry["per_class"].items():
            row = [entry["case"], label, summary["labels"][label], int((entry["case"], label) in filled)]
            row += ["" if v is None or (isinstance(v, float) and math.isnan(v)) else repr(float(v))
                    for v in (metrics[k] for k in ALL_CLASS_METRICS)]
            writer.writerow(row + [repr(float(entry["ari"]))])
    return buffer.getvalue()
