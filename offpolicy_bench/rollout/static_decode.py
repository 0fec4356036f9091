"""A decode step for Qwen3 / Qwen3-MoE models with a preallocated KV cache and few Python operations.

The sampler's per-token cost on small models is framework overhead and memory traffic more than
arithmetic: each `model(...)` call of transformers builds a 4D mask, concatenates every layer's
keys/values onto a growing cache (a copy that grows with the response) and wraps outputs in
dataclasses. This step runs the same weights in the same order with:

- keys/values written in place into tensors allocated once for prompt + max_new_tokens, laid out
  [rows x kv heads, positions, head dim] so attention reads them as strided batches;
- q/k/v and, for dense MLPs, gate/up projections as one matmul each (weights concatenated once per
  `sample` call: every output element is still one dot product over the hidden size);
- q_norm and k_norm as one RMSNorm over both (per-head weight rows), rotary on q and k at once, with
  cos/sin of every position computed once by the model's own rotary module;
- attention of the one new query per row as baddbmm + softmax + bmm over each kv head's query group
  (no repeated keys; on 2 CPU cores at 512 rows x ~130 positions torch's flash kernel took 2.8 ms a
  layer, these 1.9 ms);
- MoE blocks called as the model's own modules (router hooks, as used by `routing.RouterTap`, fire
  as in a normal forward).

Tried and dropped: `torch.compile` of the step (recompiles on every new length, minutes of compile
time, no faster once it falls back).

Same function as the model's forward up to float summation order (tests/test_rollout.py compares
logits step by step and the sampled tokens of whole rollouts). Models it does not recognise fall
back to the plain `model(...)` loop (`StaticDecoder.supports`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

_TYPES = ("qwen3", "qwen3_moe")


class StaticDecoder:
    """Decode state of one `sample` call: a KV cache of `capacity` positions for `b` rows."""

    @staticmethod
    def supports(model) -> bool:
        c = getattr(model, "config", None)
        if c is None or getattr(c, "model_type", None) not in _TYPES:
            return False
        if getattr(c, "_attn_implementation", "sdpa") not in ("sdpa", "eager"):
            return False
        rope = getattr(c, "rope_parameters", None) or {}
        if rope.get("rope_type", "default") != "default" or getattr(c, "use_sliding_window", False):
            return False
        if getattr(c, "attention_bias", False) or getattr(c, "hidden_act", "silu") != "silu":
            return False
        # training mode changes nothing in these models unless attention dropout is on (their only dropout)
        if model.training and getattr(c, "attention_dropout", 0.0):
            return False
        return next(model.parameters()).dtype == torch.float32

    def __init__(self, model, prefill_cache, capacity: int):
        inner = model.model
        c = model.config
        self.eps = c.rms_norm_eps
        self.embed, self.norm_w, self.lm_head = inner.embed_tokens, inner.norm.weight, model.lm_head
        self.h, self.kvh = c.num_attention_heads, c.num_key_value_heads
        self.d = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
        self.layers = []
        for i, layer in enumerate(inner.layers):
            a = layer.self_attn
            qkv = torch.cat([a.q_proj.weight, a.k_proj.weight, a.v_proj.weight], 0)
            mlp = layer.mlp
            dense = all(hasattr(mlp, n) for n in ("gate_proj", "up_proj", "down_proj"))
            gate_up = torch.cat([mlp.gate_proj.weight, mlp.up_proj.weight], 0) if dense else None
            k0, v0 = _layer_kv(prefill_cache, i)
            b, _, p, _ = k0.shape
            k = k0.new_empty(b * self.kvh, capacity, self.d)
            v = v0.new_empty(b * self.kvh, capacity, self.d)
            k[:, :p], v[:, :p] = k0.reshape(b * self.kvh, p, self.d), v0.reshape(b * self.kvh, p, self.d)
            qkn = torch.cat([a.q_norm.weight.expand(self.h, self.d), a.k_norm.weight.expand(self.kvh, self.d)])
            self.layers.append(dict(ln1=layer.input_layernorm.weight, ln2=layer.post_attention_layernorm.weight,
                                    qkv=qkv, qkn=qkn, o=a.o_proj.weight,
                                    scale=a.scaling, mlp=mlp, gate_up=gate_up,
                                    down=mlp.down_proj.weight if dense else None, k=k, v=v))
        dev = k0.device
        pos = torch.arange(capacity, device=dev)[None]
        cos, sin = inner.rotary_emb(self.norm_w.new_empty(1), pos)
        self.half = self.d // 2
        self.cos = cos[0]  # [positions, d]
        self.sin_signed = torch.cat([-sin[0, :, : self.half], sin[0, :, self.half:]], -1)

    def select(self, keep: Tensor) -> None:
        """Keep only cache rows `keep` (in that order)."""
        rows = (keep[:, None] * self.kvh + torch.arange(self.kvh, device=keep.device)).reshape(-1)
        for lay in self.layers:
            lay["k"], lay["v"] = lay["k"][rows], lay["v"][rows]

    def step(self, tokens: Tensor, positions: Tensor, t: int, mask: Tensor) -> Tensor:
        """Feed one token per row at cache slot t; positions [n] (rotary positions, real tokens only);
        mask [n, t + 1] (1 = attend). Returns the next-token logits [n, V]."""
        n = tokens.shape[0]
        h, kvh, d, g = self.h, self.kvh, self.d, self.h // self.kvh
        x = self.embed(tokens)[:, None]  # [n, 1, H]
        cos, sin = self.cos[positions][:, None], self.sin_signed[positions][:, None]  # [n, 1, d]
        # additive mask of the attended slots, one row per (sequence, kv head), shared by all layers
        bias = torch.zeros(mask.shape, dtype=x.dtype, device=x.device).masked_fill_(mask == 0, float("-inf"))
        bias = bias.repeat_interleave(kvh, 0)[:, None]  # [n * kvh, 1, t + 1]
        for lay in self.layers:
            y = F.rms_norm(x, (x.shape[-1],), lay["ln1"], self.eps)
            qk, v = F.linear(y, lay["qkv"]).view(n, h + 2 * kvh, d).split([h + kvh, kvh], 1)
            # q_norm and k_norm in one call (per-head weight rows), then rotary on q and k together:
            # rotate_half(x) * sin == roll(x, d/2) * [-sin_1, sin_2], bit for bit
            qk = F.rms_norm(qk, (d,), None, self.eps) * lay["qkn"]
            qk = qk * cos + qk.roll(self.half, -1) * sin
            kc, vc = lay["k"], lay["v"]  # [n * kvh, capacity, d]
            kc[:, t] = qk[:, h:].reshape(n * kvh, d)
            vc[:, t] = v.reshape(n * kvh, d)
            # the one new query per row against its cache: q of the kv head's g query heads at once
            q = qk[:, :h].reshape(n * kvh, g, d)
            s = torch.baddbmm(bias, q, kc[:, : t + 1].transpose(1, 2), alpha=lay["scale"])
            o = torch.bmm(torch.softmax(s, -1), vc[:, : t + 1])  # [n * kvh, g, d]
            x = x + F.linear(o.view(n, 1, h * d), lay["o"])
            y = F.rms_norm(x, (x.shape[-1],), lay["ln2"], self.eps)
            if lay["gate_up"] is not None:
                gate, up = F.linear(y, lay["gate_up"]).chunk(2, -1)
                x = x + F.linear(F.silu(gate) * up, lay["down"])
            else:
                x = x + lay["mlp"](y)
        return self.lm_head(F.rms_norm(x, (x.shape[-1],), self.norm_w, self.eps))[:, 0]


def _layer_kv(cache, i: int) -> tuple[Tensor, Tensor]:
    """Keys and values of layer i in a transformers cache object (5.x `layers[i].keys`, 4.x lists)."""
    if hasattr(cache, "layers"):
        return cache.layers[i].keys, cache.layers[i].values
    return cache.key_cache[i], cache.value_cache[i]
