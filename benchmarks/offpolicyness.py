"""Measured off-policyness vs staleness N, async lag k and a bf16 rollout engine (issue 4), and vs
response length at N=64 on the long-response task (issue 12).

    python benchmarks/offpolicyness.py [--steps 64] [--seed 0] > offpolicyness.json
    python benchmarks/offpolicyness.py --settings lengths > logw_vs_length.json

One short run per setting from the default warm start (cached after the first), the default
method (vespo) and learning rate; prints one JSON object per setting, then a summary object.
Means are over all gradient steps of the run; `*_last_mb` over the most stale mini-batch of each
rollout batch (version gap N - 1 + k).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time

import pandas as pd

SETTINGS = [
    {"staleness": 1}, {"staleness": 4}, {"staleness": 16}, {"staleness": 64},
    {"staleness": 1, "lag": 1}, {"staleness": 1, "lag": 4},
    {"staleness": 1, "rollout.dtype": "bfloat16"},
]
# one rollout batch at N=64 on math_cot at three lengths (~19, ~35 and ~67 response tokens)
LENGTHS = [{"task": "math_cot", "task.digits": d, "staleness": 64} for d in (2, 4, 8)]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--settings", choices=["sources", "lengths"], default="sources")
    a = ap.parse_args()
    settings = SETTINGS if a.settings == "sources" else LENGTHS
    from offpolicy_bench.config import build_config
    from offpolicy_bench.trainer import train

    rows = []
    with tempfile.TemporaryDirectory() as out:
        for i, s in enumerate(settings):
            over = [f"{k}={v}" for k, v in s.items()] + [f"train.steps={a.steps}", f"seed={a.seed}",
                                                           f"log.eval_every={a.steps}", "log.progress=false",
                                                           f"log.out_dir={out}", f"name=s{i}"]
            cfg = build_config(over)
            t0 = time.time()
            train(cfg, log=lambda m: print(m, file=sys.stderr))
            df = pd.read_parquet(f"{out}/s{i}/metrics.parquet")
            m = df[df.split == "train"].pivot(index="step", columns="metric", values="value")
            last = m[m.version_gap == m.version_gap.max()]
            row = {"setting": s, "staleness": cfg.staleness, "lag": cfg.lag, "rollout_dtype": cfg.rollout.dtype,
                   "steps": a.steps, "seed": a.seed,
                   "kl_mu_pi": m.kl_mu_pi.mean(), "abs_log_w": m.abs_log_w_mean.mean(),
                   "rho_outside_0.8_1.25": m["rho_outside_0.8_1.25"].mean(), "ess_w": m.ess_w.mean(),
                   "kl_mu_pi_last_mb": last.kl_mu_pi.mean(), "abs_log_w_last_mb": last.abs_log_w_mean.mean(),
                   "ess_w_last_mb": last.ess_w.mean(), "response_len": m.response_len.mean(),
                   "max_version_gap": m.version_gap.max(), "wall_s": round(time.time() - t0, 1)}
            rows.append(row)
            print(json.dumps(row), flush=True)
    from offpolicy_bench.results import cpu_model

    cpu = cpu_model()
    print(json.dumps({"summary": "offpolicyness", "settings": a.settings, "date": time.strftime("%Y-%m-%d"),
                      "cpu": cpu, "rows": len(rows)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
