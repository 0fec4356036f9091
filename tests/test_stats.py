"""stats.py against closed forms, tabulated quantiles and simulations."""

import math

import numpy as np
import pytest

from offpolicy_bench import stats


@pytest.mark.parametrize("p,df,value", [(0.975, 1, 12.706), (0.975, 2, 4.303), (0.975, 7, 2.365),
                                        (0.975, 29, 2.045), (0.8, 8, 0.889), (0.995, 3, 5.841), (0.9, 20, 1.325)])
def test_t_quantiles_match_the_table(p, df, value):
    assert stats.t_ppf(p, df) == pytest.approx(value, abs=6e-4)
    assert stats.t_ppf(1 - p, df) == pytest.approx(-value, abs=6e-4)
    assert stats.t_cdf(stats.t_ppf(p, df), df) == pytest.approx(p, abs=1e-12)


def test_normal_quantiles_and_the_t_limit():
    assert stats.norm_ppf(0.975) == pytest.approx(1.959964, abs=1e-6)
    assert stats.norm_ppf(0.8) == pytest.approx(0.841621, abs=1e-6)
    assert stats.norm_cdf(stats.norm_ppf(0.01)) == pytest.approx(0.01, rel=1e-10)
    assert stats.t_ppf(0.975, 1e6) == pytest.approx(1.959964, abs=1e-5)
    assert stats.t_cdf(1.0, 1) == pytest.approx(0.75, abs=1e-12)  # Cauchy: 1/2 + atan(1)/pi
    with pytest.raises(ValueError):
        stats.t_ppf(1.0, 3)


def test_t_interval_closed_form():
    iv = stats.t_interval([1.0, 2.0, 3.0, 4.0])
    # mean 2.5, sd sqrt(5/3) = 1.290994, t_{0.975,3} = 3.182446: half-width 3.182446 * 1.290994 / 2
    assert iv.estimate == 2.5 and iv.n == 4
    assert (iv.lo, iv.hi) == (pytest.approx(2.5 - 2.054260, abs=1e-5), pytest.approx(2.5 + 2.054260, abs=1e-5))
    iv = stats.t_interval([0.5, 0.7, float("nan"), 0.6])  # NaN dropped
    assert iv.n == 3 and iv.halfwidth == pytest.approx(4.302653 * 0.1 / math.sqrt(3), rel=1e-6)
    one = stats.t_interval([0.4])
    assert one.estimate == 0.4 and math.isnan(one.lo) and math.isnan(one.hi)


def test_bootstrap_of_a_large_normal_sample_approaches_the_normal_interval():
    x = np.random.default_rng(7).normal(3.0, 2.0, 4000)
    iv = stats.bootstrap_ci(x)
    hw = 1.959964 * x.std(ddof=1) / math.sqrt(len(x))
    assert iv.estimate == pytest.approx(x.mean())
    assert iv.lo == pytest.approx(x.mean() - hw, abs=0.05 * hw)
    assert iv.hi == pytest.approx(x.mean() + hw, abs=0.05 * hw)
    assert stats.bootstrap_ci(x) == iv  # fixed seed: the same numbers every time


def test_paired_contrast_of_identical_groups_is_exactly_zero():
    a = [0.31, 0.42, 0.27, 0.55]
    c = stats.contrast(a, list(a), [0, 1, 2, 3], [0, 1, 2, 3])
    assert c.paired and (c.diff, c.lo, c.hi) == (0.0, 0.0, 0.0) and (c.n_a, c.n_b) == (4, 4)
    u = stats.contrast(a, list(a))  # no seeds: unpaired, a real interval around 0
    assert not u.paired and u.diff == 0.0 and u.lo < 0 < u.hi


def test_contrast_pairs_by_seed_not_by_position_and_falls_back_to_unpaired():
    # arm B lists the seeds in another order; aligned by seed every difference is exactly 0.1
    a, sa = [0.5, 0.3, 0.9], [0, 1, 2]
    b, sb = [0.8, 0.4, 0.2], [2, 0, 1]
    c = stats.contrast(a, b, sa, sb)
    assert c.paired and c.diff == pytest.approx(0.1) and c.lo == pytest.approx(0.1) and c.hi == pytest.approx(0.1)
    u = stats.contrast(a, b[:2], sa, sb[:2])  # seed sets differ: each arm resampled on its own
    assert not u.paired and (u.n_a, u.n_b) == (3, 2) and u.lo < u.diff < u.hi
    with pytest.raises(ValueError, match="same seeds"):
        stats.contrast(a, b[:2], sa, sb[:2], paired=True)


def test_mde_against_hand_computation():
    # t_{0.975,4} = 2.776445, t_{0.8,4} = 0.940965; z_{0.975} = 1.959964, z_{0.8} = 0.841621
    assert stats.mde(0.1, 3) == pytest.approx((2.776445 + 0.940965) * 0.1 * math.sqrt(2 / 3), rel=1e-5)
    assert stats.mde(0.1, 3, dist="normal") == pytest.approx((1.959964 + 0.841621) * 0.1 * math.sqrt(2 / 3), rel=1e-5)
    # paired: df = n - 1 = 2, t_{0.975,2} = 4.302653, t_{0.8,2} = 1.060660
    assert stats.mde_paired(0.1, 3) == pytest.approx((4.302653 + 1.060660) * 0.1 / math.sqrt(3), rel=1e-5)
    assert stats.mde(0.1, 4, n_b=2) == pytest.approx(
        (stats.t_ppf(0.975, 4) + stats.t_ppf(0.8, 4)) * 0.1 * math.sqrt(1 / 4 + 1 / 2))
    assert math.isnan(stats.mde(0.1, 1))  # one seed per arm: no degrees of freedom


