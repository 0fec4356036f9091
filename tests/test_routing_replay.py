"""MoE routing replay (rollout.routing_replay=none|r2|r3), checked against independent readings: the
experts each expert module really received (its own forward pre-hook), a per-token reference MoE layer
written here, and the unmodified code path."""

import dataclasses

import pandas as pd
import pytest
import torch

from conftest import TINY
from offpolicy_bench import OffbenchError
from offpolicy_bench.config import build_config
from offpolicy_bench.models import build_model, char_tokenizer
from offpolicy_bench.rollout import sample, sequence_logprobs
from offpolicy_bench.rollout.engines import HFEngine
from offpolicy_bench.routing import RouterTap, RoutingReplay, replayed_routing, routers
from offpolicy_bench.trainer import train

PROMPTS = ["3+4=", "91-17=", "5=", "2*3="]  # ragged lengths: left padding


def moe(layers=2, **over):
    cfg = build_config([*TINY, "model=moe", f"model.num_layers={layers}", *[f"{k}={v}" for k, v in over.items()]])
    tok = char_tokenizer()
    return build_model(cfg.model, len(tok), tok.pad_token_id, tok.eos_token_id, seed=0).eval(), tok, cfg


def rollout(model, tok, seed=0, g=3, n=10, **kw):
    return sample(model, tok, PROMPTS, g, 1.0, n, generator=torch.Generator().manual_seed(seed), **kw)


class ExpertsSeen:
    """What every MoE layer's expert module was handed (top_k_index, top_k_weights), per forward call,
    read from the expert modules' own inputs: independent of the routers and of RouterTap."""

    def __init__(self, model):
        mods = [m.mlp.experts for m in model.model.layers]
        self.calls = [[] for _ in mods]
        self.hooks = [m.register_forward_pre_hook(self._hook(i)) for i, m in enumerate(mods)]

    def _hook(self, layer):
        def hook(module, args):
            self.calls[layer].append((args[1].detach().clone(), args[2].detach().clone()))
        return hook

    def close(self):
        for h in self.hooks:
            h.remove()


def full_forward_logprobs(model, ro, tap=None, temp=1.0):
    return sequence_logprobs(model, ro, temp, share_prefix=False, routing=tap)[0]


def random_routing(ro, model, seed=0):
    """A table of random top-k sets (k distinct experts) for every (row, position, layer)."""
    cfg = model.config
    b, t = ro.input_ids.shape
    g = torch.Generator().manual_seed(seed)
    keys = torch.rand((b, t, len(routers(model)), cfg.num_experts), generator=g)
    return keys.topk(cfg.num_experts_per_tok, -1).indices


@pytest.mark.parametrize("share_prefix", [True, False])
def test_record_then_replay_reproduces_logprobs_exactly(share_prefix):
    model, tok, _ = moe()
    ro = rollout(model, tok)
    with torch.no_grad():
        plain = sequence_logprobs(model, ro, 0.9, share_prefix=share_prefix)[0]
        rec = RouterTap.recorder(model, *ro.input_ids.shape)
        recorded = sequence_logprobs(model, ro, 0.9, share_prefix=share_prefix, routing=rec)[0]
        ro.routing = rec.table
        rep = RouterTap("replay", ro.routing)
        replayed = sequence_logprobs(model, ro, 0.9, share_prefix=share_prefix, routing=rep)[0]
    assert torch.equal(plain, recorded) and torch.equal(recorded, replayed)
    assert rep.replayed > 0 and rep.overridden == 0
    # every position a log-prob depends on was recorded (all but the last column, never fed in)
    assert (rec.table[:, :-1] >= 0).all()
    # and what was recorded is what the expert modules received in a plain full forward
    seen = ExpertsSeen(model)
    with torch.no_grad():
        full_forward_logprobs(model, ro)
    seen.close()
    b, t = ro.input_ids.shape
    for layer, [(idx, _)] in enumerate(seen.calls):
        got = idx.view(b, t, -1)[:, :-1].sort(-1).values
        assert torch.equal(got, rec.table[:, :-1, layer].sort(-1).values)


