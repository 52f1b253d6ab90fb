"""Rates with intervals, and paired comparisons of two interventions on the same prompts.

- :func:`wilson_interval`: the Wilson score interval of a binomial proportion. With
  ``n == 0`` there is no information and the interval is the whole ``(0.0, 1.0)``
  (:func:`rate_with_interval` then reports a rate of NaN).
- :func:`mcnemar`: the exact McNemar test (a two-sided binomial test on the discordant
  pairs), for "did intervention B change the outcome compared with A, prompt by prompt".
- :func:`paired_bootstrap`: a percentile bootstrap interval of the difference of two rates
  measured on the same prompts (prompts resampled jointly).
- :func:`cohen_kappa` / :func:`agreement`: how often two judges agree, beyond chance.
- :func:`bootstrap_interval` / :func:`mean_with_interval`: a percentile bootstrap interval of any
  statistic of resampled rows (paired data resampled jointly), and of a mean.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy.stats import binom, norm


def _z(confidence: float) -> float:
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be between 0 and 1 (exclusive), got {confidence}")
    return float(norm.ppf(0.5 + confidence / 2))


def wilson_interval(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for ``k`` successes out of ``n``.

    ``n == 0`` returns ``(0.0, 1.0)`` (nothing is known). ``k`` must be in ``[0, n]``.
    """
    if n < 0 or k < 0 or k > n or int(k) != k or int(n) != n:
        raise ValueError(f"need whole numbers 0 <= k <= n, got k={k}, n={n}")
    z = _z(confidence)
    if n == 0:
        return 0.0, 1.0
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z / denom * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    low = 0.0 if k == 0 else max(0.0, centre - half)
    high = 1.0 if k == n else min(1.0, centre + half)
    return low, high


def _as_bools(values: Sequence[bool] | np.ndarray, what: str = "values") -> np.ndarray:
    arr = np.asarray(list(values) if not isinstance(values, np.ndarray) else values)
    if arr.ndim != 1:
        raise ValueError(f"{what} must be a flat sequence of booleans")
    if arr.size and not np.isin(arr, (0, 1, True, False)).all():
        raise ValueError(f"{what} must be booleans (or 0/1)")
    return arr.astype(bool)


def rate_with_interval(values: Sequence[bool], confidence: float = 0.95) -> dict:
    """``{"rate", "ci_low", "ci_high", "n", "k"}`` for a list of booleans (True counts).

    An empty list gives ``rate = nan`` and the interval ``(0, 1)``.
    """
    arr = _as_bools(values)
    n, k = int(arr.size), int(arr.sum())
    low, high = wilson_interval(k, n, confidence)
    return {"rate": k / n if n else float("nan"), "ci_low": low, "ci_high": high, "n": n, "k": k}


def format_rate(result: dict, digits: int = 2) -> str:
    """``"0.72 [0.63, 0.80] (n=100)"``."""
    if not result["n"]:
        return "n/a (n=0)"
    return (f"{result['rate']:.{digits}f} [{result['ci_low']:.{digits}f}, "
            f"{result['ci_high']:.{digits}f}] (n={result['n']})")


def _paired(a: Sequence[bool], b: Sequence[bool]) -> tuple[np.ndarray, np.ndarray]:
    x, y = _as_bools(a, "a"), _as_bools(b, "b")
    if x.size != y.size:
        raise ValueError(f"a paired comparison needs the same prompts on both sides: "
                         f"got {x.size} and {y.size} outcomes")
    return x, y


def mcnemar(a: Sequence[bool], b: Sequence[bool]) -> dict:
    """Exact McNemar test of paired outcomes ``a[i]``, ``b[i]`` (same prompt ``i``).

    Returns ``n``, ``rate_a``, ``rate_b``, ``diff`` (b - a), ``only_a`` (a True, b False),
    ``only_b``, and the two-sided ``p_value`` (1.0 when no pair is discordant).
    """
    x, y = _paired(a, b)
    only_a = int((x & ~y).sum())
    only_b = int((~x & y).sum())
    m = only_a + only_b
    p = 1.0 if m == 0 else min(1.0, 2 * float(binom.cdf(min(only_a, only_b), m, 0.5)))
    n = int(x.size)
    rate_a = float(x.mean()) if n else float("nan")
    rate_b = float(y.mean()) if n else float("nan")
    return {"test": "mcnemar-exact", "n": n, "rate_a": rate_a, "rate_b": rate_b,
            "diff": rate_b - rate_a, "only_a": only_a, "only_b": only_b, "p_value": p}


