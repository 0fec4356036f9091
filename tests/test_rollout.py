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
