"""Paper-style figures of a grid, read ONLY from its tidy tables (runs / metrics / summary parquet).

    from offpolicy_bench import plots
    g = plots.load("results/my-grid")
    fig = plots.reward_vs_step(g)            # every function returns a matplotlib Figure
    plots.save(fig, "figs", "reward")        # -> figs/reward.png, figs/reward.pdf
    plots.plot_all("results/my-grid")        # every applicable figure -> <grid>/figures/

Figures (the VESPO paper's figure set, arXiv 2602.10693):
  kernel_figure     every registered method's gradient weight vs its ratio (its registration's curve)
  reward_vs_step    train reward vs gradient step, a panel per method, a line per staleness N
  metric_grid       rows N x columns reward / eval accuracy / length / KL(mu||pi) / entropy / loss
  accuracy_vs_n     an eval-accuracy endpoint (late_mean by default, as `offbench report`) vs N (log2
                    axis), 95% CI over seeds (report.mean_ci)
  ablation_figure   eval accuracy and reward vs step per variant of the swept non-core knobs
  contrast_figure   paired contrasts (A - B with 95% intervals, a margin) as a forest plot, from a
                    grid's contrasts.csv (written by an analysis such as a reproduction's verdicts.py)

Conventions: one fixed colour per method (the colour its registration carries, a deterministic
fallback for other names), one fixed line style per N (N_STYLES), a line is the mean over seeds and its band the
min-max over seeds, train curves use a trailing moving average whose window is in the title
(SMOOTH_MAX at most; none for short runs). In reward_vs_step, where one panel holds one method's
N lines, those lines are also a dark-to-light ramp of the method's colour (darker = smaller N).
Runs that differ in a swept knob other than method / N / seed / task / model (an ablation) are
never averaged together: they are separate series ("vespo, length_norm=lin"), drawn in shades of
the method's colour with their own marker. Several tasks or models become separate rows, labelled.
Unfinished runs are drawn up to their last logged step, and the figure says how many there are.
Figures are built on the Agg canvas directly (no pyplot state, the caller's backend untouched).
"""

from __future__ import annotations

import math
import os
import textwrap
import zlib
from dataclasses import dataclass

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import to_hex, to_rgb
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FixedLocator, NullFormatter, NullLocator

from .registry import OffbenchError
from .report import ENDPOINT_TITLES, _variant_name, endpoint_table, load_grid, mean_ci, series_labels, variant_columns
from .results import read_parquet_stable
from .stats import ENDPOINTS

# ---------------------------------------------------------------- fixed styles
# dark, desaturated tones for methods whose registration names no colour (and names not registered)
_FALLBACK_COLORS = ["#393b79", "#8c6d31", "#7b4173", "#00665e", "#6b6ecf", "#843c39", "#5c5c00", "#a55194"]

N_STYLES = {1: "-", 2: "--", 4: "-.", 8: ":", 16: (0, (6, 1.5)), 32: (0, (3, 1, 1, 1, 1, 1)),
            64: (0, (1, 2.5)), 128: (0, (8, 2, 1, 2)), 256: (0, (4, 4))}
_FALLBACK_STYLES = [(0, (2, 1)), (0, (5, 2, 1, 2, 1, 2)), (0, (10, 3)), (0, (1, 1, 3, 1))]
_VARIANT_MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*", "<", ">"]

SMOOTH_MAX = 10  # the moving-average window grows with the run length up to this many steps

LABELS = {
    "step": "gradient step",
    "reward": "train reward (mean per response)",
    "eval_accuracy": "eval accuracy (held-out)",
    "late_mean": "eval accuracy, mean over 2nd half",
    "final": "eval accuracy at the last step",
    "best": "best eval accuracy",
    "response_len": "response length (tokens)",
    "kl_mu_pi": "KL(mu||pi) per token (k3)",
    "entropy": "entropy (nats/token)",
    "loss": "PG loss (aggregated, per mini-batch)",
    "staleness": "staleness N (mini-batches per rollout batch, log2)",
}
# metric_grid columns: (split, metric, y label, column title)
GRID_PANELS = [
    ("train", "reward", LABELS["reward"], "train reward"),
    ("eval", "accuracy", LABELS["eval_accuracy"], "eval accuracy"),
    ("train", "response_len", LABELS["response_len"], "response length (train rollouts)"),
    ("train", "kl_mu_pi", LABELS["kl_mu_pi"], "KL(mu||pi)"),
    ("train", "entropy", LABELS["entropy"], "entropy"),
    ("train", "loss", LABELS["loss"], "policy-gradient loss"),
]
BAND_NOTE = "line: mean over seeds, band: min-max over seeds"
# what "eval accuracy" means, in the footer of every figure that draws it (too long for an axis label)
ACCURACY_NOTE = "eval accuracy: held-out problems, sampled pass@1 (greedy if log.eval_samples=0)"
CONTRASTS_FILE = "contrasts.csv"
VERDICT_COLORS = {"reproduced": "#1a9641", "refuted": "#d7191c", "undecided": "#636363"}
PLOTTED_METRICS = {metric for _, metric, _, _ in GRID_PANELS} | {"reward", "accuracy"}


