"""Shared setup for the benchmarks: the default run's model and task, built or taken from cache."""

from __future__ import annotations

import json
import time

import torch

from offpolicy_bench.results import cpu_model  # the CPU name every figure is stated with (gpu_check imports it from here)


def default_model(extra: list[str] | None = None):
    from offpolicy_bench.config import build_config
    from offpolicy_bench.models import load_model
    from offpolicy_bench.tasks_api import build_task

    cfg = build_config(["log.progress=false", *(extra or [])])
    task = build_task(cfg)
    model, tok, _ = load_model(cfg, task, log=lambda m: None)
    return cfg, model.eval(), tok, task


def timeit(fn, repeat: int = 5, warmup: int = 1) -> float:
    """Median wall seconds of fn() over `repeat` calls after `warmup` calls."""
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return sorted(ts)[len(ts) // 2]


def emit(obj: dict) -> None:
    print(json.dumps({"date": time.strftime("%Y-%m-%d"), "torch": torch.__version__, "cpu": cpu_model(),
                      "threads": torch.get_num_threads(), **obj}), flush=True)


def interleaved(fns: dict, repeat: int = 7, warmup: int = 1) -> dict[str, float]:
    """Median seconds of each fn, run alternately (A B A B ...) so machine noise hits both alike."""
    for _ in range(warmup):
        for f in fns.values():
            f()
    ts = {k: [] for k in fns}
    for _ in range(repeat):
        for k, f in fns.items():
            t0 = time.perf_counter()
            f()
            ts[k].append(time.perf_counter() - t0)
    return {k: sorted(v)[len(v) // 2] for k, v in ts.items()}


def length_overrides(task: str, length: int | None) -> list[str]:
    """Config overrides for a target response length on math_cot: operands of round(length / 8) digits
    (about 8 tokens per digit: 64 -> ~66, 128 -> ~131 tokens) and a short warm start (300 steps, fit
    check off): the model only has to write chains of the right length, it is not a result."""
    if length is None:
        return []
    if task != "math_cot":
        raise SystemExit(f"--length needs --task math_cot (got --task {task})")
    digits = min(16, max(1, round(length / 8)))
    return [f"task.digits={digits}", "warmstart.steps=300", "warmstart.max_excess=null"]


@torch.no_grad()
def generate_tokens(model, tok, ids, attn, max_new: int) -> int:
    """`model.generate` at T=1 (no top-k/top-p), with the scores log mu needs; returns the number of
    response tokens up to and including each row's first EOS."""
    out = model.generate(input_ids=ids, attention_mask=attn, do_sample=True, temperature=1.0, top_k=0, top_p=1.0,
                         max_new_tokens=max_new, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                         output_scores=True, return_dict_in_generate=True)
    new = out.sequences[:, ids.shape[1]:]
    ended = (new == tok.eos_token_id).cumsum(-1)
    return int(((ended == 0) | ((ended == 1) & (new == tok.eos_token_id))).sum())
