"""One RL step, ours and TRL's GRPOTrainer, timed the same way (shared by vs_trl.py and gpu_check.py).

Both: the same model directory (or our built-in model), prompts, group size, response cap, T=1 (no
top-k/top-p), GRPO advantages with std scaling, token-level clipped loss (eps 0.2 as TRL's "grpo";
ours token_clip with eps_high=0.2 and no dual clip), no KL, one optimizer step per generation,
AdamW lr 1e-4, grad clip 1.0. A step = sampling + grading + advantages + old log-probs + update.
"""

from __future__ import annotations

import functools
import random
import time


def ours(out_dir: str, name: str, extra: list[str], steps: int, prompts: int, group: int,
         share_prefix: bool = True) -> tuple[list[float], float]:
    """Per-step wall seconds (the first step dropped) of our trainer at staleness 1, as it logs them,
    and the mean response length. `share_prefix=False`: plain padded log-prob forwards."""
    import pandas as pd

    from offpolicy_bench import trainer as trainer_mod
    from offpolicy_bench.config import build_config
    from offpolicy_bench.rollout import sequence_logprobs

    trainer_mod.sequence_logprobs = functools.partial(sequence_logprobs, share_prefix=share_prefix)
    try:
        cfg = build_config(["method=token_clip", "method.eps_high=0.2", "method.dual_clip_c=null", "staleness=1",
                            f"train.steps={steps}", f"train.minibatch_prompts={prompts}",
                            f"rollout.group_size={group}", f"log.eval_every={10 * steps}", "log.progress=false",
                            f"log.out_dir={out_dir}", f"name={name}", "optim.grad_clip=1.0", "optim.lr=1e-4", *extra])
        trainer_mod.train(cfg, log=lambda m: None)
    finally:
        trainer_mod.sequence_logprobs = sequence_logprobs
    m = pd.read_parquet(f"{out_dir}/{name}/metrics.parquet")
    tr = m[m.split == "train"]
    return (tr[tr.metric == "time_step_s"].sort_values("step").value.tolist()[1:],
            float(tr[tr.metric == "response_len"].value.mean()))


def trl(model_dir: str, task, steps: int, prompts: int, group: int, max_new: int, use_cpu: bool = True,
        bf16: bool = False) -> list[float]:
    """Per-step wall seconds (the first dropped) of TRL's GRPOTrainer on the model saved in model_dir,
    graded by our task's own grader."""
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    exs = task.train_examples(prompts * (steps + 2), random.Random(0))
    ds = Dataset.from_list([{"prompt": e.prompt, "answer": e.answer} for e in exs])
    by_prompt = {e.prompt: e for e in exs}

    def reward(prompts, completions, **kw):  # our task's own grader (the sandbox for code), as in our step
        return [g.reward for g in task.grade_batch([by_prompt[p] for p in prompts], completions)]

    times = []

    class Timer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            self.t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            if torch.cuda.is_available() and not use_cpu:
                torch.cuda.synchronize()
            times.append(time.perf_counter() - self.t0)

    tok = AutoTokenizer.from_pretrained(model_dir, padding_side="left")
    conf = GRPOConfig(output_dir=f"{model_dir}/../trl", per_device_train_batch_size=prompts * group,
                      num_generations=group, max_completion_length=max_new, temperature=1.0,
                      top_p=1.0, top_k=0, beta=0.0, loss_type="grpo", epsilon=0.2, learning_rate=1e-4,
                      lr_scheduler_type="constant", warmup_steps=0, max_grad_norm=1.0, num_iterations=1,
                      steps_per_generation=1, max_steps=steps, use_cpu=use_cpu, bf16=bf16, report_to=[],
                      logging_steps=10_000, save_strategy="no", gradient_checkpointing=False, seed=0,
                      shuffle_dataset=False, dataloader_num_workers=0)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16 if bf16 else torch.float32)
    trainer = GRPOTrainer(model=model, reward_funcs=reward, args=conf, train_dataset=ds, processing_class=tok,
                          callbacks=[Timer()])
    trainer.train()
    return times[1:]
