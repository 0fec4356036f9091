"""The frontier losses (dppo_tv, dppo_kl, ipo, clip_cov, kl_cov, bapo, aspo, luspo, decoupled_ppo):
value and gradient against an independent per-token reference, on-policy limits, extreme ratios,
argument errors, and a short real training run each.

A reference walks the sequences and tokens in plain Python loops, builds each token's loss from the
formula out of scalar pieces (floats from `math` for everything detached, the single element
logp[i, t] where the gradient flows), reduces them by hand in the aggregation mode the method reports,
and autograd takes the gradient of that scalar. Nothing of the methods' tensor code is reused.
"""

import json
import math

import pandas as pd
import pytest
import torch

from conftest import TINY
from offpolicy_bench import AGG_MODES, OffbenchError, PolicyBatch, get_method
from offpolicy_bench.cli import main
from offpolicy_bench.config import build_config
from offpolicy_bench.plugins import load_builtin
from test_methods_core import MASK, make_batch

load_builtin()

NEW = ["dppo_tv", "dppo_kl", "ipo", "clip_cov", "kl_cov", "bapo", "aspo", "luspo", "decoupled_ppo"]
B, T = MASK.shape
ADVS = [(1.0, -0.5, 2.0), (-1.5, 0.7, 0.0), (-1.0, -0.5, -2.0)]  # mixed signs, A = 0, all negative


def defaults(name):
    return get_method(name).args()


def on(i, t):
    return bool(MASK[i, t])


def val(x, i, t):
    return x[i, t].item()


def valid_tokens():
    return [(i, t) for i in range(B) for t in range(T) if on(i, t)]


def reduce(L, mode, norm_len=None):
    """Hand reduction of per-token scalars L[(i, t)] (valid tokens only) in an aggregation mode."""
    rows = [[L[(i, t)] for t in range(T) if on(i, t)] for i in range(B)]
    if mode == "token-mean":
        return sum(sum(r) for r in rows) / sum(len(r) for r in rows)
    if mode == "seq-mean-token-mean":
        return sum(sum(r) / len(r) for r in rows) / B
    if mode == "seq-mean-token-sum":
        return sum(sum(r) for r in rows) / B
    if mode == "seq-mean-token-sum-norm":
        return sum(sum(r) for r in rows) / (B * (norm_len or T))
    raise ValueError(mode)


def compare(name, logp, batch, reference, agg=None, rel=1e-10, **kw):
    """The method's loss and gradient vs the reference's, reduced in the mode the method used."""
    out = get_method(name)(batch, agg=agg, **kw)
    (g,) = torch.autograd.grad(out.loss, logp)
    ref = reduce(reference(logp, batch), out.agg)
    (g_ref,) = torch.autograd.grad(ref, logp)
    assert out.loss.item() == pytest.approx(ref.item(), rel=rel, abs=1e-13), name
    assert torch.allclose(g, g_ref, rtol=rel, atol=1e-13), (name, g, g_ref)
    return out


def prob(lp):
    return math.exp(min(lp, 0.0))


def clip(x, lo, hi):
    return min(max(x, lo), hi)


# ----------------------------------------------------------------------------- references
def ref_dppo(kind, delta_low, delta_high, is_cap, kl_coef=0.0):
    def reference(logp, b):
        L = {}
        for i, t in valid_tokens():
            lp, lq, A = logp[i, t], val(b.behav_logp, i, t), val(b.advantages, i, t)
            p, q = prob(lp.item()), prob(lq)
            if kind == "tv":
                up, down = p - q > delta_high, p - q < -delta_low
            else:
                kl = q * math.log(q / p) + (1 - q) * math.log((1 - q + 1e-8) / (1 - p + 1e-8))
                up, down = kl > delta_high and p > q, kl > delta_low and p < q
            keep = (not up) if A > 0 else (not down)
            w = math.exp(lp.item() - lq)
            if is_cap is not None:
                w = min(w, is_cap)
            L[(i, t)] = -float(keep) * w * A * lp + kl_coef * (lp - lq) ** 2
        return L

    return reference


def ref_ipo(tau, threshold, pg):
    def reference(logp, b):
        L = {}
        for i, t in valid_tokens():
            lp, lq, A = logp[i, t], val(b.behav_logp, i, t), val(b.advantages, i, t)
            keep = threshold is None or abs(prob(lp.item()) - prob(lq)) <= threshold
            policy = torch.exp(lp - lq) if pg == "ratio" else lp
            L[(i, t)] = -float(keep) * A * policy + tau * (lp - lq) ** 2
        return L

    return reference


def covariances(logp, b):
    toks = valid_tokens()
    mean_a = sum(val(b.advantages, i, t) for i, t in toks) / len(toks)
    mean_lp = sum(val(logp, i, t) for i, t in toks) / len(toks)
    return {(i, t): (val(b.advantages, i, t) - mean_a) * (val(logp, i, t) - mean_lp) for i, t in toks}