def test_replaying_another_routing_uses_those_experts_with_the_models_own_weights():
    model, tok, _ = moe()
    ro = rollout(model, tok)
    forced = random_routing(ro, model)
    with torch.no_grad():
        natural = full_forward_logprobs(model, ro)
        ro.routing = forced
        seen = ExpertsSeen(model)
        logits_seen = []
        hooks = [r.register_forward_hook(lambda m, a, out: logits_seen.append(out[0].detach().clone()))
                 for r in routers(model)]
        tap = RouterTap("replay", forced)
        replayed = full_forward_logprobs(model, ro, tap)
        for h in hooks:
            h.remove()
        seen.close()
    assert (replayed - natural).abs().max() > 1e-3  # another routing, other log-probs
    assert tap.overridden > 0
    b, t = ro.input_ids.shape
    for layer, [(idx, weights)] in enumerate(seen.calls):
        assert torch.equal(idx.view(b, t, -1), forced[:, :, layer])  # the experts run are the replayed ones
        # weights: softmax of the live router logits over the replayed experts (norm_topk_prob)
        probs = torch.softmax(logits_seen[layer].float(), -1)
        sel = probs.gather(-1, forced[:, :, layer].reshape(b * t, -1))
        assert torch.allclose(weights, sel / sel.sum(-1, keepdim=True), atol=1e-7)
    # a second pass, recorded while it replays, reads back the replayed experts too
    used = replayed_routing(model, ro)
    assert torch.equal(used.sort(-1).values, forced.sort(-1).values)


def reference_moe_logprobs(model, ro, forced, temp=1.0):
    """log-probs with the MoE layers replaced by a per-token loop over the forced experts: each token's
    output is sum_{e in E} g_e * expert_e(x), g = softmax(router logits) renormalised over E."""
    from transformers.models.qwen3_moe.modeling_qwen3_moe import Qwen3MoeSparseMoeBlock

    blocks = [m.mlp for m in model.model.layers]
    layer_of = {id(bk): i for i, bk in enumerate(blocks)}

    def forward(self, hidden):
        b, t, h = hidden.shape
        x = hidden.reshape(-1, h)
        sets = forced[:, :, layer_of[id(self)]].reshape(b * t, -1)
        rows = []
        for n in range(x.shape[0]):
            p = torch.softmax(x[n] @ self.gate.weight.T, -1)
            g = p[sets[n]] / p[sets[n]].sum()
            y = torch.zeros(h)
            for j, e in enumerate(sets[n].tolist()):
                gate, up = (self.experts.gate_up_proj[e] @ x[n]).chunk(2)
                y = y + g[j] * (self.experts.down_proj[e] @ (self.experts.act_fn(gate) * up))
            rows.append(y)
        return torch.stack(rows).reshape(b, t, h)

    orig = Qwen3MoeSparseMoeBlock.forward
    Qwen3MoeSparseMoeBlock.forward = forward
    try:
        return full_forward_logprobs(model, ro, None, temp)
    finally:
        Qwen3MoeSparseMoeBlock.forward = orig


