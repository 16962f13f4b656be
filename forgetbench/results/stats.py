"""The statistics of a results row: a metric's mean over per-sample verdicts, its standard error,
the percentile bootstrap CI, and the Wilson interval for rates."""

from __future__ import annotations

import math

import numpy as np

Z95 = 1.959963984540054


def wilson_interval(successes: float, n: int) -> tuple[float, float]:
    if n == 0:
        return (math.nan, math.nan)
    p = successes / n
    denominator = 1 + Z95**2 / n
    centre = (p + Z95**2 / (2 * n)) / denominator
    half = Z95 * math.sqrt(p * (1 - p) / n + Z95**2 / (4 * n * n)) / denominator
    # At 0 (or n) successes the bound is exactly 0 (or 1); the subtraction leaves ~1e-18.
    low = 0.0 if successes == 0 else max(0.0, centre - half)
    high = 1.0 if successes == n else min(1.0, centre + half)
    return (low, high)


def bootstrap_interval(
    values: np.ndarray, resamples: int = 2000, seed: int = 0
) -> tuple[float, float]:
    if len(values) == 0:
        return (math.nan, math.nan)
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), size=(resamples, len(values)))].mean(axis=1)
    return (float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5)))


def metric_row(verdicts: list[dict], transform: str, binary: bool) -> dict:
    """The metric over the scored verdicts (missing ones counted in ``n_missing``): its value, n,
    standard error and 95% CI. ``ci_low``/``ci_high`` are the percentile bootstrap of the mean for
    every metric (2,000 resamples, seed 0: the same table every time; ``ci_method`` bootstrap95).
    Binary metrics also carry the Wilson score interval (``wilson_low``/``wilson_high``; NaN for
    continuous ones), which, unlike the bootstrap, does not shrink to a point at 0% or 100%."""
    values = np.array([v["value"] for v in verdicts if v["value"] is not None], dtype=float)
    if transform == "complement":
        values = 1.0 - values
    n = len(values)
    value = float(values.mean()) if n else math.nan
    low, high = bootstrap_interval(values)
    wilson_low, wilson_high = wilson_interval(values.sum(), n) if binary else (math.nan, math.nan)
    stderr = float(values.std(ddof=1) / math.sqrt(n)) if n > 1 else math.nan
    return {
        "value": value,
        "ci_low": low,
        "ci_high": high,
        "ci_method": "bootstrap95",
        "n": n,
        "n_missing": len(verdicts) - n,
        "stderr": stderr,
        "wilson_low": wilson_low,
        "wilson_high": wilson_high,
    }
