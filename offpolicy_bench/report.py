"""Summaries and the paper's Table 2 shape: methods as rows, staleness N as columns, mean and
95% confidence interval over seeds, one table per (task, model); contrasts between two methods
with a bootstrap interval and the minimum detectable effect. Reads only the tidy tables; the
statistics live in stats.py."""

from __future__ import annotations

import csv
import io
import math
import os
from collections import Counter

import numpy as np
import pandas as pd

from .registry import OffbenchError
from .results import read_parquet_stable, record_columns
from .stats import COLLAPSE_FRACTION, ENDPOINTS, Endpoints, contrast, endpoints, mde, pooled_sd, t_interval

CORE_COLUMNS = set(record_columns("core"))
# how a swept core or knob key can appear in older grids (model=[...] stored as model.name): never a variant
ALIAS_COLUMNS = {k for role in ("core", "knob") for c, k in record_columns(role).items() if k != c}
# runs.parquet bookkeeping columns: never a variant
META_COLUMNS = set(record_columns("meta"))
# always present in runs.parquet; a variant only when they actually vary in the grid
KNOB_COLUMNS = record_columns("knob")


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
    return cols + [c for c in KNOB_COLUMNS if c in runs.columns and runs[c].astype(str).nunique() > 1]


def variant_label(row, vcols: list) -> str:
    """'length_norm=lin, optim.lr=0.0002' for one runs row ('' if no variant column is set)."""
    return ", ".join(f"{_variant_name(c)}={_fmt_value(row[c])}" for c in vcols if not _is_null(row[c]))


def series_labels(runs: pd.DataFrame, vcols: list) -> tuple[list[str], list[str]]:
    """(variant, series) label of every runs row: series = 'method' or 'method, <variant>'."""
    variants = [variant_label(row, vcols) for _, row in runs.iterrows()]
    return variants, [m if not v else f"{m}, {v}" for m, v in zip(runs.method, variants)]


def run_endpoints(ev: pd.DataFrame, total_steps) -> Endpoints:
    """stats.endpoints of one run's eval-accuracy rows (step, value); total_steps 0 / missing:
    the last eval step."""
    total = None if total_steps is None or _is_null(total_steps) or not total_steps else float(total_steps)
    return endpoints(ev.step.to_numpy(), ev.value.to_numpy(), total)


def summarize_run(m: pd.DataFrame) -> dict:
    """Headline numbers of one run from its long metrics table (stats.endpoints).

    collapse_step: first eval step whose accuracy is below COLLAPSE_FRACTION x the best accuracy
    seen up to then (NaN if it never happens; runs whose best stays under 0.05 cannot collapse).
    collapsed: the run ends below COLLAPSE_FRACTION x its best; dip: it fell that low and
    recovered. eval_accuracy_late_mean: mean over the eval points in the second half of training.
    """
    ev = m[(m.split == "eval") & (m.metric == "accuracy")].sort_values("step")
    tr = m[m.split == "train"]
    acc = ev.value.to_numpy()
    steps = int(tr.step.max()) if len(tr) else 0
    e = run_endpoints(ev, steps)

    def train_mean(metric):
        v = tr[tr.metric == metric].value
        return float(v.mean()) if len(v) else float("nan")

    def train_last(metric, k=16):
        v = tr[tr.metric == metric].sort_values("step").value.tail(k)
        return float(v.mean()) if len(v) else float("nan")

    return {
        "steps": steps,
        "eval_accuracy_start": float(acc[0]) if len(acc) else float("nan"),
        "eval_accuracy_final": e.final,
        "eval_accuracy_best": e.best,
        "eval_accuracy_late_mean": e.late_mean,
        "collapse_step": e.drop_step,
        "collapsed": e.collapsed,
        "dip": e.dip,
        "kl_mu_pi_mean": train_mean("kl_mu_pi"),
        "abs_log_w_mean": train_mean("abs_log_w_mean"),
        "reward_last16": train_last("reward"),
        "entropy_last16": train_last("entropy"),
        "response_len_last16": train_last("response_len"),
    }


