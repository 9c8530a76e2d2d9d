"""nnU-Net folders holding the dataset-shaped fingerprints of ``experiments/example_datasets.py`` (no images)."""
from __future__ import annotations

from pathlib import Path

import pytest

import example_datasets as examples


def nnunet_folders_with_examples(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """nnUNet_raw/_preprocessed/_results under ``root`` (set in the environment), with every example's raw
    dataset.json and fingerprint: enough for nnU-Net's planners."""
    for key in ("raw", "preprocessed", "results"):
        monkeypatch.setenv(f"nnUNet_{key}", str(root / key))
    for example in examples.EXAMPLES:
        example.write(root / "raw", root / "preprocessed")
