"""Rollout generation: our HF engine's sampling loop vs transformers' model.generate, same model,
same prompts, same sampling distribution (T=1, no top-k/top-p), same max_new_tokens.

    python benchmarks/generation.py [--prompts 64] [--group 8] [--max-new 8] [--repeat 5]
Prints one JSON object: tokens/s of each and their ratio (target >= 1.5x).
"""

import argparse
import random
import sys

import torch

from common import default_model, emit, interleaved


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--group", type=int, default=8)
    ap.add_argument("--max-new", type=int, default=8)
    ap.add_argument("--repeat", type=int, default=9)
    ap.add_argument("--model", default="dense")
    a = ap.parse_args()
    from offpolicy_bench.rollout.hf import encode_prompts, sample

    cfg, model, tok, task = default_model([f"model={a.model}"])
    prompts = [e.prompt for e in task.train_examples(a.prompts, random.Random(0))]
    gen = torch.Generator().manual_seed(0)
    counts = {}

    def ours():
        ro = sample(model, tok, prompts, a.group, 1.0, a.max_new, generator=gen)
        counts["ours"] = int(ro.response_mask.sum())

    ids, attn = encode_prompts(tok, [p for p in prompts for _ in range(a.group)])

    @torch.no_grad()
    def hf_generate():
        out = model.generate(input_ids=ids, attention_mask=attn, do_sample=True, temperature=1.0, top_k=0, top_p=1.0,
                             max_new_tokens=a.max_new, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                             output_scores=True, return_dict_in_generate=True)  # scores: what log mu needs
        new = out.sequences[:, ids.shape[1]:]
        ended = (new == tok.eos_token_id).cumsum(-1)
        counts["generate"] = int(((ended == 0) | ((ended == 1) & (new == tok.eos_token_id))).sum())

    t = interleaved({"ours": ours, "generate": hf_generate}, a.repeat)
    t_ours, t_gen = t["ours"], t["generate"]
    emit({"bench": "generation", "model": a.model, "sequences": a.prompts * a.group, "max_new_tokens": a.max_new,
          "tokens_ours": counts["ours"], "tokens_generate": counts["generate"],
          "tok_per_s_ours": counts["ours"] / t_ours, "tok_per_s_generate": counts["generate"] / t_gen,
          "speedup": (counts["ours"] / t_ours) / (counts["generate"] / t_gen), "target": 1.5})
    return 0


if __name__ == "__main__":
    sys.exit(main())