def _registered() -> dict:
    from .method import METHODS
    from .plugins import load_builtin

    load_builtin()
    return dict(METHODS.items())


def method_color(method: str) -> str:
    """The colour the method's registration carries; others get a stable colour from a hash of the name."""
    m = _registered().get(method)
    if m is not None and m.color:
        return m.color
    return _FALLBACK_COLORS[zlib.crc32(str(method).encode()) % len(_FALLBACK_COLORS)]


def n_style(n) -> object:
    """The fixed line style of staleness N."""
    try:
        if int(n) in N_STYLES and int(n) == float(n):
            return N_STYLES[int(n)]
    except (TypeError, ValueError):
        pass
    return _FALLBACK_STYLES[zlib.crc32(str(n).encode()) % len(_FALLBACK_STYLES)]


def _shade(color: str, k: int) -> str:
    """k-th shade of a colour: 0 is the colour itself, then alternately darker and lighter."""
    if k == 0:
        return to_hex(color)
    amount = [0.45, 0.45, 0.7, 0.65, 0.25, 0.25][(k - 1) % 6]
    rgb = np.array(to_rgb(color))
    target = np.zeros(3) if k % 2 else np.ones(3)
    return to_hex(rgb + (target - rgb) * amount)


def _ramp(color: str, i: int, k: int) -> str:
    """i-th of k shades of a colour from darker to lighter; the colour itself in the middle."""
    if k <= 1:
        return to_hex(color)
    t = -0.45 + 0.9 * i / (k - 1)
    rgb = np.array(to_rgb(color))
    return to_hex(rgb + ((np.ones(3) if t > 0 else np.zeros(3)) - rgb) * abs(t))


# ---------------------------------------------------------------- loading
@dataclass
class Grid:
    """A grid's three tables plus the derived series labels (see `load`)."""
    path: str
    runs: pd.DataFrame      # runs.parquet plus `series`, `variant`, `context` columns
    metrics: pd.DataFrame   # metrics.parquet (long): run_id, step, split, metric, value
    summary: pd.DataFrame   # summary.parquet: one row per finished run
    variant_columns: list   # the swept knobs besides method / N / seed / task / model
    unplottable: int = 0    # runs without a config (failed before starting): no method, no N

    @property
    def name(self) -> str:
        return os.path.basename(os.path.normpath(self.path))


def load(grid_dir) -> Grid:
    """Read runs / metrics / summary parquet of a grid folder (nothing else) and label the series."""
    if isinstance(grid_dir, Grid):
        return grid_dir
    grid_dir = os.fspath(grid_dir)
    runs, summary = load_grid(grid_dir)
    mpath = os.path.join(grid_dir, "metrics.parquet")
    cols = ["run_id", "step", "split", "metric", "value"]
    metrics = pd.DataFrame(columns=cols)
    if os.path.isfile(mpath):  # only the metrics some figure draws (a big grid has ~50 per step)
        metrics = read_parquet_stable(mpath, columns=cols, filters=[("metric", "in", sorted(PLOTTED_METRICS))])
    if runs.empty:
        raise OffbenchError(f"{grid_dir}: runs.parquet has no runs to plot")
    if "method" not in runs.columns:
        raise OffbenchError(f"{grid_dir}: runs.parquet has no method column (no cell got as far as its config)")
    # a cell that failed before writing its config has no method / N: nothing to draw, but counted
    unplottable = int(runs.method.isna().sum())
    runs = runs[runs.method.notna()].copy()
    for c in ("task", "model", "method"):
        if c not in runs.columns:
            runs[c] = "?"
        runs[c] = runs[c].astype(str)
    vcols = variant_columns(runs)
    runs["variant"], runs["series"] = series_labels(runs, vcols)
    runs["context"] = [f"task={t}, model={m}" for t, m in zip(runs.task, runs.model)]
    return Grid(grid_dir, runs, metrics, summary, vcols, unplottable)


def _series_styles(g: Grid) -> dict:
    """series label -> (colour, marker): the method's colour, shaded per variant of that method."""
    out = {}
    for method, part in g.runs.groupby("method", sort=True):
        for k, series in enumerate(sorted(part.series.unique(), key=lambda s: (s != method, s))):
            out[series] = (_shade(method_color(method), k), _VARIANT_MARKERS[k % len(_VARIANT_MARKERS)])
    return out


def _series_order(g: Grid) -> list:
    """Series in registry order (methods not registered here last), variants alphabetically."""
    known = list(_registered())
    method_of = dict(zip(g.runs.series, g.runs.method))
    return sorted(method_of, key=lambda s: (known.index(method_of[s]) if method_of[s] in known else len(known),
                                            method_of[s], s))


def _contexts(g: Grid) -> list:
    return sorted(g.runs.context.unique())


def _staleness_values(runs: pd.DataFrame) -> list:
    """The N values present, numerically ascending (anything non-numeric last)."""
    def key(n):
        try:
            return (float(n), str(n))
        except (TypeError, ValueError):
            return (math.inf, str(n))
    return sorted(runs.staleness.dropna().unique(), key=key)


