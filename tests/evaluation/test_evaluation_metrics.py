"""Metric correctness: hand-computed cases and cross-checks against medpy and scikit-learn."""
from __future__ import annotations

import json
import math
from fractions import Fraction

import medpy.metric.binary as medpy_binary  # test extras (pyproject [test]): a missing one must fail, not skip
import numpy as np
import pytest
import sklearn.metrics as sklearn_metrics
from scipy import ndimage

from nnunetv2_uc.evaluation.metrics import (CLASS_METRICS, DISTANCE_METRIC_UNITS, CaseMetrics, EmptyMaskPolicy,
                                            adjusted_rand_index, binary_ari, class_counts, confusion_matrix,
                                            evaluate_label_maps, surface_mask)
from nnunetv2_uc.evaluation.report import summarize, to_json_compatible

SPACING = np.array([2.5, 0.8, 0.7])  # anisotropic, array order
_medpy_surface_distances = getattr(medpy_binary, "__surface_distances")  # medpy's directed distances (module-private)


def random_blobs(shape, seed: int, density: float = 0.02, grow: int = 2) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return ndimage.binary_dilation(rng.random(shape) < density, iterations=grow)


def medpy_reference(pred_mask: np.ndarray, gt_mask: np.ndarray, spacing) -> dict[str, float]:
    """Our distance keys, computed from medpy's public functions and its directed surface distances."""
    p_to_g = _medpy_surface_distances(pred_mask, gt_mask, spacing, 1)
    g_to_p = _medpy_surface_distances(gt_mask, pred_mask, spacing, 1)
    return {
        "hd95": max(np.percentile(p_to_g, 95), np.percentile(g_to_p, 95)),
        "hd95_pooled_mm": medpy_binary.hd95(pred_mask, gt_mask, voxelspacing=spacing),
        "hd95_pooled_vox": medpy_binary.hd95(pred_mask, gt_mask),  # what the uC repository called
        "hd_mm": medpy_binary.hd(pred_mask, gt_mask, voxelspacing=spacing),
        "assd": 0.5 * (medpy_binary.asd(pred_mask, gt_mask, voxelspacing=spacing)
                       + medpy_binary.asd(gt_mask, pred_mask, voxelspacing=spacing)),
        "assd_vox": 0.5 * (medpy_binary.asd(pred_mask, gt_mask) + medpy_binary.asd(gt_mask, pred_mask)),
        "dice": medpy_binary.dc(pred_mask, gt_mask),
        "iou": medpy_binary.jc(pred_mask, gt_mask),
    }


def test_identical_masks_are_perfect():
    gt = np.zeros((6, 9, 8), np.uint8)
    gt[1:4, 2:6, 2:7] = 1
    gt[4:6, 0:3, 0:3] = 2
    result = evaluate_label_maps(gt, gt.copy(), SPACING)
    assert result.ari == 1.0
    for label in (1, 2):
        metrics = result.per_class[label]
        assert (metrics["dice"], metrics["iou"], metrics["voe"], metrics["ari_binary"]) == (1.0, 1.0, 0.0, 1.0)
        assert all(metrics[k] == 0.0 for k in DISTANCE_METRIC_UNITS)


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_one_voxel_objects_shifted_by_one_voxel(axis):
    """Single voxels one step apart: every surface distance is one voxel = spacing[axis] mm."""
    gt = np.zeros((5, 6, 7), np.uint8)
    pred = np.zeros_like(gt)
    gt[2, 3, 3] = 1
    position = [2, 3, 3]
    position[axis] += 1
    pred[tuple(position)] = 1
    metrics = evaluate_label_maps(gt, pred, SPACING, labels=[1]).per_class[1]
    assert (metrics["dice"], metrics["iou"], metrics["voe"]) == (0.0, 0.0, 1.0)
    for key in ("hd95", "hd95_pooled_mm", "hd_mm", "assd"):
        assert metrics[key] == pytest.approx(SPACING[axis])
    assert metrics["hd95_pooled_vox"] == pytest.approx(1.0)
    assert metrics["assd_vox"] == pytest.approx(1.0)