def ppo_token(u, A, lo, hi):
    """PPO's clipped surrogate at one token: (value, clipped?) with u the (differentiable) ratio."""
    l1, l2 = -A * u, -A * clip(u.item(), lo, hi)
    return (l1, False) if l1.item() >= l2 else (l1 * 0 + l2, True)


def ref_clip_cov(cut):
    """Clip-Cov with the set of cut tokens given (the method draws them at random)."""
    def reference(logp, b):
        d = defaults("clip_cov")
        L = {}
        for i, t in valid_tokens():
            u = torch.exp(logp[i, t] - val(b.old_logp, i, t))
            v, _ = ppo_token(u, val(b.advantages, i, t), 1 - d.eps_low, 1 + d.eps_high)
            L[(i, t)] = v * 0 if (i, t) in cut else v
        return L

    return reference


def clip_cov_candidates(logp, b, lb, ub, eps_low=1.0, eps_high=1.0):
    cov = covariances(logp, b)
    out = set()
    for i, t in valid_tokens():
        u = torch.exp(logp[i, t].detach() - val(b.old_logp, i, t))
        _, clipped = ppo_token(u, val(b.advantages, i, t), 1 - eps_low, 1 + eps_high)
        if not clipped and lb < cov[(i, t)] < ub:
            out.add((i, t))
    return out


def ref_kl_cov(kl_ratio, kl_coef):
    def reference(logp, b):
        cov = covariances(logp, b)
        toks = sorted(valid_tokens(), key=lambda it: -cov[it])
        top = set(toks[:max(1, int(len(toks) * kl_ratio))])
        L = {}
        for i, t in valid_tokens():
            lr = logp[i, t] - val(b.old_logp, i, t)
            L[(i, t)] = -val(b.advantages, i, t) * torch.exp(lr) + (kl_coef * lr.abs() if (i, t) in top else 0.0)
        return L

    return reference


def bapo_bounds(logp, b, a):
    """BAPO's search with plain floats: (c_low, c_high, final positive share)."""
    toks = [(math.exp(val(logp, i, t) - val(b.old_logp, i, t)), val(b.advantages, i, t)) for i, t in valid_tokens()]

    def share(lo, hi):
        pos = sum(r * A for r, A in toks if A > 0 and r <= hi)
        neg = sum(r * -A for r, A in toks if A < 0 and r >= lo and (a.dual_clip_c is None or r <= a.dual_clip_c))
        return 1.0 if pos + neg == 0 else pos / (pos + neg)

    lo, hi = a.low_start, a.high_start
    rho = share(lo, hi)
    while rho < a.target_pos_share and lo < a.low_max and a.low_step > 0:
        lo = min(lo + a.low_step, a.low_max)
        rho = share(lo, hi)
    while rho < a.target_pos_share and hi < a.high_max and a.high_step > 0:
        hi = min(hi + a.high_step, a.high_max)
        rho = share(lo, hi)
    return lo, hi, rho


def ref_bapo(**kw):
    def reference(logp, b):
        a = get_method("bapo").make_args(**kw)
        lo, hi, _ = bapo_bounds(logp, b, a)
        L = {}
        for i, t in valid_tokens():
            A = val(b.advantages, i, t)
            v, _ = ppo_token(torch.exp(logp[i, t] - val(b.old_logp, i, t)), A, lo, hi)
            if a.dual_clip_c is not None and A < 0 and v.item() > -A * a.dual_clip_c:
                v = v * 0 - A * a.dual_clip_c
            L[(i, t)] = v
        return L

    return reference


def aspo_w(r, A, eps_low, eps_high, c):
    if A >= 0:
        return 0.0 if r > 1 + eps_high else (c if r < 1 / c else 1 / r)
    return 0.0 if r < 1 - eps_low else (c if r > c else r)


def ref_aspo(eps_low, eps_high, c):
    def reference(logp, b):
        L = {}
        for i, t in valid_tokens():
            A = val(b.advantages, i, t)
            w = aspo_w(math.exp(val(logp, i, t) - val(b.old_logp, i, t)), A, eps_low, eps_high, c)
            L[(i, t)] = -w * A * logp[i, t]
        return L

    return reference


def ref_decoupled(eps_low, eps_high, weight_cap, alpha=None, dual=None):
    def reference(logp, b):
        L = {}
        for i, t in valid_tokens():
            A, lmu = val(b.advantages, i, t), val(b.behav_logp, i, t)
            lprox = val(b.old_logp, i, t) if alpha is None else lmu + alpha * (val(logp, i, t) - lmu)
            w = math.exp(lprox - lmu)
            kept = weight_cap is None or w <= weight_cap
            v, _ = ppo_token(torch.exp(logp[i, t] - lprox), A, 1 - eps_low, 1 + eps_high)
            if dual is not None and A < 0 and v.item() > -A * dual:
                v = v * 0 - A * dual
            L[(i, t)] = w * float(kept) * v
        return L

    return reference


