"""K-fold splits stratified by object presence, disjoint by image, deterministic for a seed.

Images with and without objects are shuffled separately (``seed``) and dealt
round-robin to the folds, the second stratum continuing where the first
stopped, so every fold gets its share of each stratum and fold sizes differ
by at most one.  Each image is in exactly one test fold.  Inside a fold's
training part, a validation subset (for checkpoint selection and early
stopping) is drawn the same way; the fold's test images are never used
before the final evaluation.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Fold:
    """Indices into the sample list: train (fit), validation (model selection), test (held out)."""

    index: int
    train: tuple[int, ...]
    validation: tuple[int, ...]
    test: tuple[int, ...]


def stratified_folds(has_object: Sequence[bool], folds: int, seed: int) -> list[list[int]]:
    """Test indices of each fold, every index in exactly one fold.

    Raises
    ------
    ValueError
        Fewer than 2 folds, or fewer images than folds.
    """
    if folds < 2:
        raise ValueError(f'Argument "folds" must be at least 2, got {folds}')
    if len(has_object) < folds:
        raise ValueError(f'Argument "folds" ({folds}) exceeds the number of images '
                         f"({len(has_object)})")
    rng = np.random.default_rng(seed)
    flags = np.asarray(has_object, bool)
    assignment: list[list[int]] = [[] for _ in range(folds)]
    offset = 0
    for stratum in (np.flatnonzero(flags), np.flatnonzero(~flags)):
        for position, index in enumerate(rng.permutation(stratum)):
            assignment[(offset + position) % folds].append(int(index))
        offset += len(stratum)
    return [sorted(indices) for indices in assignment]


def stratified_holdout(indices: Sequence[int], has_object: Sequence[bool], fraction: float,
                       seed: int | Sequence[int]) -> tuple[list[int], list[int]]:
    """Split ``indices`` into (kept, held) with about ``fraction`` of each stratum held.

    At least one image is held whenever ``fraction > 0`` and two or more
    images are given; ``fraction == 0`` holds none.
    """
    if not 0 <= fraction < 1:
        raise ValueError(f'Argument "fraction" must be in [0, 1), got {fraction}')
    indices = [int(i) for i in indices]
    if fraction == 0 or len(indices) < 2:
        return sorted(indices), []
    rng = np.random.default_rng(seed)
    flags = np.asarray(has_object, bool)
    wanted = max(1, int(round(fraction * len(indices))))
    held: list[int] = []
    strata = [[i for i in indices if flags[i]], [i for i in indices if not flags[i]]]
    for stratum in strata:
        share = int(round(wanted * len(stratum) / len(indices)))
        held.extend(int(i) for i in rng.permutation(stratum)[:share])
    if not held:  # rounding took nothing: hold one image of the larger stratum
        largest = max(strata, key=len)
        held.append(int(rng.choice(largest)))
    held_set = set(held)
    return sorted(i for i in indices if i not in held_set), sorted(held)


def make_folds(has_object: Sequence[bool], folds: int = 5, seed: int = 42,
               validation_fraction: float = 0.1) -> list[Fold]:
    """All folds; fold ``k``'s validation subset is drawn with seed ``(seed, k)``."""
    tests = stratified_folds(has_object, folds, seed)
    result = []
    for index, test in enumerate(tests):
        test_set = set(test)
        rest = [i for i in range(len(has_object)) if i not in test_set]
        train, validation = stratified_holdout(rest, has_object, validation_fraction,
                                               seed=[seed, index])
        result.append(Fold(index, tuple(train), tuple(validation), tuple(test)))
    return result