def test_replay_values_and_gradients_equal_a_per_token_reference():
    """Gradients flow through the replayed experts' weights into the router (and the experts) exactly
    as in a reference MoE layer written token by token."""
    model, tok, _ = moe()
    model.train()
    ro = rollout(model, tok, g=2, n=6)
    forced = random_routing(ro, model, seed=1)
    ro.routing = forced
    weights = torch.linspace(-1, 1, ro.response_mask.numel()).view_as(ro.response_mask)
    grads = []
    for run in ("replay", "reference"):
        model.zero_grad()
        logp = (full_forward_logprobs(model, ro, RouterTap("replay", forced), 0.8) if run == "replay"
                else reference_moe_logprobs(model, ro, forced, 0.8))
        (logp * weights).sum().backward()
        grads.append((logp.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}))
    (lp, g), (lp_ref, g_ref) = grads
    assert torch.allclose(lp, lp_ref, atol=1e-5), (lp - lp_ref).abs().max()
    router_names = [n for n in g_ref if n.endswith("mlp.gate.weight")]
    assert len(router_names) == 2 and g.keys() == g_ref.keys()
    for n in g_ref:
        assert torch.isfinite(g[n]).all()
        assert torch.allclose(g[n], g_ref[n], atol=1e-5, rtol=1e-3), (n, (g[n] - g_ref[n]).abs().max())
    for n in router_names:
        assert g[n].abs().sum() > 0  # the router learns under replay


def test_engine_records_the_experts_of_every_token_it_feeds(monkeypatch):
    # the plain decode loop, whose decode steps run exactly the live rows, so the expert modules' own
    # inputs can be matched row by row below; the static-cache decoder records the same table
    # (tests/test_rollout.py::test_static_decode_samples_what_the_plain_loop_samples)
    from offpolicy_bench.rollout.static_decode import StaticDecoder

    monkeypatch.setattr(StaticDecoder, "supports", staticmethod(lambda model: False))
    model, tok, _ = moe()
    seen = ExpertsSeen(model)
    ro = rollout(model, tok, record_routing=True)
    seen.close()
    b, t = ro.input_ids.shape
    p = ro.prompt_len
    lengths = ro.response_mask.sum(-1).long()
    fed = torch.cat([ro.attention_mask[:, :p].bool(), torch.arange(t - p)[None] < lengths[:, None] - 1], 1)
    assert ro.routing.shape == (b, t, 2, 2)
    assert ((ro.routing >= 0).all(-1).all(-1) == fed).all()  # recorded exactly where a token was fed
    # rebuild the table from the expert modules' own inputs: prefill of the distinct prompts, then decode
    # steps over the live rows (rows leave the batch in order once they emit EOS)
    for layer, calls in enumerate(seen.calls):
        (pre, _), steps = calls[0], calls[1:]
        u = len(PROMPTS)
        pre = pre.view(u, p, -1).repeat_interleave(3, 0)
        assert torch.equal(pre[fed[:, :p]], ro.routing[:, :p, layer][fed[:, :p]])
        for step, (idx, _) in enumerate(steps):
            live = (lengths > step + 1).nonzero().squeeze(-1)
            assert torch.equal(idx, ro.routing[live, p + step, layer])
    # replaying the engine's own routing reproduces its log mu (fp32, same weights)
    with torch.no_grad():
        logp = sequence_logprobs(model, ro, 1.0, routing=RouterTap("replay", ro.routing))[0]
    assert torch.allclose(logp, ro.behav_logp, atol=1e-5)


def test_r3_with_a_bf16_engine_aligns_the_trainers_routing_and_narrows_the_gap():
    model, tok, cfg = moe(layers=3)  # fresh router weights: near-tied logits, bf16 flips some
    with torch.no_grad():  # fresh experts output ~0; scaled up, a token sent elsewhere gets another output
        for layer in model.model.layers:
            layer.mlp.experts.gate_up_proj.mul_(5)
            layer.mlp.experts.down_proj.mul_(5)
    cfg.rollout.dtype = "bfloat16"
    engine = HFEngine(model, tok, cfg, private=True)
    ro = engine.sample(tok, PROMPTS * 4, 4, 1.0, 12, generator=torch.Generator().manual_seed(0), record_routing=True)
    assert ro.routing is not None
    with torch.no_grad():
        natural = replayed_routing(model, dataclasses.replace(ro, routing=torch.full_like(ro.routing, -1)))
        used = replayed_routing(model, ro)
        rec = ro.routing >= 0
        flipped = ((natural.sort(-1).values != ro.routing.sort(-1).values).any(-1) & rec.all(-1)).float()
        assert flipped.sum() > 0  # without replay the trainer routes some tokens elsewhere than the engine
        assert torch.equal(used[rec], ro.routing[rec])  # with replay: the engine's experts, everywhere recorded
        gap_plain = (sequence_logprobs(model, ro, 1.0)[0] - ro.behav_logp).abs()[ro.response_mask > 0]
        gap_r3 = (sequence_logprobs(model, ro, 1.0, routing=RouterTap("replay", ro.routing))[0]
                  - ro.behav_logp).abs()[ro.response_mask > 0]
    # what is left is bf16 rounding (~1e-3 here); the flips' jumps (up to ~0.4 nats here) are gone
    assert gap_r3.mean() < 0.5 * gap_plain.mean(), (gap_r3.mean(), gap_plain.mean())
    assert gap_r3.max() < 0.25 * gap_plain.max(), (gap_r3.max(), gap_plain.max())


