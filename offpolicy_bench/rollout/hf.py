"""The Hugging Face rollout engine (CPU or GPU) and the trainer's log-prob function.

Layout shared by sampling and training, so both see the same positions: prompts left-padded to a
common length P, responses right-padded to R; position ids count only real tokens. The behaviour
log-prob of each sampled token is log_softmax(logits / T) in fp32 over the full vocabulary: the
same distribution it was sampled from, and the same function the trainer uses (no top-p / top-k,
no generation_config of a checkpoint applied behind our back).

MoE routing replay (`offpolicy_bench.routing`): `sample(record_routing=True)` records the experts of
every token it feeds into `Rollout.routing`; `sequence_logprobs(routing=tap)` records into or replays
from a table in the same layout, through every forward pass it makes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..routing import RouterTap, tapped
from .static_decode import StaticDecoder


@dataclass
class Rollout:
    input_ids: Tensor  # [B, P + R]
    attention_mask: Tensor  # [B, P + R]; 0 only on prompt left-padding
    prompt_len: int  # P
    response_mask: Tensor  # [B, R] float; 1 on response tokens up to and including EOS
    behav_logp: Tensor  # [B, R] log mu of each sampled token (0 on padding)
    texts: list[str]  # decoded responses, without EOS / padding
    truncated: Tensor  # [B] bool, hit max_new_tokens without EOS
    routing: Tensor | None = None  # [B, P + R, L, k] MoE experts per position and layer, -1 = none (routing.py)

    def to(self, device) -> "Rollout":
        """The same rollout with its tensors on `device` (itself if they are there already)."""
        if self.input_ids.device == torch.device(device):
            return self
        return Rollout(self.input_ids.to(device), self.attention_mask.to(device), self.prompt_len,
                       self.response_mask.to(device), self.behav_logp.to(device), self.texts,
                       self.truncated.to(device), None if self.routing is None else self.routing.to(device))

    def rows(self, idx: slice) -> "Rollout":
        """A contiguous slice of sequences, trimmed to the columns they use."""
        mask = self.response_mask[idx]
        attn = self.attention_mask[idx]
        r = int(mask.sum(-1).max().item()) if mask.numel() else 0
        r = max(r, 1)
        first = int((attn[:, : self.prompt_len].sum(0) > 0).float().argmax().item())
        p = self.prompt_len - first
        routing = None if self.routing is None else self.routing[idx, first: self.prompt_len + r]
        return Rollout(self.input_ids[idx, first: self.prompt_len + r], attn[:, first: self.prompt_len + r], p,
                       mask[:, :r], self.behav_logp[idx, :r], self.texts[idx], self.truncated[idx], routing)


def encode_prompts(tok, prompts: list[str]) -> tuple[Tensor, Tensor]:
    enc = tok(prompts, return_tensors="pt", padding=True, padding_side="left", add_special_tokens=False)
    return enc["input_ids"], enc["attention_mask"]


def encode_pairs(tok, prompts: list[str], completions: list[str]) -> tuple[Tensor, Tensor, Tensor]:
    """Teacher-forcing batch in the rollout layout: labels are -100 except on completion + EOS."""
    ids, attn = encode_prompts(tok, prompts)
    comp = [tok(c, add_special_tokens=False)["input_ids"] + [tok.eos_token_id] for c in completions]
    r = max(len(c) for c in comp)
    resp = torch.full((len(comp), r), tok.pad_token_id, dtype=ids.dtype)
    lab = torch.full((len(comp), r), -100, dtype=ids.dtype)
    for i, c in enumerate(comp):
        resp[i, : len(c)] = torch.tensor(c)
        lab[i, : len(c)] = torch.tensor(c)
    full = torch.cat([ids, resp], 1)
    attn_full = torch.cat([attn, torch.ones_like(resp)], 1)
    labels = torch.cat([torch.full_like(ids, -100), lab], 1)
    return full, attn_full, labels


def _cache_kw(model) -> str:
    """transformers >= 5.2x names the KV cache argument `cache`; earlier releases `past_key_values`."""
    import inspect

    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def _positions(attn: Tensor) -> Tensor:
    return (attn.cumsum(-1) - 1).clamp_min(0)


def _logits_shared_prefix(model, ro: Rollout, tap=None):
    """Logits predicting the response tokens, [B, R, V], computing each distinct prompt once.

    The G samples of a prompt share its tokens, so the prompt's hidden states and keys/values are
    computed once per distinct prompt (with grad) and indexed out to its rows; only the last
    prompt token and the response run per row. Autograd sums each row's gradient into the shared
    prefix, so values and gradients equal those of the full padded forward up to float summation
    order (tests/test_rollout.py checks both). Returns None where it cannot help or apply.
    """
    p = ro.prompt_len
    b = ro.input_ids.shape[0]
    if p < 2 or b < 2:
        return None
    prompt = torch.cat([ro.input_ids[:, :p], ro.attention_mask[:, :p].to(ro.input_ids.dtype)], 1)
    uniq, inverse, counts = torch.unique_consecutive(prompt, dim=0, return_inverse=True, return_counts=True)
    if uniq.shape[0] == b:
        return None
    first = counts.cumsum(0) - counts  # row index where each run of equal prompts starts
    pre_ids, pre_attn = ro.input_ids[first, : p - 1], ro.attention_mask[first, : p - 1]
    cache_kw = _cache_kw(model)
    with tapped(tap, model, first, slice(0, p - 1), copies=inverse):
        out = model(input_ids=pre_ids, attention_mask=pre_attn, position_ids=_positions(pre_attn), use_cache=True,
                    logits_to_keep=1)
    cache = getattr(out, cache_kw)
    if not hasattr(cache, "batch_select_indices"):
        return None
    cache.batch_select_indices(inverse)  # repeated indices: each row gets its prompt's keys/values
    attn = ro.attention_mask[:, :-1]
    with tapped(tap, model, torch.arange(b, device=attn.device), slice(p - 1, attn.shape[1])):
        out = model(input_ids=ro.input_ids[:, p - 1: -1], attention_mask=attn,
                    position_ids=_positions(attn)[:, p - 1:], use_cache=True, **{cache_kw: cache})
    return out.logits


def sequence_logprobs(model, ro: Rollout, temperature: float, with_entropy: bool = False,
                      share_prefix: bool = True, routing=None):
    """log pi(y_t | x, y_<t) of the sampled tokens [B, R] (fp32, temperature-scaled), and the
    entropy of each next-token distribution if asked. Gradient flows unless under no_grad.
    `share_prefix` computes each distinct prompt once (same numbers, fewer FLOPs). `routing`: a
    `routing.RouterTap` whose table is aligned with `ro` (MoE routing recorded or replayed), or None."""
    p = ro.prompt_len
    logits = _logits_shared_prefix(model, ro, routing) if share_prefix else None
    if logits is None:
        rows = torch.arange(ro.input_ids.shape[0], device=ro.input_ids.device)
        with tapped(routing, model, rows, slice(None)):
            out = model(input_ids=ro.input_ids, attention_mask=ro.attention_mask,
                        position_ids=_positions(ro.attention_mask), use_cache=False)
        logits = out.logits[:, p - 1: -1]
    logprobs = torch.log_softmax(logits.float() / temperature, -1)
    tokens = ro.input_ids[:, p:]
    logp = logprobs.gather(-1, tokens[..., None]).squeeze(-1) * ro.response_mask
    if not with_entropy:
        return logp, None
    with torch.no_grad():
        ent = -(logprobs.exp() * logprobs).sum(-1) * ro.response_mask
    return logp, ent


@torch.no_grad()
def sample(model, tok, prompts: list[str], group_size: int, temperature: float, max_new_tokens: int,
           generator: torch.Generator | None = None, greedy: bool = False, record_routing: bool = False) -> Rollout:
    """Sample `group_size` responses per prompt (rows grouped: prompt 0's G, then prompt 1's ...),
    with a KV cache, recording log mu of every sampled token at sampling time.

    Exact savings over a plain generate loop: each distinct prompt is prefilled once and its KV
    cache repeated G times; rows that have emitted EOS leave the batch (their cache rows are
    dropped), so decode steps compute (almost) only live sequences; and for Qwen3 / Qwen3-MoE
    models the decode step is `static_decode.StaticDecoder` (preallocated cache, fewer operations;
    it keeps finished rows, fed padding, until a quarter of its rows are finished, then compacts).
    Sampling only ever sees live rows, so the random stream is consumed as by the plain loop.

    `record_routing` (MoE): the experts of every token fed in, as routed in these very passes, go to
    `Rollout.routing` (prompt tokens from the prefill, response tokens from the decode step that
    feeds them; the last token of a row is never fed, left padding is not kept).
    """
    device = next(model.parameters()).device
    if generator is not None and generator.device.type != device.type:
        # a CPU generator (the trainer's, shared with engines that draw seeds on the CPU) driving a
        # GPU model: derive a generator on the model's device from it, deterministically per call
        seed = int(torch.randint(0, 2**62, (1,), generator=generator).item())
        generator = torch.Generator(device).manual_seed(seed)
    ids_u, attn_u = encode_prompts(tok, list(prompts))
    ids_u, attn_u = ids_u.to(device), attn_u.to(device)
    ids, attn = ids_u.repeat_interleave(group_size, 0), attn_u.repeat_interleave(group_size, 0)
    b, p = ids.shape
    eos, pad = tok.eos_token_id, tok.pad_token_id
    out_tokens = torch.full((b, max_new_tokens), pad, dtype=ids.dtype, device=device)
    out_logp = torch.zeros((b, max_new_tokens), dtype=torch.float32, device=device)
    lengths = torch.zeros(b, dtype=torch.long, device=device)
    cache_kw = _cache_kw(model)
    tap = RouterTap.recorder(model, b, p + max_new_tokens) if record_routing else None
    rows = torch.arange(b, device=device)  # live rows, in batch order
    with tapped(tap, model, rows[::group_size], slice(0, p), copies=rows // group_size):
        out = model(input_ids=ids_u, attention_mask=attn_u, position_ids=_positions(attn_u), use_cache=True,
                    logits_to_keep=1)
    cache, logits = getattr(out, cache_kw), out.logits[:, -1].repeat_interleave(group_size, 0)
    shrinkable = hasattr(cache, "batch_select_indices")
    if group_size > 1:
        if hasattr(cache, "batch_repeat_interleave"):
            cache.batch_repeat_interleave(group_size)
        else:  # older cache API: prefill every row
            with tapped(tap, model, rows, slice(0, p)):
                out = model(input_ids=ids, attention_mask=attn, position_ids=_positions(attn), use_cache=True,
                            logits_to_keep=1)
            cache, logits = getattr(out, cache_kw), out.logits[:, -1]
    mask = torch.cat([attn, torch.ones((b, max_new_tokens), dtype=attn.dtype, device=device)], 1)
    next_pos = _positions(attn)[:, -1:] + 1
    fast = StaticDecoder(model, cache, p + max_new_tokens) if StaticDecoder.supports(model) and shrinkable else None
    slots = rows  # fast path: the rows in its cache, a superset of the live rows (compacted in steps)
    for t in range(max_new_tokens):
        if greedy:
            tok_t = logits.argmax(-1)
            logp_t = torch.log_softmax(logits.float(), -1).gather(-1, tok_t[:, None]).squeeze(-1)
        else:
            logprobs = torch.log_softmax(logits.float() / temperature, -1)
            tok_t = torch.multinomial(logprobs.exp(), 1, generator=generator).squeeze(-1)
            logp_t = logprobs.gather(-1, tok_t[:, None]).squeeze(-1)
        out_tokens[rows, t] = tok_t
        out_logp[rows, t] = logp_t
        lengths[rows] += 1
        live = tok_t != eos
        if not live.any() or t == max_new_tokens - 1:
            break
        if fast is not None:
            # sampling sees only live rows (the random stream is consumed as by the loop below); the
            # cache keeps finished rows, fed padding, until compacting it is worth a copy
            rows = rows[live]
            feed = torch.full(slots.shape, pad, dtype=tok_t.dtype, device=device)
            at = torch.searchsorted(slots, rows)
            feed[at] = tok_t[live]
            if rows.numel() <= 0.75 * slots.numel():
                fast.select(at)
                slots, feed, at = rows, feed[at], None
            with tapped(tap, model, slots, slice(p + t, p + t + 1)):
                out = fast.step(feed, next_pos[slots, 0], p + t, mask[slots, : p + t + 1])
            logits = out if at is None else out[at]
            next_pos = next_pos + 1
            continue
        if shrinkable and not live.all():
            keep = live.nonzero().squeeze(-1)
            cache.batch_select_indices(keep)
            rows, tok_t, mask, next_pos = rows[keep], tok_t[keep], mask[keep], next_pos[keep]
        elif not live.all():  # cannot shrink: finished rows keep decoding padding, masked out below
            tok_t = torch.where(live, tok_t, torch.full_like(tok_t, pad))
        with tapped(tap, model, rows, slice(p + t, p + t + 1)):
            out = model(input_ids=tok_t[:, None], attention_mask=mask[:, : p + t + 1], position_ids=next_pos,
                        use_cache=True, **{cache_kw: cache})
        cache, logits = getattr(out, cache_kw), out.logits[:, -1]
        next_pos = next_pos + 1
    ended = out_tokens == eos
    lengths = torch.where(ended.any(-1), ended.float().argmax(-1) + 1, lengths.clamp(max=max_new_tokens))
    r = max(int(lengths.max().item()), 1)
    out_tokens, out_logp = out_tokens[:, :r], out_logp[:, :r]
    resp_mask = (torch.arange(r, device=device)[None] < lengths[:, None]).float()
    out_tokens = torch.where(resp_mask > 0, out_tokens, torch.full_like(out_tokens, pad))
    out_logp = out_logp * resp_mask
    truncated = ~ended.any(-1)
    texts = []
    for row, n in zip(out_tokens.tolist(), lengths.tolist()):
        row = row[:n]
        if row and row[-1] == eos:
            row = row[:-1]
        texts.append(tok.decode(row, skip_special_tokens=True))
    full_ids = torch.cat([ids, out_tokens], 1)
    full_attn = torch.cat([attn, torch.ones_like(out_tokens)], 1)
    routing = None
    if tap is not None:  # keep the tokens that were fed: attended prompt tokens, responses but their last
        fed = torch.cat([attn.bool(), torch.arange(r, device=device)[None] < lengths[:, None] - 1], 1)
        routing = tap.table[:, : p + r].masked_fill(~fed[..., None, None], -1)
    return Rollout(full_ids, full_attn, p, resp_mask, out_logp, texts, truncated, routing)
