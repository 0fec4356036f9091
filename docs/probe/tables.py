"""The tables of docs/PROBE.md, printed from a probe table (`offbench probe ... out=DIR` writes DIR/probe.parquet).

    python docs/probe/tables.py docs/probe/probe.parquet

One table per setting x version gap, rows sorted by relative MSE; the heading gives the mean response
length and the sequence-weight statistics of that gap (the same mini-batches for every method).
"""

from __future__ import annotations

import argparse
import json
import sys

import pandas as pd

from offpolicy_bench.results import machine_name

COLUMNS = {"cosine_to_onpolicy": "cosine", "relative_bias": "relative bias", "bias_noise_floor": "noise floor",
           "relative_variance": "variance / abs(mean)^2", "variance_vs_reference": "variance / abs(ref)^2",
           "relative_mse": "relative MSE"}


def _fmt(v: float) -> str:
    return f"{v:.3g}"


def tables(probe: pd.DataFrame) -> str:
    knobs = [c for c in probe.columns if c.startswith("knob.")]
    out = []
    if "machine" in probe:  # each machine with the commits that ran on it
        for m, rows in probe.dropna(subset=["machine"]).groupby("machine"):
            m = json.loads(m)
            out.append(f"Machine: {machine_name(m)}, {m.get('torch_threads')} thread(s); "
                       f"commit {', '.join(sorted(rows.git_commit.dropna().astype(str).str[:7].unique()))}\n")
    groups = probe.groupby(knobs, sort=False) if knobs else [((), probe)]
    for key, setting in groups:
        key = key if isinstance(key, tuple) else (key,)
        name = ", ".join(f"{k[5:]}={v}" for k, v in zip(knobs, key)) or "default setting"
        for gap, g in setting.groupby("version_gap", sort=True):
            first = g.iloc[0]
            out.append(f"**{name} (mean response {first.response_len:.1f} tokens), version gap {gap}**: ESS of W "
                       f"{first.ess:.3f}, mean abs(log W) {first.log_w_abs_mean:.2f}, E[W^2] {_fmt(first.w2_mean)}\n")
            out.append("| method | " + " | ".join(COLUMNS.values()) + " |")
            out.append("|---|" + "---|" * len(COLUMNS))
            for _, r in g.sort_values("relative_mse", kind="stable").iterrows():
                out.append(f"| {r.method} | " + " | ".join(_fmt(r[c]) for c in COLUMNS) + " |")
            out.append("")
    return "\n".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("probe", help="a probe.parquet")
    a = ap.parse_args(argv)
    print(tables(pd.read_parquet(a.probe)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