# ----------------------------------------------------------------------------- value and gradient
@pytest.mark.parametrize("adv", ADVS)
@pytest.mark.parametrize("kw", [{}, {"delta_low": 0.05, "delta_high": 0.02, "is_cap": 1.1},
                                {"delta_low": 0.2, "delta_high": 0.2, "is_cap": None, "kl_coef": 1e-3}])
def test_dppo_tv_value_and_grad(adv, kw):
    logp, b = make_batch(scale=0.5, seed=21, adv=adv)
    a = get_method("dppo_tv").make_args(**kw)
    out = compare("dppo_tv", logp, b, ref_dppo("tv", a.delta_low, a.delta_high, a.is_cap, a.kl_coef), **kw)
    n_masked = sum(1 for i, t in valid_tokens()
                   if (lambda d, A: d > a.delta_high if A > 0 else d < -a.delta_low)(
                       prob(val(logp, i, t)) - prob(val(b.behav_logp, i, t)), val(b.advantages, i, t)))
    assert out.metrics["mask_frac"] == pytest.approx(n_masked / len(valid_tokens()))


def test_dppo_tv_masks_bite_on_this_batch():
    logp, b = make_batch(scale=0.5, seed=21)
    m = get_method("dppo_tv")(b, delta_low=0.05, delta_high=0.02).metrics
    assert 0 < m["mask_frac"] < 1 and m["mask_frac_pos"] + m["mask_frac_neg"] == pytest.approx(m["mask_frac"])


@pytest.mark.parametrize("adv", ADVS)
@pytest.mark.parametrize("kw", [{}, {"delta_low": 0.01, "delta_high": 0.005, "is_cap": 1.2}])
def test_dppo_kl_value_and_grad(adv, kw):
    logp, b = make_batch(scale=0.5, seed=22, adv=adv)
    a = get_method("dppo_kl").make_args(**kw)
    out = compare("dppo_kl", logp, b, ref_dppo("kl", a.delta_low, a.delta_high, a.is_cap), **kw)
    if kw:
        assert out.metrics["mask_frac"] > 0


@pytest.mark.parametrize("mode", AGG_MODES)
@pytest.mark.parametrize("name", ["dppo_tv", "dppo_kl"])
def test_dppo_every_aggregation(name, mode):
    logp, b = make_batch(scale=0.5, seed=23)
    d = defaults(name)
    compare(name, logp, b, ref_dppo(name[-2:], 0.01, 0.01, d.is_cap), agg=mode, delta_low=0.01, delta_high=0.01)


@pytest.mark.parametrize("adv", ADVS)
@pytest.mark.parametrize("kw", [{}, {"mask_threshold": None}, {"pg": "logp", "mask_threshold": None, "tau": 0.05},
                                {"pg": "logp", "mask_threshold": 0.05, "tau": 0.0}])
def test_ipo_value_and_grad(adv, kw):
    logp, b = make_batch(scale=0.5, seed=24, adv=adv)
    a = get_method("ipo").make_args(**kw)
    compare("ipo", logp, b, ref_ipo(a.tau, a.mask_threshold, a.pg), **kw)


def test_ipo_ratio_is_differentiated_and_the_penalty_is_quadratic():
    # one token, A = 1, log r = 0.3, no mask: d/dlogp [-r + tau (log r)^2] = -r + 2 tau log r
    logp = torch.tensor([[-1.0]], dtype=torch.float64, requires_grad=True)
    b = PolicyBatch(logp=logp, old_logp=logp.detach(), behav_logp=torch.tensor([[-1.3]], dtype=torch.float64),
                    advantages=torch.tensor([1.0], dtype=torch.float64), mask=torch.ones(1, 1))
    for tau in (0.0, 1e-3, 0.5):
        out = get_method("ipo")(b, tau=tau, mask_threshold=None)
        (g,) = torch.autograd.grad(out.loss, logp)
        assert g.item() == pytest.approx(-math.exp(0.3) + 2 * tau * 0.3, rel=1e-12)
        assert out.loss.item() == pytest.approx(-math.exp(0.3) + tau * 0.09, rel=1e-12)


@pytest.mark.parametrize("adv", ADVS)
@pytest.mark.parametrize("bounds", [(0.0, 5.0), (-5.0, 0.05), (0.02, 0.3)])
def test_clip_cov_value_and_grad_when_every_candidate_is_cut(adv, bounds):
    """clip_ratio = 1 cuts every candidate, so the random draw is out of play."""
    logp, b = make_batch(scale=0.4, seed=25, adv=adv)
    lb, ub = bounds
    cut = clip_cov_candidates(logp, b, lb, ub)
    out = compare("clip_cov", logp, b, ref_clip_cov(cut), clip_ratio=1.0, cov_lb=lb, cov_ub=ub)
    assert out.metrics["cov_clip_frac"] == pytest.approx(len(cut) / len(valid_tokens()))
    if bounds == (0.0, 5.0) and adv[0] != adv[1]:
        assert cut  # the test exercises the cut


