"""Achieved FLOP/s of the RL update vs the machine's fp32 matmul peak, measured in the same run.

    python benchmarks/train_flops.py [--minibatch-prompts 8 32 128]
FLOPs per update = 6 x parameters x tokens (forward + backward; the tied embedding counted once,
as the output projection) + attention 12 x layers x hidden x T^2 per sequence; tokens are the
padded [B, T] a plain forward computes; the shipped log-prob pass computes each distinct prompt
once (shared prefix), so both are timed side by side and each is credited only the FLOPs it does
(`plain_flops_per_s_fraction` credits the shared pass with the plain pass's work: the
throughput a user sees, not hardware efficiency). The update is one method loss (vespo) forward, backward and
AdamW step on a real rollout mini-batch. Target: >= 50% of peak.
"""

import argparse
import random
import sys

import torch

from common import default_model, emit, interleaved, length_overrides


def matmul_peak(sizes=(256, 512, 1024, 2048), repeat: int = 10) -> float:
    """Best fp32 matmul FLOP/s over square sizes, best of `repeat` (a peak, not a typical value:
    1024 alone gave 67 GFLOP/s here while 512 gave ~200, cache effects)."""
    import time

    best = 0.0
    for n in sizes:
        a, b = torch.randn(n, n), torch.randn(n, n)
        for _ in range(3):
            torch.mm(a, b)
        for _ in range(repeat):
            t0 = time.perf_counter()
            torch.mm(a, b)
            best = max(best, 2 * n**3 / (time.perf_counter() - t0))
    return best


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--minibatch-prompts", type=int, nargs="+", default=[8, 32, 128])
    ap.add_argument("--model", default="dense")
    ap.add_argument("--task", default="math")
    ap.add_argument("--length", type=int, default=None, help="math_cot: target response length in tokens")
    a = ap.parse_args()
    from offpolicy_bench import PolicyBatch, get_method
    from offpolicy_bench.losses import grpo_advantages
    from offpolicy_bench.rollout import sample, sequence_logprobs

    cfg, model, tok, task = default_model([f"model={a.model}", f"task={a.task}",
                                             *length_overrides(a.task, a.length)])
    n_params = sum(p.numel() for p in model.parameters())
    layers, hidden = model.config.num_hidden_layers, model.config.hidden_size
    opt = torch.optim.AdamW(model.parameters(), lr=1e-12)  # a real step, negligible change
    method = get_method("vespo")
    peak = matmul_peak()
    for mbp in a.minibatch_prompts:
        prompts = [e.prompt for e in task.train_examples(mbp, random.Random(0))]
        ro = sample(model, tok, prompts, cfg.rollout.group_size, 1.0, cfg.rollout.max_new_tokens,
                    generator=torch.Generator().manual_seed(0))
        adv = grpo_advantages(torch.rand(ro.input_ids.shape[0]).round(), cfg.rollout.group_size)
        model.train()

        b, T = ro.input_ids.shape
        p = ro.prompt_len
        uniq = torch.unique_consecutive(ro.input_ids[:, :p], dim=0).shape[0]

        def step(share):
            logp, _ = sequence_logprobs(model, ro, 1.0, share_prefix=share)
            out = method(PolicyBatch(logp, logp.detach(), ro.behav_logp, adv, ro.response_mask))
            opt.zero_grad(set_to_none=True)
            out.loss.backward()
            opt.step()

        ts = interleaved({"plain": lambda: step(False), "shared": lambda: step(True)}, repeat=7, warmup=2)
        # FLOPs each variant really computes: plain = every row's padded [T] positions; shared = the
        # distinct prompts' first p-1 positions once, then each row's last T-p+1 positions
        flops = {"plain": 6 * n_params * b * T + 12 * layers * hidden * T * T * b,
                 "shared": 6 * n_params * (uniq * (p - 1) + b * (T - p + 1))
                 + 12 * layers * hidden * (uniq * (p - 1) ** 2 + b * (T - p + 1) * T)}
        for kind in ("plain", "shared"):
            emit({"bench": "train_flops", "model": a.model, "task": a.task, "length": a.length, "params": n_params,
                  "minibatch_prompts": mbp, "sequences": b, "padded_len": T, "prompt_len": p,
                  "log_prob_pass": kind, "step_s": ts[kind], "achieved_gflops": flops[kind] / ts[kind] / 1e9,
                  "matmul_peak_gflops": peak / 1e9, "fraction_of_peak": flops[kind] / ts[kind] / peak,
                  "plain_flops_per_s_fraction": flops["plain"] / ts[kind] / peak, "target": 0.5})
    return 0


if __name__ == "__main__":
    sys.exit(main())