def _title(g: Grid, what: str) -> str:
    ctx = _contexts(g)
    where = ctx[0] if len(ctx) == 1 else f"{len(ctx)} task/model combinations (rows)"
    return f"{what}\n{where}, grid {g.name}"


def _unfinished_note(g: Grid) -> str:
    bad = g.runs[g.runs.status != "finished"]
    notes = []
    if len(bad):
        counts = ", ".join(f"{n} {s}" for s, n in bad.status.astype(str).value_counts().sort_index().items())
        notes.append(f"{len(bad)} of {len(g.runs) + g.unplottable} runs not finished ({counts}): "
                     "drawn up to their last logged step")
    if g.unplottable:
        notes.append(f"{g.unplottable} run(s) failed before writing a config: nothing to draw")
    return "; ".join(notes)


def _range_txt(counts) -> str:
    lo, hi = min(counts), max(counts)
    return f"{lo}" if lo == hi else f"{lo}-{hi}"


def _smooth_window(steps: int) -> int:
    return int(max(1, min(SMOOTH_MAX, round(steps / 25))))


def _curves(g: Grid, run_ids, split: str, metric: str, window: int = 1) -> pd.DataFrame | None:
    """step -> mean / min / max over runs (seeds) of one metric, each run smoothed first.

    A run missing some steps contributes where it has them; the `n` column counts the runs."""
    m = g.metrics
    part = m[(m.split == split) & (m.metric == metric) & m.run_id.isin(list(run_ids))]
    if part.empty:
        return None
    wide = part.pivot_table(index="step", columns="run_id", values="value", aggfunc="mean").sort_index()
    if window > 1:
        wide = wide.apply(lambda col: col.dropna().rolling(window, min_periods=1).mean())
    out = pd.DataFrame({"mean": wide.mean(axis=1), "min": wide.min(axis=1), "max": wide.max(axis=1),
                        "n": wide.notna().sum(axis=1)})
    return out[out.n > 0]


def _draw(ax, cur: pd.DataFrame, color, style, label, marker=None, band=True, gid=None):
    """Mean line (+ min-max band). Each further line in a panel is a little thinner, so identical
    curves (common in tiny or on-policy runs) show as a coloured halo instead of hiding each other."""
    x = cur.index.to_numpy()
    lw = max(1.1, 2.8 - 0.3 * sum(1 for ln in ax.get_lines() if ln.get_gid()))
    if band and (cur["max"] > cur["min"]).any():
        ax.fill_between(x, cur["min"].to_numpy(), cur["max"].to_numpy(), color=color, alpha=0.15, lw=0)
    few = len(x) <= 12
    (line,) = ax.plot(x, cur["mean"].to_numpy(), color=color, ls=style, lw=lw, label=label,
                      marker=marker or ("o" if len(x) == 1 else None),  # a lone point stays visible
                      ms=4 if few else 3, markevery=1 if few else max(1, len(x) // 8))
    if gid:
        line.set_gid(gid)
    return line


def _no_data(ax, text="no data logged"):
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="0.4", fontsize=9)


def _new_figure(nrows, ncols, w, h):
    """A Figure on its own Agg canvas (no pyplot: no global state, the caller's backend untouched)."""
    fig = Figure(figsize=(max(4.0, w * ncols), max(3.0, h * nrows)), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    return fig, axes


def _suptitle(fig, text: str, fontsize=10):
    """A figure title wrapped to the figure's width (never cut off at the edges)."""
    width = max(30, int(fig.get_figwidth() * 110 / fontsize))
    fig.suptitle("\n".join(textwrap.fill(line, width) for line in text.split("\n")), fontsize=fontsize)


def _side_legend(axes, handles, labels, **kw):
    """The figure's legend to the right of its top-right panel (constrained layout makes room)."""
    ax = [a for a in axes[0] if a.get_visible()][-1]
    ax.legend(handles, labels, loc="upper left", bbox_to_anchor=(1.03, 1.0), borderaxespad=0.0, **kw)


def _clamp01(ax, split, metric):
    """Rewards and accuracies live in [0, 1]: never show a negative axis, keep a flat 0 line visible."""
    if metric in ("reward", "accuracy"):
        lo, hi = ax.get_ylim()
        ax.set_ylim(max(lo, -0.02), min(max(hi, 0.1), 1.02))


def _footer(fig, *notes):
    text = "\n".join(n for n in notes if n)
    if text:
        fig.supxlabel(text, fontsize=8, color="0.3")


# ---------------------------------------------------------------- figures
def kernel_figure(args: dict | None = None) -> Figure:
    """Every registered method's gradient weight on A * grad log pi against its importance ratio,
    A > 0 and A < 0, over [0, 3]: the curve each registration carries (`WeightCurve`), evaluated with
    the method's own argument defaults (or `args={method: {arg: value}}`). Built in: VESPO's phi(W),
    token_clip's hard clip, SAPO's gate, naive IS's W."""
    args = args or {}
    curves = [(name, m) for name, m in _registered().items() if m.curve is not None]
    fig, axes = _new_figure(1, 2, 5.2, 4.0)
    for ax, positive in zip(axes[0], (True, False)):
        margs = {name: m.make_args(**args.get(name, {})) for name, m in curves}
        knots = [k for name, m in curves for k in m.curve.knots(margs[name], positive)]
        w = np.unique(np.concatenate([np.linspace(0.0, 3.0, 601), [1.0], [k for k in knots if 0 <= k <= 3]]))
        for name, m in curves:
            a, c = margs[name], m.curve
            ls, lw = c.style
            ax.plot(w, c.weight(a, w, positive), color=method_color(name), ls=ls, lw=lw, gid=name,
                    drawstyle="steps-mid" if c.steps else "default", label=c.label(a, positive))
            mark = c.mark(a, positive)
            if mark is not None:
                x, y, text = mark
                ax.plot([x], [y], "o", color=method_color(name), ms=5)
                ax.annotate(text, (x, y), xytext=(0.08, 1.5) if positive else (1.85, 0.3), fontsize=8,
                            arrowprops=dict(arrowstyle="-", color="0.5", lw=0.8))
        ax.axvline(1.0, color="0.75", lw=0.8, zorder=0)
        ax.axhline(1.0, color="0.75", lw=0.8, zorder=0)
        ax.set_xlim(0, 3)
        ax.set_ylim(0, 1.75)
        ax.set_xlabel("importance ratio (unitless): sequence W = pi/mu for sequence-level methods,\n"
                      "token r = pi/pi_old for token-level ones (see the methods table)")
        ax.set_ylabel("gradient weight on A * grad log pi")
        ax.set_title("A > 0" if positive else "A < 0")
        ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.24), ncols=2, frameon=False)
    _suptitle(fig, "Effective gradient weight of each method against its importance ratio "
              "(all equal 1 at ratio 1)", fontsize=11)
    return fig


