"""Seeded splits: patient-level and stratified; nested training fractions.

Both work on *groups* (patients) when ids are given, so that every image of a patient lands
on the same side, and stratify by each group's majority label.
"""

from __future__ import annotations

import math

import numpy as np

from ..errors import SmallmedError


def _strata(labels: np.ndarray) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim == 2:  # multi-label: stratify by the number of positives, a cheap proxy
        return labels.sum(axis=1).astype(np.int64)
    return labels.astype(np.int64)


def _groups(labels: np.ndarray, groups: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Unique groups, each group's majority stratum, and each image's group index."""
    strata = _strata(labels)
    if groups is None:
        return np.arange(len(strata)), strata, np.arange(len(strata))
    uniq, inverse = np.unique(np.asarray(groups).astype(str), return_inverse=True)
    group_stratum = np.array([np.bincount(strata[inverse == g]).argmax() for g in range(len(uniq))])
    return uniq, group_stratum, inverse


def patient_split(
    labels: np.ndarray,
    groups: np.ndarray | None = None,
    *,
    val: float = 0.1,
    test: float = 0.2,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """Split image indices into train/val/test, stratified, all images of a group together.

    Example:
        >>> idx = patient_split(np.array([0, 0, 1, 1, 0, 1] * 5), seed=0)
        >>> sorted(idx)
        ['test', 'train', 'val']
    """
    if not (0 <= val < 1 and 0 < test < 1 and val + test < 1):
        raise SmallmedError(f"val={val}, test={test}: expected fractions in [0, 1) summing below 1.")
    _, g_strata, inverse = _groups(labels, groups)
    rng = np.random.default_rng(seed)
    assign = np.empty(len(g_strata), dtype=np.int64)  # 0 train, 1 val, 2 test per group
    for s in np.unique(g_strata):
        members = rng.permutation(np.flatnonzero(g_strata == s))
        n = len(members)
        n_test = int(round(n * test))
        n_val = int(round(n * val))
        assign[members[:n_test]] = 2
        assign[members[n_test : n_test + n_val]] = 1
        assign[members[n_test + n_val :]] = 0
    image_assign = assign[inverse]
    out = {name: np.flatnonzero(image_assign == k) for k, name in enumerate(("train", "val", "test"))}
    for name, idx in out.items():
        if len(idx) == 0:
            raise SmallmedError(
                f"The {name} split came out empty ({len(g_strata)} groups, val={val}, test={test}); "
                "use more data or larger fractions."
            )
    return out


def nested_fraction(
    labels: np.ndarray,
    fraction: float,
    *,
    seed: int = 0,
    groups: np.ndarray | None = None,
) -> np.ndarray:
    """Indices of a stratified ``fraction`` of a training split, nested across fractions.

    One seeded permutation per stratum is drawn and each fraction takes a prefix of it, so the
    1/8 subset is inside the 1/4 subset for the same seed, and every method that asks for
    (fraction, seed) trains on exactly the same images. At least one group per stratum is kept.

    Example:
        >>> y = np.array([0, 1] * 50)
        >>> set(nested_fraction(y, 0.25, seed=1)) <= set(nested_fraction(y, 0.5, seed=1))
        True
    """
    if not 0 < fraction <= 1:
        raise SmallmedError(f"fraction={fraction}: expected a value in (0, 1].")
    if fraction == 1:
        return np.arange(len(labels))
    _, g_strata, inverse = _groups(labels, groups)
    unit = "patients" if groups is not None else "images"
    if fraction * len(g_strata) < 1:
        raise SmallmedError(
            f"fraction={fraction} of {len(g_strata)} training {unit} is empty; "
            f"expected at least {1 / len(g_strata):.3g}."
        )
    rng = np.random.default_rng(seed)
    keep = []
    for s in np.unique(g_strata):
        members = rng.permutation(np.flatnonzero(g_strata == s))
        keep.extend(members[: max(1, math.ceil(len(members) * fraction))].tolist())
    picked = np.isin(inverse, np.array(keep))
    idx = np.flatnonzero(picked)
    if len(idx) == 0:
        raise SmallmedError(f"fraction={fraction} selects no training images.")
    return idx


def kfold(
    labels: np.ndarray,
    k: int,
    fold: int,
    *,
    seed: int = 0,
    groups: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(training, held-out) indices of fold ``fold`` of ``k``: stratified by label and, with ``groups``
    (patient ids), every image of a patient on the same side (scikit-learn's StratifiedGroupKFold).

    Example:
        >>> tr, ho = kfold(np.array([0, 1] * 10), 5, 0)
        >>> len(tr), len(ho), sorted(set(np.r_[tr, ho])) == list(range(20))
        (16, 4, True)
    """
    from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

    if not 0 <= fold < k:
        raise SmallmedError(f"cv_fold={fold}: expected 0..{k - 1} (cv_folds={k}).")
    strata = _strata(labels)
    if groups is None:
        if np.bincount(strata).max() < k or len(strata) < k:
            raise SmallmedError(f"cv_folds={k}: {len(strata)} images are too few for {k} folds.")
        splitter = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
        parts = list(splitter.split(np.zeros(len(strata)), strata))
    else:
        if len(np.unique(np.asarray(groups).astype(str))) < k:
            raise SmallmedError(f"cv_folds={k}: fewer patients than folds.")
        splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
        parts = list(splitter.split(np.zeros(len(strata)), strata, np.asarray(groups).astype(str)))
    train, held = parts[fold]
    return np.sort(train), np.sort(held)