@pytest.mark.parametrize("seed", range(5))
def test_clip_cov_random_draw_cuts_n_candidates(seed):
    logp, b = make_batch(scale=0.4, seed=25)
    cands = clip_cov_candidates(logp, b, -5.0, 5.0)
    n_cut = max(int(0.25 * len(valid_tokens())), 1)
    assert len(cands) > n_cut
    torch.manual_seed(seed)
    out = get_method("clip_cov")(b, clip_ratio=0.25, cov_lb=-5.0, cov_ub=5.0)
    zero = {(i, t) for i, t in valid_tokens() if out.loss_matrix[i, t].item() == 0.0
            and ppo_token(torch.exp(logp[i, t].detach() - val(b.old_logp, i, t)), val(b.advantages, i, t),
                          0.0, 2.0)[0].item() != 0.0}
    assert len(zero) == n_cut and zero <= cands
    (g,) = torch.autograd.grad(out.loss, logp)
    ref = reduce(ref_clip_cov(zero)(logp, b), out.agg)
    (g_ref,) = torch.autograd.grad(ref, logp)
    assert out.loss.item() == pytest.approx(ref.item(), rel=1e-12) and torch.allclose(g, g_ref, rtol=1e-12)


def test_clip_cov_defaults_cut_at_least_one_candidate():
    logp, b = make_batch(scale=0.4, seed=25, adv=(3.0, -3.0, 2.0))
    cands = clip_cov_candidates(logp, b, defaults("clip_cov").cov_lb, defaults("clip_cov").cov_ub)
    out = get_method("clip_cov")(b)
    assert out.metrics["cov_clip_frac"] * len(valid_tokens()) == pytest.approx(min(1, len(cands)))


@pytest.mark.parametrize("adv", ADVS)
@pytest.mark.parametrize("kw", [{}, {"kl_ratio": 0.3, "kl_coef": 0.5}, {"kl_ratio": 1.0}])
def test_kl_cov_value_and_grad(adv, kw):
    logp, b = make_batch(scale=0.4, seed=26, adv=adv)
    a = get_method("kl_cov").make_args(**kw)
    out = compare("kl_cov", logp, b, ref_kl_cov(a.kl_ratio, a.kl_coef), **kw)
    assert out.metrics["kl_cov_frac"] * len(valid_tokens()) == pytest.approx(max(1, int(9 * a.kl_ratio)))


@pytest.mark.parametrize("adv", ADVS + [(2.0, 1.0, -3.0)])
@pytest.mark.parametrize("kw", [{}, {"target_pos_share": 0.9}, {"target_pos_share": 0.99, "dual_clip_c": None},
                                {"target_pos_share": 0.95, "low_step": 0.0, "high_step": 0.25}])
@pytest.mark.parametrize("scale", [0.4, 0.9])
def test_bapo_value_and_grad(adv, kw, scale):
    logp, b = make_batch(scale=scale, seed=27, adv=adv)
    out = compare("bapo", logp, b, ref_bapo(**kw), **kw)
    lo, hi, rho = bapo_bounds(logp, b, get_method("bapo").make_args(**kw))
    assert (out.metrics["clip_low"], out.metrics["clip_high"]) == pytest.approx((lo, hi))
    assert out.metrics["pos_share"] == pytest.approx(rho, rel=1e-12)


def test_bapo_search_moves_both_bounds_and_only_raises_the_share():
    # four one-token sequences: A = -1 at r = 0.7 and 1.0, A = +1 at r = 1.0 and 1.45 (no dual clip)
    r = torch.tensor([0.7, 1.0, 1.0, 1.45], dtype=torch.float64)
    logp = torch.full((4, 1), -1.0, dtype=torch.float64, requires_grad=True)
    b = PolicyBatch(logp=logp, old_logp=-1.0 - torch.log(r)[:, None], behav_logp=logp.detach(),
                    advantages=torch.tensor([-1.0, -1.0, 1.0, 1.0], dtype=torch.float64), mask=torch.ones(4, 1))
    m = get_method("bapo")(b, target_pos_share=0.7, dual_clip_c=None).metrics
    # start [0.6, 1.2]: 1 / (1 + 1.7); c_low to 0.9 drops r = 0.7: 1 / 2; c_high to 1.5 admits 1.45: 2.45 / 3.45
    assert m["pos_share_start"] == pytest.approx(1 / 2.7)
    assert m["clip_low"] == pytest.approx(0.9) and m["clip_high"] == pytest.approx(1.5)
    assert m["pos_share"] == pytest.approx(2.45 / 3.45)
    (g,) = torch.autograd.grad(get_method("bapo")(b, target_pos_share=0.7, dual_clip_c=None).loss, logp)
    assert torch.allclose(g, torch.tensor([[0.0], [1.0], [-1.0], [-1.45]], dtype=torch.float64) / 4)
    logp2, b2 = make_batch(scale=0.9, seed=27, adv=(2.0, 1.0, -3.0))
    shares = [bapo_bounds(logp2, b2, get_method("bapo").make_args(target_pos_share=s))[2] for s in (0.1, 0.5, 0.8, 1.0)]
    assert shares == sorted(shares)  # a higher target never ends at a lower share: each step can only raise it