def paired_bootstrap(a: Sequence[bool], b: Sequence[bool], *, n_boot: int = 10_000,
                     confidence: float = 0.95, seed: int = 0) -> dict:
    """Percentile bootstrap interval of ``rate(b) - rate(a)``, prompts resampled jointly.

    Also returns a two-sided bootstrap p-value (twice the smaller tail mass around 0).
    """
    x, y = _paired(a, b)
    n = int(x.size)
    if n == 0:
        raise ValueError("a paired bootstrap needs at least one prompt")
    _z(confidence)
    rng = np.random.default_rng(seed)
    d = y.astype(float) - x.astype(float)
    idx = rng.integers(0, n, size=(n_boot, n))
    diffs = d[idx].mean(axis=1)
    alpha = 1 - confidence
    low, high = np.quantile(diffs, [alpha / 2, 1 - alpha / 2])
    tail = min((diffs <= 0).mean(), (diffs >= 0).mean())
    return {"test": "paired-bootstrap", "n": n, "diff": float(d.mean()), "ci_low": float(low),
            "ci_high": float(high), "p_value": float(min(1.0, 2 * tail)), "n_boot": n_boot,
            "seed": seed}


def compare_paired(a: Sequence[bool], b: Sequence[bool], *, n_boot: int = 10_000,
                   seed: int = 0) -> dict:
    """Both :func:`mcnemar` and :func:`paired_bootstrap` for the same pair of outcome lists."""
    return {"mcnemar": mcnemar(a, b), "bootstrap": paired_bootstrap(a, b, n_boot=n_boot, seed=seed)}


def cohen_kappa(a: Sequence[bool], b: Sequence[bool]) -> float:
    """Cohen's kappa of two binary raters; NaN when chance agreement is 1 (both constant and equal)."""
    x, y = _paired(a, b)
    if x.size == 0:
        return float("nan")
    po = float((x == y).mean())
    pa, pb = float(x.mean()), float(y.mean())
    pe = pa * pb + (1 - pa) * (1 - pb)
    if math.isclose(pe, 1.0):
        return float("nan")
    return (po - pe) / (1 - pe)


def agreement(a: Sequence[bool], b: Sequence[bool]) -> dict:
    """``{"n", "agree", "agree_rate", "kappa", "both_true", "both_false", "only_a", "only_b"}``."""
    x, y = _paired(a, b)
    return {"n": int(x.size), "agree": int((x == y).sum()),
            "agree_rate": float((x == y).mean()) if x.size else float("nan"),
            "kappa": cohen_kappa(x, y), "both_true": int((x & y).sum()),
            "both_false": int((~x & ~y).sum()), "only_a": int((x & ~y).sum()),
            "only_b": int((~x & y).sum())}


def bootstrap_interval(n: int, statistic, *, n_boot: int = 1000, confidence: float = 0.95,
                       seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of ``statistic(rows)`` over resamples ``rows`` of ``range(n)``
    (with replacement, size ``n``; paired data is resampled jointly through the row indices).

    Resamples where the statistic is NaN (e.g. an AUROC of a resample with one class) are
    skipped; with none left, or ``n == 0``, the interval is ``(nan, nan)``.
    """
    _z(confidence)
    if n == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    values = np.array([statistic(rng.integers(0, n, size=n)) for _ in range(n_boot)], dtype=float)
    values = values[~np.isnan(values)]
    if not values.size:
        return float("nan"), float("nan")
    alpha = 1 - confidence
    low, high = np.quantile(values, [alpha / 2, 1 - alpha / 2])
    return float(low), float(high)


def mean_with_interval(values: Sequence[float], *, n_boot: int = 10_000, confidence: float = 0.95,
                       seed: int = 0) -> dict:
    """``{"mean", "ci_low", "ci_high", "n"}``: the mean of ``values`` (None and NaN dropped) and its
    percentile-bootstrap interval; no values give ``mean = nan`` and a NaN interval."""
    arr = np.asarray([v for v in values if v is not None and not math.isnan(v)], dtype=float)
    _z(confidence)
    if arr.size == 0:
        return {"mean": float("nan"), "ci_low": float("nan"), "ci_high": float("nan"), "n": 0}
    means = arr[np.random.default_rng(seed).integers(0, arr.size, size=(n_boot, arr.size))].mean(axis=1)
    alpha = 1 - confidence
    low, high = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    return {"mean": float(arr.mean()), "ci_low": float(low), "ci_high": float(high), "n": int(arr.size)}
