"""`nnunetv2_uc evaluate` end to end on tiny files: outputs, bad input, parallelism, nnU-Net results folders."""
from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from nnunetv2_uc.cli import SUBCOMMANDS, main
from nnunetv2_uc.evaluation import evaluate_folders
from nnunetv2_uc.cli import evaluate as evaluate_cli
from nnunetv2_uc.evaluation.report import _format

SITK_SPACING = (0.8, 0.9, 2.5)          # (x, y, z) as SimpleITK stores it
ARRAY_SPACING = SITK_SPACING[::-1]      # (z, y, x): what nnU-Net's reader reports for the (z, y, x) array
SHAPE = (12, 24, 28)                    # (z, y, x)


def write_nifti(path: Path, array: np.ndarray, spacing=SITK_SPACING) -> None:
    image = sitk.GetImageFromArray(array.astype(np.uint8))
    image.SetSpacing(spacing)
    sitk.WriteImage(image, str(path))


def reference_labels() -> np.ndarray:
    z, y, x = np.ogrid[: SHAPE[0], : SHAPE[1], : SHAPE[2]]
    seg = np.zeros(SHAPE, np.uint8)
    seg[((z - 6) / 4.0) ** 2 + ((y - 9) / 6.0) ** 2 + ((x - 9) / 6.0) ** 2 < 1] = 1
    seg[((z - 6) / 3.0) ** 2 + ((y - 16) / 5.0) ** 2 + ((x - 20) / 5.0) ** 2 < 1] = 2
    seg[5:7, 2:4, 24:26] = 3
    return seg


@pytest.fixture()
def folders(tmp_path: Path) -> tuple[Path, Path]:
    """Three cases: perfect, shifted with class 3 missed, shifted with a far false positive of class 3 only."""
    gt_dir, pred_dir = tmp_path / "gt", tmp_path / "pred"
    gt_dir.mkdir()
    pred_dir.mkdir()
    for index in range(3):
        gt = reference_labels()
        pred = np.roll(gt, index, axis=2)
        if index == 1:
            pred[pred == 3] = 0
        if index == 2:
            gt[gt == 3] = 0
            pred[pred == 3] = 0
            pred[0:2, 20:22, 0:2] = 3
        write_nifti(gt_dir / f"case_{index:03d}.nii.gz", gt)
        write_nifti(pred_dir / f"case_{index:03d}.nii.gz", pred)
    return gt_dir, pred_dir


def run_cli(*arguments: str) -> int:
    """`nnunetv2_uc evaluate ...` in-process (nnunetv2_uc.cli imports only the evaluate subcommand's module); user
    errors come back as exit codes, their messages on stderr."""
    return main(["evaluate", *(str(a) for a in arguments)])


def test_subcommand_is_registered():
    assert "evaluate" in SUBCOMMANDS
    assert evaluate_cli.__doc__.splitlines()[0].startswith("Evaluate predictions")


def test_outputs_json_table_csv_and_plots(folders, tmp_path, capsys):
    gt_dir, pred_dir = folders
    out = tmp_path / "out"
    code = run_cli("--gt", gt_dir, "--pred", pred_dir, "-o", out / "r.json", "--table", out / "t.md",
                   "--csv", out / "r.csv", "--plots", out / "plots", "--labels", 1, 2, 3)
    assert code == 0
    document = json.loads((out / "r.json").read_text())
    assert [c["case"] for c in document["per_case"]] == ["case_000", "case_001", "case_002"]
    perfect, missed, false_positive = document["per_case"]
    assert perfect["ari"] == 1.0 and perfect["per_class"]["1"]["dice"] == 1.0
    assert missed["per_class"]["3"]["dice"] == 0.0 and missed["per_class"]["3"]["voe"] == 1.0
    diagonal_mm = float(np.linalg.norm(np.array(SHAPE) * np.array(ARRAY_SPACING)))
    assert missed["per_class"]["3"]["hd95"] == pytest.approx(diagonal_mm, rel=1e-6)   # worst-case fill
    assert false_positive["per_class"]["3"]["hd95_pooled_vox"] == pytest.approx(np.linalg.norm(SHAPE))
    # a one-voxel shift along x (0.8 mm): the directed HD95 of the ellipsoids is one x step
    assert missed["per_class"]["1"]["hd95"] == pytest.approx(0.8, rel=1e-5)
    assert document["empty_masks"]["filled_cases"] == {"3": ["case_001", "case_002"]}
    assert document["per_class_mean"]["3"]["dice"] == pytest.approx(1 / 3)
    assert document["mean"]["mIoU"] == pytest.approx(np.mean([document["per_class_mean"][k]["iou"]
                                                               for k in ("1", "2", "3")]))
    table = (out / "t.md").read_text()
    assert "| IoU (%) | Dice (%) | VOE (%) |" in table and "Definitions:" in table and "case-first" in table
    assert f"{100 * document['mean']['mIoU']:.2f}" in table
    assert table in capsys.readouterr().out
    rows = list(csv.DictReader((out / "r.csv").open()))
    assert len(rows) == 9 and {r["filled_by_policy"] for r in rows if r["label"] == "3"} == {"0", "1"}
    pngs = sorted(p.name for p in (out / "plots").iterdir())
    assert pngs == ["boxplot_dice_hd95.png", "case_000_overlay.png", "case_001_overlay.png", "case_002_overlay.png"]
    import matplotlib.image

    overlay = matplotlib.image.imread(out / "plots" / "case_001_overlay.png")
    assert overlay.shape[0] > 300 and overlay.shape[1] > 1000 and overlay[..., :3].std() > 0.05


