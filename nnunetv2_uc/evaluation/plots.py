"""Pictures of segmentations: per-class box plots of an evaluation, one error overlay PNG per evaluated case
(three slices through the largest error, GT contours solid, prediction contours dashed), and the image overlay
(CT with the reference and the prediction side by side) that the demo writes per test case. Label colours and
legends are the same in all of them.

Figures are made with matplotlib's ``Figure`` directly (no pyplot): no GUI backend and no global figure state.
"""
from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from scipy import ndimage

from nnunetv2_uc.evaluation.folders import read_label_map, reader_class_for
from nnunetv2_uc.evaluation.report import display_name

BOXPLOT_FILE = "boxplot_dice_hd95.png"
#: CT window (HU) of the image overlay: abdominal soft tissue
SOFT_TISSUE_WINDOW_HU = (-160, 240)
#: opacity of the label colours over the image
LABEL_ALPHA = 0.45


def label_colours(label_ids: list[int]) -> dict[int, tuple]:
    """A distinct colour per label (tab10/tab20), stable for a given label list."""
    cmap = colormaps["tab10" if len(label_ids) <= 10 else "tab20"]
    return {label: cmap(i % cmap.N) for i, label in enumerate(sorted(label_ids))}


def _finite(values) -> list[float]:
    return [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]


def write_boxplots(summary: dict, path: str) -> None:
    """Dice (%) and HD95 (mm) per class across cases; policy-filled distances are left out and counted."""
    labels = list(summary["labels"])
    filled = summary["empty_masks"]["filled_cases"]
    dice = [_finite(100 * e["per_class"][l]["dice"] for e in summary["per_case"]
                    if not math.isnan(e["per_class"][l]["dice"])) for l in labels]
    hd95 = [_finite(e["per_class"][l]["hd95"] for e in summary["per_case"] if e["case"] not in filled.get(l, []))
            for l in labels]
    names = [display_name(l, summary["labels"][l]) for l in labels]
    width = max(6.0, 0.7 * len(labels) + 2)
    figure = Figure(figsize=(width, 7))
    axes = figure.subplots(2, 1, sharex=True)
    for axis, data, ylabel in ((axes[0], dice, "Dice (%)"), (axes[1], hd95, "HD95 (mm, directed max)")):
        positions = [i + 1 for i, d in enumerate(data) if d]
        if positions:
            axis.boxplot([d for d in data if d], positions=positions, widths=0.6, showmeans=True)
        axis.set_ylabel(ylabel)
        axis.grid(axis="y", alpha=0.3)
    axes[1].set_xticks(range(1, len(labels) + 1))
    axes[1].set_xticklabels(names, rotation=45 if len(labels) > 6 else 0, ha="right" if len(labels) > 6 else "center")
    n_filled = sum(len(v) for v in filled.values())
    axes[0].set_title(f"{summary['n_cases']} cases; triangles = means")
    policy = summary["empty_masks"]["policy"].split()[0]
    axes[1].set_title(f"HD95: {n_filled} empty-mask fill(s) (policy '{policy}') not shown", fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=100)


