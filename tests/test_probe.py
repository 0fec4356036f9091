"""`offbench probe`: its statistics on a policy whose gradient is known exactly, and the command.

The exact case: a policy over sequences of T tokens from a vocabulary of V, each position an
independent softmax of its own logits theta[t] (V^T sequences, enumerable). With a fixed baseline b,
E_pi[(R - b) grad log pi(y)] = grad E_pi[R] exactly, and with every sequence T tokens long the
token-mean loss divides it by T: the reference is -grad J / T, computed by enumeration. mu = theta_0,
pi = theta_0 + gap * step * d for a fixed direction d (a policy `gap` steps newer)."""

import itertools
import json
import math

import pandas as pd
import pytest
import torch

from offpolicy_bench.losses import PolicyBatch, aggregate
from offpolicy_bench.method import METHODS, get_method
from offpolicy_bench.plugins import load_builtin
from offpolicy_bench.probe import _Moments, estimator_stats

from conftest import TINY, offbench

V, T, B = 3, 4, 16
STEP = 0.25


def _setup(seed=0):
    g = torch.Generator().manual_seed(seed)
    theta_mu = 0.5 * torch.randn(T, V, generator=g, dtype=torch.float64)
    d = torch.randn(T, V, generator=g, dtype=torch.float64)
    return theta_mu, d / d.norm()


def reward(y):  # a reward that depends on every token: at least two zeros
    return float((y == 0).sum(-1) >= 2) if y.dim() == 1 else ((y == 0).sum(-1) >= 2).double()


def exact_grad_over_T(theta):
    """The expected gradient of the token-mean loss, -grad_theta E_pi[R] / T (a loss is minimised),
    by enumerating all V^T sequences; and E_pi[R]."""
    th = theta.clone().requires_grad_(True)
    lp = torch.log_softmax(th, -1)
    j = 0.0
    for y in itertools.product(range(V), repeat=T):
        y = torch.tensor(y)
        j = j + torch.exp(lp[torch.arange(T), y].sum()) * reward(y)
    (g,) = torch.autograd.grad(j, th)
    return -g.reshape(-1) / T, j.item()


def expected_reward(theta):
    return exact_grad_over_T(theta)[1]


def sample(theta, n, gen):
    p = torch.softmax(theta, -1)
    return torch.stack([torch.multinomial(p[t], n, replacement=True, generator=gen) for t in range(T)], 1)


def method_grad(name, theta_pi, theta_mu, y, baseline, agg=None, **overrides):
    th = theta_pi.clone().requires_grad_(True)
    logp = torch.log_softmax(th, -1)[torch.arange(T), y]  # [B, T]
    mu = torch.log_softmax(theta_mu, -1)[torch.arange(T), y]
    adv = reward(y) - baseline
    batch = PolicyBatch(logp=logp, old_logp=mu, behav_logp=mu, advantages=adv, mask=torch.ones_like(logp))
    out = get_method(name)(batch, agg=agg, **overrides)
    (g,) = torch.autograd.grad(out.loss, th)
    return g.reshape(-1), logp, adv, out


def estimate(name, gap, n_batches, seed=1):
    theta_mu, d = _setup()
    theta_pi = theta_mu + gap * STEP * d
    b = expected_reward(theta_mu)
    gen = torch.Generator().manual_seed(seed)
    m = _Moments()
    for _ in range(n_batches):
        m.add(method_grad(name, theta_pi, theta_mu, sample(theta_mu, B, gen), b)[0])
    ref, _ = exact_grad_over_T(theta_pi)
    return estimator_stats(m, ref)


def test_moments_match_numpy_covariance():
    g = torch.Generator().manual_seed(0)
    xs = torch.randn(50, 7, generator=g, dtype=torch.float64) * torch.arange(1, 8) + 3
    m = _Moments()
    for x in xs:
        m.add(x)
    assert torch.allclose(m.mean, xs.mean(0))
    assert m.trace_cov == pytest.approx(torch.cov(xs.T).trace().item(), rel=1e-10)


