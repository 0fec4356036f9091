"""MoE routing replay against a bf16 rollout engine (issue 14): rollout.routing_replay none vs r2 vs r3.

    python benchmarks/routing_replay.py [--steps 32] [--seed 0] [--task math_cot] > routing_replay.json
    python benchmarks/routing_replay.py --paired 8 [--model-arg model.experts_per_token=1]

Runs: one per mode from the same warm start (cached after the first) and seed, so the first rollout
batch is the same sample in every arm (replay acts on the trainer only): model=moe,
rollout.dtype=bfloat16, staleness=4, the default method (vespo). Means are over all gradient steps;
`*_mb0` over mini-batch 0 of each rollout batch (version gap 0: the engine mismatch alone);
`*_batch1` over the first rollout batch, the one sample every arm shares. After it the arms' weights
differ, so their later samples do too, and a run's mean KL(mu||pi) is mostly the policy's own drift
over the N - 1 stale mini-batches.

--paired K: no training. K rollout batches sampled by the bf16 engine from the warm start, each scored
by the fp32 trainer twice on the very same tokens, without replay and with the engine's routing
replayed (r3's pi_old pass): KL(mu||pi_old) (k3, as the trainer's kl_mu_pi), |log mu - log pi_old|,
and the (token, layer) routing disagreement. The difference is the routing's share of the mismatch.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time

import pandas as pd


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--task", default="math_cot")
    ap.add_argument("--staleness", type=int, default=4)
    ap.add_argument("--modes", default="none,r2,r3")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--paired", type=int, default=0, help="K > 0: the paired no-training measurement")
    ap.add_argument("--model-arg", action="append", default=[], help="extra model override, e.g. model.experts_per_token=1")
    a = ap.parse_args()
    if a.paired:
        return paired(a)
    from offpolicy_bench.config import build_config
    from offpolicy_bench.trainer import train

    rows = []
    with tempfile.TemporaryDirectory() as out:
        for mode in a.modes.split(","):
            cfg = build_config(["model=moe", *a.model_arg, f"task={a.task}", "rollout.dtype=bfloat16", f"staleness={a.staleness}",
                                f"rollout.routing_replay={mode}", f"train.steps={a.steps}", f"seed={a.seed}",
                                f"threads={a.threads}", f"log.eval_every={a.steps}", "log.progress=false",
                                f"log.out_dir={out}", f"name={mode}"])
            t0 = time.time()
            res = train(cfg, log=lambda m: print(m, file=sys.stderr))
            df = pd.read_parquet(f"{out}/{mode}/metrics.parquet")
            m = df[df.split == "train"].pivot(index="step", columns="metric", values="value")
            mb0 = m[m.version_gap == 0]

            def mean(col, frame=m):
                return float(frame[col].mean()) if col in frame else None

            natural = "moe_routing_diff_natural_frac" if mode != "none" else "moe_routing_diff_frac"
            row = {"routing_replay": mode, "model_args": a.model_arg, "task": a.task, "staleness": a.staleness, "steps": a.steps, "seed": a.seed,
                   "moe_routing_diff_frac": mean("moe_routing_diff_frac"),
                   "moe_routing_diff_natural_frac": mean(natural),
                   "moe_replay_override_frac": mean("moe_replay_override_frac"),
                   "kl_mu_pi": mean("kl_mu_pi"), "kl_mu_pi_mb0": mean("kl_mu_pi", mb0),
                   "kl_mu_pi_batch1": mean("kl_mu_pi", m[m.index <= a.staleness]),
                   "abs_log_rho_old": mean("abs_log_rho_old"),
                   "abs_log_rho_mu": mean("abs_log_rho_mu"),
                   "engine_gap_mean_abs": mean("engine_gap_mean_abs"), "engine_gap_max_abs": mean("engine_gap_max_abs"),
                   "eval_accuracy_start": res["eval_accuracy_start"], "eval_accuracy_final": res["eval_accuracy_final"],
                   "train_time_s": res["train_time_s"], "wall_s": round(time.time() - t0, 1)}
            rows.append(row)
            print(json.dumps(row), flush=True)
    summary(len(rows))
    return 0


def summary(rows: int) -> None:
    from offpolicy_bench.results import cpu_model

    cpu = cpu_model()
    print(json.dumps({"summary": "routing_replay", "date": time.strftime("%Y-%m-%d"), "cpu": cpu, "rows": rows}))


def paired(a) -> int:
    import dataclasses
    import random

    import torch

    from offpolicy_bench.config import build_config
    from offpolicy_bench.models import load_model
    from offpolicy_bench.rollout import sequence_logprobs
    from offpolicy_bench.rollout.engines import make_engine
    from offpolicy_bench.routing import RouterTap, replayed_routing, set_diff_frac
    from offpolicy_bench.tasks_api import build_task

    cfg = build_config(["model=moe", *a.model_arg, f"task={a.task}", "rollout.dtype=bfloat16",
                        f"staleness={a.staleness}", f"seed={a.seed}", f"threads={a.threads}", "log.progress=false"])
    torch.set_num_threads(a.threads)
    task = build_task(cfg)
    model, tok, _ = load_model(cfg, task, log=lambda m: print(m, file=sys.stderr))
    model.eval()
    engine = make_engine("hf", model, tok, cfg)
    rng, gen = random.Random(a.seed), torch.Generator().manual_seed(a.seed)
    per_batch = []
    t0 = time.time()
    for _ in range(a.paired):
        exs = task.train_examples(cfg.train.batch_prompts, rng)
        ro = engine.sample(tok, [e.prompt for e in exs], cfg.rollout.group_size, cfg.rollout.temperature,
                           cfg.rollout.max_new_tokens, generator=gen, record_routing=True)
        m = ro.response_mask > 0
        row = {}
        with torch.no_grad():
            unrecorded = dataclasses.replace(ro, routing=torch.full_like(ro.routing, -1))
            for arm, tap, ro_arm in (("none", None, unrecorded), ("r3", RouterTap("replay", ro.routing), ro)):
                lr = (sequence_logprobs(model, ro, cfg.rollout.temperature, routing=tap)[0] - ro.behav_logp)[m]
                row[f"kl_mu_pi_old_{arm}"] = (torch.expm1(lr) - lr).mean().item()
                row[f"gap_mean_{arm}"] = lr.abs().mean().item()
                row[f"gap_max_{arm}"] = lr.abs().max().item()
                row[f"routing_diff_{arm}"] = set_diff_frac(ro.routing, replayed_routing(model, ro_arm))
        row["tokens"] = int(m.sum())
        per_batch.append(row)
    keys = [k for k in per_batch[0] if k != "tokens"]
    out = {k: sum(r[k] for r in per_batch) / len(per_batch) for k in keys}
    for key in ("kl_mu_pi_old", "gap_mean"):  # paired: r3 - none per rollout batch, mean and its std error
        d = torch.tensor([r[f"{key}_r3"] - r[f"{key}_none"] for r in per_batch])
        out[f"{key}_r3_minus_none"] = d.mean().item()
        out[f"{key}_r3_minus_none_se"] = (d.std() / len(d) ** 0.5).item() if len(d) > 1 else None
        out[f"{key}_batches_lower_r3"] = int((d < 0).sum())  # sign test: robust to one heavy-tailed batch
    out["gap_max_none"] = max(r["gap_max_none"] for r in per_batch)
    out["gap_max_r3"] = max(r["gap_max_r3"] for r in per_batch)
    print(json.dumps({"paired": a.paired, "model_args": a.model_arg, "task": a.task, "seed": a.seed,
                      "tokens": sum(r["tokens"] for r in per_batch), **out, "wall_s": round(time.time() - t0, 1)}),
          flush=True)
    summary(1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
