"""The HF engine records log mu exactly as the trainer computes log pi, in the same layout."""

import torch

from offpolicy_bench.config import build_config
from offpolicy_bench.models import build_model, char_tokenizer
from offpolicy_bench.rollout import sample, sequence_logprobs


def tiny_model(name="dense"):
    cfg = build_config([f"model={name}", "model.hidden_size=32", "model.num_layers=2", "model.num_heads=2",
                        "model.num_kv_heads=1", "model.intermediate_size=64", "model.num_experts=4",
                        "model.moe_intermediate_size=16"])
    tok = char_tokenizer()
    return build_model(cfg.model, len(tok), tok.pad_token_id, tok.eos_token_id, seed=0).eval(), tok


def test_tokenizer_roundtrip_and_save(tmp_path):
    tok = char_tokenizer()
    text = "37+45=82\ndef f(x):\n    return x"
    assert tok.decode(tok(text, add_special_tokens=False)["input_ids"]) == text
    tok.save_pretrained(tmp_path)
    from transformers import AutoTokenizer

    tok2 = AutoTokenizer.from_pretrained(tmp_path)
    assert tok2(text)["input_ids"] == tok(text)["input_ids"] and tok2.eos_token_id == 1 and tok2.pad_token_id == 0


def test_behaviour_logprobs_match_trainer_forward():
    for name in ("dense", "moe"):
        model, tok = tiny_model(name)
        prompts = ["3+4=", "91-17=", "5="]  # ragged prompt lengths exercise left padding
        for temp in (1.0, 0.7):
            ro = sample(model, tok, prompts, 4, temp, 12, generator=torch.Generator().manual_seed(0))
            with torch.no_grad():
                logp, ent = sequence_logprobs(model, ro, temp, with_entropy=True)
            m = ro.response_mask
            assert m.shape == ro.behav_logp.shape == logp.shape
            assert (ro.behav_logp[m == 0] == 0).all() and (logp[m == 0] == 0).all()
            # same distribution: incremental KV-cache decoding vs one full forward, fp32 rounding only
            assert torch.allclose(logp, ro.behav_logp, atol=1e-4), (logp - ro.behav_logp).abs().max()
            assert (ent[m > 0] > 0).all()


def test_response_mask_covers_eos_and_texts_exclude_it():
    model, tok = tiny_model()
    ro = sample(model, tok, ["1+1="], 16, 1.0, 6, generator=torch.Generator().manual_seed(1))
    p = ro.prompt_len
    for i in range(16):
        n = int(ro.response_mask[i].sum())
        toks = ro.input_ids[i, p: p + n].tolist()
        if not ro.truncated[i]:
            assert toks[-1] == tok.eos_token_id and tok.eos_token_id not in toks[:-1]
        assert ro.texts[i] == tok.decode(toks, skip_special_tokens=True)