def test_python_api_and_parallel_results_agree(folders):
    gt_dir, pred_dir = folders
    serial = evaluate_folders(str(gt_dir), str(pred_dir), labels=[1, 2, 3], num_processes=1)
    parallel = evaluate_folders(str(gt_dir), str(pred_dir), labels=[1, 2, 3], num_processes=2)
    assert serial["per_case"] == parallel["per_case"]
    assert serial["labels"] == {"1": "1", "2": "2", "3": "3"}


def test_labels_inferred_from_references_and_named_by_dataset_json(folders, tmp_path):
    gt_dir, pred_dir = folders
    inferred = evaluate_folders(str(gt_dir), str(pred_dir))
    assert list(inferred["labels"]) == ["1", "2", "3"]
    dataset_json = tmp_path / "dataset.json"
    dataset_json.write_text(json.dumps({"labels": {"background": 0, "liver": 1, "spleen": 2, "tumour": 3},
                                        "file_ending": ".nii.gz"}))
    named = evaluate_folders(str(gt_dir), str(pred_dir), dataset_json=str(dataset_json))
    assert named["labels"] == {"1": "liver", "2": "spleen", "3": "tumour"}
    assert named["per_case"] == inferred["per_case"]


def test_every_bad_input_is_reported_once_and_nothing_is_written(folders, tmp_path, capsys):
    gt_dir, pred_dir = folders
    gt = reference_labels()
    write_nifti(gt_dir / "shape.nii.gz", gt)
    write_nifti(pred_dir / "shape.nii.gz", gt[:, :, :-1])
    write_nifti(gt_dir / "spacing.nii.gz", gt)
    write_nifti(pred_dir / "spacing.nii.gz", gt, spacing=(0.8, 0.9, 3.0))
    write_nifti(gt_dir / "labels.nii.gz", gt)
    write_nifti(pred_dir / "labels.nii.gz", np.where(gt == 2, 7, gt))
    write_nifti(gt_dir / "nopred.nii.gz", gt)
    (gt_dir / "broken.nii.gz").write_bytes(gt_dir.joinpath("case_000.nii.gz").read_bytes())
    (pred_dir / "broken.nii.gz").write_bytes(b"not a nifti file")
    out = tmp_path / "r.json"
    code = run_cli("--gt", gt_dir, "--pred", pred_dir, "-o", out, "--labels", 1, 2, 3)
    assert code == 2 and not out.exists()
    errors = [line.strip() for line in capsys.readouterr().err.splitlines() if line.startswith("  ")]
    assert len(errors) == 5
    by_case = {line.split(":")[0]: line for line in errors}
    assert "(12, 24, 28)" in by_case["case shape"] and "(12, 24, 27)" in by_case["case shape"]
    assert "2.5" in by_case["case spacing"] and "3.0" in by_case["case spacing"]
    assert "[7]" in by_case["case labels"]
    assert "prediction missing" in by_case["case nopred"]
    assert "unreadable" in by_case["case broken"] and "broken.nii.gz" in by_case["case broken"]

    code = run_cli("--gt", gt_dir, "--pred", pred_dir, "-o", out, "--labels", 1, 2, 3, "--skip-bad")
    assert code == 0
    document = json.loads(out.read_text())
    assert [c["case"] for c in document["per_case"]] == ["case_000", "case_001", "case_002"]
    assert [s["case"] for s in document["skipped"]] == ["broken", "labels", "nopred", "shape", "spacing"]