def test_naive_is_is_unbiased_and_its_cosine_tends_to_one():
    few, many = estimate("naive_is", gap=4, n_batches=50), estimate("naive_is", gap=4, n_batches=2000)
    assert many["cosine_to_onpolicy"] > 0.97
    assert many["cosine_to_onpolicy"] > few["cosine_to_onpolicy"]
    # what is left of |mean - reference| is sampling noise: within about two noise floors
    assert many["relative_bias_raw"] < 2.5 * many["bias_noise_floor"]
    assert many["bias_noise_floor"] < few["bias_noise_floor"] / 5


def test_token_clipping_is_biased_once_ratios_leave_the_band():
    near, far = estimate("token_clip", gap=0, n_batches=1500), estimate("token_clip", gap=6, n_batches=1500)
    assert near["relative_bias_raw"] < 2.5 * near["bias_noise_floor"]
    assert far["relative_bias"] > 4 * far["bias_noise_floor"]  # resolved, not noise
    assert far["relative_bias"] > 0.2


def test_vespo_variance_below_naive_is_at_large_gaps():
    v, n = estimate("vespo", gap=8, n_batches=800), estimate("naive_is", gap=8, n_batches=800)
    assert v["variance_vs_reference"] < 0.5 * n["variance_vs_reference"]


def test_at_gap_zero_every_method_with_a_ratio_is_the_on_policy_gradient():
    load_builtin()
    theta_mu, _ = _setup()
    y = sample(theta_mu, B, torch.Generator().manual_seed(3))
    b = expected_reward(theta_mu)
    checked = []
    for name, m in METHODS.items():
        if m.ratio == "none":
            continue
        g, logp, adv, out = method_grad(name, theta_mu, theta_mu, y, b)
        th = theta_mu.clone().requires_grad_(True)
        lp = torch.log_softmax(th, -1)[torch.arange(T), y]
        a = adv[:, None].expand_as(lp)
        (ref,) = torch.autograd.grad(aggregate(-a * lp, torch.ones_like(lp), out.agg), th)
        assert torch.allclose(g, ref.reshape(-1), rtol=1e-9, atol=1e-12), name
        checked.append(name)
    assert {"naive_is", "vespo", "token_clip", "gspo", "sapo"} <= set(checked)


def test_estimator_stats_on_a_known_case():
    m = _Moments()
    for x in ([2.0, 0.0], [0.0, 2.0]):
        m.add(torch.tensor(x))
    s = estimator_stats(m, torch.tensor([1.0, 0.0]))
    assert s["cosine_to_onpolicy"] == pytest.approx(1 / math.sqrt(2))
    assert s["relative_bias_raw"] == pytest.approx(1.0)  # mean (1, 1) vs (1, 0)
    assert s["bias_noise_floor"] == pytest.approx(math.sqrt(4.0 / 2))  # tr Cov = 2 + 2, M = 2
    assert s["relative_bias"] == 0.0  # not resolved above the noise
    assert s["relative_variance"] == pytest.approx(4.0 / 2.0)
    assert s["variance_vs_reference"] == pytest.approx(4.0)
    assert s["relative_mse"] == pytest.approx(0.0 + 4.0)


# ---------------------------------------------------------------- the command
PROBE_TINY = [a for a in TINY if not a.startswith(("train.steps", "log."))]


# an untrained tiny model solves nothing: a plug-in task whose reward any policy earns half the time
PARITY_TASK = """
from offpolicy_bench.tasks_api import Grade, register_task
from offpolicy_bench.tasks.math.synthetic import Arithmetic


@register_task
class ParityLength(Arithmetic):
    name = "parity_len"

    def grade_batch(self, examples, completions):
        return [Grade(reward=float(len(c) % 2 == 0), correct=len(c) % 2 == 0, flexible=len(c) % 2 == 0)
                for c in completions]
"""


# a plug-in method is probed with no extra code: half the plain policy gradient
HALF_METHOD = """
from offpolicy_bench.method import register_method


@register_method("half_pg", default_agg="token-mean", ratio="none", level="token", equation="test")
def half_pg(batch, args):
    return -0.5 * batch.advantages * batch.logp, {}
"""