def test_minibatch_slices_keep_logprobs():
    model, tok = tiny_model()
    ro = sample(model, tok, ["12+30=", "7-9=", "100+1=", "3="], 2, 1.0, 8, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        full, _ = sequence_logprobs(model, ro, 1.0)
        for k in range(2):
            mb = ro.rows(slice(4 * k, 4 * k + 4))
            part, _ = sequence_logprobs(model, mb, 1.0)
            r = part.shape[1]
            assert torch.allclose(part, full[4 * k: 4 * k + 4, :r], atol=1e-5)
            assert (full[4 * k: 4 * k + 4, r:] == 0).all()


def test_shared_prefix_logprobs_equal_full_forward_in_value_and_gradient():
    """Computing each distinct prompt once (with grad) must not change a number: log-probs,
    entropies and every parameter's gradient equal the plain padded forward's."""
    from offpolicy_bench.rollout import hf

    for name in ("dense", "moe"):
        model, tok = tiny_model(name)
        model.train()
        prompts = ["3+4=", "91-17=", "5=", "2*3="]  # ragged lengths: left padding inside the shared prefix
        ro = sample(model, tok, prompts, 4, 1.0, 10, generator=torch.Generator().manual_seed(3))
        assert hf._logits_shared_prefix(model, ro) is not None  # the shared path really runs
        results = []
        for share in (True, False):
            model.zero_grad()
            logp, ent = sequence_logprobs(model, ro, 0.8, with_entropy=True, share_prefix=share)
            weights = torch.linspace(-1, 1, logp.numel()).view_as(logp)  # a loss touching every token differently
            (logp * weights).sum().backward()
            results.append((logp.detach(), ent, {n: p.grad.clone() for n, p in model.named_parameters()
                                                   if p.grad is not None}))
        (lp_s, ent_s, g_s), (lp_f, ent_f, g_f) = results
        assert torch.allclose(lp_s, lp_f, atol=1e-5), (lp_s - lp_f).abs().max()
        assert torch.allclose(ent_s, ent_f, atol=1e-5)
        assert g_s.keys() == g_f.keys() and len(g_s) > 0
        for n in g_f:
            assert torch.allclose(g_s[n], g_f[n], atol=1e-5, rtol=1e-4), (name, n, (g_s[n] - g_f[n]).abs().max())


def test_shared_prefix_falls_back_when_nothing_is_shared():
    from offpolicy_bench.rollout import hf

    model, tok = tiny_model()
    ro = sample(model, tok, ["3+4=", "91-17="], 1, 1.0, 6, generator=torch.Generator().manual_seed(4))
    assert hf._logits_shared_prefix(model, ro) is None  # distinct prompts: the plain forward is used
    with torch.no_grad():
        assert torch.allclose(sequence_logprobs(model, ro, 1.0)[0], ro.behav_logp, atol=1e-4)


def _plain_loop(monkeypatch):
    from offpolicy_bench.rollout.static_decode import StaticDecoder

    monkeypatch.setattr(StaticDecoder, "supports", staticmethod(lambda model: False))


def test_static_decode_step_equals_the_model_forward():
    """The static-cache decode step returns the logits the model's own forward gives at every position
    (left-padded prompts, several decode steps), dense and MoE."""
    from offpolicy_bench.rollout.hf import _cache_kw, _positions, encode_prompts
    from offpolicy_bench.rollout.static_decode import StaticDecoder

    for name in ("dense", "moe"):
        model, tok = tiny_model(name)
        assert StaticDecoder.supports(model)
        ids, attn = encode_prompts(tok, ["3+4=", "91-17=", "5="])
        cont = torch.randint(3, 60, (3, 6))
        full = torch.cat([ids, cont], 1)
        full_attn = torch.cat([attn, torch.ones_like(cont)], 1)
        p = ids.shape[1]
        with torch.no_grad():
            ref = model(input_ids=full, attention_mask=full_attn, position_ids=_positions(full_attn)).logits
            out = model(input_ids=ids, attention_mask=attn, position_ids=_positions(attn), use_cache=True)
            dec = StaticDecoder(model, getattr(out, _cache_kw(model)), p + 6)
            pos = _positions(full_attn)
            for t in range(6):
                logits = dec.step(cont[:, t], pos[:, p + t], p + t, full_attn[:, : p + t + 1])
                assert torch.allclose(logits, ref[:, p + t], atol=1e-5), (name, t, (logits - ref[:, p + t]).abs().max())
            dec.select(torch.tensor([2, 0]))  # dropping a row keeps the others' caches
        model.train()
        assert StaticDecoder.supports(model)  # no dropout: training mode computes the same function
        model.config.attention_dropout = 0.1
        assert not StaticDecoder.supports(model)  # with dropout it would not: the plain loop


def test_static_decode_samples_what_the_plain_loop_samples(monkeypatch):
    """Same seed, same tokens: the static-cache sampler draws from the same distributions with the
    random stream consumed in the same order as the plain `model(...)` loop, while rows finish at
    different steps (the cache both keeps finished rows and compacts), for sampling, greedy decoding
    and MoE routing records."""
    for name in ("dense", "moe"):
        model, tok = tiny_model(name)
        # make EOS likely, so rows end at many different steps
        hook = model.lm_head.register_forward_hook(lambda m, i, o: o + torch.nn.functional.one_hot(
            torch.tensor(tok.eos_token_id), o.shape[-1]) * 3.0)
        prompts = ["3+4=", "91-17=", "5=", "2*3=", "8-1="]
        for greedy in (False, True):
            kw = dict(generator=torch.Generator().manual_seed(5), greedy=greedy, record_routing=name == "moe")
            fast = sample(model, tok, prompts, 6, 1.0, 24, **kw)
            with monkeypatch.context() as m:
                _plain_loop(m)
                kw["generator"] = torch.Generator().manual_seed(5)
                plain = sample(model, tok, prompts, 6, 1.0, 24, **kw)
            lengths = fast.response_mask.sum(-1)
            assert greedy or len(set(lengths.tolist())) > 5  # rows really end at different steps
            assert torch.equal(fast.input_ids, plain.input_ids) and fast.texts == plain.texts
            assert torch.equal(fast.response_mask, plain.response_mask)
            assert torch.allclose(fast.behav_logp, plain.behav_logp, atol=1e-5)
            if name == "moe":
                assert torch.equal(fast.routing, plain.routing)
        hook.remove()