def test_r2_update_passes_use_the_pi_old_passes_experts_not_the_updated_routers():
    model, tok, _ = moe()
    replay = RoutingReplay("r2", model)
    assert replay.engine_kwargs == {}  # r2 leaves the engine alone
    ro = rollout(model, tok)
    mb = ro.rows(slice(3, 9))
    with torch.no_grad():
        tap = replay.pi_old_tap(model, mb)
        old = sequence_logprobs(model, mb, 1.0, routing=tap)[0]
        recorded = mb.routing.clone()
        assert (recorded[:, :-1] >= 0).all()
        for r in routers(model):  # "an optimizer step" that moves the routers: routing drifts
            r.weight.add_(torch.randn_like(r.weight) * 0.5)
        drifted = replayed_routing(model, dataclasses.replace(mb, routing=torch.full_like(recorded, -1)))
        assert ((drifted != recorded).any(-1)[:, :-1]).any()
        assert replay.update_tap(0, mb) is None  # mini-batch 0: its training forward is its pi_old pass
        seen = ExpertsSeen(model)
        tap = replay.update_tap(1, mb)
        new = sequence_logprobs(model, mb, 1.0, share_prefix=False, routing=tap)[0]
        seen.close()
    b, t = mb.input_ids.shape
    for layer, [(idx, _)] in enumerate(seen.calls):
        assert torch.equal(idx.view(b, t, -1)[:, :-1], recorded[:, :-1, layer])  # pi_old's experts
    assert RoutingReplay.step_metrics(tap)["moe_replay_override_frac"] > 0
    assert not torch.equal(new, old)  # the weights did change


def run(tmp_path, *overrides, name="r"):
    cfg = build_config([*TINY, f"log.out_dir={tmp_path}", f"name={name}", "model=moe", *overrides])
    train(cfg, log=lambda m: None)
    df = pd.read_parquet(tmp_path / name / "metrics.parquet")
    return df[df.split == "train"].pivot(index="step", columns="metric", values="value")


def spy_passes(monkeypatch):
    """Every trainer forward: (which rollout rows, tap mode or None, the tap's table)."""
    import offpolicy_bench.trainer as trainer

    calls, inner = [], trainer.sequence_logprobs

    def spy(model, ro, temperature, with_entropy=False, routing=None):
        calls.append((ro, None if routing is None else routing.mode,
                      None if routing is None else routing.table))
        return inner(model, ro, temperature, with_entropy=with_entropy, routing=routing)

    monkeypatch.setattr(trainer, "sequence_logprobs", spy)
    return calls


