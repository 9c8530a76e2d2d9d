"""Dataset fingerprints shaped like public datasets, for the planning table (planning_table.py, next to this file)
and the planning tests (which import it as ``example_datasets``: pyproject's pytest pythonpath): nnU-Net plans from a
fingerprint and dataset.json alone, so no images are needed.

Shapes and spacings are per case in nnU-Net's array order (z, y, x), as in ``dataset_fingerprint.json``.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ExampleDataset:
    """A fingerprint shaped like a public dataset: every case has the median shape and spacing."""

    dataset_id: int
    name: str
    like: str                      # which public dataset it mimics
    channel_names: dict[str, str]
    num_labels: int                # including background
    num_training: int
    shape: tuple[int, int, int]    # median shape after cropping (z, y, x)
    spacing: tuple[float, float, float]

    @property
    def folder_name(self) -> str:
        return f"Dataset{self.dataset_id:03d}_{self.name}"

    def dataset_json(self) -> dict:
        labels = {"background": 0, **{f"label{i}": i for i in range(1, self.num_labels)}}
        # files are never read: planning needs only their names (the reader is fixed by the next key)
        cases = {f"case_{i:03d}": {"images": [f"imagesTr/case_{i:03d}_{c:04d}.nii.gz"
                                              for c in range(len(self.channel_names))],
                                   "label": f"labelsTr/case_{i:03d}.nii.gz"} for i in range(self.num_training)}
        return {"channel_names": self.channel_names, "labels": labels, "numTraining": self.num_training,
                "file_ending": ".nii.gz", "overwrite_image_reader_writer": "SimpleITKIO", "dataset": cases}

    def fingerprint(self) -> dict:
        intensity = {"mean": 100.0, "median": 90.0, "std": 50.0, "min": -1000.0, "max": 3000.0,
                     "percentile_99_5": 1500.0, "percentile_00_5": -900.0}
        n = min(self.num_training, 10)
        return {"spacings": [list(self.spacing)] * n, "shapes_after_crop": [list(self.shape)] * n,
                "foreground_intensity_properties_per_channel": {str(c): intensity for c in range(len(self.channel_names))},
                "median_relative_size_after_cropping": 1.0}

    def write(self, raw: Path, preprocessed: Path) -> None:
        """dataset.json into ``raw``/DatasetXXX and dataset_fingerprint.json into ``preprocessed``/DatasetXXX."""
        for root, name, content in ((raw, "dataset.json", self.dataset_json()),
                                    (preprocessed, "dataset_fingerprint.json", self.fingerprint())):
            folder = Path(root) / self.folder_name
            folder.mkdir(parents=True, exist_ok=True)
            (folder / name).write_text(json.dumps(content, indent=1))


BRATS_LIKE = ExampleDataset(971, "BraTSLike", "BraTS (MSD Task01)", {"0": "FLAIR", "1": "T1w", "2": "T1gd", "3": "T2w"},
                            4, 484, (139, 173, 137), (1.0, 1.0, 1.0))
HIPPOCAMPUS_LIKE = ExampleDataset(972, "HippocampusLike", "Hippocampus (MSD Task04)", {"0": "MRI"}, 3, 260,
                                  (36, 50, 35), (1.0, 1.0, 1.0))
ABDOMEN_CT_LIKE = ExampleDataset(973, "AbdomenCTLike", "BTCV abdomen CT", {"0": "CT"}, 14, 30,
                                 (128, 512, 512), (3.0, 0.78, 0.78))
PROSTATE_LIKE = ExampleDataset(974, "ProstateLike", "Prostate (MSD Task05)", {"0": "T2", "1": "ADC"}, 3, 32,
                               (20, 320, 319), (3.6, 0.62, 0.62))

EXAMPLES = (BRATS_LIKE, HIPPOCAMPUS_LIKE, ABDOMEN_CT_LIKE, PROSTATE_LIKE)