def test_probe_command_writes_table_and_figure(tmp_path):
    out = tmp_path / "p"
    (tmp_path / "parity_task.py").write_text(PARITY_TASK)
    (tmp_path / "half_pg.py").write_text(HALF_METHOD)
    r = offbench("probe", "method=[vespo,naive_is,token_clip,half_pg]", "version_gap=[0,2]", "batches=3",
                 "ref_batches=3", f"plugins=[{tmp_path / 'parity_task.py'},{tmp_path / 'half_pg.py'}]",
                 "task=parity_len", "optim.lr=0.01", *PROBE_TINY, f"out={out}")
    assert r.returncode == 0, r.stdout + r.stderr
    df = pd.read_parquet(out / "probe.parquet")
    assert len(df) == 4 * 2
    half = df[df.method == "half_pg"].set_index("version_gap")
    assert (half["grad_norm_ratio"] > 0).all()
    for col in ("method", "version_gap", "response_len", "cosine_to_onpolicy", "relative_bias",
                "relative_variance", "ess", "m_pos_Z", "m_pos_phi2_over_W2", "w2_mean"):
        assert col in df.columns, col
    g0 = df[(df.version_gap == 0) & (df.method != "half_pg")]
    # gap 0: pi = mu, every method computes the same gradient on the same mini-batches
    assert g0["cosine_to_onpolicy"].nunique() == 1 and (g0["ess"] == 1.0).all()
    g2 = df[(df.version_gap == 2) & (df.method != "half_pg")]
    assert (g2["ess"] < 1.0).all() and g2["cosine_to_onpolicy"].nunique() > 1
    assert (out / "probe.png").exists()
    assert "cosine_to_onpolicy" in r.stdout
    assert df.git_commit.nunique() == 1 and df.machine.map(lambda m: json.loads(m)["cpu_capability"]).nunique() == 1
    # at gap 0 the plug-in is the others' gradient halved: same direction, half the norm
    assert half.loc[0, "cosine_to_onpolicy"] == pytest.approx(g0["cosine_to_onpolicy"].iloc[0], rel=1e-6)
    assert half.loc[0, "grad_norm_ratio"] == pytest.approx(0.5 * g0["grad_norm_ratio"].iloc[0], rel=1e-6)


@pytest.mark.parametrize("args,fragment", [
    (["method=vespo", "version_gap=[0,-1]"], "version_gap=[0,-1]: each gap must be in [0, 1024]"),
    (["method=vespo", "version_gap=[a]"], "integers >= 0"),
    (["method=vespo", "batches=1"], "batches=1: an integer >= 2"),
    (["version_gap=[0,1]"], "probe needs method="),
    (["method=vespo"], "probe needs out=DIR"),
    (["method=vespo", "staleness=4"], "staleness= does not apply to probe"),
    (["method=[vespo,nosuch]"], "nosuch"),
])
def test_probe_bad_input_is_a_one_line_error_before_work(tmp_path, args, fragment):
    extra = [] if any(a.startswith("out=") for a in args) or fragment.startswith("probe needs out") else [f"out={tmp_path}/x"]
    r = offbench("probe", *args, *extra)
    assert r.returncode == 2, r.stdout + r.stderr
    err = r.stderr.strip()
    assert fragment in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "x").exists()  # no work started


def test_probe_runs_on_a_checkpoint_path(tmp_path):
    """model=PATH: a saved Hugging Face model dir is probed like the built-in models."""
    from offpolicy_bench.config import build_config
    from offpolicy_bench.models import build_model, char_tokenizer

    cfg = build_config(TINY)
    tok = char_tokenizer()
    build_model(cfg.model, len(tok), tok.pad_token_id, tok.eos_token_id, 0).save_pretrained(tmp_path / "ckpt")
    tok.save_pretrained(tmp_path / "ckpt")
    (tmp_path / "parity_task.py").write_text(PARITY_TASK)
    r = offbench("probe", "method=[naive_is,vespo]", "version_gap=[0,1]", "batches=2", "ref_batches=2",
                 f"plugins=[{tmp_path / 'parity_task.py'}]", "task=parity_len", f"model={tmp_path / 'ckpt'}",
                 "warmstart.steps=0", *[a for a in PROBE_TINY if not a.startswith("warmstart.steps")],
                 f"out={tmp_path / 'p'}")
    assert r.returncode == 0, r.stdout + r.stderr
    df = pd.read_parquet(tmp_path / "p" / "probe.parquet")
    assert len(df) == 4 and (df["model"] == str(tmp_path / "ckpt")).all()