def test_shifted_box_hand_computed():
    """A 1-voxel-thick slab shifted by one voxel along the 2.5 mm axis: all distances 2.5 mm / 1 voxel."""
    gt = np.zeros((6, 8, 8), np.uint8)
    gt[2, 1:7, 1:7] = 1
    pred = np.roll(gt, 1, axis=0)
    metrics = evaluate_label_maps(gt, pred, SPACING).per_class[1]
    assert metrics["hd95"] == pytest.approx(2.5)
    assert metrics["hd95_pooled_vox"] == pytest.approx(1.0)
    assert metrics["assd"] == pytest.approx(2.5)
    assert metrics["ari_binary"] == pytest.approx(sklearn_metrics.adjusted_rand_score(gt.ravel(), pred.ravel()))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_anisotropic_shapes_match_medpy(seed):
    shape = (14, 22, 19)
    gt_mask = random_blobs(shape, seed)
    pred_mask = random_blobs(shape, seed + 100) | (gt_mask & (np.random.default_rng(seed).random(shape) < 0.8))
    gt, pred = gt_mask.astype(np.uint8) * 3, pred_mask.astype(np.uint8) * 3
    ours = evaluate_label_maps(gt, pred, SPACING, labels=[3]).per_class[3]
    reference = medpy_reference(pred_mask, gt_mask, SPACING)
    for key, value in reference.items():
        assert ours[key] == pytest.approx(value, rel=1e-9, abs=1e-12), key
    assert ours["voe"] == pytest.approx(1 - reference["iou"])


def test_objects_touching_the_border_match_medpy():
    """Outside the image counts as background: faces on the border are surface (medpy's convention too)."""
    gt_mask = np.zeros((8, 10, 9), bool)
    gt_mask[:5, :, 4:] = True  # touches four faces of the array
    pred_mask = np.zeros_like(gt_mask)
    pred_mask[:, 2:, 3:] = True
    ours = evaluate_label_maps(gt_mask.astype(np.uint8), pred_mask.astype(np.uint8), SPACING).per_class[1]
    reference = medpy_reference(pred_mask, gt_mask, SPACING)
    for key, value in reference.items():
        assert ours[key] == pytest.approx(value, rel=1e-9, abs=1e-12), key
    assert surface_mask(gt_mask)[0, 5, 6]  # an interior voxel of the face lying on the array border


def test_far_false_positive_separates_the_two_hd95_conventions():
    """A 4x4x4 island far away: >5 % of P's surface voxels but <5 % of the pooled ones."""
    gt = np.zeros((16, 50, 50), np.uint8)
    gt[1:15, 2:16, 2:16] = 1
    pred = gt.copy()
    pred[4:8, 44:48, 44:48] = 1
    metrics = evaluate_label_maps(gt, pred, SPACING).per_class[1]
    reference = medpy_reference(pred.astype(bool), gt.astype(bool), SPACING)
    assert metrics["hd95_pooled_mm"] == pytest.approx(reference["hd95_pooled_mm"]) == 0.0
    assert metrics["hd95_pooled_vox"] == 0.0
    assert metrics["hd95"] == pytest.approx(reference["hd95"])
    island = np.argwhere(pred & ~gt) * SPACING
    cube = np.argwhere(gt) * SPACING
    nearest = np.sqrt(((island[:, None, :] - cube[None, :, :]) ** 2).sum(-1)).min()
    assert nearest > 30 and metrics["hd95"] >= nearest - 1e-9
    assert metrics["hd_mm"] == pytest.approx(reference["hd_mm"])


def test_bounding_box_crop_equals_full_volume_edt():
    """The crop is exact: compare with a full-volume EDT of the complement of each surface (spec's definition)."""
    shape = (16, 40, 36)
    gt_mask, pred_mask = random_blobs(shape, 7, 0.003, 3), random_blobs(shape, 8, 0.003, 3)
    ours = evaluate_label_maps(gt_mask.astype(np.uint8), pred_mask.astype(np.uint8), SPACING).per_class[1]
    gt_surface, pred_surface = surface_mask(gt_mask), surface_mask(pred_mask)
    p_to_g = ndimage.distance_transform_edt(~gt_surface, sampling=SPACING)[pred_surface]
    g_to_p = ndimage.distance_transform_edt(~pred_surface, sampling=SPACING)[gt_surface]
    assert ours["hd95"] == pytest.approx(max(np.percentile(p_to_g, 95), np.percentile(g_to_p, 95)))
    assert ours["assd"] == pytest.approx(0.5 * (p_to_g.mean() + g_to_p.mean()))
    assert ours["hd_mm"] == pytest.approx(max(p_to_g.max(), g_to_p.max()))