def reward_vs_step(grid, smooth: int | None = None) -> Figure:
    """Train reward vs gradient step: a panel per method (series), a line per staleness N.

    Within a panel the N lines carry the fixed N line styles and, so that five of them stay apart,
    a dark-to-light ramp of the method's colour (darker = smaller N); the panel title is in the
    method's exact colour."""
    g = load(grid)
    series = _series_order(g)
    ctxs = _contexts(g)
    styles = _series_styles(g)
    train = g.metrics[g.metrics.split == "train"]
    window = smooth or _smooth_window(int(train.step.max()) if len(train) else 1)
    all_ns = _staleness_values(g.runs)
    ncols = min(len(series), 4)
    per_ctx = math.ceil(len(series) / ncols)
    fig, axes = _new_figure(per_ctx * len(ctxs), ncols, 4.0, 3.0)
    used = set()
    for ci, ctx in enumerate(ctxs):
        for si, s in enumerate(series):
            r, col = si // ncols + ci * per_ctx, si % ncols
            ax = axes[r][col]
            used.add((r, col))
            color, _ = styles[s]
            runs = g.runs[(g.runs.series == s) & (g.runs.context == ctx)]
            drawn = False
            for n in _staleness_values(runs):
                ids = runs[runs.staleness == n].run_id
                cur = _curves(g, ids, "train", "reward", window)
                if cur is not None:
                    _draw(ax, cur, _ramp(color, all_ns.index(n), len(all_ns)), n_style(n), f"N={n}",
                          gid=f"{s}|N={n}")
                    drawn = True
            if not drawn:
                _no_data(ax, "no train reward logged" if len(runs) else "no runs")
            seeds = runs.groupby("staleness").size()
            nseeds = "" if seeds.empty else (f"{seeds.min()}" if seeds.min() == seeds.max() else
                                             f"{seeds.min()}-{seeds.max()}")
            head = s.replace(", ", "\n", 1)  # a variant's knobs on their own line
            ax.set_title(f"{head}  ({nseeds} seeds per N)" + ("" if len(ctxs) == 1 else f"\n{ctx}"),
                         fontsize=10 if "\n" not in head else 9, color=color)
            ax.set_xlabel(LABELS["step"])
            ax.set_ylabel(LABELS["reward"])
            _clamp01(ax, "train", "reward")
    for r in range(per_ctx * len(ctxs)):
        for col in range(ncols):
            if (r, col) not in used:
                axes[r][col].set_visible(False)
    _side_legend(axes, [Line2D([], [], color=_ramp("#707070", i, len(all_ns)), ls=n_style(n), lw=2)
                for i, n in enumerate(all_ns)], [f"N = {n}" for n in all_ns],
               fontsize=9, title="staleness N\n(line style; darker\nshade = smaller N)", title_fontsize=8)
    avg = f"moving average over {window} steps" if window > 1 else "no smoothing"
    _suptitle(fig, _title(g, f"Train reward vs gradient step\n({avg}; {BAND_NOTE})"), fontsize=10)
    _footer(fig, _unfinished_note(g))
    return fig


