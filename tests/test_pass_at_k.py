"""pass@k (Chen et al. 2021) against the closed form, and its table over problems: pure maths, no
sandbox, so these run everywhere (the code-task tests need root for the sandbox)."""

from math import comb

import pytest

from offpolicy_bench.grading import pass_at_k, pass_at_k_table


def chen(n, c, k):
    """Chen et al. (2021), Codex paper, the numerically stable form of 1 - C(n-c, k) / C(n, k)."""
    import numpy as np

    if n - c < k:
        return 1.0
    return 1.0 - float(np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


@pytest.mark.parametrize("n", [1, 2, 5, 10, 20, 200])
def test_pass_at_k_matches_the_closed_form(n):
    for c in range(n + 1):
        for k in range(1, n + 1):
            exact = 1.0 - comb(n - c, k) / comb(n, k)
            assert pass_at_k(n, c, k) == pytest.approx(exact, abs=1e-12)
            assert pass_at_k(n, c, k) == pytest.approx(chen(n, c, k), abs=1e-12)
    assert pass_at_k(n, 0, 1) == 0.0 and pass_at_k(n, n, 1) == 1.0


def test_pass_at_k_table():
    t = pass_at_k_table([[True, False, False, False], [False] * 4, [True] * 4], k_list=(1, 2, 10))
    assert t["pass@1"] == pytest.approx((0.25 + 0 + 1) / 3)
    assert t["pass@2"] == pytest.approx((0.5 + 0 + 1) / 3)
    assert "pass@10" not in t  # more than the samples per problem
    with pytest.raises(ValueError):
        pass_at_k(3, 1, 4)
