"""Every method's loss value and gradient against a hand-written formula (not the same code path)."""

import math

import pytest
import torch

from offpolicy_bench import AGG_MODES, OffbenchError, PolicyBatch, aggregate, get_method
from offpolicy_bench.kernels import kernel_K, kernel_peak, log_gamma_kernel
from offpolicy_bench.method import METHODS
from offpolicy_bench.plugins import load_builtin

load_builtin()

MASK = torch.tensor([[1.0, 1.0, 1.0, 0.0], [1.0, 1.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]])  # ragged lengths 3, 2, 4


def make_batch(scale=0.3, seed=0, adv=(1.0, -0.5, 2.0)):
    g = torch.Generator().manual_seed(seed)
    logp0 = -torch.rand(3, 4, generator=g, dtype=torch.float64) * 2
    old = logp0 + scale * torch.randn(3, 4, generator=g, dtype=torch.float64)
    behav = old + scale * torch.randn(3, 4, generator=g, dtype=torch.float64)
    logp = logp0.clone().requires_grad_(True)
    return logp, PolicyBatch(logp=logp, old_logp=old, behav_logp=behav, advantages=torch.tensor(adv, dtype=torch.float64),
                             mask=MASK.double())


def grad_of(method, logp, batch, **kw):
    out = get_method(method)(batch, **kw)
    (g,) = torch.autograd.grad(out.loss, logp)
    return out, g


def token_mean(x):
    return sum(x[i][t] for i in range(3) for t in range(4) if MASK[i, t]) / MASK.sum().item()


def test_on_policy_value_and_grad():
    logp, b = make_batch()
    out, g = grad_of("on_policy", logp, b)
    A = [1.0, -0.5, 2.0]
    expect = token_mean([[-A[i] * logp[i, t].item() for t in range(4)] for i in range(3)])
    assert out.loss.item() == pytest.approx(expect, rel=1e-12)
    n = MASK.sum().item()
    assert torch.allclose(g, torch.tensor([[-A[i] * MASK[i, t].item() / n for t in range(4)] for i in range(3)],
                                          dtype=torch.float64))


@pytest.mark.parametrize("dual", [None, 3.0])
def test_token_clip_value_and_grad(dual):
    logp, b = make_batch(scale=0.4, seed=3)
    out, g = grad_of("token_clip", logp, b, dual_clip_c=dual)
    A = [1.0, -0.5, 2.0]
    vals, grads = [[0.0] * 4 for _ in range(3)], [[0.0] * 4 for _ in range(3)]
    n = MASK.sum().item()
    for i in range(3):
        for t in range(4):
            r = math.exp(logp[i, t].item() - b.old_logp[i, t].item())
            rc = min(max(r, 0.8), 1.28)
            l1, l2 = -A[i] * r, -A[i] * rc
            val, dval = (l1, -A[i] * r) if l1 >= l2 else (l2, 0.0)  # d/dlogp of -A r is -A r
            if dual is not None and A[i] < 0 and val > -A[i] * dual:
                val, dval = -A[i] * dual, 0.0
            vals[i][t], grads[i][t] = val, dval * MASK[i, t].item() / n
    assert out.loss.item() == pytest.approx(token_mean(vals), rel=1e-12)
    assert torch.allclose(g, torch.tensor(grads, dtype=torch.float64))
    assert 0.0 <= out.metrics["clip_frac"] <= 1.0


def test_token_clip_dual_clip_bites():
    # a huge ratio with A < 0: the plain clipped loss is -A r (unbounded), dual clip caps it at -3A
    logp = torch.tensor([[2.0]], dtype=torch.float64, requires_grad=True)
    b = PolicyBatch(logp=logp, old_logp=torch.zeros(1, 1, dtype=torch.float64), behav_logp=torch.zeros(1, 1, dtype=torch.float64),
                    advantages=torch.tensor([-1.0], dtype=torch.float64), mask=torch.ones(1, 1))
    assert get_method("token_clip")(b, dual_clip_c=None).loss.item() == pytest.approx(math.exp(2.0))
    out = get_method("token_clip")(b)
    assert out.loss.item() == pytest.approx(3.0) and out.metrics["dual_clip_frac"] == 1.0