def metric_grid(grid, method=None, smooth: int | None = None) -> Figure:
    """Rows N (per task/model), columns reward / eval accuracy / length / KL / entropy / loss.

    One line per method (series); `method` (a name or a list) restricts to those methods."""
    g = load(grid)
    keep = None if method is None else ([method] if isinstance(method, str) else list(method))
    if keep is not None:
        missing = sorted(set(keep) - set(g.runs.method))
        if missing:
            raise OffbenchError(f"metric_grid: no runs of {', '.join(missing)} in {g.path}; "
                                f"methods there: {', '.join(sorted(g.runs.method.unique()))}")
    runs_all = g.runs if keep is None else g.runs[g.runs.method.isin(keep)]
    series = [s for s in _series_order(g) if s in set(runs_all.series)]
    styles = _series_styles(g)
    train = g.metrics[g.metrics.split == "train"]
    window = smooth or _smooth_window(int(train.step.max()) if len(train) else 1)
    ctxs = _contexts(g)
    rows = [(ctx, n) for ctx in ctxs for n in _staleness_values(runs_all[runs_all.context == ctx])]
    fig, axes = _new_figure(len(rows), len(GRID_PANELS), 3.1, 2.5)
    handles = {}
    variants = set(runs_all[runs_all.variant != ""].series)
    for ri, (ctx, n) in enumerate(rows):
        for ci, (split, metric, ylabel, ctitle) in enumerate(GRID_PANELS):
            ax = axes[ri][ci]
            drawn = False
            for s in series:
                ids = runs_all[(runs_all.series == s) & (runs_all.context == ctx) & (runs_all.staleness == n)].run_id
                if not len(ids):
                    continue
                cur = _curves(g, ids, split, metric, window if split == "train" else 1)
                if cur is None:
                    continue
                color, marker = styles[s]
                line = _draw(ax, cur, color, n_style(n), s, gid=s,
                             marker=marker if split == "eval" or s in variants else None)
                handles.setdefault(s, line)
                drawn = True
            if not drawn:
                _no_data(ax, f"no {split} {metric} logged")
            _clamp01(ax, split, metric)
            ax.set_xlabel(LABELS["step"], fontsize=8)
            ax.set_ylabel(ylabel, fontsize=8)
            ax.tick_params(labelsize=7)
            if ri == 0:
                ax.set_title(ctitle + (f"\n(moving avg {window})" if split == "train" and window > 1 else ""),
                             fontsize=9)
            if ci == 0:
                row_label = f"N = {n}" if len(ctxs) == 1 else f"N = {n}\n{ctx}"
                ax.annotate(row_label, xy=(0, 0.5), xycoords="axes fraction", xytext=(-52, 0),
                            textcoords="offset points", ha="right", va="center", rotation=90,
                            fontsize=10, fontweight="bold")
    if handles:
        _side_legend(axes, [Line2D([], [], color=styles[s][0], marker=styles[s][1] if s in variants else None, lw=2)
                    for s in handles], list(handles), fontsize=8,
                   title="method\n(line: mean over seeds,\nband: min-max over seeds,\nline style: N)", title_fontsize=8)
    what = "Training metrics vs gradient step, rows = staleness N"
    if keep is not None:
        what += f" ({', '.join(keep)})"
    _suptitle(fig, _title(g, what), fontsize=11)
    _footer(fig, ACCURACY_NOTE, _unfinished_note(g))
    return fig