def test_existing_output_needs_overwrite(folders, tmp_path, capsys):
    gt_dir, pred_dir = folders
    out = tmp_path / "r.json"
    out.write_text("precious")
    assert run_cli("--gt", gt_dir, "--pred", pred_dir, "-o", out) == 3
    assert out.read_text() == "precious" and "--overwrite" in capsys.readouterr().err
    assert run_cli("--gt", gt_dir, "--pred", pred_dir, "-o", out, "--overwrite") == 0
    assert json.loads(out.read_text())["n_cases"] == 3


def test_usage_errors_are_clear(tmp_path, capsys):
    assert run_cli("--gt", tmp_path) == 2
    assert "--pred is required" in capsys.readouterr().err
    assert run_cli("--gt", tmp_path / "nope", "--pred", tmp_path, "-o", tmp_path / "r.json") == 2
    assert "not a directory" in capsys.readouterr().err
    assert run_cli("--gt", tmp_path, "--pred", tmp_path, "-o", tmp_path / "r.json", "--empty-policy", "x") == 2
    assert "empty-policy" in capsys.readouterr().err


def test_two_dimensional_png_cases(tmp_path):
    """nnU-Net reads PNGs as (1, y, x); the singleton axis must not turn every pixel into surface."""
    from PIL import Image

    gt_dir, pred_dir = tmp_path / "gt", tmp_path / "pred"
    gt_dir.mkdir()
    pred_dir.mkdir()
    gt = np.zeros((20, 30), np.uint8)
    gt[5:15, 5:15] = 1
    pred = np.roll(gt, 2, axis=1)
    Image.fromarray(gt).save(gt_dir / "img.png")
    Image.fromarray(pred).save(pred_dir / "img.png")
    result = evaluate_folders(str(gt_dir), str(pred_dir), labels=[1])
    metrics = result["per_case"][0]["per_class"]["1"]
    assert metrics["dice"] == pytest.approx(2 * 80 / 200)
    assert metrics["hd95"] == pytest.approx(2.0) and metrics["hd95_pooled_vox"] == pytest.approx(2.0)
    from nnunetv2_uc.evaluation.plots import write_plots

    written = write_plots(result, str(tmp_path / "plots"))
    assert [os.path.basename(p) for p in written] == ["boxplot_dice_hd95.png", "img_overlay.png"]
    assert os.path.getsize(written[1]) > 5000


def test_image_overlay_shows_ct_with_reference_and_prediction_on_the_most_foreground_slice(tmp_path):
    """The demo's picture: CT in a soft-tissue window, reference | prediction side by side, legend."""
    import matplotlib.image

    from nnunetv2_uc.evaluation.plots import (LABEL_ALPHA, SOFT_TISSUE_WINDOW_HU, label_colours,
                                              most_foreground_slice, write_image_overlay)

    gt = reference_labels()
    gt[9, 2:22, 2:26] = 2  # slice 9 now has the most foreground
    assert most_foreground_slice(gt) == 9
    ct = np.full(SHAPE, 40, np.int16)  # soft tissue: mid-grey in the window ...
    ct[:, 0, 0], ct[:, 0, 1] = -1000, 1000  # ... which air and bone clipped to the window stretch to black..white
    files = {}
    for name, array in (("ct", ct), ("gt", gt), ("pred", np.zeros(SHAPE, np.uint8))):
        files[name] = tmp_path / f"{name}.nii.gz"
        sitk.WriteImage(sitk.GetImageFromArray(array), str(files[name]))
    out = tmp_path / "case_007.png"
    write_image_overlay(files["ct"], files["gt"], files["pred"], {1: "liver", 2: "spleen", 3: "tumour"}, out)

    picture = matplotlib.image.imread(out)[..., :3]
    assert picture.shape == (280, 512, 3)  # 6.4 x 3.5 inches at 80 dpi
    grey = (40 - SOFT_TISSUE_WINDOW_HU[0]) / (SOFT_TISSUE_WINDOW_HU[1] - SOFT_TISSUE_WINDOW_HU[0])
    spleen = (1 - LABEL_ALPHA) * grey + LABEL_ALPHA * np.array(label_colours([1, 2, 3])[2][:3])
    panels = picture[30:250]  # below the titles, above the legend
    left, right = panels[:, :256], panels[:, 256:]
    assert (np.abs(left - spleen).max(axis=-1) < 0.02).sum() > 25000  # slice 9: the spleen block fills most of it
    assert (np.abs(right - grey).max(axis=-1) < 0.02).sum() > 1000  # empty prediction: plain CT
    assert (np.abs(right - spleen).max(axis=-1) < 0.02).sum() == 0
    legend = picture[255:]
    for colour in label_colours([1, 2, 3]).values():
        assert (np.abs(legend - np.array(colour[:3])).max(axis=-1) < 0.02).sum() > 20


