"""Sources of off-policyness: exact lag, exactly on-policy at N=1/k=0/fp32, measured mismatch."""

import pandas as pd
import pytest
import torch

from conftest import TINY
from offpolicy_bench.config import build_config
from offpolicy_bench.offpolicy import WeightRing
from offpolicy_bench.rollout.engines import HFEngine
from offpolicy_bench.trainer import train


def flat(model):
    return torch.cat([p.detach().flatten().float() for p in model.parameters()]).clone()


def run(tmp_path, *overrides):
    cfg = build_config([*TINY, f"log.out_dir={tmp_path}", "name=r", *overrides])
    train(cfg, log=lambda m: None)
    df = pd.read_parquet(tmp_path / "r" / "metrics.parquet")
    return df[df.split == "train"].pivot(index="step", columns="metric", values="value")


@pytest.mark.parametrize("lag, n", [(1, 1), (3, 2), (5, 2)])
def test_lag_samples_from_exactly_the_k_steps_old_weights(tmp_path, monkeypatch, lag, n):
    versions, sampled = {}, []
    store = WeightRing.maybe_store

    def record_store(self, step, model):  # called with the trainer's model after every optimizer step
        versions[step] = flat(model)
        return store(self, step, model)

    sample = HFEngine.sample

    def record_sample(self, *a, **kw):
        sampled.append((max(versions), flat(self.model)))
        return sample(self, *a, **kw)

    monkeypatch.setattr(WeightRing, "maybe_store", record_store)
    monkeypatch.setattr(HFEngine, "sample", record_sample)
    # weight decay moves the weights every step even when a tiny model earns no reward (A = 0)
    m = run(tmp_path, f"lag={lag}", f"staleness={n}", "train.steps=8", "optim.weight_decay=0.5")
    assert len(sampled) == 8 // n
    for now, weights in sampled:
        want = max(0, now - lag)
        assert torch.equal(weights, versions[want]), (now, want)
        if want != now:
            assert not torch.equal(weights, versions[now])  # and it really is not the current policy
    # the logged version gap is the real one: (steps since the sampling version), clamped start included
    gaps = m["version_gap"].tolist()
    expect = [s - 1 - max(0, (s - 1) // n * n - lag) for s in range(1, 9)]
    assert gaps == expect


def test_on_policy_fp32_every_ratio_is_exactly_one(tmp_path):
    m = run(tmp_path, "staleness=1", "lag=0", "method=token_clip")
    assert (m["abs_log_rho_mu"] == 0).all() and (m["abs_log_rho_old"] == 0).all()
    assert (m["kl_mu_pi"] == 0).all() and (m["log_w_max"] == 0).all() and (m["clip_frac"] == 0).all()
    assert (m["engine_gap_max_abs"] < 1e-4).all()  # the sampler's own numbers: summation order only


def test_bf16_engine_is_measurably_off_policy(tmp_path):
    m = run(tmp_path, "staleness=1", "rollout.dtype=bfloat16")
    assert (m["kl_mu_pi"] > 0).all() and (m["abs_log_rho_mu"] > 1e-4).all()
    assert (m["abs_log_rho_old"] == 0).all()  # decoupled: pi_old is the trainer's fp32 policy
    assert (m["engine_gap_mean_abs"] > 1e-4).all()
    assert (m["version_gap"] == 0).all()


def test_bypass_uses_mu_as_pi_old(tmp_path):
    m = run(tmp_path, "staleness=1", "rollout.dtype=bfloat16", "correction_mode=bypass")
    assert (m["abs_log_rho_old"] == m["abs_log_rho_mu"]).all() and (m["abs_log_rho_old"] > 0).all()


@pytest.mark.parametrize("bad, msg", [("lag=-1", "lag must be >= 0"), ("rollout.dtype=fp8", "rollout.dtype='fp8'"),
                                      ("correction_mode=mixed", "decoupled or bypass"),
                                      ("rollout.engine=sglang", "unknown rollout engine 'sglang'")])
def test_bad_offpolicy_settings(bad, msg):
    from offpolicy_bench import OffbenchError

    with pytest.raises(OffbenchError, match=msg.replace("(", r"\(").replace("[", r"\[")):
        build_config([bad])


@torch.no_grad()
def routed_experts(model, ro):
    """The expert set each MoE layer actually used for every attended token, read from the routers'
    own outputs with forward hooks: {(layer, row, position): frozenset of expert ids}."""
    routers = [mod for name, mod in model.named_modules() if name.endswith("mlp.gate")]
    assert routers, "not a MoE model"
    seen = []
    hooks = [r.register_forward_hook(lambda mod, inp, out: seen.append(out[2])) for r in routers]
    try:
        attn = ro.attention_mask
        model(input_ids=ro.input_ids, attention_mask=attn, position_ids=(attn.cumsum(-1) - 1).clamp_min(0),
              use_cache=False)
    finally:
        for h in hooks:
            h.remove()
    rows, cols = attn.shape
    return {(layer, i, t): frozenset(idx.reshape(rows, cols, -1)[i, t].tolist())
            for layer, idx in enumerate(seen) for i in range(rows) for t in range(cols) if attn[i, t]}


def test_moe_routing_differences_are_measured(tmp_path, monkeypatch):
    import offpolicy_bench.offpolicy as offpolicy

    expected, measured = [], offpolicy.moe_routing_diff

    def record(engine_model, trainer_model, ro):  # the engine (bf16) and the trainer (fp32) at this step
        a, b = routed_experts(engine_model, ro), routed_experts(trainer_model, ro)
        assert a.keys() == b.keys()
        expected.append(sum(a[k] != b[k] for k in a) / len(a))
        return measured(engine_model, trainer_model, ro)

    monkeypatch.setattr(offpolicy, "moe_routing_diff", record)
    m = run(tmp_path, "model=moe", "staleness=1", "rollout.dtype=bfloat16")
    assert len(expected) == len(m) == 4  # one rollout batch per gradient step at N=1
    assert m.moe_routing_diff_frac.tolist() == pytest.approx(expected, abs=1e-12)
    m2 = run(tmp_path / "b", "model=moe", "staleness=1")  # shared engine: no gap to measure
    assert "moe_routing_diff_frac" not in m2
    m2 = run(tmp_path / "b", "model=moe", "staleness=1")  # shared engine: no gap to measure
    assert "moe_routing_diff_frac" not in m2


def test_routing_diff_counts_flipped_experts():
    from offpolicy_bench.models import build_model, char_tokenizer
    from offpolicy_bench.offpolicy import moe_routing_diff
    from offpolicy_bench.rollout import sample
    import copy

    cfg = build_config([*TINY, "model=moe"])
    tok = char_tokenizer()
    a = build_model(cfg.model, len(tok), tok.pad_token_id, tok.eos_token_id, 0).eval()
    ro = sample(a, tok, ["1+2=", "33+4="], 2, 1.0, 4, generator=torch.Generator().manual_seed(0))
    assert moe_routing_diff(a, copy.deepcopy(a), ro) == 0.0
    b = copy.deepcopy(a)
    with torch.no_grad():
        for name, p in b.named_parameters():
            if "gate" in name and "proj" not in name:  # router weights: permute experts -> routing flips
                p.copy_(-p)
    assert moe_routing_diff(a, b, ro) > 0.5