def test_r2_in_the_trainer_records_at_pi_old_and_replays_it_in_the_update(tmp_path, monkeypatch):
    calls = spy_passes(monkeypatch)
    m = run(tmp_path, "staleness=2", "rollout.dtype=bfloat16", "rollout.routing_replay=r2")
    # per rollout batch: pi_old pass of mini-batch 1 (record), update 0 (none), update 1 (replay)
    assert [c[1] for c in calls] == ["record", None, "replay"] * 2
    for k in (0, 3):
        assert calls[k][0] is calls[k + 2][0] and calls[k][2] is calls[k + 2][2]  # the same mini-batch, same table
        assert calls[k + 1][0].routing is None  # the engine recorded nothing
    assert "moe_replay_override_frac" in m and m.moe_replay_override_frac.dropna().index.tolist() == [2, 4]
    assert (m.moe_routing_diff_frac == m.moe_routing_diff_natural_frac).all()  # r2 leaves pi_old alone


def test_r3_in_the_trainer_replays_the_engines_routing_everywhere(tmp_path, monkeypatch):
    calls = spy_passes(monkeypatch)
    m = run(tmp_path, "staleness=2", "rollout.dtype=bfloat16", "rollout.routing_replay=r3")
    assert [c[1] for c in calls] == ["replay"] * 6
    assert all(c[2] is c[0].routing and c[2] is not None for c in calls)
    assert (m.moe_routing_diff_frac == 0).all() and "moe_routing_diff_natural_frac" in m
    assert m.moe_replay_override_frac.notna().all()


def test_r2_at_staleness_1_is_exactly_none(tmp_path):
    """At N=1 the only mini-batch is its own pi_old pass: r2 has nothing to replay."""
    a = run(tmp_path, "staleness=1", "rollout.dtype=bfloat16", name="a")
    b = run(tmp_path, "staleness=1", "rollout.dtype=bfloat16", "rollout.routing_replay=r2", name="b")
    b = b.drop(columns=["moe_routing_diff_natural_frac"])
    keep = [c for c in a if not c.startswith("time_")]
    pd.testing.assert_frame_equal(a[keep], b[keep])


def test_none_never_touches_a_router(tmp_path, monkeypatch):
    """routing_replay=none (the default) runs the code path of before: no tap is made, so no hook is ever
    installed, and no new metric appears (numbers bit-identical to the unmodified trainer, checked when
    this was written by comparing whole metrics tables before and after the change)."""
    made = []
    orig = RouterTap.__init__

    def spy(self, *a, **kw):
        made.append(a)
        orig(self, *a, **kw)

    monkeypatch.setattr(RouterTap, "__init__", spy)
    m = run(tmp_path, "staleness=2", "rollout.dtype=bfloat16")
    assert made == []
    assert not [c for c in m if c.startswith("moe_") and c != "moe_routing_diff_frac"]


@pytest.mark.parametrize("overrides, pattern", [
    (["rollout.routing_replay=r4"], r"rollout.routing_replay='r4': choose one of none, r2, r3"),
    (["rollout.routing_replay=r3"], r"model=dense has none: set model=moe or rollout.routing_replay=none"),
    (["model=moe", "rollout.routing_replay=r3", "rollout.engine=vllm"], r"set rollout.engine=hf, or "),
    (["model=moe", "rollout.routing_replay=r2", "correction_mode=bypass"], r"set correction_mode=decoupled"),
])
def test_bad_routing_replay_settings_are_one_line_errors(overrides, pattern):
    with pytest.raises(OffbenchError, match=pattern) as e:
        build_config(overrides)
    assert "\n" not in str(e.value)


def test_routing_replay_on_a_model_without_routers_is_an_error(tmp_path):
    cfg = build_config([*TINY])
    tok = char_tokenizer()
    dense = build_model(cfg.model, len(tok), tok.pad_token_id, tok.eos_token_id, seed=0)
    with pytest.raises(OffbenchError, match="no MoE router"):
        RoutingReplay("r3", dense)
    dense.save_pretrained(tmp_path / "dense")
    with pytest.raises(OffbenchError, match="is 'qwen3': set rollout.routing_replay=none"):
        build_config([f"model={tmp_path / 'dense'}", "rollout.routing_replay=r2"])
