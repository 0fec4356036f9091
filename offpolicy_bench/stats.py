"""Statistics of a grid, pure numpy (no scipy): quantiles of the normal and Student t laws,
per-run endpoints of an eval-accuracy series (final, best, late mean, collapse vs dip), t and
percentile-bootstrap intervals of a mean, contrasts between two arms (paired by seed when the seed
sets match), and minimum detectable effects. Used by `offbench report`.

Accuracies are proportions: pass bounds=(0, 1) for a mean and (-1, 1) for a difference, and an
interval is clipped to them (a t-interval over three seeds can otherwise reach below 0).

Which MDE the report prints: the t-based one, (t_{1-a/2,df} + t_{power,df}) * sd * sqrt(2/n) with
df = 2n - 2 (the usual approximation of the noncentral t). With 2-5 seeds per cell the normal
version, (z_{1-a/2} + z_{power}) * sd * sqrt(2/n), promises power it does not have (see
tests/test_stats.py: under 60% rather than 80% at n=3).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

COLLAPSE_FRACTION = 0.5  # a run collapses when its final accuracy ends below half its best
MIN_BEST = 0.05  # a run whose best accuracy stays under this cannot collapse or dip
ENDPOINTS = ("late_mean", "final", "best")


# ----------------------------------------------------------------------------- distributions

def norm_cdf(x: float) -> float:
    return 0.5 * math.erfc(-x / math.sqrt(2.0))


def _bisect_quantile(cdf, p: float, lo: float, hi: float) -> float:
    """x with cdf(x) = p on [lo, hi] (cdf increasing), to double precision."""
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if mid in (lo, hi):
            break
        if cdf(mid) < p:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def _check_p(p: float) -> None:
    if not 0.0 < p < 1.0:
        raise ValueError(f"probability {p} is not in (0, 1)")


def norm_ppf(p: float) -> float:
    """Quantile of the standard normal law."""
    _check_p(p)
    return _bisect_quantile(norm_cdf, p, -40.0, 40.0)


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz)."""
    tiny = 1e-300
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 1000):
        m2 = 2 * m
        for aa in (m * (b - m) * x / ((a - 1.0 + m2) * (a + m2)),
                   -(a + m) * (a + b + m) * x / ((a + m2) * (a + 1.0 + m2))):
            d = 1.0 + aa * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + aa / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < 1e-16:
            break
    return h


def betainc(a: float, b: float, x: float) -> float:
    """Regularized incomplete beta function I_x(a, b)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


def t_cdf(x: float, df: float) -> float:
    """CDF of Student's t with df > 0 degrees of freedom (df need not be an integer)."""
    if df <= 0:
        raise ValueError(f"degrees of freedom {df} <= 0")
    if df > 1e7:
        return norm_cdf(x)
    tail = 0.5 * betainc(0.5 * df, 0.5, df / (df + x * x))
    return 1.0 - tail if x > 0 else tail


def t_ppf(p: float, df: float) -> float:
    """Quantile of Student's t, e.g. t_ppf(0.975, 2) = 4.303."""
    _check_p(p)
    if p < 0.5:
        return -t_ppf(1.0 - p, df)
    hi = 1.0
    while t_cdf(hi, df) < p:
        hi *= 2.0
    return _bisect_quantile(lambda x: t_cdf(x, df), p, 0.0, hi)


# ----------------------------------------------------------------------------- per-run endpoints

@dataclass(frozen=True)
class Endpoints:
    """Headline numbers of one run's held-out accuracy series.

    late_mean: mean accuracy over the eval points with step > total_steps / 2 (the last one always
    included). collapsed: the run ends below COLLAPSE_FRACTION x its best (best >= MIN_BEST).
    dip: some eval point fell below COLLAPSE_FRACTION x the best so far, but the run recovered
    (not collapsed). drop_step: the first such eval step (NaN if none), collapsed or not.
    """

    final: float
    best: float
    late_mean: float
    collapsed: bool
    dip: bool
    drop_step: float
    n_eval: int

    def as_dict(self) -> dict:
        return asdict(self)


def endpoints(steps, values, total_steps: float | None = None, fraction: float = COLLAPSE_FRACTION,
              min_best: float = MIN_BEST) -> Endpoints:
    """Endpoints of an eval-accuracy series (any order; NaN points dropped). total_steps defaults
    to the last eval step."""
    s = np.asarray(steps, dtype=float)
    v = np.asarray(values, dtype=float)
    keep = ~np.isnan(v)
    order = np.argsort(s[keep], kind="stable")
    s, v = s[keep][order], v[keep][order]
    if len(v) == 0:
        nan = float("nan")
        return Endpoints(nan, nan, nan, False, False, nan, 0)
    total = float(s[-1]) if total_steps is None or math.isnan(float(total_steps)) else float(total_steps)
    late = s > total / 2
    late[-1] = True
    drop_step, best_so_far = float("nan"), -math.inf
    for step, a in zip(s, v):
        if best_so_far >= min_best and a < fraction * best_so_far:
            drop_step = float(step)
            break
        best_so_far = max(best_so_far, a)
    final, best = float(v[-1]), float(v.max())
    collapsed = bool(best >= min_best and final < fraction * best)
    return Endpoints(final=final, best=best, late_mean=float(v[late].mean()), collapsed=collapsed,
                     dip=bool(not math.isnan(drop_step) and not collapsed), drop_step=drop_step, n_eval=len(v))