def phi(w, c1, c2):
    return w**c1 * math.exp(c2 * (1 - w))


def test_vespo_value_and_grad():
    logp, b = make_batch(scale=0.3, seed=5)
    out, g = grad_of("vespo", logp, b)
    A = [1.0, -0.5, 2.0]
    n = MASK.sum().item()
    vals, grads = [[0.0] * 4 for _ in range(3)], [[0.0] * 4 for _ in range(3)]
    for i in range(3):
        W = math.exp(sum(logp[i, t].item() - b.behav_logp[i, t].item() for t in range(4) if MASK[i, t]))
        c1, c2 = (2.0, 3.0) if A[i] >= 0 else (3.0, 2.0)
        p = phi(W, c1, c2)
        for t in range(4):
            vals[i][t] = -p * A[i] * logp[i, t].item()
            grads[i][t] = -p * A[i] * MASK[i, t].item() / n  # phi is a stop-gradient coefficient
    assert out.loss.item() == pytest.approx(token_mean(vals), rel=1e-10)
    assert torch.allclose(g, torch.tensor(grads, dtype=torch.float64), rtol=1e-10)


def test_vespo_sign_rule_zero_advantage_uses_positive_kernel():
    # A = 0 selects (c1_pos, c2_pos): the coefficient is irrelevant to the gradient but shows in phi stats
    logp = torch.full((1, 2), -0.5, dtype=torch.float64, requires_grad=True)
    b = PolicyBatch(logp=logp, old_logp=logp.detach(), behav_logp=logp.detach() - 0.1,
                    advantages=torch.zeros(1, dtype=torch.float64), mask=torch.ones(1, 2))
    out = get_method("vespo")(b)
    assert out.metrics["phi_mean"] == pytest.approx(phi(math.exp(0.2), 2.0, 3.0))


@pytest.mark.parametrize("name", ["on_policy", "vespo"])
def test_on_policy_limit_equals_plain_policy_gradient(name):
    logp, b = make_batch(scale=0.0)
    b.behav_logp = logp.detach().clone()
    b.old_logp = logp.detach().clone()
    _, g = grad_of(name, logp, b)
    _, g_pg = grad_of("on_policy", logp, b)
    assert torch.allclose(g, g_pg, rtol=1e-12)


def test_token_clip_on_policy_limit_is_inactive():
    logp, b = make_batch(scale=0.0)
    b.old_logp = logp.detach().clone()
    out, g = grad_of("token_clip", logp, b)
    _, g_pg = grad_of("on_policy", logp, b)
    assert out.metrics["clip_frac"] == 0.0
    assert torch.allclose(g, g_pg, rtol=1e-12)  # d(-A r)/dlogp = -A at r = 1


@pytest.mark.parametrize("name", sorted(METHODS))
@pytest.mark.parametrize("extreme", [50.0, -50.0])
def test_extreme_log_ratios_stay_finite(name, extreme):
    logp, b = make_batch()
    b.behav_logp = logp.detach() - extreme
    b.old_logp = logp.detach() - extreme
    out, g = grad_of(name, logp, b)
    assert torch.isfinite(out.loss) and torch.isfinite(g).all()
    # no metric is infinite; ESS of all-zero weights is undefined and reported as NaN
    assert not any(math.isinf(v) for v in out.metrics.values())