@pytest.mark.parametrize("adv", ADVS)
@pytest.mark.parametrize("kw", [{}, {"eps_low": 0.1, "eps_high": 0.05, "dual_clip_c": 1.3}])
def test_aspo_value_and_grad(adv, kw):
    logp, b = make_batch(scale=0.5, seed=28, adv=adv)
    a = get_method("aspo").make_args(**kw)
    out = compare("aspo", logp, b, ref_aspo(a.eps_low, a.eps_high, a.dual_clip_c), **kw)
    if kw:
        assert out.metrics["clip_frac"] > 0 and out.metrics["dual_clip_frac"] > 0


def test_aspo_flips_the_positive_weight():
    # a positive token whose probability doubled within the band gets weight 1/r, a negative one r
    logp = torch.tensor([[-1.0], [-1.0]], dtype=torch.float64, requires_grad=True)
    b = PolicyBatch(logp=logp, old_logp=torch.tensor([[-1.1], [-1.1]], dtype=torch.float64), behav_logp=logp.detach(),
                    advantages=torch.tensor([1.0, -1.0], dtype=torch.float64), mask=torch.ones(2, 1))
    (g,) = torch.autograd.grad(get_method("aspo")(b).loss, logp)
    r = math.exp(0.1)
    assert g[0, 0].item() == pytest.approx(-1 / r / 2) and g[1, 0].item() == pytest.approx(r / 2)


@pytest.mark.parametrize("adv", ADVS)
@pytest.mark.parametrize("eps", [None, (0.05, 0.1)])
def test_luspo_equals_trl_sequence_form(adv, eps):
    """TRL's luspo: sequence ratio s_i = exp(mean_t log r), loss mean_i T_i * max(-A s_i, -A clip(s_i))."""
    logp, b = make_batch(scale=0.3, seed=29, adv=adv)
    lo, hi = eps or (defaults("luspo").eps_low, defaults("luspo").eps_high)
    out = get_method("luspo")(b, **({} if eps is None else {"eps_low": lo, "eps_high": hi}))
    (g,) = torch.autograd.grad(out.loss, logp)
    total = 0.0
    for i in range(B):
        toks = [t for t in range(T) if on(i, t)]
        s = torch.exp(sum(logp[i, t] - val(b.old_logp, i, t) for t in toks) / len(toks))
        A = adv[i]
        l1, l2 = -A * s, -A * clip(s.item(), 1 - lo, 1 + hi)
        total = total + len(toks) * (l1 if l1.item() >= l2 else s * 0 + l2)
    total = total / B
    (g_ref,) = torch.autograd.grad(total, logp)
    assert out.agg == "seq-mean-token-sum"
    assert out.loss.item() == pytest.approx(total.item(), rel=1e-10)
    assert torch.allclose(g, g_ref, rtol=1e-10, atol=1e-14)


def test_luspo_is_gspo_summed_over_tokens():
    logp, b = make_batch(scale=0.3, seed=29)
    a = get_method("luspo")(b)
    g = get_method("gspo")(b, agg="seq-mean-token-sum", eps_low=2e-3, eps_high=2.5e-3)
    assert torch.equal(a.loss_matrix, g.loss_matrix) and a.loss.item() == g.loss.item()


@pytest.mark.parametrize("adv", ADVS)
@pytest.mark.parametrize("kw", [{}, {"weight_cap": None}, {"weight_cap": 1.05, "dual_clip_c": 1.5, "eps_high": 0.1},
                                {"alpha": 0.5}, {"alpha": 0.0, "weight_cap": None}, {"alpha": 1.0}])
def test_decoupled_ppo_value_and_grad(adv, kw):
    logp, b = make_batch(scale=0.4, seed=30, adv=adv)
    a = get_method("decoupled_ppo").make_args(**kw)
    compare("decoupled_ppo", logp, b, ref_decoupled(a.eps_low, a.eps_high, a.weight_cap, a.alpha, a.dual_clip_c), **kw)