# ----------------------------------------------------------------------------- intervals

@dataclass(frozen=True)
class Interval:
    """estimate with its interval [lo, hi] over n values (lo = hi = NaN when n < 2)."""

    estimate: float
    lo: float
    hi: float
    n: int
    method: str  # "t" or "bootstrap"

    @property
    def halfwidth(self) -> float:
        return 0.5 * (self.hi - self.lo)


def _clean(values) -> np.ndarray:
    v = np.asarray([float(x) for x in values if x is not None], dtype=float)
    return v[~np.isnan(v)]


def _clip(lo: float, hi: float, bounds) -> tuple[float, float]:
    if bounds is None or math.isnan(lo):
        return lo, hi
    return float(min(max(lo, bounds[0]), bounds[1])), float(min(max(hi, bounds[0]), bounds[1]))


def t_interval(values, conf: float = 0.95, bounds: tuple[float, float] | None = None) -> Interval:
    """Mean and two-sided t-interval (NaNs dropped), clipped to bounds."""
    v = _clean(values)
    n = len(v)
    if n == 0:
        return Interval(float("nan"), float("nan"), float("nan"), 0, "t")
    m = float(v.mean())
    if n == 1:
        return Interval(m, float("nan"), float("nan"), 1, "t")
    hw = t_ppf(0.5 + conf / 2, n - 1) * float(v.std(ddof=1)) / math.sqrt(n)
    return Interval(m, *_clip(m - hw, m + hw, bounds), n, "t")