def mean_ci(values) -> tuple[float, float, int]:
    """Mean and half-width of the 95% t-interval over seeds (NaN half-width for one seed)."""
    iv = t_interval(values)
    return iv.estimate, iv.halfwidth, iv.n


def load_grid(grid_dir: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    runs_p, sum_p = os.path.join(grid_dir, "runs.parquet"), os.path.join(grid_dir, "summary.parquet")
    if not os.path.isfile(runs_p) or not os.path.isfile(sum_p):
        raise OffbenchError(f"{grid_dir} has no runs.parquet / summary.parquet: not a grid folder (offbench grid ... name=)")
    return read_parquet_stable(runs_p), read_parquet_stable(sum_p)  # a live grid replaces them




ENDPOINT_TITLES = {"late_mean": "eval accuracy, mean over the second half of training",
                   "final": "eval accuracy at the last step", "best": "best eval accuracy"}
SUMMARY_ENDPOINTS = {"eval_accuracy_final": "final", "eval_accuracy_best": "best",
                     "eval_accuracy_late_mean": "late_mean", "collapsed": "collapsed", "dip": "dip"}
N_BOOT, BOOT_SEED = 10000, 0


def parse_contrasts(specs, methods) -> list[tuple[str, str]]:
    """['vespo-token_clip', 'a-b,c-d'] -> [(A, B), ...]; each name must be a method of the grid."""
    present = sorted({str(m) for m in methods})
    out = []
    for item in (x.strip() for spec in specs for x in str(spec).split(",")):
        if not item:
            continue
        splits = [(item[:i], item[i + 1:]) for i, ch in enumerate(item) if ch == "-"]
        ok = [(a, b) for a, b in splits if a in present and b in present and a != b]
        if len(ok) != 1:
            missing = sorted({x for ab in splits for x in ab if x and x not in present})
            why = (f"no method {', '.join(missing)} in this grid" if missing and not ok
                   else "write it as A-B, two different methods")
            raise OffbenchError(f"--contrast {item!r}: {why}; methods present: {', '.join(present)}")
        if ok[0] not in out:
            out.append(ok[0])
    return out


def endpoint_table(grid_dir: str, summ: pd.DataFrame, metrics: pd.DataFrame | None = None) -> pd.DataFrame | None:
    """run_id, final, best, late_mean, collapsed, dip of every summarized run: recomputed from
    metrics.parquet when the grid has it (grids summarized before late_mean existed included),
    else summary.parquet's columns; None when neither holds them. `metrics`: the grid's long metrics
    table already read (at least its eval accuracy rows), instead of reading the file again."""
    path = os.path.join(grid_dir, "metrics.parquet")
    if metrics is not None or os.path.isfile(path):
        m = metrics if metrics is not None else read_parquet_stable(
            path, columns=["run_id", "step", "split", "metric", "value"])
        m = m[(m.split == "eval") & (m.metric == "accuracy") & m.run_id.isin(summ.run_id)]
        total = dict(zip(summ.run_id, summ["steps"])) if "steps" in summ else {}
        rows = [{"run_id": rid, **run_endpoints(ev, total.get(rid)).as_dict()} for rid, ev in m.groupby("run_id")]
        return pd.DataFrame(rows, columns=["run_id", *Endpoints.__dataclass_fields__])
    if set(SUMMARY_ENDPOINTS) <= set(summ.columns):
        return summ[["run_id", *SUMMARY_ENDPOINTS]].rename(columns=SUMMARY_ENDPOINTS)
    return None


def _num(x: float, sign: bool = False) -> str:
    return "n/a" if math.isnan(x) else f"{100 * x:{'+' if sign else ''}.1f}"


def mde_line(groups) -> str:
    """The MDE of a two-arm comparison with the typical number of seeds per cell of a table."""
    counts = Counter(int(np.isfinite(np.asarray(g, dtype=float)).sum()) for g in groups)
    counts.pop(0, None)
    k = min(counts, key=lambda c: (-counts[c], c)) if counts else 0
    sd = pooled_sd(groups)
    return (f"minimum detectable effect at 80% power (two-sided 5%) with n={k} seeds per cell: "
            f"{_num(mde(sd, k))} points (pooled seed sd {_num(sd)})")


def collapse_line(part: pd.DataFrame, ns) -> str:
    """Collapsed runs and dips (recovered), counted apart, with the cells that have any."""
    part = part[part.ep_final.notna()]

    def count(col, what):
        where = []
        for series, sp in part.groupby("series", sort=True):
            for n in ns:
                cell = sp[sp.staleness == n]
                if cell[col].astype(bool).any():
                    where.append(f"{series} N={n}: {int(cell[col].astype(bool).sum())}/{len(cell)}")
        hits = int(part[col].astype(bool).sum())
        return f"{what}: {hits} of {len(part)} runs" + (f" ({'; '.join(where)})" if where else "")

    pct = f"{100 * COLLAPSE_FRACTION:.0f}%"
    return "; ".join([count("ep_collapsed", f"collapsed (final below {pct} of best)"),
                      count("ep_dip", f"dips (fell below {pct} of best so far, recovered)")])


def _compatible(ra, rb, vcols) -> bool:
    """Two series may be contrasted when every variant key is equal or unset in one of them (a
    method's own knob, e.g. method.length_norm, is unset for the other method)."""
    return all(_is_null(ra[c]) or _is_null(rb[c]) or str(ra[c]) == str(rb[c]) for c in vcols)


def contrast_rows(part: pd.DataFrame, pairs, ns, vcols, value: str, bounds) -> list:
    rows = []
    for a, b in pairs:
        arms = [part[part.method == m].drop_duplicates("series") for m in (a, b)]
        combos = [(ra, rb) for _, ra in arms[0].iterrows() for _, rb in arms[1].iterrows()
                  if _compatible(ra, rb, vcols)]
        for ra, rb in combos or [({"series": a}, {"series": b})]:
            for n in ns:
                cell_a = part[(part.series == ra["series"]) & (part.staleness == n)]
                cell_b = part[(part.series == rb["series"]) & (part.staleness == n)]
                c = contrast(cell_a[value], cell_b[value], cell_a.seed, cell_b.seed, n_boot=N_BOOT, seed=BOOT_SEED,
                             bounds=bounds)
                ci = "n/a" if math.isnan(c.lo) else f"[{_num(c.lo, True)}, {_num(c.hi, True)}]"
                rows.append((f"{ra['series']} - {rb['series']}",
                             [str(n), _num(c.diff, True), ci, f"{c.n_a}/{c.n_b}", "paired" if c.paired else "unpaired",
                              _num(c.mde)]))
    return rows


def table(grid_dir: str, metric: str | None = None, fmt: str = "md", endpoint: str = "late_mean",
          contrasts=()) -> str:
    """One table per (task, model): rows method (and variant, for every other swept key), columns N,
    cells 'mean ± 95% t-CI (n)' over seeds of the chosen endpoint (stats.endpoints; metric= a
    summary.parquet column instead). Under each: the MDE line and the collapse / dip counts; with
    contrasts=['A-B', ...] a contrast table per (task, model) follows."""
    if fmt not in ("md", "csv", "latex"):
        raise OffbenchError(f"--format {fmt!r}: choose md, csv or latex")
    if endpoint not in ENDPOINTS:
        raise OffbenchError(f"--endpoint {endpoint!r}: choose {', '.join(ENDPOINTS)}")
    runs, summ = load_grid(grid_dir)
    pairs = parse_contrasts(contrasts, runs.method.dropna() if "method" in runs else [])
    if summ.empty:
        raise OffbenchError(f"{grid_dir} has no finished runs yet")
    if metric is not None and metric not in summ.columns:
        raise OffbenchError(f"unknown metric {metric!r}; summary columns: {', '.join(summ.columns[1:])}")
    ep = endpoint_table(grid_dir, summ)
    if ep is None and metric is None:
        raise OffbenchError(f"{grid_dir} has no metrics.parquet (nor eval_accuracy_late_mean in summary.parquet) "
                            "to compute endpoints from; pass --metric COLUMN to report a summary column")
    df = runs.merge(summ, on="run_id")
    if ep is not None:
        df = df.merge(ep.add_prefix("ep_").rename(columns={"ep_run_id": "run_id"}), on="run_id", how="left")
    vcols = variant_columns(runs)
    df["series"] = series_labels(df, vcols)[1]
    value = f"ep_{endpoint}" if metric is None else metric
    accuracy = metric is None or metric.startswith("eval_accuracy")
    bounds = (0.0, 1.0) if accuracy else None
    what = f"{endpoint}: {ENDPOINT_TITLES[endpoint]}" if metric is None else metric
    out = []
    for (task, model), part in df.groupby(["task", "model"], sort=True):
        ns = sorted(part.staleness.unique())
        rows, groups = [], []
        for series, sp in part.groupby("series", sort=True):
            cells = [sp[sp.staleness == n][value] for n in ns]
            groups += cells
            rows.append((series, [_fmt_cell(t_interval(c, bounds=bounds), fmt) for c in cells]))
        notes = [mde_line(groups)]
        head = f"{what} (x100), task={task}, model={model}"
        out.append(_render(f"{head}; mean ± 95% t-CI over seeds (n)", [f"N={n}" for n in ns], rows, fmt,
                           notes + ([collapse_line(part, ns)] if ep is not None else [])))
        if pairs:
            crows = contrast_rows(part, pairs, ns, vcols, value, (-1.0, 1.0) if accuracy else None)
            out.append(_render(f"contrasts A - B of {head}; percentile bootstrap 95% CI (B={N_BOOT}), paired by "
                               "seed when both arms ran the same seeds; MDE (t-based) at 80% power, two-sided 5%",
                               ["N", "difference", "95% CI", "seeds A/B", "pairing", "MDE"], crows, fmt, notes,
                               first="contrast"))
    return "\n\n".join(out)


def _fmt_cell(iv, fmt) -> str:
    """'mean ± half-width (n)'; 'mean [lo, hi] (n)' where the interval was clipped to [0, 100]."""
    if math.isnan(iv.estimate):
        return "-"
    pm = {"latex": r" $\pm$ ", "csv": " +- "}.get(fmt, " ± ")
    if math.isnan(iv.lo):
        return f"{100 * iv.estimate:.1f}{pm}n/a ({iv.n})"
    if abs((iv.hi - iv.estimate) - (iv.estimate - iv.lo)) > 1e-9:
        return f"{100 * iv.estimate:.1f} [{100 * iv.lo:.1f}, {100 * iv.hi:.1f}] ({iv.n})"
    return f"{100 * iv.estimate:.1f}{pm}{100 * iv.halfwidth:.1f} ({iv.n})"


def _render(title, cols, rows, fmt, notes=(), first="method") -> str:
    """rows: (label, [cell strings]); notes: lines printed under the table (as comments in csv / latex)."""
    if fmt == "csv":
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow([first] + cols)
        w.writerows([m] + cells for m, cells in rows)
        return buf.getvalue() + "\n".join(f"# {n}" for n in notes)
    if fmt == "latex":
        lines = [f"% {title}", r"\begin{tabular}{l" + "c" * len(cols) + "}", r"\toprule",
                 " & ".join([first.capitalize()] + cols) + r" \\", r"\midrule"]
        lines += [" & ".join([m.replace("_", r"\_")] + cells) + r" \\" for m, cells in rows]
        lines += [r"\bottomrule", r"\end{tabular}"] + [f"% {n}" for n in notes]
        return "\n".join(lines)
    lines = [f"**{title}**", "", f"| {first} | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    lines += ["| " + " | ".join([m] + cells) + " |" for m, cells in rows]
    return "\n".join(lines + [""] + [f"{n}\n" for n in notes]).rstrip("\n")
