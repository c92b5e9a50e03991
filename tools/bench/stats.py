"""The harness's statistics, all from scipy.stats: intervals over seeds, paired comparisons with a
one-sided test and a verdict, and Kendall's tau with a bootstrap interval.

* `mean_interval(xs)`: the mean over seeds and its Student-t interval (95% by default).
* `paired_comparison(method, baseline)`: the per-seed differences (seed s of the method against seed s
  of the baseline: the same data order and initialisation seed), their mean, the two-sided interval at
  level 1 - 2*alpha (so it excludes 0 exactly when one of the two one-sided tests rejects), the
  one-sided paired t-test in each direction (`ttest_rel`, alternative "greater" / "less") and a
  verdict: "better" when the method's mean is greater at level alpha, "worse" when it is smaller,
  else "no detectable difference"; "too few seeds" below 2 pairs.
* `kendall_tau_interval(groups)`: Kendall's tau-b between supernet and stand-alone accuracy, the mean
  over groups (one group per seed: pairs from different supernets are not comparable), with a
  percentile bootstrap interval that resamples architectures within each group.
"""
from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

ALPHA = 0.05  # one-sided level of the verdicts
CONFIDENCE = 0.95  # level of the intervals over seeds and of tau's bootstrap interval

VERDICTS = ("better", "no detectable difference", "worse", "too few seeds")


def _clean(xs: Sequence[float | None]) -> np.ndarray:
    return np.array([float(x) for x in xs if x is not None and not math.isnan(float(x))], dtype=np.float64)


def mean_interval(xs: Sequence[float | None], confidence: float = CONFIDENCE) -> dict[str, float]:
    """Mean, Student-t interval (nan below 2 values) and count of the non-missing values of `xs`."""
    from scipy import stats

    v = _clean(xs)
    n = len(v)
    if n == 0:
        return {"mean": math.nan, "low": math.nan, "high": math.nan, "n": 0}
    mean = float(v.mean())
    if n < 2:
        return {"mean": mean, "low": math.nan, "high": math.nan, "n": 1}
    if np.ptp(v) == 0:  # no spread: the interval is the point (t would divide by zero)
        return {"mean": mean, "low": mean, "high": mean, "n": n}
    lo, hi = stats.t.interval(confidence, df=n - 1, loc=mean, scale=stats.sem(v))
    return {"mean": mean, "low": float(lo), "high": float(hi), "n": n}


def verdict(p_better: float, p_worse: float, n: int, alpha: float = ALPHA) -> str:
    if n < 2:
        return "too few seeds"
    if p_better == p_better and p_better < alpha:
        return "better"
    if p_worse == p_worse and p_worse < alpha:
        return "worse"
    return "no detectable difference"


def paired_comparison(method: Sequence[float], baseline: Sequence[float], alpha: float = ALPHA
                      ) -> dict[str, Any]:
    """Method against baseline over paired seeds (equal-length sequences, seed i with seed i)."""
    from scipy import stats

    if len(method) != len(baseline):
        raise ValueError(f"paired samples must have equal lengths, got {len(method)} and {len(baseline)}")
    a, b = np.asarray(method, dtype=np.float64), np.asarray(baseline, dtype=np.float64)
    d = a - b
    n = len(d)
    out: dict[str, Any] = {"n": n, "method_mean": float(a.mean()) if n else math.nan,
                           "baseline_mean": float(b.mean()) if n else math.nan,
                           "diff": float(d.mean()) if n else math.nan, "low": math.nan, "high": math.nan,
                           "p_better": math.nan, "p_worse": math.nan, "alpha": alpha,
                           "interval_level": 1 - 2 * alpha}
    if n >= 2:
        with warnings.catch_warnings():  # identical differences: scipy warns about precision, answers fine
            warnings.simplefilter("ignore", RuntimeWarning)
            out["p_better"] = float(stats.ttest_rel(a, b, alternative="greater").pvalue)
            out["p_worse"] = float(stats.ttest_rel(a, b, alternative="less").pvalue)
            if np.ptp(d) == 0:
                out["low"] = out["high"] = float(d[0])
            else:
                ci = stats.ttest_1samp(d, 0.0).confidence_interval(1 - 2 * alpha)
                out["low"], out["high"] = float(ci.low), float(ci.high)
    out["verdict"] = verdict(out["p_better"], out["p_worse"], n, alpha)
    return out


def kendall_tau_interval(groups: Sequence[tuple[Sequence[float], Sequence[float]]],
                         confidence: float = CONFIDENCE, n_resamples: int = 2000, seed: int = 0
                         ) -> dict[str, Any]:
    """Kendall's tau-b of (supernet score, stand-alone accuracy) pairs, averaged over `groups`.

    Each group is one seed's (scores, accuracies); groups of fewer than 2 pairs are dropped. The
    interval is scipy's percentile bootstrap resampling the architectures of each group independently.
    """
    from scipy import stats

    data = [(np.asarray(s, dtype=np.float64), np.asarray(t, dtype=np.float64)) for s, t in groups if len(s) >= 2]
    n_archs = sum(len(s) for s, _ in data)
    out: dict[str, Any] = {"tau": math.nan, "low": math.nan, "high": math.nan, "n_archs": n_archs,
                           "groups": len(data)}
    if not data:
        return out

    def tau_of(*idx: np.ndarray) -> float:
        taus = [stats.kendalltau(s[i], t[i]).statistic for (s, t), i in zip(data, idx, strict=True)]
        taus = [x for x in taus if x == x]
        return float(np.mean(taus)) if taus else math.nan

    out["tau"] = tau_of(*(np.arange(len(s)) for s, _ in data))
    if out["tau"] != out["tau"]:
        return out
    with warnings.catch_warnings():  # resamples of tied values have no tau; they are left out
        warnings.simplefilter("ignore")
        res = stats.bootstrap(tuple(np.arange(len(s)) for s, _ in data), tau_of, vectorized=False, paired=False,
                              n_resamples=n_resamples, confidence_level=confidence, method="percentile",
                              random_state=np.random.default_rng(seed))
    out["low"], out["high"] = float(res.confidence_interval.low), float(res.confidence_interval.high)
    return out
