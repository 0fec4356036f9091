"""One RL step here vs one GRPOTrainer step in TRL, same model, prompts, group size, lengths, loss
(the two runners: rl_step.py).

    pip install -e ".[bench]"            # trl
    python benchmarks/vs_trl.py [--steps 12] [--prompts 8] [--group 8] [--task math|code|math_cot] [--length 128]

Both: the default warm-started tiny model (saved as a normal HF dir for TRL), 8 prompts x 8
samples per step, the task's response cap (8 new tokens on math; `--length L` with `--task
math_cot`: chains of about L tokens, see common.length_overrides), T=1 (no top-k/top-p), GRPO advantages with std scaling,
token-level clipped loss (eps 0.2, as TRL's "grpo" loss; ours token_clip with eps_high=0.2 and
no dual clip), no KL, one optimizer step per generation, AdamW lr 1e-4, CPU fp32, the same
thread count. A step = sampling + grading + advantages + old log-probs + update. Reports the
median seconds per step (first step excluded) and sequences/s; target: >= 2x TRL.
"""

import argparse
import os
import statistics
import sys
import tempfile

import rl_step
from common import default_model, emit, length_overrides


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--group", type=int, default=8)
    ap.add_argument("--task", default="math", help="math (short prompts), code (41-character prompts), math_cot")
    ap.add_argument("--length", type=int, default=None, help="math_cot: target response length in tokens")
    a = ap.parse_args()
    extra = [f"task={a.task}", *length_overrides(a.task, a.length)]
    cfg, model, tok, task = default_model(extra)
    d = tempfile.mkdtemp()
    model.save_pretrained(f"{d}/model")
    tok.save_pretrained(f"{d}/model")

    # ours: the real trainer loop, its own per-step wall times; once as shipped (each distinct prompt
    # computed once in the log-prob passes) and once with plain padded forwards, side by side
    plain_steps, _ = rl_step.ours(d, "plain", extra, a.steps, a.prompts, a.group, share_prefix=False)
    ours_steps, mean_len = rl_step.ours(d, "ours", extra, a.steps, a.prompts, a.group)
    trl_steps = rl_step.trl(f"{d}/model", task, a.steps, a.prompts, a.group, cfg.rollout.max_new_tokens)
    seqs = a.prompts * a.group
    t_ours, t_trl = statistics.median(ours_steps), statistics.median(trl_steps)
    t_plain = statistics.median(plain_steps)
    import trl

    emit({"bench": "rl_step_vs_trl", "trl": trl.__version__, "sequences_per_step": seqs, "steps_timed": len(trl_steps),
          "ours_s_per_step": t_ours, "trl_s_per_step": t_trl, "ours_seq_per_s": seqs / t_ours,
          "trl_seq_per_s": seqs / t_trl, "speedup": t_trl / t_ours, "target": 2.0,
          "ours_plain_forward_s_per_step": t_plain, "speedup_plain_forward": t_trl / t_plain,
          "task": a.task, "max_new_tokens": cfg.rollout.max_new_tokens,
          "mean_response_tokens_ours": mean_len})
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
