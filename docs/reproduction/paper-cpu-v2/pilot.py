"""The pilot's three registered rules (PREREGISTRATION.md, "Open parameters"), applied to its tables.

    python docs/reproduction/paper-cpu-v2/pilot.py docs/reproduction/paper-cpu-v2-pilot

Prints the pilot's cells (mean over its two seeds), then: the learning-rate pair (rule 1), the GSPO band
whose clip rate is closest to token_clip's (rule 2) and the planning sd / MDE (rule 3).
"""

from __future__ import annotations

import argparse
import math
import sys

import numpy as np
import pandas as pd

from offpolicy_bench.stats import mde_paired

GAIN = 0.15


def load(grid_dir: str) -> pd.DataFrame:
    runs = pd.read_parquet(f"{grid_dir}/runs.parquet")
    summ = pd.read_parquet(f"{grid_dir}/summary.parquet")
    df = runs.merge(summ, on="run_id")
    df = df[df.status == "finished"].copy()
    m = pd.read_parquet(f"{grid_dir}/metrics.parquet")
    clip = m[(m.split == "train") & (m.metric == "clip_frac")].groupby("run_id").value.mean()
    df["clip_frac_mean"] = df.run_id.map(clip)
    for k in ("method.eps_low", "method.eps_high"):
        df[k] = df[k].astype(object).where(df[k].notna(), "default") if k in df else "default"
    df["band"] = [("paper" if (m == "gspo" and float(lo) == 3e-4 and float(hi) == 4e-4) else f"({lo:g}, {hi:g})")
                  if lo != "default" else "-" for m, lo, hi in zip(df.method, df["method.eps_low"], df["method.eps_high"])]
    return df


def cell_table(df: pd.DataFrame) -> pd.DataFrame:
    keys = ["optim.lr", "method", "staleness", "band"]
    g = df.groupby(keys)
    return pd.DataFrame({"seeds": g.seed.count(), "start": g.eval_accuracy_start.mean(),
                         "late_mean": g.eval_accuracy_late_mean.mean(), "best": g.eval_accuracy_best.mean(),
                         "collapsed": g.collapsed.sum(), "clip_frac": g.clip_frac_mean.mean()}).reset_index()


def choose_rates(t: pd.DataFrame, candidates=(5e-5, 1e-4, 2e-4)) -> tuple[float, float, str]:
    """Rule 1 as amended (Amendment 1): a candidate rate is usable when on_policy N=1 gains >= 0.15 in
    late_mean over the start (mean over the seeds) and collapses in no seed; lr_high = the largest usable
    rate, lr_low = the largest usable rate at most half of it. Returns (lr_low, lr_high, the evidence);
    None for a role no rate fills."""
    rows = {}
    for lr, g in t.groupby("optim.lr"):
        if not any(abs(float(lr) - c) < 1e-12 for c in candidates):
            continue
        ref = g[(g.method == "on_policy") & (g.staleness == 1)]
        tc = g[(g.method == "token_clip") & (g.staleness == 64)]
        if ref.empty:
            continue
        gain = float(ref.late_mean.iloc[0] - ref.start.iloc[0])
        loss = float(ref.late_mean.iloc[0] - tc.late_mean.iloc[0]) if len(tc) else float("nan")
        rows[float(lr)] = (gain, int(ref.collapsed.iloc[0]), int(ref.seeds.iloc[0]), loss)
    usable = sorted(lr for lr, (gain, coll, _, _) in rows.items() if gain >= GAIN and coll == 0)
    lr_high = usable[-1] if usable else None
    low = [lr for lr in usable if lr_high is not None and lr <= lr_high / 2 + 1e-15]
    lr_low = low[-1] if low else None
    why = "; ".join(f"lr {lr:g}: on_policy N=1 gain {g:+.3f}, collapses {c} of {n} seeds, token_clip N=64 "
                    f"{l * 100:+.1f} points below it" for lr, (g, c, n, l) in sorted(rows.items()))
    return lr_low, lr_high, why


def choose_band(t: pd.DataFrame, lr: float = 1e-4) -> tuple[str, float, float]:
    """Rule 2 (amended: at lr 1e-4): the GSPO band at N=64 whose mean clip_frac is closest to token_clip's in log
    ratio. Returns (band, its clip_frac, token_clip's)."""
    g = t[(t["optim.lr"].astype(float).round(12) == round(lr, 12)) & (t.staleness == 64)]
    target = float(g[g.method == "token_clip"].clip_frac.iloc[0])
    bands = g[g.method == "gspo"]  # the paper band and the pilot's wider ones
    dist = (np.log(bands.clip_frac.clip(lower=1e-9)) - math.log(max(target, 1e-9))).abs()
    best = bands.loc[dist.idxmin()]
    return str(best.band), float(best.clip_frac), target


def planning_sd(df: pd.DataFrame) -> float:
    """Rule 3: pooled sd of late_mean between the pilot seeds, over all cells with two seeds."""
    keys = ["optim.lr", "method", "staleness", "band"]
    var = df.groupby(keys).eval_accuracy_late_mean.var(ddof=1).dropna()
    return float(math.sqrt(var.mean())) if len(var) else float("nan")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("grid_dir")
    a = ap.parse_args(argv)
    df = load(a.grid_dir)
    t = cell_table(df)
    shown = t.assign(**{"optim.lr": t["optim.lr"].map(lambda v: f"{float(v):g}")})  # 5e-05, not 0.000
    print(shown.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    lo, hi, why = choose_rates(t)
    print(f"\nrule 1 (amended), learning rates: lr_low = {lo}, lr_high = {hi}  ({why})")
    band, clip, target = choose_band(t)
    within = "within" if abs(math.log(max(clip, 1e-9) / max(target, 1e-9))) <= math.log(2) else "NOT within"
    print(f"rule 2, rescaled GSPO band: {band}, clip_frac {clip:.3f} vs token_clip's {target:.3f} ({within} a factor 2)")
    sd = planning_sd(df)
    print(f"rule 3, planning sd of late_mean {sd:.4f}; planning MDE of an 8-seed paired contrast (seed correlation 0): "
          f"{mde_paired(sd * math.sqrt(2), 8):.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
