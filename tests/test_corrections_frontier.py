"""The frontier rollout corrections (m2po, icepop, opsm, trm, sn_tis) against independent per-token
loops: plain Python over floats, no tensors and none of the vectorised code. Then their limits: on-policy
(nothing masked, weights 1), extreme log-ratios (+-50), everything masked, bad arguments."""

import math
import random

import pytest
import torch

from offpolicy_bench import OffbenchError, PolicyBatch, get_method
from offpolicy_bench.config import build_config
from offpolicy_bench.plugins import load_builtin

load_builtin()
NEW = ["m2po", "icepop", "opsm", "trm", "sn_tis"]
LENS = [5, 3, 4, 1, 5, 2]
B, T = len(LENS), 5


def make(seed=0, scale_engine=0.3, scale_current=0.6, adv=None, lens=LENS):
    """A batch with random log mu, an engine gap (pi_old vs mu) and a staleness gap (pi_theta vs pi_old)."""
    rng = random.Random(seed)
    mask = [[1.0 if t < n else 0.0 for t in range(T)] for n in lens]
    behav = [[-rng.uniform(0.1, 3.0) for _ in range(T)] for _ in lens]
    old = [[behav[i][t] + rng.gauss(0, scale_engine) for t in range(T)] for i in range(len(lens))]
    cur = [[old[i][t] + rng.gauss(0, scale_current) for t in range(T)] for i in range(len(lens))]
    adv = adv if adv is not None else [rng.choice([-1.0, 1.0]) * rng.uniform(0.2, 1.5) for _ in lens]
    return {"mask": mask, "behav": behav, "old": old, "cur": cur, "adv": adv}


def batch_of(d):
    logp = torch.tensor(d["cur"], dtype=torch.float64, requires_grad=True)
    b = PolicyBatch(logp=logp, old_logp=torch.tensor(d["old"], dtype=torch.float64),
                    behav_logp=torch.tensor(d["behav"], dtype=torch.float64),
                    advantages=torch.tensor(d["adv"], dtype=torch.float64),
                    mask=torch.tensor(d["mask"], dtype=torch.float64))
    return logp, b


def tokens(d):
    return [(i, t) for i in range(len(d["mask"])) for t in range(T) if d["mask"][i][t]]


def ratio_of(d, which, i, t):
    pi = d["cur"] if which == "current" else d["old"]
    return pi[i][t] - d["behav"][i][t]


# ----------------------------------------------------------------------------- loop references
def ref_m2po(d, tau=0.04, ratio="current"):
    """Drop the largest (log r)^2 one at a time (first in row-major order on ties) until the mean is < tau."""
    kept = tokens(d)
    m2 = {(i, t): ratio_of(d, ratio, i, t) ** 2 for i, t in kept}
    while kept and sum(m2[k] for k in kept) / len(kept) >= tau:
        biggest = max(m2[k] for k in kept)
        kept.remove(next(k for k in kept if m2[k] == biggest))
    return {k: 1.0 for k in kept}, "keep"


def ref_icepop(d, low=0.5, high=5.0):
    w = {}
    for i, t in tokens(d):
        k = math.exp(d["old"][i][t] - d["behav"][i][t])
        w[(i, t)] = k if low <= k <= high else 0.0
    return w, "weight"


def ref_opsm(d, delta=1e-4, ratio="current"):
    w = {}
    for i, row in enumerate(d["mask"]):
        toks = [t for t in range(T) if row[t]]
        kl = sum(-ratio_of(d, ratio, i, t) for t in toks) / len(toks)
        for t in toks:
            w[(i, t)] = 0.0 if (d["adv"][i] < 0 and kl > delta) else 1.0
    return w, "weight"


def ref_trm(d, delta=2.5, estimator="k2", ratio="current"):
    keep = {}
    for i, row in enumerate(d["mask"]):
        toks = [t for t in range(T) if row[t]]
        worst = 0.0
        for t in toks:
            l = min(max(ratio_of(d, ratio, i, t), -20.0), 20.0)
            worst = max(worst, 0.5 * l * l if estimator == "k2" else math.exp(l) - 1.0 - l)
        if worst <= delta:
            keep.update({(i, t): 1.0 for t in toks})
    return keep, "keep"


def ref_sn_tis(d, cap=2.0, level="token"):
    if level == "token":
        raw = {(i, t): min(math.exp(d["old"][i][t] - d["behav"][i][t]), cap) for i, t in tokens(d)}
        mean = sum(raw.values()) / len(raw)
        return {k: v / mean for k, v in raw.items()}, "weight"
    seq = {}
    for i, row in enumerate(d["mask"]):
        toks = [t for t in range(T) if row[t]]
        if toks:
            seq[i] = min(math.exp(sum(d["old"][i][t] - d["behav"][i][t] for t in toks)), cap)
    mean = sum(seq.values()) / len(seq)
    return {(i, t): seq[i] / mean for i, t in tokens(d)}, "weight"