def _boot_means(v: np.ndarray, rng: np.random.Generator, n_boot: int) -> np.ndarray:
    """Means of n_boot resamples of v with replacement (in chunks of about 4M draws)."""
    chunk = max(1, 4_000_000 // max(len(v), 1))
    out = [v[rng.integers(0, len(v), size=(min(chunk, n_boot - i), len(v)))].mean(axis=1)
           for i in range(0, n_boot, chunk)]
    return np.concatenate(out)


def _percentile(dist: np.ndarray, estimate: float, n: int, conf: float, bounds) -> Interval:
    lo, hi = np.quantile(dist, [(1 - conf) / 2, (1 + conf) / 2])
    return Interval(estimate, *_clip(float(lo), float(hi), bounds), n, "bootstrap")


def bootstrap_ci(values, conf: float = 0.95, n_boot: int = 10000, seed: int = 0,
                 bounds: tuple[float, float] | None = None) -> Interval:
    """Mean and percentile-bootstrap interval (fixed seed: the same numbers every time).

    With 2-3 values the bootstrap has only a handful of distinct resamples and undercovers;
    read it with the MDE beside it."""
    v = _clean(values)
    if len(v) < 2:
        nan = float("nan")
        return Interval(float(v.mean()) if len(v) else nan, nan, nan, len(v), "bootstrap")
    return _percentile(_boot_means(v, np.random.default_rng(seed), n_boot), float(v.mean()), len(v), conf, bounds)


# ----------------------------------------------------------------------------- effects and power

def pooled_sd(groups) -> float:
    """sqrt(sum (n_i - 1) s_i^2 / sum (n_i - 1)) over groups (NaN if no group has 2 values)."""
    ss, df = 0.0, 0
    for g in groups:
        v = _clean(g)
        if len(v) >= 2:
            ss += float(((v - v.mean()) ** 2).sum())
            df += len(v) - 1
    return math.sqrt(ss / df) if df else float("nan")


def _power_quantiles(alpha: float, power: float, df: float, dist: str) -> float:
    if dist == "normal":
        return norm_ppf(1 - alpha / 2) + norm_ppf(power)
    if dist != "t":
        raise ValueError(f"dist {dist!r}: choose t or normal")
    return t_ppf(1 - alpha / 2, df) + t_ppf(power, df) if df >= 1 else float("nan")


def mde(sd: float, n: int, alpha: float = 0.05, power: float = 0.8, dist: str = "t", n_b: int | None = None) -> float:
    """Minimum detectable difference of two group means at the given power, two-sided alpha.

    dist="t": (t_{1-a/2,df} + t_{power,df}) * sd * sqrt(1/n + 1/n_b), df = n + n_b - 2 (n_b
    defaults to n, giving sd * sqrt(2/n)); dist="normal": the same with normal quantiles.
    sd: the per-seed standard deviation, pooled over the groups."""
    n_b = n if n_b is None else n_b
    if n < 1 or n_b < 1:
        return float("nan")
    return _power_quantiles(alpha, power, n + n_b - 2, dist) * sd * math.sqrt(1 / n + 1 / n_b)


def mde_paired(sd_diff: float, n: int, alpha: float = 0.05, power: float = 0.8, dist: str = "t") -> float:
    """Minimum detectable mean of n paired differences with standard deviation sd_diff (df = n - 1)."""
    if n < 1:
        return float("nan")
    return _power_quantiles(alpha, power, n - 1, dist) * sd_diff / math.sqrt(n)


def mde_proportions(p: float, m: int, alpha: float = 0.05, power: float = 0.8) -> float:
    """Smallest d such that accuracies p and p + d, each measured on m problems, are told apart
    by a two-sided two-proportion z-test (pooled variance under H0) with the given power:
    d = z_{1-a/2} sqrt(2 pbar (1 - pbar) / m) + z_{power} sqrt((p(1-p) + p2(1-p2)) / m), p2 = p + d,
    pbar = (p + p2) / 2, solved for d. NaN if even p + d = 1 is not detectable. For a drop below p,
    call it with 1 - p."""
    za, zb = norm_ppf(1 - alpha / 2), norm_ppf(power)

    def gap(d):
        p2 = p + d
        pbar = (p + p2) / 2
        return d - za * math.sqrt(2 * pbar * (1 - pbar) / m) - zb * math.sqrt((p * (1 - p) + p2 * (1 - p2)) / m)

    if gap(1.0 - p) < 0:
        return float("nan")
    lo, hi = 0.0, 1.0 - p
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if gap(mid) < 0 else (lo, mid)
    return 0.5 * (lo + hi)


# ----------------------------------------------------------------------------- contrasts

@dataclass(frozen=True)
class Contrast:
    """mean(A) - mean(B) with a percentile-bootstrap interval; paired: bootstrapped per-seed
    differences; mde: t-based minimum detectable difference for this design (paired: from the
    sd of the differences; unpaired: from the pooled sd of the arms)."""

    diff: float
    lo: float
    hi: float
    n_a: int
    n_b: int
    paired: bool
    mde: float
    sd: float  # paired: sd of per-seed differences; unpaired: pooled per-seed sd


def _drop_nan(values, seeds):
    v = np.asarray(values, dtype=float)
    s = None if seeds is None else np.asarray(list(seeds), dtype=object)
    keep = ~np.isnan(v)
    return v[keep], (None if s is None else s[keep])


def contrast(a, b, seeds_a=None, seeds_b=None, *, paired: bool | None = None, conf: float = 0.95,
             n_boot: int = 10000, seed: int = 0, bounds: tuple[float, float] | None = (-1.0, 1.0),
             alpha: float = 0.05, power: float = 0.8) -> Contrast:
    """Contrast of arm A against arm B. paired=None: paired when both seed lists are given, hold
    no repeats and are the same set; paired=True insists (ValueError otherwise)."""
    a, sa = _drop_nan(a, seeds_a)
    b, sb = _drop_nan(b, seeds_b)
    same_seeds = (sa is not None and sb is not None and len(set(sa)) == len(sa) == len(sb) == len(set(sb))
                  and set(sa) == set(sb) and len(sa) > 0)
    if paired and not same_seeds:
        raise ValueError("a paired contrast needs the same seeds, once each, in both arms")
    paired = same_seeds if paired is None else bool(paired)
    nan = float("nan")
    if paired:
        order_b = {s: i for i, s in enumerate(sb)}
        d = a - b[[order_b[s] for s in sa]]
        ci = bootstrap_ci(d, conf, n_boot, seed, bounds)
        sd = float(d.std(ddof=1)) if len(d) >= 2 else nan
        return Contrast(float(d.mean()), ci.lo, ci.hi, len(a), len(b), True, mde_paired(sd, len(d), alpha, power), sd)
    diff = float(a.mean() - b.mean()) if len(a) and len(b) else nan
    sd = pooled_sd([a, b])
    lo = hi = nan
    if len(a) >= 2 and len(b) >= 2:
        rng = np.random.default_rng(seed)
        dist = _boot_means(a, rng, n_boot) - _boot_means(b, rng, n_boot)
        ci = _percentile(dist, diff, len(a) + len(b), conf, bounds)
        lo, hi = ci.lo, ci.hi
    return Contrast(diff, lo, hi, len(a), len(b), False, mde(sd, len(a), alpha, power, n_b=len(b)), sd)
