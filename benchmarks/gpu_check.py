"""The GPU check (issue 15): correctness of the HF engine and trainer on CUDA, and speed at a real
model's shape, in one script that downloads nothing and finishes in a few minutes.

    python benchmarks/gpu_check.py [--out gpu_check.json]      # needs a CUDA device, torch,
                                                               # transformers and trl (.[bench])
    python benchmarks/gpu_check.py --tiny --device cpu          # the same code paths, tiny, on a CPU

1. Correctness, dense and MoE tiny models (random init, fp32): the sampler's log mu against the
   trainer's log pi of the same tokens, and the shared-prompt log-prob pass against the plain padded
   forward in value and in every parameter's gradient (max abs differences).
2. Speed at the shape of Qwen3-0.6B (hidden 1024, 28 layers, 16 heads / 8 kv heads of 128, MLP 3072,
   vocab 151,936, tied embeddings; built from a config with random weights, fp32 — our trainer trains
   in fp32, so TRL runs in fp32 too, side by side), 8 prompts x 8 samples = 64 sequences per step,
   256-token responses (a random model almost never emits EOS, so responses run to the cap):
   - sampler tokens/s, ours vs `model.generate` (same distribution, same prompts);
   - one RL step, ours (the real trainer loop, staleness 1, `model=PATH`) vs TRL's GRPOTrainer;
   - peak GPU memory of each (torch.cuda.max_memory_allocated).
Writes one JSON object per part to stdout and all of them to --out.
"""

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time

import torch

import rl_step
from common import cpu_model, emit, generate_tokens

QWEN3_06B = dict(hidden_size=1024, num_hidden_layers=28, num_attention_heads=16, num_key_value_heads=8,
                 head_dim=128, intermediate_size=3072, vocab_size=151936)
TINY = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
            intermediate_size=128, vocab_size=512)


def correctness(dev) -> list[dict]:
    from offpolicy_bench.config import build_config
    from offpolicy_bench.models import build_model, char_tokenizer
    from offpolicy_bench.rollout import sample, sequence_logprobs

    tok = char_tokenizer()
    prompts = ["3+4=", "91-17=", "5=", "2*3=", "# add 3, then mul 4\ndef f(x):\n    return "]
    rows = []
    for name in ("dense", "moe"):
        cfg = build_config([f"model={name}"])
        model = build_model(cfg.model, len(tok), tok.pad_token_id, tok.eos_token_id, seed=0).to(dev)
        model.eval()
        ro = sample(model, tok, prompts, 8, 1.0, 12, generator=torch.Generator(dev).manual_seed(0))
        with torch.no_grad():
            logp, _ = sequence_logprobs(model, ro, 1.0)
        behav_gap = (logp - ro.behav_logp).abs().max().item()
        model.train()
        out = {}
        for share in (True, False):
            model.zero_grad()
            lp, _ = sequence_logprobs(model, ro, 1.0, share_prefix=share)
            (lp * torch.linspace(-1, 1, lp.numel(), device=dev).view_as(lp)).sum().backward()
            out[share] = (lp.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
        rows.append({"part": "correctness", "model": name, "sequences": int(ro.input_ids.shape[0]),
                     "behav_vs_trainer_max_abs": behav_gap,
                     "shared_vs_plain_logp_max_abs": (out[True][0] - out[False][0]).abs().max().item(),
                     "shared_vs_plain_grad_max_abs": max((out[True][1][n] - out[False][1][n]).abs().max().item()
                                                         for n in out[False][1]),
                     "same_params_with_grad": out[True][1].keys() == out[False][1].keys()})
    return rows


def build_shape_model(shape: dict, d: str):
    """A Qwen3 model of the given shape, random weights (seed 0), saved with our char tokenizer."""
    from transformers import AutoModelForCausalLM, Qwen3Config

    from offpolicy_bench.models import char_tokenizer

    tok = char_tokenizer()
    config = Qwen3Config(**shape, max_position_embeddings=2048, tie_word_embeddings=True, pad_token_id=tok.pad_token_id,
                         eos_token_id=tok.eos_token_id, bos_token_id=None)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32, attn_implementation="sdpa")
    model.save_pretrained(f"{d}/model")
    tok.save_pretrained(f"{d}/model")
    return model, tok