REFS = {"m2po": ref_m2po, "icepop": ref_icepop, "opsm": ref_opsm, "trm": ref_trm, "sn_tis": ref_sn_tis}


def expected_loss_and_grad(d, w, kind):
    """on_policy (L = -A log pi) with token-mean aggregation: a keep-type correction narrows the
    denominator to the kept tokens, a weight-type one keeps every token in it."""
    denom = len(w) if kind == "keep" else len(tokens(d))
    loss = sum(-d["adv"][i] * d["cur"][i][t] * v for (i, t), v in w.items()) / max(denom, 1)
    grad = [[0.0] * T for _ in d["mask"]]
    for (i, t), v in w.items():
        grad[i][t] = -d["adv"][i] * v / max(denom, 1)
    return loss, grad


CASES = [
    ("m2po", {}), ("m2po", {"tau": 0.3}), ("m2po", {"tau": 0.02, "ratio": "engine"}),
    ("icepop", {}), ("icepop", {"low": 0.8, "high": 1.2}),
    ("opsm", {}), ("opsm", {"delta": 0.05}), ("opsm", {"delta": 0.0, "ratio": "engine"}),
    ("trm", {}), ("trm", {"delta": 0.2}), ("trm", {"delta": 0.3, "estimator": "k3"}),
    ("trm", {"delta": 0.05, "estimator": "k3", "ratio": "engine"}),
    ("sn_tis", {}), ("sn_tis", {"cap": 1.1}), ("sn_tis", {"level": "sequence"}),
    ("sn_tis", {"level": "sequence", "cap": 1.05}),
]


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("name, cfg", CASES)
def test_value_and_gradient_match_the_loop(name, cfg, seed):
    d = make(seed, scale_engine=0.3 if name != "sn_tis" else 0.15)
    w, kind = REFS[name](d, **cfg)
    loss_ref, grad_ref = expected_loss_and_grad(d, w, kind)
    logp, b = batch_of(d)
    out = get_method("on_policy")(b, correction=name, correction_cfg=cfg)
    assert out.loss.item() == pytest.approx(loss_ref, rel=1e-10, abs=1e-12)
    (g,) = torch.autograd.grad(out.loss, logp)
    assert torch.allclose(g, torch.tensor(grad_ref, dtype=torch.float64), rtol=1e-9, atol=1e-12)


def test_the_cases_exercise_both_outcomes():
    """The reference cases above are not vacuous: each correction masks some tokens and keeps others
    (sn_tis: weights differ from 1) in at least one of them."""
    for name in NEW:
        seen_partial = False
        for n, cfg in CASES:
            if n != name:
                continue
            for seed in (0, 1, 2):
                w, kind = REFS[name](make(seed, scale_engine=0.3 if name != "sn_tis" else 0.15), **cfg)
                vals = [w.get(k, 0.0) for k in tokens(make(seed))]
                if name == "sn_tis":
                    seen_partial |= max(vals) - min(vals) > 0.05
                else:
                    seen_partial |= 0 < sum(v == 0.0 for v in vals) < len(vals)
        assert seen_partial, name


def test_m2po_mean_of_kept_is_below_tau_and_minimal():
    d = make(3)
    _, b = batch_of(d)
    out = get_method("on_policy")(b, correction="m2po", correction_cfg={"tau": 0.1})
    assert out.metrics["corr_m2_after"] < 0.1 <= out.metrics["corr_m2_before"]
    w, _ = ref_m2po(d, tau=0.1)
    assert out.metrics["corr_kept_token_frac"] == pytest.approx(len(w) / len(tokens(d)))


def test_m2po_ties_drop_in_token_order():
    d = make(4)
    toks = tokens(d)
    for i, t in toks:  # exact values: log r = 0 everywhere but on three tokens, where it is 1
        d["behav"][i][t] = d["cur"][i][t] = -1.0
    tied = [toks[3], toks[7], toks[11]]
    for i, t in tied:
        d["cur"][i][t] = 0.0
    logp, b = batch_of(d)
    # mean m2 = 3/20; tau 0.1: dropping one leaves 2/19 >= 0.1, dropping two leaves 1/18 < 0.1
    out = get_method("on_policy")(b, correction="m2po", correction_cfg={"tau": 0.1})
    (g,) = torch.autograd.grad(out.loss, logp)
    dropped = [k for k in toks if g[k] == 0]
    assert dropped == tied[:2] == sorted(ref_m2po(d, tau=0.1)[0].keys() ^ set(toks))
    out = get_method("on_policy")(b, correction="m2po", correction_cfg={"tau": 0.15})
    assert out.metrics["corr_kept_token_frac"] == pytest.approx(19 / 20)  # 3/20 is not < 0.15: drop one