def accuracy_vs_n(grid, endpoint: str = "late_mean") -> Figure:
    """An eval-accuracy endpoint per run vs N (log2 axis), a line per method, error bars = 95% CI over
    seeds. `endpoint` (stats.ENDPOINTS): late_mean (default: the mean over the second half of training,
    the endpoint `offbench report` tabulates), final or best; computed per run from the logged eval
    points exactly as the report does (report.endpoint_table)."""
    if endpoint not in ENDPOINTS:
        raise OffbenchError(f"endpoint {endpoint!r}: choose {', '.join(ENDPOINTS)}")
    g = load(grid)
    metric = endpoint  # the endpoint_table column drawn
    ep = None if g.summary.empty else endpoint_table(g.path, g.summary, g.metrics)
    if ep is None or ep.empty:
        df = g.runs.assign(**{metric: np.nan}).iloc[0:0]
    else:
        df = g.runs.merge(ep[["run_id", metric]], on="run_id", how="inner")
    ctxs = _contexts(g)
    styles = _series_styles(g)
    series = _series_order(g)
    fig, axes = _new_figure(1, len(ctxs), 5.6, 4.2)
    fig.set_figwidth(fig.get_figwidth() + 2.6)  # room for the legend on the right
    handles = {}
    for ax, ctx in zip(axes[0], ctxs):
        part = df[df.context == ctx]
        ns = _staleness_values(g.runs[g.runs.context == ctx])
        numeric = all(isinstance(n, (int, np.integer, float)) and n > 0 for n in ns)
        drawn = []
        for k, s in enumerate(series):
            sp = part[part.series == s]
            if sp.empty:
                continue
            pts = []
            for n in ns:
                mean, ci, cnt = mean_ci(sp[sp.staleness == n][metric])
                if cnt:
                    pts.append((n, mean, 0.0 if math.isnan(ci) else ci, cnt))
            if not pts:
                continue
            # dodge the methods a little sideways so error bars do not hide each other
            off = 2 ** (0.04 * (k - (len(series) - 1) / 2)) if numeric else 1.0
            x = [p[0] * off if numeric else ns.index(p[0]) for p in pts]
            color, marker = styles[s]
            cont = ax.errorbar(x, [p[1] for p in pts], yerr=[p[2] for p in pts], color=color, marker=marker,
                               ms=5, lw=1.6, capsize=3, label=f"{s} ({_range_txt([p[3] for p in pts])})")
            cont.lines[0].set_gid(s)
            handles.setdefault(cont.get_label(), cont)
            drawn.append(s)
        if numeric:
            ax.set_xscale("log", base=2)
            ax.xaxis.set_major_locator(FixedLocator([float(n) for n in ns]))
            ax.xaxis.set_minor_locator(NullLocator())
            ax.set_xticklabels([str(n) for n in ns])
            if len(ns) == 1:
                ax.set_xlim(ns[0] / 2, ns[0] * 2)
        else:
            ax.set_xticks(range(len(ns)), [str(n) for n in ns])
        ax.set_xlabel(LABELS["staleness"])
        ax.set_ylabel(LABELS[endpoint])
        _clamp01(ax, "eval", "accuracy")
        ax.grid(alpha=0.3)
        if len(ctxs) > 1:
            ax.set_title(ctx, fontsize=10)
        if not drawn:
            _no_data(ax, "no finished runs (summary.parquet empty)")
    if handles:
        _side_legend(axes, list(handles.values()), list(handles), fontsize=8,
                   title="method (seeds per N)", title_fontsize=8)
    _suptitle(fig, _title(g, f"{ENDPOINT_TITLES[endpoint][0].upper()}{ENDPOINT_TITLES[endpoint][1:]} ({endpoint}) "
                             "vs staleness N (mean, error bar = 95% t-CI over seeds)"), fontsize=10)
    excluded = len(g.runs[~g.runs.run_id.isin(df.run_id)]) + g.unplottable
    _footer(fig, ACCURACY_NOTE, f"{excluded} of {len(g.runs) + g.unplottable} runs have no summary row (not finished) "
            "and are not in this plot" if excluded else "")
    return fig


def ablation_figure(grid, smooth: int | None = None) -> Figure | None:
    """Eval accuracy and train reward vs step per variant of the swept non-core knobs; None if the
    grid sweeps nothing besides method / staleness / seed / task / model."""
    g = load(grid)
    if not g.variant_columns:
        return None
    styles = _series_styles(g)
    series = _series_order(g)
    train = g.metrics[g.metrics.split == "train"]
    window = smooth or _smooth_window(int(train.step.max()) if len(train) else 1)
    ctxs = _contexts(g)
    rows = [(ctx, n) for ctx in ctxs for n in _staleness_values(g.runs[g.runs.context == ctx])]
    panels = [("eval", "accuracy", LABELS["eval_accuracy"], "eval accuracy"),
              ("train", "reward", LABELS["reward"], "train reward" + (f" (moving avg {window})" if window > 1 else ""))]
    fig, axes = _new_figure(len(rows), 2, 5.0, 3.0)
    for ri, (ctx, n) in enumerate(rows):
        for ci, (split, metric, ylabel, ptitle) in enumerate(panels):
            ax = axes[ri][ci]
            drawn = False
            for s in series:
                ids = g.runs[(g.runs.series == s) & (g.runs.context == ctx) & (g.runs.staleness == n)].run_id
                cur = _curves(g, ids, split, metric, window if split == "train" else 1) if len(ids) else None
                if cur is None:
                    continue
                color, marker = styles[s]
                _draw(ax, cur, color, n_style(n), s, marker=marker, band=True, gid=s)
                drawn = True
            if not drawn:
                _no_data(ax, f"no {split} {metric} logged")
            _clamp01(ax, split, metric)
            ax.set_xlabel(LABELS["step"])
            ax.set_ylabel(ylabel)
            ax.set_title(f"{ptitle}, N = {n}" + ("" if len(ctxs) == 1 else f"\n{ctx}"), fontsize=9)
    handles = [Line2D([], [], color=styles[s][0], marker=styles[s][1], lw=2) for s in series]
    _side_legend(axes, handles, series, fontsize=8,
               title="variant\n(line: mean over seeds,\nband: min-max over seeds)", title_fontsize=8)
    swept = ", ".join(_variant_name(c) for c in g.variant_columns)
    _suptitle(fig, _title(g, f"Ablation over {swept}"), fontsize=10)
    _footer(fig, ACCURACY_NOTE, _unfinished_note(g))
    return fig