def largest_error_point(gt: np.ndarray, pred: np.ndarray) -> tuple[int, ...]:
    """A voxel of the largest connected region where gt != pred, nearest to that region's centroid.

    Falls back to the centre of the reference foreground (or of the image) when the prediction is perfect.
    """
    error = gt != pred
    if not error.any():
        foreground = np.argwhere(gt > 0)
        points = foreground if len(foreground) else np.argwhere(np.ones_like(gt, dtype=bool))
        return tuple(int(v) for v in points[len(points) // 2])
    components, _ = ndimage.label(error)
    sizes = np.bincount(components.ravel())
    sizes[0] = 0
    voxels = np.argwhere(components == int(np.argmax(sizes)))
    centroid = voxels.mean(axis=0)
    return tuple(int(v) for v in voxels[np.argmin(((voxels - centroid) ** 2).sum(axis=1))])


def _draw_slice(axis, gt2d: np.ndarray, pred2d: np.ndarray, colours: dict[int, tuple], aspect: float,
                title: str) -> None:
    rgb = np.zeros(gt2d.shape + (3,))
    for label, colour in colours.items():
        rgb[gt2d == label] = np.asarray(colour[:3]) * LABEL_ALPHA
    rgb[(gt2d != pred2d)] += 0.25  # lighter where GT and prediction disagree
    axis.imshow(np.clip(rgb, 0, 1), aspect=aspect, interpolation="nearest")
    for label, colour in colours.items():
        for mask, style in ((gt2d == label, "solid"), (pred2d == label, "dashed")):
            if mask.any() and not mask.all():
                axis.contour(mask.astype(np.float32), levels=[0.5], colors=[colour], linestyles=style,
                             linewidths=1.2)
    axis.set_title(title, fontsize=9)
    axis.set_xticks([])
    axis.set_yticks([])


def write_overlay(gt: np.ndarray, pred: np.ndarray, spacing: np.ndarray, label_names: dict[int, str],
                  case: str, dice_by_label: dict[int, float], path: str) -> None:
    """Three orthogonal slices (or the single 2-D slice) through the largest error of one case."""
    colours = label_colours(list(label_names))
    point = largest_error_point(gt, pred)
    spatial_axes = [axis for axis in range(gt.ndim) if gt.shape[axis] > 1]
    cut_axes = spatial_axes if len(spatial_axes) == 3 else [a for a in range(gt.ndim) if a not in spatial_axes][:1]
    figure = Figure(figsize=(4.2 * len(cut_axes) + 2.2, 4.6))
    axes = figure.subplots(1, len(cut_axes), squeeze=False)
    for panel, cut in zip(axes[0], cut_axes):
        index = [slice(None)] * gt.ndim
        index[cut] = point[cut]
        shown = [a for a in range(gt.ndim) if a != cut]
        aspect = float(spacing[shown[0]] / spacing[shown[1]])
        _draw_slice(panel, gt[tuple(index)], pred[tuple(index)], colours, aspect,
                    f"axis {cut} = {point[cut]} (of {gt.shape[cut]})")
        panel.plot(point[shown[1]], point[shown[0]], marker="+", color="white", markersize=12, markeredgewidth=1.5)
    handles = [Patch(facecolor=colours[l], label=f"{display_name(l, label_names[l])}: Dice "
                     f"{'n/a' if math.isnan(dice_by_label.get(l, math.nan)) else f'{100 * dice_by_label[l]:.1f}'}")
               for l in sorted(label_names)]
    handles += [Line2D([], [], color="black", linestyle="solid", label="reference (GT)"),
                Line2D([], [], color="black", linestyle="dashed", label="prediction"),
                Patch(facecolor=(0.25, 0.25, 0.25), label="GT != prediction (lighter)"),
                Line2D([], [], color="white", marker="+", linestyle="none", markeredgecolor="black",
                       label="largest error")]
    figure.legend(handles=handles, loc="center right", fontsize=8, frameon=False)
    figure.suptitle(f"{case}: slices through the largest error at {point}", fontsize=10)
    figure.tight_layout(rect=(0, 0, 1 - 2.1 / figure.get_figwidth(), 0.95))
    figure.savefig(path, dpi=100)


def most_foreground_slice(gt: np.ndarray) -> int:
    """Index along axis 0 (z of a SimpleITK array) of the slice with the most reference foreground."""
    return int(np.argmax((gt > 0).sum(axis=tuple(range(1, gt.ndim)))))


def write_image_overlay(image_file: Path, gt_file: Path, pred_file: Path, label_names: dict[int, str],
                        out_file: Path) -> None:
    """CT (soft-tissue window) with the reference and the prediction side by side, on the axial slice with the
    most reference foreground; ``label_names``: foreground label id -> name, for colours and the legend."""
    image, gt, pred = (sitk.GetArrayFromImage(sitk.ReadImage(str(f))) for f in (image_file, gt_file, pred_file))
    z = most_foreground_slice(gt)
    colours = label_colours(sorted(label_names))
    figure = Figure(figsize=(6.4, 3.5))
    axes = figure.subplots(1, 2)
    for axis, seg, title in ((axes[0], gt[z], "reference"), (axes[1], pred[z], "prediction")):
        axis.imshow(np.clip(image[z], *SOFT_TISSUE_WINDOW_HU), cmap="gray", interpolation="bilinear")
        rgba = np.zeros(seg.shape + (4,))
        for label, colour in colours.items():
            rgba[seg == label] = (*colour[:3], LABEL_ALPHA)
        axis.imshow(rgba, interpolation="nearest")
        axis.set_title(f"{title} (slice {z})", fontsize=9)
        axis.axis("off")
    figure.legend(handles=[Patch(facecolor=colours[l], label=n) for l, n in sorted(label_names.items())],
                  loc="lower center", ncol=len(label_names), fontsize=8, frameon=False)
    figure.suptitle(Path(out_file).stem, fontsize=9)
    figure.tight_layout(rect=(0, 0.07, 1, 1))
    figure.savefig(out_file, dpi=80)


def write_plots(summary: dict, directory: str) -> list[str]:
    """Box plots plus one overlay per evaluated case into ``directory``; returns the written paths."""
    os.makedirs(directory, exist_ok=True)
    written = [os.path.join(directory, BOXPLOT_FILE)]
    write_boxplots(summary, written[0])
    files = summary["files"]
    label_names = {int(k): v for k, v in summary["labels"].items()}
    reader = reader_class_for([files["cases"][e["case"]]["gt"] for e in summary["per_case"]],
                              files["file_ending"], files["reader_writer"])()
    for entry in summary["per_case"]:
        paths = files["cases"][entry["case"]]
        gt, spacing = read_label_map(reader, paths["gt"])
        pred, _ = read_label_map(reader, paths["pred"])
        dice = {int(k): v["dice"] for k, v in entry["per_class"].items()}
        target = os.path.join(directory, f"{entry['case']}_overlay.png")
        write_overlay(gt, pred, spacing, label_names, entry["case"], dice, target)
        written.append(target)
    return written