def test_opsm_keeps_positive_advantages_whatever_the_drift():
    d = make(5, adv=[1.0, 0.5, 2.0, 0.1, 1.0, 0.3], scale_current=3.0)
    _, b = batch_of(d)
    out = get_method("on_policy")(b, correction="opsm")
    assert out.metrics["corr_dropped_seq_frac"] == 0.0


def test_trm_drops_a_sequence_for_a_single_bad_token():
    d = make(6, scale_engine=0.0, scale_current=0.0)
    d["cur"][2][1] = d["behav"][2][1] + 3.0  # k2 = 4.5 > 2.5 on one token of sequence 2
    logp, b = batch_of(d)
    out = get_method("on_policy")(b, correction="trm")
    (g,) = torch.autograd.grad(out.loss, logp)
    assert (g[2] == 0).all() and (g[0] != 0).any()
    assert out.metrics["corr_dropped_seq_frac"] == pytest.approx(1 / B)


@pytest.mark.parametrize("level", ["token", "sequence"])
def test_sn_tis_weights_average_one(level):
    d = make(7, scale_engine=0.2)
    _, b = batch_of(d)
    from offpolicy_bench.correction import get_correction

    c = get_correction("sn_tis")
    out = c.fn(b, c.make_args({"level": level}))
    m = b.mask
    if level == "token":
        assert ((out.weights * m).sum() / m.sum()).item() == pytest.approx(1.0, rel=1e-12)
    else:
        per_seq = [(out.weights[i] * m[i]).sum().item() / m[i].sum().item() for i in range(B)]
        assert sum(per_seq) / B == pytest.approx(1.0, rel=1e-12)


# ----------------------------------------------------------------------------- limits
@pytest.mark.parametrize("name", NEW)
@pytest.mark.parametrize("method", ["on_policy", "token_clip", "vespo"])
def test_on_policy_limit_masks_nothing_and_weights_one(name, method):
    d = make(8, scale_engine=0.0, scale_current=0.0)  # pi_theta = pi_old = mu
    _, b = batch_of(d)
    base = get_method(method)(b)
    out = get_method(method)(b, correction=name)
    assert out.loss.item() == pytest.approx(base.loss.item(), rel=1e-12, abs=1e-15)
    assert out.metrics.get("corr_kept_token_frac", 1.0) == 1.0
    for key in ("corr_masked_frac", "corr_dropped_seq_frac"):
        assert out.metrics.get(key, 0.0) == 0.0, key


@pytest.mark.parametrize("name, cfg", [(n, {}) for n in NEW] + [("trm", {"estimator": "k3"}),
                                                               ("sn_tis", {"level": "sequence"}),
                                                               ("m2po", {"ratio": "engine"})])
@pytest.mark.parametrize("sign", [50.0, -50.0])
def test_extreme_log_ratios_stay_finite(name, cfg, sign):
    d = make(9)
    for i, t in tokens(d)[::2]:  # every other token: log(pi_old/mu) and log(pi_theta/mu) of +-50
        d["old"][i][t] = d["behav"][i][t] + sign
        d["cur"][i][t] = d["behav"][i][t] + sign
    logp, b = batch_of(d)
    for method in ("on_policy", "token_clip", "vespo"):
        out = get_method(method)(b, correction=name, correction_cfg=cfg)
        (g,) = torch.autograd.grad(out.loss, logp)
        assert torch.isfinite(out.loss) and torch.isfinite(g).all(), (method, name)
        corr = {k: v for k, v in out.metrics.items() if k.startswith("corr_")}  # the method's own are its business
        assert corr and all(math.isfinite(v) for v in corr.values()), corr


