"""A tiny synthetic, anisotropic dataset in nnU-Net raw format for the trainer and end-to-end tests.

Cases are (z, y, x) = (12, 28, 28) voxels at 3.0 x 1.0 x 1.0 mm, so nnU-Net's default 3d_fullres patch
has axes that are not multiples of 16 and the trainers must adapt it. Two foreground classes (a bright
and a dark ellipsoid) that a network can separate by intensity within a few iterations.
"""
from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import numpy as np

from helpers.paths import REPO_ROOT

SHAPE_ZYX = (12, 28, 28)
SPACING_XYZ = (1.0, 1.0, 3.0)  # SimpleITK order


def _ellipsoid(shape: tuple[int, int, int], center: np.ndarray, radii: np.ndarray) -> np.ndarray:
    grids = np.meshgrid(*[np.arange(s) for s in shape], indexing="ij")
    return sum(((g - c) / r) ** 2 for g, c, r in zip(grids, center, radii)) <= 1.0


def make_case(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One (image, label) pair, float32 and uint8, (z, y, x)."""
    label = np.zeros(SHAPE_ZYX, np.uint8)
    for cls, intensity in ((1, 3.0), (2, -3.0)):
        center = rng.uniform([4, 8, 8], [8, 20, 20])
        radii = rng.uniform([2, 4, 4], [3, 7, 7])
        label[_ellipsoid(SHAPE_ZYX, center, radii) & (label == 0)] = cls
    image = rng.normal(0.0, 1.0, SHAPE_ZYX).astype(np.float32)
    image[label == 1] += 3.0
    image[label == 2] -= 3.0
    return image, label


def _write(array: np.ndarray, path: Path) -> None:
    import SimpleITK as sitk

    img = sitk.GetImageFromArray(array)
    img.SetSpacing(SPACING_XYZ)
    sitk.WriteImage(img, str(path))


def write_raw_dataset(raw_root: Path, dataset_id: int, name: str, n_train: int, n_test: int = 0,
                      seed: int = 0) -> Path:
    """imagesTr/labelsTr (+ imagesTs/labelsTs for held-out cases) and dataset.json; returns the folder."""
    folder = Path(raw_root) / f"Dataset{dataset_id:03d}_{name}"
    for sub in ("imagesTr", "labelsTr", "imagesTs", "labelsTs"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n_train + n_test):
        image, label = make_case(rng)
        split = "Tr" if i < n_train else "Ts"
        _write(image, folder / f"images{split}" / f"case_{i:03d}_0000.nii.gz")
        _write(label, folder / f"labels{split}" / f"case_{i:03d}.nii.gz")
    dataset_json = {"channel_names": {"0": "MRI"}, "labels": {"background": 0, "bright": 1, "dark": 2},
                    "numTraining": n_train, "file_ending": ".nii.gz"}
    (folder / "dataset.json").write_text(json.dumps(dataset_json, indent=2))
    return folder


def nnunet_env(root: Path) -> dict[str, str]:
    """Environment for the stock commands: isolated nnU-Net folders, CPU-friendly settings."""
    env = dict(os.environ)
    env.update({
        "nnUNet_raw": str(root / "raw"), "nnUNet_preprocessed": str(root / "preprocessed"),
        "nnUNet_results": str(root / "results"), "nnUNet_compile": "f", "nnUNet_n_proc_DA": "0",
        "OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2",
    })
    for key in ("raw", "preprocessed", "results"):
        (root / key).mkdir(parents=True, exist_ok=True)
    return env


def uc_plans_by_hand():
    """experiments/uc_plans_by_hand.py as a module (the uC version of an existing plans file, written by hand)."""
    path = REPO_ROOT / "experiments" / "uc_plans_by_hand.py"
    spec = importlib.util.spec_from_file_location("uc_plans_by_hand", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def tiny_plans(patch=(12, 28, 28), batch_size=2) -> dict:
    """The 3d_fullres plans nnU-Net 2.8.1 makes for tests/e2e_data.py's anisotropic dataset (abridged)."""
    return {
        "dataset_name": "Dataset901_Aniso", "plans_name": "nnUNetPlans",
        "original_median_spacing_after_transp": [3.0, 1.0, 1.0], "original_median_shape_after_transp": [12, 28, 28],
        "image_reader_writer": "SimpleITKIO", "transpose_forward": [0, 1, 2], "transpose_backward": [0, 1, 2],
        "experiment_planner_used": "ExperimentPlanner", "label_manager": "LabelManager",
        "foreground_intensity_properties_per_channel": {},
        "configurations": {"3d_fullres": {
            "data_identifier": "nnUNetPlans_3d_fullres", "preprocessor_name": "DefaultPreprocessor",
            "batch_size": batch_size, "patch_size": list(patch), "median_image_size_in_voxels": [12.0, 28.0, 28.0],
            "spacing": [3.0, 1.0, 1.0], "normalization_schemes": ["ZScoreNormalization"],
            "use_mask_for_norm": [False], "batch_dice": False,
            "architecture": {
                "network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
                "arch_kwargs": {
                    "n_stages": 3, "features_per_stage": [32, 64, 128], "conv_op": "torch.nn.modules.conv.Conv3d",
                    "kernel_sizes": [[1, 3, 3], [3, 3, 3], [3, 3, 3]], "strides": [[1, 1, 1], [1, 2, 2], [2, 2, 2]],
                    "n_conv_per_stage": [2, 2, 2], "n_conv_per_stage_decoder": [2, 2], "conv_bias": True,
                    "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d",
                    "norm_op_kwargs": {"eps": 1e-05, "affine": True}, "dropout_op": None, "dropout_op_kwargs": None,
                    "nonlin": "torch.nn.LeakyReLU", "nonlin_kwargs": {"inplace": True}},
                "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"]},
        }},
    }


DATASET_JSON = {"channel_names": {"0": "MRI"}, "labels": {"background": 0, "bright": 1, "dark": 2},
                "numTraining": 8, "file_ending": ".nii.gz"}
