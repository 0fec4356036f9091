"""No wasted passes: the loop computes each log-prob it needs once.

Per rollout batch of N mini-batches: sampling (one prefill of the distinct prompts + at most
max_new_tokens - 1 decode steps), N - 1 no-grad trainer passes for pi_old (mini-batch 0 is trained
before any update, so its own training forward is its pi_old; they double as mu when the engine
shares the trainer), N passes with grad for the updates; none for pi_old in bypass mode.
"""

import pytest
import torch

from conftest import TINY
from offpolicy_bench.config import build_config
from offpolicy_bench.models import load_model
from offpolicy_bench import trainer as trainer_mod


def count_passes(monkeypatch, overrides):
    """Trainer log-prob passes (one per sequence_logprobs call, whatever number of model calls it
    makes inside: the shared-prompt path runs the prompts once, then the responses) and sampling
    model calls (everything else the model runs)."""
    calls, inside = [], []
    real_load, real_logprobs = trainer_mod.load_model, trainer_mod.sequence_logprobs

    def logprobs(*args, **kwargs):
        calls.append("train" if torch.is_grad_enabled() else "no_grad")
        inside.append(True)
        try:
            return real_logprobs(*args, **kwargs)
        finally:
            inside.pop()

    def load_and_hook(cfg, task, log=print):
        model, tok, info = real_load(cfg, task, log)

        def hook(mod, args, kwargs):
            if not inside:
                calls.append("sample")

        model.register_forward_pre_hook(hook, with_kwargs=True)
        return model, tok, info

    monkeypatch.setattr(trainer_mod, "load_model", load_and_hook)
    monkeypatch.setattr(trainer_mod, "sequence_logprobs", logprobs)
    cfg = build_config([*TINY, "log.eval_every=1000", *overrides])
    trainer_mod.train(cfg, log=lambda m: None)
    return calls, cfg


@pytest.mark.parametrize("n", [1, 2, 4])
def test_forward_passes_per_rollout_batch(monkeypatch, tmp_path, n):
    calls, cfg = count_passes(monkeypatch, [f"staleness={n}", "train.steps=8", f"log.out_dir={tmp_path}"])
    batches = 8 // n
    assert calls.count("train") == 8  # one pass with grad per gradient step
    assert calls.count("no_grad") == 8 - batches  # pi_old once per mini-batch after the first, reused as mu
    # sampling: per rollout batch one prefill + decode steps; evals (start + end) are greedy sampling too
    evals = 2
    assert calls.count("sample") <= (batches + evals) * cfg.rollout.max_new_tokens


def test_bypass_with_own_engine_skips_the_pi_old_pass(monkeypatch, tmp_path):
    calls, _ = count_passes(monkeypatch, ["staleness=2", "train.steps=4", "rollout.dtype=bfloat16",
                                          "correction_mode=bypass", f"log.out_dir={tmp_path}"])
    assert calls.count("train") == 4 and calls.count("no_grad") == 0