@pytest.mark.parametrize("name", sorted(METHODS))
def test_padding_is_ignored(name):
    logp, b = make_batch(seed=7)
    out1, g1 = grad_of(name, logp, b)
    logp2 = logp.detach().clone()
    logp2[MASK == 0] = -123.0  # garbage on padding
    logp2.requires_grad_(True)
    old, behav = b.old_logp.clone(), b.behav_logp.clone()
    old[MASK == 0], behav[MASK == 0] = 7.0, -9.0
    b2 = PolicyBatch(logp=logp2, old_logp=old, behav_logp=behav, advantages=b.advantages, mask=b.mask)
    out2, g2 = grad_of(name, logp2, b2)
    assert out1.loss.item() == pytest.approx(out2.loss.item(), rel=1e-12)
    assert torch.equal(g2[MASK == 0], torch.zeros_like(g2[MASK == 0]))
    assert torch.allclose(g1, g2)


def test_aggregation_modes_closed_form():
    L = torch.arange(12, dtype=torch.float64).view(3, 4)
    m = MASK.double()
    rows = [[L[i, t].item() for t in range(4) if MASK[i, t]] for i in range(3)]
    assert aggregate(L, m, "token-mean").item() == pytest.approx(sum(map(sum, rows)) / 9)
    assert aggregate(L, m, "seq-mean-token-mean").item() == pytest.approx(sum(sum(r) / len(r) for r in rows) / 3)
    assert aggregate(L, m, "seq-mean-token-sum").item() == pytest.approx(sum(map(sum, rows)) / 3)
    assert aggregate(L, m, "seq-mean-token-sum-norm", 10).item() == pytest.approx(sum(map(sum, rows)) / (3 * 10))
    assert aggregate(L, m, "seq-mean-token-sum-norm").item() == pytest.approx(sum(map(sum, rows)) / (3 * 4))
    with pytest.raises(OffbenchError, match="token-mean"):
        aggregate(L, m, "mean")


@pytest.mark.parametrize("mode", AGG_MODES)
def test_aggregation_override_is_used_and_reported(mode):
    logp, b = make_batch()
    out = get_method("vespo")(b, agg=mode)
    assert out.agg == mode
    assert out.loss.item() == pytest.approx(aggregate(out.loss_matrix, b.mask, mode).item())


def test_vespo_kernel_closed_forms():
    one = torch.zeros(1, dtype=torch.float64)
    assert torch.exp(log_gamma_kernel(one, 2.0, 3.0)).item() == 1.0 and torch.exp(log_gamma_kernel(one, 3.0, 2.0)).item() == 1.0
    for c1, c2 in ((2.0, 3.0), (3.0, 2.0)):
        w_star, pmax = kernel_peak(c1, c2)
        assert w_star == pytest.approx(c1 / c2) and pmax == pytest.approx(phi(c1 / c2, c1, c2))
        grid = torch.linspace(0.01, 5, 20001, dtype=torch.float64)
        vals = torch.exp(log_gamma_kernel(torch.log(grid), c1, c2))
        assert grid[vals.argmax()].item() == pytest.approx(c1 / c2, abs=1e-3)
        assert (vals / grid).max().item() == pytest.approx(kernel_K(c1, c2), rel=1e-6)
    assert kernel_K(2.0, 3.0) == pytest.approx(math.e**2 / 3)
    assert kernel_K(3.0, 2.0) == pytest.approx(1.0)
    assert kernel_peak(2.0, 3.0)[1] == pytest.approx(1.21, abs=0.01)
    assert kernel_peak(3.0, 2.0)[1] == pytest.approx(1.24, abs=0.01)


def test_public_api_overrides_and_errors():
    logp, b = make_batch()
    a = get_method("vespo")(b, {"c1_pos": 2.0}).loss.item()
    c = get_method("vespo")(b, c1_pos=3.0, c2_pos=3.0).loss.item()
    assert a != c
    with pytest.raises(OffbenchError, match="c1_pos"):
        get_method("vespo")(b, c1_poss=3.0)
    with pytest.raises(OffbenchError, match="Did you mean 'vespo'"):
        get_method("vespoo")