def contrast_figure(table: pd.DataFrame, title: str = "Paired contrasts") -> Figure:
    """A forest plot of paired contrasts: a row per contrast (A - B in accuracy points, x100 of the
    table's fractions), its 95% interval as a bar, grouped by `group` (a claim) with a panel per
    `panel` (e.g. a learning rate) when the table has one. Columns: label, diff, lo, hi; optional group,
    panel, verdict (reproduced / refuted / undecided: the marker's colour; anything else grey),
    n (seeds) and mde (shown beside the label), margin (dashed lines at +-margin). Rows without a
    difference (a contrast whose arms did not run) are listed in the footer, never drawn."""
    need = {"label", "diff", "lo", "hi"}
    if not need <= set(table.columns):
        raise OffbenchError(f"contrast table lacks {', '.join(sorted(need - set(table.columns)))}; "
                            "it needs label, diff, lo, hi (group, panel, verdict, n, mde, margin optional)")
    t = table.copy()
    for c, d in (("group", ""), ("panel", ""), ("verdict", "")):
        if c not in t:
            t[c] = d
        t[c] = t[c].fillna(d).astype(str)
    drawn = t[np.isfinite(t["diff"].astype(float))]
    skipped = t[~np.isfinite(t["diff"].astype(float))]
    panels = list(dict.fromkeys(t.panel))
    groups = list(dict.fromkeys(t.group))
    order = [(gname, lab) for gname in groups for lab in dict.fromkeys(t[t.group == gname].label)]
    fig, axes = _new_figure(1, len(panels), 2.6, max(3.0, 0.3 * len(order) + 1.4))
    longest = max((len(str(g)) + len(str(lab)) for g, lab in order), default=10)
    fig.set_figwidth(fig.get_figwidth() + 0.065 * (longest + 16) + 1.8)  # the row labels and the legend
    margin = float(t["margin"].dropna().iloc[0]) if "margin" in t and t["margin"].notna().any() else None
    ypos = {key: -i for i, key in enumerate(order)}
    # the same rows in every panel: group separators and row labels (shown in the first panel only)
    bounds = [ypos[(gname, next(lab for g2, lab in order if g2 == gname))] + 0.5 for gname in groups]
    ticks, labels = [], []
    for gname, lab in order:
        row = t[(t.group == gname) & (t.label == lab)].iloc[0]
        extra = []
        if "n" in t and pd.notna(row.get("n")) and row.get("n"):
            extra.append(f"n={int(row['n'])}")
        if "mde" in t and pd.notna(row.get("mde")) and np.isfinite(float(row["mde"])):
            extra.append(f"MDE {100 * float(row['mde']):.1f}")
        ticks.append(ypos[(gname, lab)])
        labels.append((f"{gname}: " if gname else "") + lab + (f"  ({', '.join(extra)})" if extra else ""))
    for pi, (ax, panel) in enumerate(zip(axes[0], panels)):
        part = drawn[drawn.panel == panel]
        for _, r in part.iterrows():
            y = ypos[(r.group, r.label)]
            color = VERDICT_COLORS.get(r.verdict, "#9e9e9e")
            ax.plot([100 * r.lo, 100 * r.hi], [y, y], color=color, lw=2.2, solid_capstyle="butt")
            ax.plot([100 * r["diff"]], [y], "o", color=color, ms=5, gid=f"{r.group}|{r.label}|{panel}")
        ax.axvline(0, color="0.3", lw=0.8)
        if margin is not None:
            for m in (-margin, margin):
                ax.axvline(100 * m, color="0.5", lw=0.8, ls="--")
        for b in bounds[1:]:
            ax.axhline(b, color="0.85", lw=0.8)
        ax.set_ylim(-len(order) + 0.4, 0.6)
        ax.set_yticks(ticks, labels if pi == 0 else [""] * len(ticks), fontsize=7)
        ax.set_xlabel("A - B (accuracy points)", fontsize=8)
        ax.set_ylabel("contrast" if pi == 0 else " ", fontsize=8)
        ax.tick_params(axis="x", labelsize=7)
        ax.grid(axis="x", alpha=0.3)
        if panel:
            ax.set_title(panel, fontsize=9)
    handles = [Line2D([], [], color=c, marker="o", lw=2.2) for c in VERDICT_COLORS.values()]
    labels = list(VERDICT_COLORS)
    if margin is not None:
        handles.append(Line2D([], [], color="0.5", ls="--", lw=0.8))
        labels.append(f"margin +-{100 * margin:g} points")
    _side_legend(axes, handles, labels, fontsize=8, title="verdict of the contrast\n(dot: mean paired\ndifference, bar: 95%\ninterval)",
                 title_fontsize=8)
    _suptitle(fig, title, fontsize=10)
    notes = []
    for panel in panels:  # contrasts whose arms did not run: named when few, else counted
        sk = skipped[skipped.panel == panel]
        if not len(sk):
            continue
        kinds = ", ".join(f"{k or 'no verdict'} {v}" for k, v in sk.verdict.value_counts().sort_index().items())
        names = "; ".join(f"{r.group + ': ' if r.group else ''}{r.label}" for _, r in sk.iterrows())
        where = f" at {panel}" if panel else ""
        notes.append(f"not drawn{where} (arms not run): {names}" if len(sk) <= 3
                     else f"not drawn{where} (arms not run): {len(sk)} contrasts ({kinds})")
    _footer(fig, "\n".join(line for n in notes for line in textwrap.wrap(n, 150)))
    return fig


