"""Benchmark `nnunetv2_uc evaluate` against the uC repository's approach and nnU-Net's folder evaluation.

Synthetic CT-sized cases (default 100 x 512 x 512 (z, y, x), spacing 2.5 x 0.8 x 0.8 mm, 13 organ-like
ellipsoids; the prediction is every organ shifted and resized plus one far false-positive blob) are written as
.nii.gz, then evaluated by
  1. ours, `evaluate_folders(..., num_processes=1)` and `num_processes=2` (all metrics, file reading included);
  2. nnU-Net's `nnUNetv2_evaluate_folder` (`compute_metrics_on_folder_simple`: Dice/IoU only), 1 and 2 processes;
  3. the uC repository's approach: nibabel read, then per class medpy dc/jc/hd95/assd on the full volume without
     voxelspacing and sklearn `adjusted_rand_score` on the flattened binary masks, plus sklearn's multi-class ARI.
     It is slow (minutes per case), so it runs on --uc-classes classes (all 13 for the README's table;
     a subset is reported as a subset); its hd95 values are checked against our `hd95_pooled_vox`.

Usage: python benchmarks/bench_evaluate.py [--cases 1] [--uc-classes 13] [--workdir DIR]
Prints a markdown table of seconds per case.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np

SPACING_ZYX = (2.5, 0.8, 0.8)


def organ_ellipsoids(shape: tuple[int, int, int], num_classes: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """(centre, semi-axes) in voxels for ``num_classes`` non-overlapping-ish organs of very different sizes."""
    rng = np.random.default_rng(seed)
    organs = []
    for index in range(num_classes):
        size = 0.35 if index == 0 else rng.uniform(0.04, 0.16)  # one liver-sized organ, the rest smaller
        semi = np.array([shape[0] * size * rng.uniform(0.8, 1.2), shape[1] * size * 0.6, shape[2] * size * 0.6])
        semi = np.maximum(semi, 2)
        centre = np.array([rng.uniform(s + 1, n - s - 1) for s, n in zip(semi, shape)])
        organs.append((centre, semi))
    return organs


def paint(seg: np.ndarray, label: int, centre: np.ndarray, semi: np.ndarray) -> None:
    """Set an axis-aligned ellipsoid to ``label``, touching only its bounding box."""
    low = np.maximum(np.floor(centre - semi).astype(int), 0)
    high = np.minimum(np.ceil(centre + semi).astype(int) + 1, seg.shape)
    grids = np.ogrid[tuple(slice(a, b) for a, b in zip(low, high))]
    inside = sum(((g - c) / s) ** 2 for g, c, s in zip(grids, centre, semi)) < 1
    seg[tuple(slice(a, b) for a, b in zip(low, high))][inside] = label


def synthetic_pair(shape, num_classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    gt = np.zeros(shape, np.uint8)
    pred = np.zeros(shape, np.uint8)
    rng = np.random.default_rng(seed + 1000)
    for label, (centre, semi) in enumerate(organ_ellipsoids(shape, num_classes, seed), start=1):
        paint(gt, label, centre, semi)
        paint(pred, label, centre + rng.normal(0, 1.5, 3), semi * rng.uniform(0.9, 1.1, 3))
    # a small far false positive of the smallest class: more than 5 % of its predicted surface, less than 5 %
    # of the pooled surfaces, so the two HD95 conventions disagree by two orders of magnitude (spec section 5)
    paint(pred, num_classes, np.array([shape[0] * 0.5, shape[1] * 0.9, shape[2] * 0.9]), np.array([2, 4, 4]))
    return gt, pred


def write_cases(workdir: str, shape, num_classes: int, num_cases: int) -> tuple[str, str]:
    import SimpleITK as sitk

    gt_dir, pred_dir = os.path.join(workdir, "gt"), os.path.join(workdir, "pred")
    os.makedirs(gt_dir, exist_ok=True)
    os.makedirs(pred_dir, exist_ok=True)
    for case in range(num_cases):
        for folder, seg in zip((gt_dir, pred_dir), synthetic_pair(shape, num_classes, case)):
            image = sitk.GetImageFromArray(seg)
            image.SetSpacing(SPACING_ZYX[::-1])
            sitk.WriteImage(image, os.path.join(folder, f"case_{case:03d}.nii.gz"), True)
    return gt_dir, pred_dir


def time_ours(gt_dir: str, pred_dir: str, labels: list[int], processes: int) -> tuple[float, dict]:
    from nnunetv2_uc.evaluation import evaluate_folders

    start = time.perf_counter()
    summary = evaluate_folders(gt_dir, pred_dir, labels=labels, num_processes=processes)
    return time.perf_counter() - start, summary


def time_reading(gt_dir: str, pred_dir: str) -> float:
    """Seconds to read every GT and prediction file with nnU-Net's SimpleITK reader (part of every method above)."""
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO

    start = time.perf_counter()
    for folder in (gt_dir, pred_dir):
        for name in sorted(os.listdir(folder)):
            SimpleITKIO().read_seg(os.path.join(folder, name))
    return time.perf_counter() - start


