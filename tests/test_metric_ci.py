"""Every metric in the results table carries n and a 95% percentile-bootstrap CI."""

from __future__ import annotations

import math

import numpy as np

from forgetbench.results import metric_row, wilson_interval


def verdicts(values):
    return [{"value": v} for v in values]


def test_binary_metric_bootstrap_ci_n_missing_and_wilson_columns():
    values = [1.0] * 30 + [0.0] * 20
    row = metric_row(verdicts(values + [None, None]), "mean", binary=True)
    assert row["n"] == 50 and row["n_missing"] == 2 and row["value"] == 0.6
    assert row["ci_method"] == "bootstrap95"
    assert 0.0 <= row["ci_low"] < 0.6 < row["ci_high"] <= 1.0
    half = 1.959964 * math.sqrt(0.6 * 0.4 / 50)  # the normal approximation, for scale
    assert abs((row["ci_high"] - row["ci_low"]) / 2 - half) < 0.2 * half
    assert (row["wilson_low"], row["wilson_high"]) == wilson_interval(30, 50)
    assert math.isclose(row["stderr"], np.std(values, ddof=1) / math.sqrt(50))
    assert metric_row(verdicts(values), "mean", binary=True) == {
        **row,
        "n_missing": 0,
    }  # seeded: the same table every time


def test_percentile_bootstrap_matches_an_independent_resampling():
    values = np.array([0.1, 0.9, 0.4, 0.35, 0.8, 0.05, 0.6, 0.7, 0.2, 0.95])
    row = metric_row(verdicts(values.tolist()), "mean", binary=False)
    rng = np.random.default_rng(12345)  # another seed: agreement within resampling noise
    means = [rng.choice(values, size=len(values)).mean() for _ in range(4000)]
    low, high = np.percentile(means, [2.5, 97.5])
    assert abs(row["ci_low"] - low) < 0.03 and abs(row["ci_high"] - high) < 0.03
    assert math.isnan(row["wilson_low"]) and math.isnan(row["wilson_high"])


def test_complement_all_missing_and_single_value():
    row = metric_row(verdicts([1.0, 1.0, 0.0, 0.0]), "complement", binary=True)
    assert row["value"] == 0.5 and row["ci_low"] >= 0.0 and row["ci_high"] <= 1.0
    empty = metric_row(verdicts([None, None]), "mean", binary=True)
    assert empty["n"] == 0 and empty["n_missing"] == 2
    assert all(math.isnan(empty[k]) for k in ("value", "ci_low", "ci_high", "stderr"))
    single = metric_row(verdicts([1.0]), "mean", binary=True)
    assert single["n"] == 1 and single["ci_low"] == single["ci_high"] == 1.0
    assert math.isnan(single["stderr"])


def test_wilson_interval_matches_published_values():
    # Wilson (1927) score interval, z = 1.959964: (p + z^2/2n +- z sqrt(p(1-p)/n + z^2/4n^2)) /
    # (1 + z^2/n), worked out by hand (30/50: centre 0.5928, half-width 0.1311); 50/50 is the
    # "[0.93, 1.00]" the README reports for HarmBench refusal on tiny.
    low, high = wilson_interval(30, 50)
    assert (round(low, 4), round(high, 4)) == (0.4618, 0.7239)
    low, high = wilson_interval(50, 50)
    assert (round(low, 4), round(high, 4)) == (0.9287, 1.0)
    # the endpoint itself, exactly (not 3.5e-18, which tables then print as such)
    assert wilson_interval(0, 100)[0] == 0.0 and wilson_interval(100, 100)[1] == 1.0
    row = metric_row(verdicts([1.0] * 30 + [0.0] * 20), "mean", binary=True)
    assert (round(row["wilson_low"], 4), round(row["wilson_high"], 4)) == (0.4618, 0.7239)