def read_contrasts(grid_dir) -> pd.DataFrame | None:
    """<grid_dir>/contrasts.csv when an analysis wrote one, else None."""
    path = os.path.join(os.fspath(grid_dir), CONTRASTS_FILE)
    return pd.read_csv(path) if os.path.isfile(path) else None


# ---------------------------------------------------------------- saving
def probe_plane(table: pd.DataFrame) -> Figure:
    """The bias-variance plane of `offbench probe`: a panel per version gap, x = variance of one
    mini-batch's gradient relative to the reference's squared norm (log axis), y = relative bias
    (noise removed); a point per method, one marker per response length; the bias noise floor of each
    point as a vertical bar from 0 (a bias inside it is not resolved)."""
    gaps = sorted(table["version_gap"].unique())
    fig, axes = _new_figure(1, len(gaps), 3.2, 3.0)
    lengths = sorted(table["response_len"].round(1).unique())
    markers = ["o", "s", "^", "D", "v", "P"]
    handles = {}
    for ax, k in zip(axes[0], gaps):
        sub = table[table["version_gap"] == k]
        for _, r in sub.iterrows():
            li = lengths.index(round(r["response_len"], 1))
            x, y = r["variance_vs_reference"], r["relative_bias"]
            if not (np.isfinite(x) and np.isfinite(y)) or x <= 0:
                continue
            h = ax.scatter([x], [y], color=method_color(r["method"]), marker=markers[li % len(markers)], s=30, zorder=3)
            ax.plot([x, x], [0, r["bias_noise_floor"]], color=method_color(r["method"]), lw=0.6, alpha=0.5)
            handles.setdefault(r["method"], h)
        ax.set_xscale("log")
        xs = sub["variance_vs_reference"][np.isfinite(sub["variance_vs_reference"]) & (sub["variance_vs_reference"] > 0)]
        if len(xs):  # whole decades, labelled at the decades only: a range inside one decade got
            lo, hi = np.floor(np.log10(xs.min())), np.ceil(np.log10(xs.max()))  # overlapping minor labels
            ax.set_xlim(10 ** lo, 10 ** max(hi, lo + 1))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_title(f"version gap {k}", fontsize=9)
        ax.set_xlabel("tr Cov(g) / |reference|^2 (one mini-batch)", fontsize=8)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("relative bias |E g - reference| / |reference|", fontsize=8)
    labels = list(handles)
    extra = [Line2D([], [], color="0.3", marker=markers[i % len(markers)], ls="", label=f"{ln:g} tokens")
             for i, ln in enumerate(lengths)]
    _side_legend(axes, [handles[m] for m in labels] + extra, labels + [e.get_label() for e in extra], fontsize=8)
    _suptitle(fig, "Gradient estimators against the on-policy gradient (offbench probe)")
    return fig


def probe_figure(table: pd.DataFrame, out_dir) -> list:
    """Write <out_dir>/probe.png and .pdf."""
    fig = probe_plane(table)
    paths = save(fig, out_dir, "probe")
    fig.clear()
    return paths


def save(fig: Figure, out_dir, stem: str) -> list:
    """Write <out_dir>/<stem>.png (150 dpi) and .pdf; returns the two paths."""
    out_dir = os.fspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    paths = []
    for ext in ("png", "pdf"):
        path = os.path.join(out_dir, f"{stem}.{ext}")
        fig.savefig(path, dpi=150)
        paths.append(path)
    return paths


def figures(grid, endpoint: str = "late_mean") -> dict:
    """stem -> Figure for every figure that applies to this grid (kernel included; the contrast
    figure when the grid folder holds a contrasts.csv)."""
    g = load(grid)
    out = {"kernel": kernel_figure(), "reward_vs_step": reward_vs_step(g), "metric_grid": metric_grid(g),
           "accuracy_vs_n": accuracy_vs_n(g, endpoint)}
    abl = ablation_figure(g)
    if abl is not None:
        out["ablation"] = abl
    con = read_contrasts(g.path)
    if con is not None:
        out["contrasts"] = contrast_figure(con, f"Paired contrasts of {g.name} ({CONTRASTS_FILE})")
    return out


def plot_all(grid_dir, out_dir=None, endpoint: str = "late_mean") -> list:
    """Write every applicable figure of a grid as PNG and PDF; returns the written paths."""
    if endpoint not in ENDPOINTS:
        raise OffbenchError(f"--endpoint {endpoint!r}: choose {', '.join(ENDPOINTS)}")
    g = load(grid_dir)
    out_dir = out_dir or os.path.join(os.fspath(grid_dir), "figures")
    paths = []
    for stem, fig in figures(g, endpoint).items():
        paths += save(fig, out_dir, stem)
        fig.clear()
    return paths