@pytest.mark.parametrize("seed", [30, 31])
def test_decoupled_ppo_is_token_clip_times_the_behaviour_weight(seed):
    """sg(pi_old/mu) * clipPPO(pi/pi_old) == token_clip(eps 0.2/0.2, no dual clip) wrapped by token_tis with a
    cap no weight reaches: the documented combination of existing settings."""
    logp, b = make_batch(scale=0.4, seed=seed)
    ours = get_method("decoupled_ppo")(b, weight_cap=None)
    combo = get_method("token_clip")(b, eps_high=0.2, dual_clip_c=None, correction="token_tis",
                                     correction_cfg={"cap": 1e30})
    (g1,) = torch.autograd.grad(ours.loss, logp)
    (g2,) = torch.autograd.grad(combo.loss, logp)
    assert ours.loss.item() == pytest.approx(combo.loss.item(), rel=1e-12)
    assert torch.allclose(g1, g2, rtol=1e-12, atol=1e-15)


def test_a3po_alpha_limits():
    """alpha = 0: pi_prox = mu, so decoupled PPO is token_clip against mu; alpha = 1: u = 1 (no clip) and the
    weight is pi/mu, token-level IS REINFORCE."""
    logp, b = make_batch(scale=0.4, seed=31)
    out0 = get_method("decoupled_ppo")(b, alpha=0.0)
    vs_mu = PolicyBatch(logp=logp, old_logp=b.behav_logp, behav_logp=b.behav_logp, advantages=b.advantages,
                        mask=b.mask)
    ref0 = get_method("token_clip")(vs_mu, eps_high=0.2, dual_clip_c=None)
    assert torch.allclose(torch.autograd.grad(out0.loss, logp)[0], torch.autograd.grad(ref0.loss, logp)[0], rtol=1e-12)
    out1 = get_method("decoupled_ppo")(b, alpha=1.0, weight_cap=None)
    (g1,) = torch.autograd.grad(out1.loss, logp)
    w = torch.exp(logp.detach() - b.behav_logp)
    expect = -w * b.advantages * b.mask / b.mask.sum()
    assert out1.metrics["clip_frac"] == 0.0 and torch.allclose(g1, expect, rtol=1e-12)


