"""Summaries and the paper's Table 2 shape: methods as rows, staleness N as columns, mean and
95% confidence interval over seeds, one table per (task, model). Reads only the tidy tables."""

from __future__ import annotations

import math
import os

import numpy as np
import pandas as pd

from .registry import OffbenchError

COLLAPSE_FRACTION = 0.5  # collapse: eval accuracy falls below half of its best so far


CORE_COLUMNS = {"method", "staleness", "seed", "task", "model"}
# the same keys as swept in a grid (model=[...] is stored as model.name): never a variant
ALIAS_COLUMNS = {"model.name", "task.name", "method.name", "correction.name"}
# runs.parquet bookkeeping columns: never a variant
META_COLUMNS = {"run_id", "status", "error", "wall_time_s", "git_commit", "task_version", "agg", "versions",
                "peak_rss_mb"}
# always present in runs.parquet; a variant only when they actually vary in the grid
KNOB_COLUMNS = {"lag": "lag", "correction": "correction", "rollout_dtype": "rollout.dtype"}


def _is_null(v) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v)) or str(v) in ("None", "nan", "NaN", "")


def _fmt_value(v) -> str:
    if isinstance(v, float) and v == int(v) and abs(v) < 1e6:
        return f"{v:.1f}"
    return str(v)


def _variant_name(col: str) -> str:
    return col.split(".", 1)[1] if col.startswith("method.") else col


def variant_columns(runs: pd.DataFrame) -> list:
    """Swept columns other than method / staleness / seed / task / model, in table order: runs
    that differ in one of them are different series, never seeds of one mean."""
    cols = [c for c in runs.columns if c not in CORE_COLUMNS | ALIAS_COLUMNS | META_COLUMNS | set(KNOB_COLUMNS)]
    for c, dotted in KNOB_COLUMNS.items():
        if c in runs.columns and dotted not in runs.columns and runs[c].astype(str).nunique() > 1:
            cols.append(c)
    return cols


def variant_label(row, vcols: list) -> str:
    """'length_norm=lin, optim.lr=0.0002' for one runs row ('' if no variant column is set)."""
    return ", ".join(f"{_variant_name(c)}={_fmt_value(row[c])}" for c in vcols if not _is_null(row[c]))


def series_labels(runs: pd.DataFrame, vcols: list) -> tuple[list[str], list[str]]:
    """(variant, series) label of every runs row: series = 'method' or 'method, <variant>'."""
    variants = [variant_label(row, vcols) for _, row in runs.iterrows()]
    return variants, [m if not v else f"{m}, {v}" for m, v in zip(runs.method, variants)]


def summarize_run(m: pd.DataFrame) -> dict:
    """Headline numbers of one run from its long metrics table.

    collapse_step: first eval step whose accuracy is below COLLAPSE_FRACTION x the best accuracy
    seen up to then (NaN if it never happens; runs whose best stays under 0.05 cannot collapse).
    """
    ev = m[(m.split == "eval") & (m.metric == "accuracy")].sort_values("step")
    tr = m[m.split == "train"]
    acc = ev.value.to_numpy()
    steps = ev.step.to_numpy()
    collapse = float("nan")
    best = -1.0
    for s, a in zip(steps, acc):
        if best >= 0.05 and a < COLLAPSE_FRACTION * best:
            collapse = float(s)
            break
        best = max(best, a)

    def train_mean(metric):
        v = tr[tr.metric == metric].value
        return float(v.mean()) if len(v) else float("nan")

    def train_last(metric, k=16):
        v = tr[tr.metric == metric].sort_values("step").value.tail(k)
        return float(v.mean()) if len(v) else float("nan")

    return {
        "steps": int(tr.step.max()) if len(tr) else 0,
        "eval_accuracy_start": float(acc[0]) if len(acc) else float("nan"),
        "eval_accuracy_final": float(acc[-1]) if len(acc) else float("nan"),
        "eval_accuracy_best": float(acc.max()) if len(acc) else float("nan"),
        "collapse_step": collapse,
        "kl_mu_pi_mean": train_mean("kl_mu_pi"),
        "abs_log_w_mean": train_mean("abs_log_w_mean"),
        "reward_last16": train_last("reward"),
        "entropy_last16": train_last("entropy"),
        "response_len_last16": train_last("response_len"),
    }