def power_of_t_test(n, delta, sims=2000, seed=0):
    """Rejection rate of the two-sided 5% pooled two-sample t-test, groups N(0,1) and N(delta,1)."""
    rng = np.random.default_rng(seed)
    a, b = rng.normal(0, 1, (sims, n)), rng.normal(delta, 1, (sims, n))
    sp = np.sqrt((a.var(axis=1, ddof=1) + b.var(axis=1, ddof=1)) / 2)
    t = (b.mean(axis=1) - a.mean(axis=1)) / (sp * math.sqrt(2 / n))
    return float((np.abs(t) > stats.t_ppf(0.975, 2 * n - 2)).mean())


@pytest.mark.parametrize("n", [3, 5, 10])
def test_t_based_mde_gives_80_percent_power_in_simulation(n):
    assert power_of_t_test(n, stats.mde(1.0, n)) == pytest.approx(0.80, abs=0.05)


def test_normal_mde_overstates_power_with_few_seeds():
    """Why the report prints the t-based MDE: with 3 seeds the normal one has under 60% power."""
    assert power_of_t_test(3, stats.mde(1.0, 3, dist="normal")) < 0.65


def test_mde_of_two_proportions_solves_its_equation_and_has_80_percent_power():
    p, m = 0.5, 100
    d = stats.mde_proportions(p, m)
    # close to the textbook (z_a + z_b) sqrt(2 p (1-p) / m) = 0.1981, a little smaller (p + d has less variance)
    assert 0.185 < d < (1.959964 + 0.841621) * math.sqrt(2 * 0.25 / m)
    p2, pbar = p + d, p + d / 2
    assert d == pytest.approx(1.959964 * math.sqrt(2 * pbar * (1 - pbar) / m)
                              + 0.841621 * math.sqrt((p * (1 - p) + p2 * (1 - p2)) / m), abs=1e-6)
    rng = np.random.default_rng(1)
    x, y = rng.binomial(m, p, 4000) / m, rng.binomial(m, p2, 4000) / m
    pool = (x + y) / 2
    z = (y - x) / np.sqrt(2 * pool * (1 - pool) / m)
    assert float((np.abs(z) > 1.959964).mean()) == pytest.approx(0.80, abs=0.03)
    assert math.isnan(stats.mde_proportions(0.99, 10))  # nothing above 0.99 is detectable with 10 problems


def test_intervals_of_proportions_stay_in_the_unit_interval():
    for sample in ([0.0, 0.0, 1.0], [0.0, 1.0], [1.0, 1.0, 0.0, 1.0]):
        raw = stats.t_interval(sample)
        assert raw.lo < 0 or raw.hi > 1  # unclipped, the t-interval leaves [0, 1] ...
        for iv in (stats.t_interval(sample, bounds=(0, 1)), stats.bootstrap_ci(sample, bounds=(0, 1))):
            assert 0.0 <= iv.lo <= iv.estimate <= iv.hi <= 1.0, (sample, iv)  # ... clipped it does not
    for v in (0.0, 1.0):
        for iv in (stats.t_interval([v] * 3, bounds=(0, 1)), stats.bootstrap_ci([v] * 3, bounds=(0, 1))):
            assert (iv.lo, iv.estimate, iv.hi) == (v, v, v)
    c = stats.contrast([1.0, 1.0, 1.0], [0.0, 0.0, 0.0], [0, 1, 2], [0, 1, 2])
    assert (c.diff, c.lo, c.hi) == (1.0, 1.0, 1.0)
    u = stats.contrast([1.0, 0.0, 1.0], [0.0, 1.0], bounds=(-1, 1))
    assert -1.0 <= u.lo <= u.hi <= 1.0


def test_endpoints_of_a_hand_made_series():
    steps = [0, 4, 8, 12, 16]
    dip = stats.endpoints(steps, [0.1, 0.5, 0.2, 0.4, 0.45], total_steps=16)
    # late mean: eval points with step > 8, i.e. 12 and 16
    assert (dip.final, dip.best, dip.late_mean) == (0.45, 0.5, pytest.approx(0.425))
    assert dip.dip and not dip.collapsed and dip.drop_step == 8 and dip.n_eval == 5
    col = stats.endpoints(steps, [0.1, 0.5, 0.4, 0.3, 0.2], total_steps=16)
    assert col.collapsed and not col.dip and col.drop_step == 16 and col.late_mean == pytest.approx(0.25)
    edge = stats.endpoints(steps, [0.1, 0.5, 0.4, 0.3, 0.25], total_steps=16)  # exactly half: not collapsed
    assert not edge.collapsed and not edge.dip and math.isnan(edge.drop_step)
    # unordered input with a NaN point; total_steps far beyond the last eval: the last point alone
    late = stats.endpoints([16, 0, 8, 4], [0.25, 0.1, float("nan"), 0.6], total_steps=100)
    assert late.late_mean == 0.25 and late.final == 0.25 and late.n_eval == 3 and late.collapsed
    low = stats.endpoints(steps, [0.04, 0.01, 0.0, 0.0, 0.0])  # best under 0.05: never a collapse
    assert not low.collapsed and not low.dip and low.late_mean == 0.0
    empty = stats.endpoints([], [])
    assert empty.n_eval == 0 and math.isnan(empty.late_mean) and not empty.collapsed
