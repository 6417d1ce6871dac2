"""One percentile bootstrap over test items, for every interval a run reports.

Example:
    >>> import numpy as np
    >>> err = np.array([1.0, 2.0, 3.0, 4.0])
    >>> ci = bootstrap(lambda i: {"mae": err[i].mean()}, len(err), n=200)
    >>> 1.0 <= ci["mae"][0] <= ci["mae"][1] <= 4.0
    True
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


def bootstrap(
    stat: Callable[[np.ndarray], dict],
    n_items: int,
    *,
    n: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    undefined: float | None = float("nan"),
) -> dict[str, list]:
    """Percentile intervals of ``stat(idx)`` over ``n`` resamples of ``n_items`` items drawn with replacement.

    ``stat`` gets the resampled indices and returns {name: value}; a value that is None or NaN (a metric undefined
    on that resample, e.g. AUC with one class) is left out of that name's draws. A name with no defined draw gets
    ``[undefined, undefined]``. Each resample is one ``rng.integers(0, n_items, n_items)`` from ``seed``, so the
    same seed gives the same intervals.
    """
    rng = np.random.default_rng(seed)
    draws: dict[str, list[float]] = {}
    for _ in range(n):
        for k, v in stat(rng.integers(0, n_items, n_items)).items():
            vals = draws.setdefault(k, [])
            if v is not None and not (isinstance(v, float) and np.isnan(v)):
                vals.append(float(v))
    lo, hi = (1 - level) / 2 * 100, (1 + level) / 2 * 100
    return {
        k: [float(np.percentile(v, lo)), float(np.percentile(v, hi))] if v else [undefined, undefined]
        for k, v in draws.items()
    }