def test_multiclass_and_binary_ari_match_sklearn():
    rng = np.random.default_rng(3)
    gt = rng.integers(0, 5, size=(9, 11, 13)).astype(np.uint8)
    pred = np.where(rng.random(gt.shape) < 0.7, gt, rng.integers(0, 5, size=gt.shape)).astype(np.uint8)
    result = evaluate_label_maps(gt, pred, SPACING, labels=[1, 2, 3, 4])
    assert result.ari == pytest.approx(sklearn_metrics.adjusted_rand_score(gt.ravel(), pred.ravel()), abs=1e-12)
    for label in (1, 2, 3, 4):
        expected = sklearn_metrics.adjusted_rand_score((gt == label).ravel(), (pred == label).ravel())
        assert result.per_class[label]["ari_binary"] == pytest.approx(expected, abs=1e-12)


def test_confusion_matrix_counts_match_direct_counting_beyond_uint8():
    rng = np.random.default_rng(4)
    gt = rng.integers(0, 20, size=(5, 6, 7))
    pred = rng.integers(0, 20, size=(5, 6, 7))
    confusion = confusion_matrix(gt, pred, 20)
    assert confusion[3, 7] == np.sum((gt == 3) & (pred == 7))
    tp, fp, fn, tn = class_counts(confusion, 5)
    assert (tp, fp, fn, tn) == (np.sum((gt == 5) & (pred == 5)), np.sum((gt != 5) & (pred == 5)),
                                np.sum((gt == 5) & (pred != 5)), np.sum((gt != 5) & (pred != 5)))


def test_ari_from_counts_is_exact_for_a_hundred_million_voxels():
    """C(n, 2) products overflow int64 here; compare with exact rational arithmetic."""
    tp, fp, fn, tn = 3_000_000, 250_000, 410_000, 96_340_000

    def pairs(n: int) -> Fraction:
        return Fraction(n * (n - 1), 2)

    n = tp + fp + fn + tn
    index = sum(pairs(v) for v in (tp, fp, fn, tn))
    rows, cols = pairs(tp + fn) + pairs(fp + tn), pairs(tp + fp) + pairs(fn + tn)
    expected = rows * cols / pairs(n)
    exact = (index - expected) / ((rows + cols) / 2 - expected)
    assert binary_ari(tp, fp, fn, tn) == pytest.approx(float(exact), rel=1e-9)


def test_ignore_mask_voxels_count_for_nothing():
    """nnU-Net's ignore label: ignored voxels leave the counts, and are background for the surfaces."""
    gt = np.zeros((6, 10, 10), np.uint8)
    gt[1:5, 2:8, 2:8] = 1
    pred = np.roll(gt, 1, axis=2)
    ignore = np.zeros(gt.shape, bool)
    ignore[:, :, 7:] = True  # hides the shifted column of the prediction and part of GT
    result = evaluate_label_maps(np.where(ignore, 9, gt), pred, SPACING, labels=[1], ignore_mask=ignore)
    kept = ~ignore
    expected = evaluate_label_maps(gt[kept].reshape(6, 10, 7), pred[kept].reshape(6, 10, 7), SPACING, labels=[1])
    assert result.per_class[1] == pytest.approx(expected.per_class[1])
    assert result.ari == pytest.approx(sklearn_metrics.adjusted_rand_score(gt[kept], pred[kept]))


def test_ari_single_cluster_is_one_like_sklearn():
    assert adjusted_rand_index(np.array([[10]])) == 1.0
    assert sklearn_metrics.adjusted_rand_score([0] * 10, [0] * 10) == 1.0


# ------------------------------------------------------------------------------------------- empty-mask policy
EMPTY_SHAPE = (4, 5, 6)


def _empty_case(situation: str) -> tuple[np.ndarray, np.ndarray]:
    gt = np.zeros(EMPTY_SHAPE, np.uint8)
    pred = np.zeros(EMPTY_SHAPE, np.uint8)
    gt[1:3, 1:3, 1:3] = 1  # class 1 always present on both sides
    pred[1:3, 1:3, 1:4] = 1
    if situation == "missed":
        gt[0, 0, 0] = 2
    elif situation == "false_positive":
        pred[3, 4, 5] = 2
    return gt, pred