def peak_reset(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def peak_gb(dev):
    return torch.cuda.max_memory_allocated() / 2**30 if dev.type == "cuda" else None


def speed(dev, shape: dict, max_new: int, steps: int, repeat: int) -> list[dict]:
    from offpolicy_bench.config import build_config
    from offpolicy_bench.rollout.hf import encode_prompts, sample
    from offpolicy_bench.tasks_api import build_task

    d = tempfile.mkdtemp()
    model, tok = build_shape_model(shape, d)
    model = model.to(dev).eval()
    cfg = build_config(["task=math_cot"])
    task = build_task(cfg)
    prompts = [e.prompt for e in task.train_examples(8, random.Random(0))]
    gen = torch.Generator(dev).manual_seed(0)
    ids, attn = encode_prompts(tok, [p for p in prompts for _ in range(8)])
    ids, attn = ids.to(dev), attn.to(dev)

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    def ours():
        ro = sample(model, tok, prompts, 8, 1.0, max_new, generator=gen)
        sync()
        return int(ro.response_mask.sum())

    def generate():
        n = generate_tokens(model, tok, ids, attn, max_new)
        sync()
        return n

    res = {"ours": [], "generate": []}
    peaks = {}
    for i in range(repeat + 1):  # alternate; the first round warms up
        for name, fn in (("ours", ours), ("generate", generate)):
            peak_reset(dev)
            t0 = time.perf_counter()
            n = fn()
            if i:
                res[name].append(n / (time.perf_counter() - t0))
            peaks[name] = peak_gb(dev)
    rows = [{"part": "sampler", "sequences": 64, "max_new_tokens": max_new,
             "tok_per_s_ours": statistics.median(res["ours"]), "tok_per_s_generate": statistics.median(res["generate"]),
             "speedup": statistics.median(res["ours"]) / statistics.median(res["generate"]),
             "peak_gb_ours": peaks["ours"], "peak_gb_generate": peaks["generate"], "target": 2.0}]
    del model
    # one RL step each, on the saved model
    extra = [f"model={d}/model", f"device={dev.type}", "warmstart.steps=0", "task=math_cot",
             f"rollout.max_new_tokens={max_new}", "task.eval_size=8", "log.eval_samples=0"]
    peak_reset(dev)
    ours_steps, mean_len = rl_step.ours(d, "ours", extra, steps, 8, 8)
    ours_peak = peak_gb(dev)
    peak_reset(dev)
    trl_steps = rl_step.trl(f"{d}/model", task, steps, 8, 8, max_new, use_cpu=dev.type == "cpu")
    trl_peak = peak_gb(dev)
    import trl

    t_ours, t_trl = statistics.median(ours_steps), statistics.median(trl_steps)
    rows.append({"part": "rl_step", "trl": trl.__version__, "sequences_per_step": 64, "max_new_tokens": max_new,
                 "steps_timed": len(trl_steps), "ours_s_per_step": t_ours, "trl_s_per_step": t_trl,
                 "speedup": t_trl / t_ours, "mean_response_tokens_ours": mean_len, "peak_gb_ours": ours_peak,
                 "peak_gb_trl": trl_peak, "target": 2.0})
    return rows


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--tiny", action="store_true", help="a tiny model instead of Qwen3-0.6B's shape (a smoke test)")
    ap.add_argument("--max-new", type=int, default=256)
    ap.add_argument("--steps", type=int, default=5, help="RL steps of each trainer (the first is not timed)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    dev = torch.device(a.device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        print("no CUDA device (use --device cpu --tiny for a smoke test)", file=sys.stderr)
        return 2
    where = torch.cuda.get_device_name(0) if dev.type == "cuda" else cpu_model()
    rows = correctness(dev) + speed(dev, TINY if a.tiny else QWEN3_06B, a.max_new, a.steps, a.repeat)
    for r in rows:
        r.update(device=where, shape="tiny" if a.tiny else "qwen3-0.6b")
        emit({"bench": "gpu_check", **r})
    if a.out:
        with open(a.out, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
