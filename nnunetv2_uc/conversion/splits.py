"""Cross-validation splits in nnU-Net's ``splits_final.json`` format, with the protocol they come from."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from nnunetv2.utilities.crossval_split import generate_crossval_split
from sklearn.model_selection import GroupKFold

NNUNET_SEED = 12345  # nnU-Net's own seed for its default 5-fold split
DEFAULT_FOLDS = 5


@dataclass
class SplitPlan:
    """A named split protocol: hold-out ids (go to imagesTs) and the folds over the training pool.

    folds is None when no splits_final.json should be written (``--split none``, or a pool too small).
    """

    protocol: str
    source: str
    holdout: list[str] = field(default_factory=list)
    folds: list[dict[str, list[str]]] | None = None
    notes: list[str] = field(default_factory=list)


def nnunet_default_folds(pool: list[str], n_folds: int = DEFAULT_FOLDS) -> tuple[list[dict] | None, list[str]]:
    """nnU-Net's own default (KFold, shuffle, seed 12345 over sorted ids), written out explicitly.

    With fewer cases than folds, one fold per case is used; with fewer than two cases no split is possible.
    """
    ids = sorted(pool)
    if len(ids) < 2:
        return None, [f"only {len(ids)} training case(s): no cross-validation split written"]
    notes = []
    if len(ids) < n_folds:
        notes.append(f"only {len(ids)} training cases: {len(ids)} folds instead of {n_folds}")
        n_folds = len(ids)
    folds = generate_crossval_split(ids, seed=NNUNET_SEED, n_splits=n_folds)
    return [{"train": [str(i) for i in f["train"]], "val": [str(i) for i in f["val"]]} for f in folds], notes


def grouped_folds(groups: dict[str, str], n_folds: int = DEFAULT_FOLDS,
                  seed: int = NNUNET_SEED) -> tuple[list[dict] | None, list[str]]:
    """Seeded k-fold in which all cases of a group (e.g. both eyes of a patient) share a fold."""
    ids = sorted(groups)
    n_groups = len(set(groups.values()))
    if n_groups < 2:
        return None, [f"only {n_groups} patient group(s): no cross-validation split written"]
    notes = []
    if n_groups < n_folds:
        notes.append(f"only {n_groups} patient groups: {n_groups} folds instead of {n_folds}")
        n_folds = n_groups
    splitter = GroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    id_array = np.array(ids)
    folds = [{"train": sorted(id_array[train].tolist()), "val": sorted(id_array[val].tolist())}
             for train, val in splitter.split(ids, groups=[groups[i] for i in ids])]
    return folds, notes


def seeded_group_holdout(groups: dict[str, str], fraction: float, seed: int = NNUNET_SEED) -> list[str]:
    """Case ids of a seeded random ``fraction`` of the groups (at least one group when fraction > 0)."""
    if fraction <= 0:
        return []
    unique_groups = sorted(set(groups.values()))
    n_holdout = max(1, int(round(fraction * len(unique_groups))))
    chosen = set(np.random.RandomState(seed).permutation(unique_groups)[:n_holdout].tolist())
    return sorted(case for case, group in groups.items() if group in chosen)


def single_fold(train: list[str], val: list[str]) -> list[dict[str, list[str]]]:
    """One fixed train/val fold (nnU-Net accepts any number of folds, one included)."""
    return [{"train": sorted(train), "val": sorted(val)}]


def check_split_consistency(folds: list[dict[str, list[str]]], training_ids: set[str]) -> list[str]:
    """Every split id must be a training case, and no id may be in both train and val of a fold."""
    problems = []
    for index, fold in enumerate(folds):
        unknown = sorted((set(fold["train"]) | set(fold["val"])) - training_ids)
        if unknown:
            problems.append(f"split fold {index} names cases that are not in imagesTr: {unknown}")
        overlap = sorted(set(fold["train"]) & set(fold["val"]))
        if overlap:
            problems.append(f"split fold {index} has cases in both train and val: {overlap}")
    return problems