def test_decoupled_ppo_drops_tokens_over_the_weight_cap():
    logp, b = make_batch(scale=0.4, seed=30)
    ws = [math.exp(val(b.old_logp, i, t) - val(b.behav_logp, i, t)) for i, t in valid_tokens()]
    cap = sorted(ws)[len(ws) // 2]
    out = get_method("decoupled_ppo")(b, weight_cap=cap)
    assert out.metrics["weight_drop_frac"] == pytest.approx(sum(w > cap for w in ws) / len(ws))
    assert all(out.loss_matrix[i, t].item() == 0.0 for (i, t), w in zip(valid_tokens(), ws) if w > cap)


# ----------------------------------------------------------------------------- on-policy limits
def on_policy_batch(adv):
    logp, b = make_batch(scale=0.0, seed=5, adv=adv)
    b.old_logp = logp.detach().clone()
    b.behav_logp = logp.detach().clone()
    return logp, b


@pytest.mark.parametrize("name", [n for n in NEW if n != "clip_cov"])
@pytest.mark.parametrize("adv", ADVS)
def test_on_policy_limit_is_the_plain_policy_gradient(name, adv):
    logp, b = on_policy_batch(adv)
    out = get_method(name)(b)
    (g,) = torch.autograd.grad(out.loss, logp)
    pg = get_method("on_policy")(b, agg=out.agg)  # luspo: the plain gradient summed over each sequence's tokens
    (g_pg,) = torch.autograd.grad(pg.loss, logp)
    assert torch.allclose(g, g_pg, rtol=1e-12, atol=0), name
    for key in ("mask_frac", "clip_frac", "weight_drop_frac", "dual_clip_frac"):
        assert out.metrics.get(key, 0.0) == 0.0, (name, key)


@pytest.mark.parametrize("adv", ADVS)
def test_clip_cov_on_policy_is_the_policy_gradient_without_the_cut_tokens(adv):
    logp, b = on_policy_batch(adv)
    cut = clip_cov_candidates(logp, b, 0.0, 5.0)
    out = get_method("clip_cov")(b, clip_ratio=1.0, cov_lb=0.0, cov_ub=5.0)
    (g,) = torch.autograd.grad(out.loss, logp)
    n = len(valid_tokens())
    expect = torch.tensor([[0.0 if (i, t) in cut or not on(i, t) else -adv[i] / n for t in range(T)] for i in range(B)],
                          dtype=torch.float64)
    assert torch.allclose(g, expect, rtol=1e-12, atol=0)
    # with no token in the covariance band it is exactly the plain policy gradient
    (g0,) = torch.autograd.grad(get_method("clip_cov")(b, cov_lb=1e9, cov_ub=2e9).loss, logp)
    (g_pg,) = torch.autograd.grad(get_method("on_policy")(b).loss, logp)
    assert torch.allclose(g0, g_pg, rtol=1e-12, atol=0)


# ----------------------------------------------------------------------------- extremes
@pytest.mark.parametrize("name", NEW)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("which", ["old", "behav", "both"])
@pytest.mark.parametrize("extreme", [50.0, -50.0, 100.0])
def test_extreme_log_ratios_stay_finite(name, dtype, which, extreme):
    logp, b = make_batch()
    lp = logp.detach().to(dtype).requires_grad_(True)
    old = lp.detach() - (extreme if which in ("old", "both") else 0.0)
    behav = lp.detach() - (extreme if which in ("behav", "both") else 0.0)
    b2 = PolicyBatch(logp=lp, old_logp=old, behav_logp=behav, advantages=b.advantages.to(dtype), mask=b.mask.to(dtype))
    out = get_method(name)(b2)
    (g,) = torch.autograd.grad(out.loss, lp)
    assert torch.isfinite(out.loss) and torch.isfinite(g).all(), (name, which, extreme)
    assert all(math.isfinite(v) for v in out.metrics.values()), out.metrics


def one_token(log_p, log_mu, adv, log_old=None):
    logp = torch.tensor([[log_p]], dtype=torch.float64, requires_grad=True)
    b = PolicyBatch(logp=logp, old_logp=torch.tensor([[log_mu if log_old is None else log_old]], dtype=torch.float64),
                    behav_logp=torch.tensor([[log_mu]], dtype=torch.float64),
                    advantages=torch.tensor([adv], dtype=torch.float64), mask=torch.ones(1, 1))
    return logp, b


@pytest.mark.parametrize("name", ["dppo_tv", "dppo_kl"])
def test_dppo_masks_at_extreme_ratios(name):
    half = math.log(0.5)
    # pi rose from ~0 to 0.5: masked for A > 0, kept (weight capped at C) for A < 0
    for adv, masked in ((1.0, True), (-1.0, False)):
        logp, b = one_token(half, half - 50.0, adv)
        out = get_method(name)(b)
        (g,) = torch.autograd.grad(out.loss, logp)
        assert out.metrics["mask_frac"] == float(masked)
        assert g.item() == pytest.approx(0.0 if masked else -adv * defaults(name).is_cap)
    # pi fell from 1 to 0.5: masked for A < 0, kept (weight ~ e^-20) for A > 0
    for adv, masked in ((1.0, False), (-1.0, True)):
        logp, b = one_token(half, half + 50.0, adv)
        out = get_method(name)(b)
        (g,) = torch.autograd.grad(out.loss, logp)
        assert out.metrics["mask_frac"] == float(masked) and math.isfinite(g.item())
        assert abs(g.item()) < 1e-8


def test_ipo_mask_at_extreme_ratio_keeps_the_penalty():
    logp, b = one_token(math.log(0.5), math.log(0.5) - 50.0, 1.0)
    out = get_method("ipo")(b)
    (g,) = torch.autograd.grad(out.loss, logp)
    assert out.metrics["mask_frac"] == 1.0
    assert g.item() == pytest.approx(2 * defaults("ipo").tau * 50.0)


def test_aspo_and_bapo_at_extreme_ratios():
    for adv, weight in ((1.0, 0.0), (-1.0, defaults("aspo").dual_clip_c)):
        logp, b = one_token(-1.0, -1.0, adv, log_old=-51.0)  # r = e^50 (clamped to e^20)
        (g,) = torch.autograd.grad(get_method("aspo")(b).loss, logp)
        assert g.item() == pytest.approx(-adv * weight)
    for adv, weight in ((1.0, defaults("aspo").dual_clip_c), (-1.0, 0.0)):
        logp, b = one_token(-1.0, -1.0, adv, log_old=49.0)  # r = e^-50
        (g,) = torch.autograd.grad(get_method("aspo")(b).loss, logp)
        assert g.item() == pytest.approx(-adv * weight)
    logp, b = one_token(-1.0, -1.0, -1.0, log_old=-51.0)
    out = get_method("bapo")(b)
    assert out.metrics["dual_clip_frac"] == 1.0 and out.loss.item() == pytest.approx(defaults("bapo").dual_clip_c)


# ----------------------------------------------------------------------------- arguments
@pytest.mark.parametrize("name,kw,msg", [
    ("dppo_tv", {"delta_low": 0.0}, "dppo_tv: delta_low=0.0 must be in (0, 1]"),
    ("dppo_tv", {"delta_high": 1.5}, "dppo_tv: delta_high=1.5 must be in (0, 1]"),
    ("dppo_tv", {"is_cap": 0.5}, "dppo_tv: is_cap=0.5 must be in [1, inf) or null"),
    ("dppo_kl", {"delta_high": -1.0}, "dppo_kl: delta_high=-1.0 must be in (0, inf)"),
    ("dppo_kl", {"kl_coef": -0.1}, "dppo_kl: kl_coef=-0.1 must be in [0, inf)"),
    ("ipo", {"tau": -1.0}, "ipo: tau=-1.0 must be in [0, inf)"),
    ("ipo", {"mask_threshold": 0.0}, "ipo: mask_threshold=0.0 must be in (0, 1] or null"),
    ("ipo", {"pg": "ppo"}, "ipo: pg='ppo' is not one of ratio, logp"),
    ("clip_cov", {"clip_ratio": 0.0}, "clip_cov: clip_ratio=0.0 must be in (0, 1]"),
    ("clip_cov", {"cov_lb": 5.0, "cov_ub": 1.0}, "clip_cov: cov_ub=1.0 must be in (5, inf)"),
    ("clip_cov", {"eps_low": 1.5}, "clip_cov: eps_low=1.5 must be in [0, 1]"),
    ("kl_cov", {"kl_ratio": 2.0}, "kl_cov: kl_ratio=2.0 must be in (0, 1]"),
    ("kl_cov", {"kl_coef": -1.0}, "kl_cov: kl_coef=-1.0 must be in [0, inf)"),
    ("bapo", {"target_pos_share": 1.5}, "bapo: target_pos_share=1.5 must be in [0, 1]"),
    ("bapo", {"low_max": 0.5}, "bapo: low_max=0.5 must be in [0.6, 1]"),
    ("bapo", {"high_start": 0.9}, "bapo: high_start=0.9 must be in [1, inf)"),
    ("bapo", {"high_step": -0.1}, "bapo: high_step=-0.1 must be in [0, inf)"),
    ("bapo", {"dual_clip_c": 1.0}, "bapo: dual_clip_c=1.0 must be in (1, inf) or null"),
    ("aspo", {"eps_low": 1.0}, "aspo: eps_low=1.0 must be in [0, 1)"),
    ("aspo", {"dual_clip_c": 0.5}, "aspo: dual_clip_c=0.5 must be in (1, inf)"),
    ("luspo", {"eps_low": 2.0}, "luspo: eps_low=2.0 must be in [0, 1]"),
    ("decoupled_ppo", {"alpha": 1.5}, "decoupled_ppo: alpha=1.5 must be in [0, 1] or null"),
    ("decoupled_ppo", {"weight_cap": 0.0}, "decoupled_ppo: weight_cap=0.0 must be in (0, inf) or null"),
    ("decoupled_ppo", {"eps_low": -0.2}, "decoupled_ppo: eps_low=-0.2 must be in [0, 1]"),
])
def test_bad_arguments_are_one_line_errors_naming_the_range(name, kw, msg):
    with pytest.raises(OffbenchError) as e:
        get_method(name).make_args(**kw)
    assert str(e.value) == msg and "\n" not in str(e.value)


def test_bad_argument_is_caught_by_the_config_before_any_work():
    with pytest.raises(OffbenchError, match=r"dppo_tv: delta_low=-0.1 must be in \(0, 1\]"):
        build_config(["method=dppo_tv", "method.delta_low=-0.1"])
    with pytest.raises(OffbenchError, match="ipo: pg='x' is not one of ratio, logp"):
        build_config(["method=ipo", "method.pg=x"])


@pytest.mark.parametrize("name", NEW)
def test_registration_fields(name):
    m = get_method(name)
    assert m.color and m.equation and "arXiv" in m.equation and m.doc
    assert "Sources:" in m.doc  # every docstring names its public sources
    assert "SCIENCE" not in m.doc


# ----------------------------------------------------------------------------- a short real run each
@pytest.mark.parametrize("name", NEW)
def test_trains_through_the_cli_with_lag_and_logs_its_diagnostics(tmp_path, name, capsys):
    """staleness 2 and an async lag of 1, so mu, pi_old and pi_theta all differ."""
    assert main(["run", f"method={name}", "staleness=2", "lag=1", *TINY, f"log.out_dir={tmp_path}", "name=r"]) == 0
    s = json.loads(open(tmp_path / "r" / "summary.json").read())
    assert s["status"] == "finished" and s["method"] == name and s["steps_done"] == 4
    metrics = pd.read_parquet(tmp_path / "r" / "metrics.parquet")
    train = set(metrics[metrics.split == "train"].metric)
    own = {"dppo_tv": "mask_frac", "dppo_kl": "mask_frac", "ipo": "mask_frac", "clip_cov": "cov_clip_frac",
           "kl_cov": "kl_cov_frac", "bapo": "clip_high", "aspo": "dual_clip_frac", "luspo": "clip_frac",
           "decoupled_ppo": "weight_drop_frac"}[name]
    assert own in train
    assert metrics[metrics.metric == "loss"].value.map(math.isfinite).all()


def test_listed_by_offbench_methods_and_run_help(capsys):
    assert main(["methods"]) == 0
    table = capsys.readouterr().out
    try:
        main(["run", "--help"])
    except SystemExit:
        pass
    help_text = capsys.readouterr().out
    for name in NEW:
        assert f"| `{name}` |" in table, name
        for f in get_method(name).args.__dataclass_fields__:
            assert f"method.{f}=" in help_text, (name, f)