def _t975(df: int) -> float:
    """0.975 quantile of Student's t (table for small df, normal beyond)."""
    table = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262,
             10: 2.228, 12: 2.179, 15: 2.131, 20: 2.086, 30: 2.042}
    if df in table:
        return table[df]
    below = [k for k in table if k < df]
    return table[max(below)] if df < 30 else 1.96


def mean_ci(values) -> tuple[float, float, int]:
    """Mean and half-width of the 95% t-interval over seeds (NaN half-width for one seed)."""
    v = np.asarray([x for x in values if x is not None and not math.isnan(float(x))], dtype=float)
    n = len(v)
    if n == 0:
        return float("nan"), float("nan"), 0
    if n == 1:
        return float(v[0]), float("nan"), 1
    return float(v.mean()), float(_t975(n - 1) * v.std(ddof=1) / math.sqrt(n)), n


def load_grid(grid_dir: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    runs_p, sum_p = os.path.join(grid_dir, "runs.parquet"), os.path.join(grid_dir, "summary.parquet")
    if not os.path.isfile(runs_p) or not os.path.isfile(sum_p):
        raise OffbenchError(f"{grid_dir} has no runs.parquet / summary.parquet: not a grid folder (offbench grid ... name=)")
    return pd.read_parquet(runs_p), pd.read_parquet(sum_p)


def table(grid_dir: str, metric: str = "eval_accuracy_final", fmt: str = "md") -> str:
    """One table per (task, model): rows method (and variant, for every other swept key), columns N,
    cells 'mean ± ci (n)' over seeds."""
    runs, summ = load_grid(grid_dir)
    if summ.empty:
        raise OffbenchError(f"{grid_dir} has no finished runs yet")
    if metric not in summ.columns:
        raise OffbenchError(f"unknown metric {metric!r}; summary columns: {', '.join(summ.columns[1:])}")
    df = runs.merge(summ, on="run_id")
    df["series"] = series_labels(df, variant_columns(runs))[1]
    out = []
    for (task, model), part in df.groupby(["task", "model"], sort=True):
        ns = sorted(part.staleness.unique())
        rows = []
        for method, mpart in part.groupby("series", sort=True):
            cells = []
            for n in ns:
                mean, ci, k = mean_ci(mpart[mpart.staleness == n][metric])
                cells.append((mean, ci, k))
            rows.append((method, cells))
        out.append(_render(f"{metric} (x100), task={task}, model={model}; mean ± 95% CI over seeds (n)",
                           [f"N={n}" for n in ns], rows, fmt))
    return "\n\n".join(out)


def _fmt_cell(mean, ci, k, fmt):
    if math.isnan(mean):
        return "-"
    pm = {"latex": r" $\pm$ ", "csv": " +- "}.get(fmt, " ± ")
    ci_s = "n/a" if math.isnan(ci) else f"{100 * ci:.1f}"
    return f"{100 * mean:.1f}{pm}{ci_s} ({k})"


def _render(title, cols, rows, fmt) -> str:
    if fmt == "csv":
        lines = [",".join(["method"] + cols)]
        lines += [",".join([m] + [_fmt_cell(*c, fmt) for c in cells]) for m, cells in rows]
        return "\n".join(lines)
    if fmt == "latex":
        lines = [f"% {title}", r"\begin{tabular}{l" + "c" * len(cols) + "}", r"\toprule",
                 " & ".join(["Method"] + cols) + r" \\", r"\midrule"]
        lines += [" & ".join([m.replace("_", r"\_")] + [_fmt_cell(*c, fmt) for c in cells]) + r" \\"
                  for m, cells in rows]
        lines += [r"\bottomrule", r"\end{tabular}"]
        return "\n".join(lines)
    if fmt != "md":
        raise OffbenchError(f"--format {fmt!r}: choose md, csv or latex")
    lines = [f"**{title}**", "", "| method | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    lines += ["| " + " | ".join([m] + [_fmt_cell(*c, fmt) for c in cells]) + " |" for m, cells in rows]
    return "\n".join(lines)