def time_nnunet(gt_dir: str, pred_dir: str, labels: list[int], processes: int) -> float:
    from nnunetv2.evaluation.evaluate_predictions import compute_metrics_on_folder_simple

    output = os.path.join(tempfile.mkdtemp(), "summary.json")
    start = time.perf_counter()
    compute_metrics_on_folder_simple(gt_dir, pred_dir, labels, output, num_processes=processes, chill=True)
    return time.perf_counter() - start


def time_uc_case(gt_path: str, pred_path: str, classes: list[int]) -> tuple[float, float, dict[int, float]]:
    """uC's per-case work: (seconds for ``classes``, seconds of sklearn's multi-class ARI, medpy hd95 per class)."""
    import nibabel as nib
    from medpy.metric import binary
    from sklearn.metrics import adjusted_rand_score

    start = time.perf_counter()
    gt = np.asanyarray(nib.load(gt_path).dataobj)
    pred = np.asanyarray(nib.load(pred_path).dataobj)
    hd95 = {}
    for label in classes:
        p, g = pred == label, gt == label
        binary.dc(p, g)
        binary.jc(p, g)
        hd95[label] = binary.hd95(p, g)
        binary.assd(p, g)
        adjusted_rand_score(g.ravel(), p.ravel())
    per_classes = time.perf_counter() - start
    start = time.perf_counter()
    adjusted_rand_score(gt.ravel(), pred.ravel())
    return per_classes, time.perf_counter() - start, hd95


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", nargs=3, type=int, default=[100, 512, 512], help="(z, y, x)")
    parser.add_argument("--classes", type=int, default=13)
    parser.add_argument("--cases", type=int, default=2)
    parser.add_argument("--uc-classes", type=int, default=13, help="classes timed with the uC approach (slow: about 14 s per class here)")
    parser.add_argument("--workdir", help="where to write the cases (default: a temporary folder)")
    args = parser.parse_args()
    workdir = args.workdir or tempfile.mkdtemp(prefix="bench_evaluate_")
    labels = list(range(1, args.classes + 1))
    print(f"writing {args.cases} cases of {tuple(args.shape)} with {args.classes} classes to {workdir}", flush=True)
    gt_dir, pred_dir = write_cases(workdir, tuple(args.shape), args.classes, args.cases)

    rows = [("reading GT + prediction (nnU-Net SimpleITKIO), for reference", time_reading(gt_dir, pred_dir) / args.cases,
             "measured")]
    for processes in (1, 2):
        seconds, summary = time_ours(gt_dir, pred_dir, labels, processes)
        rows.append((f"nnunetv2_uc evaluate -j {processes} (all metrics)", seconds / args.cases, "measured"))
    for processes in (1, 2):
        seconds = time_nnunet(gt_dir, pred_dir, labels, processes)
        rows.append((f"nnUNetv2_evaluate_folder -np {processes} (Dice/IoU only)", seconds / args.cases, "measured"))

    timed = labels[: args.uc_classes]
    # the uC approach is timed on the largest (first) class and the far-false-positive class when there are two
    if args.uc_classes >= 2:
        timed = [labels[0], labels[-1]] + labels[1: args.uc_classes - 1]
    gt_path, pred_path = (os.path.join(d, "case_000.nii.gz") for d in (gt_dir, pred_dir))
    uc_seconds, sklearn_multi, medpy_hd95 = time_uc_case(gt_path, pred_path, timed)
    if len(timed) == args.classes:
        rows.append((f"uC repository approach (medpy full volume + sklearn), {args.classes} classes",
                     uc_seconds, "measured"))
    else:  # only a subset was timed: report exactly that, no extrapolation
        rows.append((f"uC repository approach (medpy full volume + sklearn), {len(timed)} of {args.classes} classes",
                     uc_seconds, "measured on a subset of the classes; pass --uc-classes to time all"))
    rows.append(("sklearn adjusted_rand_score, multi-class, one call", sklearn_multi, "measured"))

    ours_case = summary["per_case"][0]["per_class"]
    for label, value in medpy_hd95.items():
        ours = ours_case[str(label)]["hd95_pooled_vox"]
        assert abs(ours - value) < 1e-9, f"class {label}: medpy hd95 {value} vs ours {ours}"
    print(f"\nmedpy hd95 (no spacing) == our hd95_pooled_vox for classes {timed}: "
          + ", ".join(f"{medpy_hd95[l]:.4f}" for l in timed))
    print(f"case_000 class {labels[-1]} (far false positive): hd95 {ours_case[str(labels[-1])]['hd95']:.2f} mm "
          f"(directed max) vs hd95_pooled_mm {ours_case[str(labels[-1])]['hd95_pooled_mm']:.2f} mm")
    print(f"\n{os.cpu_count()} CPU(s); {args.cases} case(s) of {tuple(args.shape)}, {args.classes} classes\n")
    print("| Method | s per case | note |\n|---|---|---|")
    for name, seconds, note in rows:
        print(f"| {name} | {seconds:.2f} | {note} |")


if __name__ == "__main__":
    main()