@pytest.mark.parametrize("situation", ["absent", "missed", "false_positive"])
@pytest.mark.parametrize("policy_text", ["worst", "nan", "value:123.5"])
def test_empty_mask_policy(situation, policy_text):
    gt, pred = _empty_case(situation)
    result = evaluate_label_maps(gt, pred, SPACING, labels=[1, 2], policy=EmptyMaskPolicy.parse(policy_text))
    metrics = result.per_class[2]
    assert result.status[2] == situation
    if situation == "absent":
        assert all(math.isnan(metrics[k]) for k in CLASS_METRICS)
        return
    assert (metrics["dice"], metrics["iou"], metrics["voe"]) == (0.0, 0.0, 1.0)
    expected_ari = sklearn_metrics.adjusted_rand_score((gt == 2).ravel(), (pred == 2).ravel())
    assert metrics["ari_binary"] == pytest.approx(expected_ari, abs=1e-12)
    diagonal = {"mm": float(np.linalg.norm(np.array(EMPTY_SHAPE) * SPACING)),
                "vox": float(np.linalg.norm(EMPTY_SHAPE))}
    for key, unit in DISTANCE_METRIC_UNITS.items():
        if policy_text == "worst":
            assert metrics[key] == pytest.approx(diagonal[unit]), key
        elif policy_text == "nan":
            assert math.isnan(metrics[key]), key
        else:
            assert metrics[key] == 123.5, key
    assert result.per_class[1]["dice"] == pytest.approx(2 * 8 / (8 + 12))  # the other class is unaffected


def test_policy_parse_rejects_garbage():
    with pytest.raises(ValueError, match="value:<number>"):
        EmptyMaskPolicy.parse("value:abc")
    with pytest.raises(ValueError):
        EmptyMaskPolicy.parse("zero")


# ------------------------------------------------------------------------------------------- aggregation
def _case(dice1: float, dice2: float, status2: str = "ok") -> CaseMetrics:
    def metrics(dice: float) -> dict[str, float]:
        values = {k: dice for k in CLASS_METRICS}
        return values | {"hd95_pooled_mm": dice, "hd_mm": dice, "assd_vox": dice, "iou": dice}

    return CaseMetrics(ari=0.5, per_class={1: metrics(dice1), 2: metrics(dice2)}, status={1: "ok", 2: status2})


def test_class_first_and_case_first_differ_with_nans():
    cases = [("a", _case(1.0, math.nan, "absent")), ("b", _case(0.5, 0.0))]
    summary = summarize(cases, {1: "liver", 2: "pancreas"}, EmptyMaskPolicy())
    assert summary["per_class_mean"]["1"]["dice"] == pytest.approx(0.75)
    assert summary["per_class_mean"]["2"]["dice"] == pytest.approx(0.0)
    assert summary["mean"]["dice"] == pytest.approx(0.375)             # class-first (nnU-Net)
    assert summary["mean_case_first"]["dice"] == pytest.approx(0.625)  # case-first: (1.0 + 0.25) / 2 (uC)
    assert summary["mean"]["mIoU"] == summary["mean"]["iou"]
    assert summary["mean_case_first"]["ari_binary_mean"] == summary["mean_case_first"]["ari_binary"]
    assert summary["empty_masks"]["n_absent"] == {"1": 0, "2": 1}


def test_json_schema_and_nan_as_null():
    cases = [("a", _case(1.0, math.nan, "absent")), ("b", _case(0.5, 0.0))]
    document = json.loads(json.dumps(to_json_compatible(summarize(cases, {1: "1", 2: "2"}, EmptyMaskPolicy())),
                                     allow_nan=False))
    assert {"per_case", "per_class_mean", "mean", "mean_case_first"} <= set(document)
    entry = document["per_case"][0]
    assert set(entry) == {"case", "ari", "per_class"} and entry["case"] == "a"
    assert set(CLASS_METRICS) <= set(entry["per_class"]["1"])
    assert entry["per_class"]["2"]["dice"] is None
    assert {"mIoU", "ari_binary_mean", *CLASS_METRICS} <= set(document["mean"])
    assert {"mIoU", "ari_binary_mean", *CLASS_METRICS} <= set(document["mean_case_first"])
