"""Rollout generation: our HF engine's sampling loop vs transformers' model.generate, same model,
same prompts, same sampling distribution (T=1, no top-k/top-p), same max_new_tokens.

    python benchmarks/generation.py [--model dense|moe] [--task math|math_cot|code] [--length 128]
                                    [--prompts 64] [--group 8] [--max-new N] [--repeat 9]
`--length L` (math_cot): operands of round(L/8) digits, so the written-out chains are about L tokens
(64 -> ~66, 128 -> ~131), cut at the task's own cap; the benchmark's warm start is short
(`warmstart.steps=300`, fit check off): a benchmark model, not a result. Prints one JSON object:
tokens/s of ours (the static-cache decode step), of ours with the plain `model(...)` decode loop,
and of `generate`, interleaved (A B C A B C ...), and the ratio to `generate` (target >= 2x).
"""

import argparse
import random
import sys

import torch

from common import default_model, emit, generate_tokens, interleaved, length_overrides


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--group", type=int, default=8)
    ap.add_argument("--max-new", type=int, default=None, help="default: the task's own cap")
    ap.add_argument("--repeat", type=int, default=9)
    ap.add_argument("--model", default="dense")
    ap.add_argument("--task", default="math")
    ap.add_argument("--length", type=int, default=None, help="math_cot: target response length in tokens")
    a = ap.parse_args()
    from offpolicy_bench.rollout.hf import encode_prompts, sample
    from offpolicy_bench.rollout.static_decode import StaticDecoder

    cfg, model, tok, task = default_model([f"model={a.model}", f"task={a.task}", *length_overrides(a.task, a.length)])
    max_new = a.max_new or cfg.rollout.max_new_tokens
    prompts = [e.prompt for e in task.train_examples(a.prompts, random.Random(0))]
    gen = torch.Generator().manual_seed(0)
    counts = {}
    assert StaticDecoder.supports(model)

    def ours():
        ro = sample(model, tok, prompts, a.group, 1.0, max_new, generator=gen)
        counts["ours"] = int(ro.response_mask.sum())

    def ours_plain_loop():
        supports = StaticDecoder.supports
        StaticDecoder.supports = staticmethod(lambda m: False)
        try:
            ro = sample(model, tok, prompts, a.group, 1.0, max_new, generator=gen)
        finally:
            StaticDecoder.supports = supports
        counts["plain_loop"] = int(ro.response_mask.sum())

    ids, attn = encode_prompts(tok, [p for p in prompts for _ in range(a.group)])

    def hf_generate():
        counts["generate"] = generate_tokens(model, tok, ids, attn, max_new)

    t = interleaved({"ours": ours, "plain_loop": ours_plain_loop, "generate": hf_generate}, a.repeat)
    tps = {k: counts[k] / t[k] for k in t}
    n = a.prompts * a.group
    emit({"bench": "generation", "model": a.model, "task": a.task, "sequences": n, "max_new_tokens": max_new,
          "mean_tokens_ours": counts["ours"] / n, "mean_tokens_generate": counts["generate"] / n,
          "tok_per_s_ours": tps["ours"], "tok_per_s_plain_loop": tps["plain_loop"],
          "tok_per_s_generate": tps["generate"], "speedup": tps["ours"] / tps["generate"],
          "speedup_plain_loop": tps["plain_loop"] / tps["generate"], "target": 2.0})
    return 0


if __name__ == "__main__":
    sys.exit(main())