def test_nnunet_results_mode_pools_folds(folders, tmp_path, monkeypatch, capsys):
    gt_dir, pred_dir = folders
    dataset = "Dataset987_EvalTest"
    preprocessed, results = tmp_path / "preprocessed" / dataset, tmp_path / "results" / dataset
    (preprocessed / "gt_segmentations").mkdir(parents=True)
    (preprocessed / "dataset.json").write_text(json.dumps(
        {"labels": {"background": 0, "liver": 1, "spleen": 2, "tumour": 3}, "file_ending": ".nii.gz"}))
    model = results / "nnUNetTrainerX__myPlans__3d_fullres"
    for fold, cases in (("0", ["case_000", "case_001"]), ("1", ["case_002"])):
        (model / f"fold_{fold}" / "validation").mkdir(parents=True)
        for case in cases:
            (model / f"fold_{fold}" / "validation" / f"{case}.nii.gz").write_bytes(
                (pred_dir / f"{case}.nii.gz").read_bytes())
    for case in ("case_000", "case_001", "case_002"):
        (preprocessed / "gt_segmentations" / f"{case}.nii.gz").write_bytes((gt_dir / f"{case}.nii.gz").read_bytes())
    monkeypatch.setenv("nnUNet_preprocessed", str(tmp_path / "preprocessed"))
    monkeypatch.setenv("nnUNet_results", str(tmp_path / "results"))
    monkeypatch.setenv("nnUNet_raw", str(tmp_path / "raw"))
    out = tmp_path / "cv.json"
    assert run_cli("--nnunet-results", "987", "nnUNetTrainerX", "3d_fullres", "-p", "myPlans", "-o", out) == 0
    printed = capsys.readouterr().out
    assert "nnUNetTrainerX__myPlans__3d_fullres, cross-validation folds 0, 1" in printed
    assert "| liver (1) | 3 |" in printed
    document = json.loads(out.read_text())
    assert document["inputs"]["fold_of_case"] == {"case_000": "0", "case_001": "0", "case_002": "1"}
    direct = evaluate_folders(str(gt_dir), str(pred_dir), labels=[1, 2, 3])
    assert document["mean"]["dice"] == pytest.approx(direct["mean"]["dice"])

    # a second trainer whose fold-0 predictions are perfect: one command, one comparison table
    perfect = results / "nnUNetTrainerY__myPlans__3d_fullres" / "fold_0" / "validation"
    perfect.mkdir(parents=True)
    for case in ("case_000", "case_001"):
        (perfect / f"{case}.nii.gz").write_bytes((gt_dir / f"{case}.nii.gz").read_bytes())
    table = tmp_path / "compare.md"
    assert run_cli("--nnunet-results", "987", "nnUNetTrainerX,nnUNetTrainerY", "3d_fullres", "-p", "myPlans",
                   "--folds", "0", "-o", tmp_path / "cv.json", "--table", table) == 0
    comparison = table.read_text().split("models compared")[1]
    assert ("| nnUNetTrainerY | n/a | n/a | n/a | class-first | 2 | 100.00 | 100.00 | 0.00 | 0.00 | 0.00 | 0.00 | "
            "100.00 | 0 |") in comparison  # no plans.json or checkpoint in these folders: cost n/a, said why
    assert "nnUNetTrainerY: #Params/GMACs: no plans.json or dataset.json in the results folder" in comparison
    assert "| nnUNetTrainerX | n/a | n/a | n/a | case-first (uC) | 2 |" in comparison
    assert json.loads((tmp_path / "cv.nnUNetTrainerY.json").read_text())["mean"]["dice"] == 1.0
    assert json.loads((tmp_path / "cv.nnUNetTrainerX.json").read_text())["n_cases"] == 2
    capsys.readouterr()

    assert run_cli("--nnunet-results", "987", "nnUNetTrainerX", "3d_fullres", "--folds", "0") == 2
    assert "no such training output" in capsys.readouterr().err  # default plans nnUNetPlans do not exist
    assert run_cli("--nnunet-results", "987", "nnUNetTrainerX", "3d_fullres", "-p", "myPlans",
                   "--folds", "0", "4") == 2
    assert "fold_4" in capsys.readouterr().err


def test_table_cells_have_no_negative_zero():
    assert _format(-1e-6, 100.0) == "0.00"  # e.g. the ARI of a prediction that is all background
    assert _format(-0.003, 100.0) == "-0.30" and _format(0.5, 100.0) == "50.00" and _format(None, 1.0) == "n/a"