@pytest.mark.parametrize("name, cfg", [
    ("m2po", {"tau": 1e-9}),  # every token has log r != 0: all masked
    ("trm", {"delta": 1e-9}),
    ("opsm", {"delta": 0.0}),
    ("icepop", {"low": 0.999999, "high": 1.000001}),
])
def test_everything_masked_gives_a_zero_finite_loss(name, cfg):
    d = make(10, scale_engine=0.5, scale_current=0.5, adv=[-1.0] * B)
    for i, t in tokens(d):  # a positive log(mu/pi) everywhere, so OPSM's KL is > 0 on every sequence
        d["cur"][i][t] = d["behav"][i][t] - 0.3
        d["old"][i][t] = d["behav"][i][t] - 0.3
    logp, b = batch_of(d)
    out = get_method("on_policy")(b, correction=name, correction_cfg=cfg)
    (g,) = torch.autograd.grad(out.loss, logp)
    assert out.loss.item() == 0.0 and (g == 0).all()
    assert all(math.isfinite(v) for v in out.metrics.values()), out.metrics


@pytest.mark.parametrize("name", NEW)
def test_an_all_padding_batch_is_finite(name):
    d = make(11, lens=[0, 0, 0])
    logp, b = batch_of(d)
    out = get_method("token_clip")(b, correction=name)
    (g,) = torch.autograd.grad(out.loss, logp)
    assert out.loss.item() == 0.0 and torch.isfinite(g).all()
    assert all(math.isfinite(v) for v in out.metrics.values()), out.metrics


def test_padding_values_never_leak():
    d = make(12)
    logp, b = batch_of(d)
    with torch.no_grad():  # garbage (even -inf) in the padding of every log-prob tensor
        for t in (b.behav_logp, b.old_logp):
            t[b.mask == 0] = -float("inf")
        logp[b.mask == 0] = float("nan")
    for name in NEW:
        out = get_method("on_policy")(b, correction=name)
        ref = get_method("on_policy")(batch_of(d)[1], correction=name)
        assert out.metrics == pytest.approx(ref.metrics), name


@pytest.mark.parametrize("name, cfg, message", [
    ("m2po", {"tau": 0.0}, "must be > 0"),
    ("m2po", {"tau": -1.0}, "must be > 0"),
    ("m2po", {"ratio": "old"}, "choose engine or current"),
    ("icepop", {"low": 0.0}, "0 < low <= 1 <= high"),
    ("icepop", {"low": 1.5}, "0 < low <= 1 <= high"),
    ("icepop", {"high": 0.9}, "0 < low <= 1 <= high"),
    ("opsm", {"delta": -0.1}, "must be >= 0"),
    ("opsm", {"ratio": "mu"}, "choose engine or current"),
    ("trm", {"delta": 0.0}, "must be > 0"),
    ("trm", {"estimator": "k1"}, "choose k2 or k3"),
    ("trm", {"ratio": "x"}, "choose engine or current"),
    ("sn_tis", {"cap": 0.0}, "must be > 0"),
    ("sn_tis", {"level": "seq"}, "use token or sequence"),
])
def test_bad_arguments_are_one_line_errors(name, cfg, message):
    _, b = batch_of(make(13))
    with pytest.raises(OffbenchError, match=message) as e:
        get_method("on_policy")(b, correction=name, correction_cfg=cfg)
    assert "\n" not in str(e.value)
    overrides = [f"correction={name}"] + [f"correction.{k}={v}" for k, v in cfg.items()]
    with pytest.raises(OffbenchError, match=message):  # refused when the config is built, before any work
        build_config(overrides)


def test_diagnostics_are_logged():
    _, b = batch_of(make(14))
    want = {"m2po": ["corr_m2_before", "corr_m2_after", "corr_masked_frac", "corr_kept_token_frac"],
            "icepop": ["corr_w_mean", "corr_masked_frac", "corr_clamp_frac"],
            "opsm": ["corr_dropped_seq_frac", "corr_seq_kl_mean"],
            "trm": ["corr_dropped_seq_frac", "corr_k_max_mean", "corr_kept_token_frac"],
            "sn_tis": ["corr_norm_factor", "corr_truncated_frac", "corr_clamp_frac"]}
    for name, keys in want.items():
        out = get_method("on_policy")(b, correction=name)
        assert set(keys) <= set(out.metrics), (name, sorted(out.metrics))


@pytest.mark.parametrize("name", NEW)
def test_each_trains_through_the_cli(tmp_path, name):
    import json

    import pandas as pd

    from conftest import TINY
    from offpolicy_bench.cli import main

    assert main(["run", "method=token_clip", f"correction={name}", "staleness=2", *TINY,
                 f"log.out_dir={tmp_path}", "name=r"]) == 0
    s = json.loads(open(tmp_path / "r" / "summary.json").read())
    assert s["status"] == "finished" and s["correction"] == name
    m = pd.read_parquet(tmp_path / "r" / "metrics.parquet")
    corr = m[m.metric.str.startswith("corr_")]
    assert len(corr) and corr.value.map(math.isfinite).all()
