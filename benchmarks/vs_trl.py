"""One RL step here vs one GRPOTrainer step in TRL, same model, prompts, group size, lengths, loss.

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
import time

import torch

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

    # ---- ours: the real trainer loop, staleness 1, per-step wall times it logs itself; once as shipped
    #      (each distinct prompt computed once in the log-prob passes) and once with plain padded
    #      forwards (share_prefix=False), to show what that saving is worth side by side
    import functools

    import pandas as pd

    from offpolicy_bench import trainer as trainer_mod
    from offpolicy_bench.config import build_config
    from offpolicy_bench.rollout import sequence_logprobs

    lengths = {}

    def ours(name, share_prefix):
        trainer_mod.sequence_logprobs = functools.partial(sequence_logprobs, share_prefix=share_prefix)
        try:
            cfg_ = build_config(["method=token_clip", "method.eps_high=0.2", "method.dual_clip_c=null", "staleness=1",
                                 f"train.steps={a.steps}", f"train.minibatch_prompts={a.prompts}",
                                 f"rollout.group_size={a.group}", f"log.eval_every={10 * a.steps}",
                                 "log.progress=false", f"log.out_dir={d}", f"name={name}", "optim.grad_clip=1.0",
                                 *extra])
            trainer_mod.train(cfg_, log=lambda m: None)
        finally:
            trainer_mod.sequence_logprobs = sequence_logprobs
        m = pd.read_parquet(f"{d}/{name}/metrics.parquet")
        tr = m[m.split == "train"]
        lengths[name] = tr[tr.metric == "response_len"].value.mean()
        return tr[tr.metric == "time_step_s"].sort_values("step").value.tolist()[1:]

    plain_steps = ours("plain", False)
    ours_steps = ours("ours", True)

    # ---- TRL GRPOTrainer on the same model and prompts
    import random

    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    exs = task.train_examples(a.prompts * (a.steps + 2), random.Random(0))
    ds = Dataset.from_list([{"prompt": e.prompt, "answer": e.answer} for e in exs])

    by_prompt = {e.prompt: e for e in exs}

    def reward(prompts, completions, **kw):  # our task's own grader (the sandbox for code), as in our step
        return [g.reward for g in task.grade_batch([by_prompt[p] for p in prompts], completions)]

    times = []

    class Timer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            self.t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            times.append(time.perf_counter() - self.t0)

    trl_tok = AutoTokenizer.from_pretrained(f"{d}/model", padding_side="left")
    conf = GRPOConfig(output_dir=f"{d}/trl", per_device_train_batch_size=a.prompts * a.group,
                      num_generations=a.group, max_completion_length=cfg.rollout.max_new_tokens, temperature=1.0,
                      top_p=1.0, top_k=0, beta=0.0, loss_type="grpo", epsilon=0.2, learning_rate=1e-4,
                      lr_scheduler_type="constant", warmup_steps=0, max_grad_norm=1.0, num_iterations=1,
                      steps_per_generation=1, max_steps=a.steps, use_cpu=True, bf16=False, report_to=[],
                      logging_steps=10_000, save_strategy="no", gradient_checkpointing=False, seed=0,
                      shuffle_dataset=False, dataloader_num_workers=0)
    trainer = GRPOTrainer(model=AutoModelForCausalLM.from_pretrained(f"{d}/model", dtype=torch.float32),
                          reward_funcs=reward, args=conf, train_dataset=ds, processing_class=trl_tok,
                          callbacks=[Timer()])
    trainer.train()
    trl_steps = times[1:]
    seqs = a.prompts * a.group
    t_ours, t_trl = statistics.median(ours_steps), statistics.median(trl_steps)
    t_plain = statistics.median(plain_steps)
    import trl

    emit({"bench": "rl_step_vs_trl", "trl": trl.__version__, "sequences_per_step": seqs, "steps_timed": len(trl_steps),
          "ours_s_per_step": t_ours, "trl_s_per_step": t_trl, "ours_seq_per_s": seqs / t_ours,
          "trl_seq_per_s": seqs / t_trl, "speedup": t_trl / t_ours, "target": 2.0,
          "ours_plain_forward_s_per_step": t_plain, "speedup_plain_forward": t_trl / t_plain,
          "task": a.task, "max_new_tokens": cfg.rollout.max_new_tokens,
          "mean_response_tokens_ours": lengths["ours"]})
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
