"""Figures from a real tiny grid: every file written, every axis labelled, one colour per method in
every figure, the kernel's defining points, the `offbench plot` command, and figures built from the
three parquet tables alone (no cell folders)."""

import os
import shutil

import numpy as np
import pandas as pd
import pytest
from matplotlib.colors import to_hex

from conftest import offbench
from offpolicy_bench import plots

TABLES = ("runs.parquet", "metrics.parquet", "summary.parquet")
STEMS = {"kernel", "reward_vs_step", "metric_grid", "accuracy_vs_n"}


def tables_only(grid, dest):
    """A grid folder holding only the three tables (so a figure cannot read anything else)."""
    dest.mkdir()
    for name in TABLES:
        shutil.copy(os.path.join(grid, name), dest / name)
    return dest


def axes_of(fig):
    return [ax for ax in fig.axes if ax.get_visible()]


def test_plot_all_writes_every_figure_as_png_and_pdf(tiny_grid, tmp_path):
    paths = plots.plot_all(str(tiny_grid), str(tmp_path / "figs"))
    assert {os.path.basename(p) for p in paths} == {f"{s}.{e}" for s in STEMS for e in ("png", "pdf")}
    for p in paths:
        head = open(p, "rb").read(8)
        assert os.path.getsize(p) > 1000, p
        assert head.startswith(b"\x89PNG" if p.endswith(".png") else b"%PDF"), p


def test_figures_read_only_the_tables_and_default_to_grid_figures(tiny_grid, tmp_path):
    g = tables_only(tiny_grid, tmp_path / "g")
    paths = plots.plot_all(g)
    assert paths and all(os.path.dirname(p) == str(g / "figures") for p in paths)


def test_every_axis_has_x_and_y_labels(tiny_grid):
    figs = plots.figures(str(tiny_grid))
    assert set(figs) == STEMS  # the tiny grid sweeps nothing else: no ablation figure
    for stem, fig in figs.items():
        for ax in axes_of(fig):
            assert ax.get_xlabel().strip() and ax.get_ylabel().strip(), (stem, ax.get_title())
        assert fig.get_suptitle(), stem
    # one task and one model: the titles say which
    assert "task=math, model=dense" in figs["reward_vs_step"].get_suptitle()


def test_each_method_has_the_same_colour_in_every_figure(tiny_grid):
    g = plots.load(str(tiny_grid))
    methods = set(g.runs.method)
    seen = {}  # (figure, method) -> colours used for that method's own lines / titles
    for stem, fig in plots.figures(g).items():
        for ax in axes_of(fig):
            for line in ax.get_lines():
                if line.get_gid() in methods:
                    seen.setdefault((stem, line.get_gid()), set()).add(to_hex(line.get_color()))
            if stem == "reward_vs_step":  # a panel per method, titled in the method's colour
                m = ax.get_title().split()[0]
                seen.setdefault((stem, m), set()).add(to_hex(ax.title.get_color()))
    for m in methods:
        figs_with_m = {stem for stem, mm in seen if mm == m}
        assert figs_with_m == STEMS, (m, figs_with_m)
        colours = set().union(*(c for (stem, mm), c in seen.items() if mm == m))
        assert colours == {plots.method_color(m)}, (m, colours)


def test_every_registered_method_carries_its_own_colour_and_unknown_names_are_stable():
    from offpolicy_bench.method import METHODS

    colours = {name: m.color for name, m in METHODS.items()}
    assert all(colours.values()), [n for n, c in colours.items() if not c]  # every shipped method has one
    assert len(set(colours.values())) == len(colours)  # and they are distinct
    assert all(plots.method_color(n) == c for n, c in colours.items())
    c = plots.method_color("my_new_loss")
    assert c == plots.method_color("my_new_loss") and c not in colours.values()
    assert plots.n_style(4) == plots.N_STYLES[4] and plots.n_style(3) == plots.n_style(3)


def test_kernel_figure_draws_every_registered_curve_including_a_plugin(monkeypatch):
    """The core names no method: a plug-in's registered curve is drawn like the built-in ones."""
    import dataclasses

    from offpolicy_bench.method import METHODS, WeightCurve, get_method

    base = get_method("naive_is")
    mine = dataclasses.replace(base, name="my_capped_is", color="#123456",
                               curve=WeightCurve(weight=lambda a, w, pos: np.minimum(w, 1.5),
                                                 label=lambda a, pos: "min(W, 1.5)"))
    monkeypatch.setitem(METHODS._items, "my_capped_is", mine)
    lines = {ln.get_gid(): ln for ln in plots.kernel_figure().axes[0].get_lines() if ln.get_gid()}
    assert set(lines) == {n for n, m in METHODS.items() if m.curve is not None}
    x, y = (np.asarray(a, dtype=float) for a in lines["my_capped_is"].get_data())
    np.testing.assert_allclose(y, np.minimum(x, 1.5))
    assert to_hex(lines["my_capped_is"].get_color()) == "#123456"


@pytest.mark.parametrize("panel", [0, 1])  # A > 0, A < 0
def test_kernel_figure_phi_is_one_at_one_and_peaks_at_c1_over_c2(panel):
    from offpolicy_bench.method import get_method

    vespo, clip_args, sapo = (get_method(m).args() for m in ("vespo", "token_clip", "sapo"))  # the defaults
    c1, c2 = (vespo.c1_pos, vespo.c2_pos) if panel == 0 else (vespo.c1_neg, vespo.c2_neg)
    ax = plots.kernel_figure().axes[panel]
    lines = {ln.get_gid(): ln for ln in ax.get_lines() if ln.get_gid()}
    assert {"vespo", "token_clip", "sapo"} <= set(lines)
    w, phi = (np.asarray(a, dtype=float) for a in lines["vespo"].get_data())
    assert w.min() == 0.0 and w.max() == 3.0
    assert phi[np.argmin(abs(w - 1.0))] == pytest.approx(1.0, abs=1e-12)
    assert w[np.argmax(phi)] == pytest.approx(c1 / c2, abs=1e-12)
    assert phi.max() == pytest.approx((c1 / c2) ** c1 * np.exp(c2 - c1), rel=1e-12)
    for name in ("token_clip", "sapo"):  # every curve passes through 1 at W = 1
        x, y = (np.asarray(a, dtype=float) for a in lines[name].get_data())
        assert y[np.argmin(abs(x - 1.0))] == pytest.approx(1.0, abs=1e-12)
    x, clip = (np.asarray(a, dtype=float) for a in lines["token_clip"].get_data())
    if panel == 0:  # A > 0: the clip's gradient vanishes above 1 + eps_high
        edge = 1 + clip_args.eps_high
        assert (clip[x > edge] == 0).all() and (clip[x <= edge] == 1).all()
    else:  # A < 0: below 1 - eps_low
        edge = 1 - clip_args.eps_low
        assert (clip[x < edge] == 0).all() and (clip[x >= edge] == 1).all()
    x, gate = (np.asarray(a, dtype=float) for a in lines["sapo"].get_data())
    tau = sapo.tau_pos if panel == 0 else sapo.tau_neg
    s = 1 / (1 + np.exp(-tau * (x - 1)))
    np.testing.assert_allclose(gate, 4 * x * s * (1 - s), rtol=1e-12)


def test_offbench_plot_prints_the_written_paths(tiny_grid, tmp_path):
    g = tables_only(tiny_grid, tmp_path / "g")
    r = offbench("plot", str(g))
    assert r.returncode == 0, r.stdout + r.stderr
    printed = r.stdout.split()
    assert len(printed) == 2 * len(STEMS)
    assert all(os.path.isfile(p) and os.path.dirname(p) == str(g / "figures") for p in printed)
    r = offbench("plot", str(tmp_path / "nope"))
    assert r.returncode == 2 and "not a grid folder" in r.stderr


def test_swept_knobs_give_an_ablation_figure_and_separate_series(tiny_grid, tmp_path):
    g = tables_only(tiny_grid, tmp_path / "abl")
    runs = pd.read_parquet(g / "runs.parquet")
    # pretend seed 1 of vespo ran length_norm=lin; token_clip has no such knob (None in the table)
    runs["method.length_norm"] = np.where(runs.method != "vespo", None, np.where(runs.seed == 0, "none", "lin"))
    runs.to_parquet(g / "runs.parquet")
    fig = plots.ablation_figure(str(g))
    assert fig is not None
    gids = {ln.get_gid() for ax in fig.axes for ln in ax.get_lines()}
    assert gids == {"token_clip", "vespo, length_norm=none", "vespo, length_norm=lin"}
    for ax in axes_of(fig):
        assert ax.get_xlabel() and ax.get_ylabel()
    assert "length_norm" in fig.get_suptitle()
    # the variants are never averaged together in the other figures either
    acc = plots.accuracy_vs_n(str(g))
    assert {ln.get_gid() for ax in acc.axes for ln in ax.get_lines() if ln.get_gid()} == gids
    assert "ablation.png" in {os.path.basename(p) for p in plots.plot_all(str(g))}
    assert plots.ablation_figure(str(tiny_grid)) is None


def test_runs_with_missing_eval_points_are_drawn_not_dropped(tiny_grid, tmp_path):
    g = tables_only(tiny_grid, tmp_path / "partial")
    runs = pd.read_parquet(g / "runs.parquet")
    metrics = pd.read_parquet(g / "metrics.parquet")
    summary = pd.read_parquet(g / "summary.parquet")
    # every vespo run lost its eval points after step 0; one of them stopped early and failed
    victim = runs[runs.method == "vespo"].run_id.iloc[0]
    vespo = set(runs[runs.method == "vespo"].run_id)
    metrics = metrics[~((metrics.split == "eval") & (metrics.step > 0) & metrics.run_id.isin(vespo))]
    metrics = metrics[~((metrics.run_id == victim) & (metrics.step > 4))]
    runs.loc[runs.run_id == victim, "status"] = "failed"
    metrics.to_parquet(g / "metrics.parquet")
    runs.to_parquet(g / "runs.parquet")
    summary[summary.run_id != victim].to_parquet(g / "summary.parquet")
    fig = plots.metric_grid(str(g))
    eval_cols = [ax for ax in fig.axes if ax.get_ylabel() == plots.LABELS["eval_accuracy"]]
    assert len(eval_cols) == runs.staleness.nunique()
    for ax in eval_cols:  # vespo's lone eval point (step 0) is still drawn, with a marker
        lines = {ln.get_gid(): ln for ln in ax.get_lines()}
        assert set(lines) == {"token_clip", "vespo"}
        assert list(lines["vespo"].get_xdata()) == [0] and lines["vespo"].get_marker() not in (None, "None", "")
    assert "1 of 8 runs not finished (1 failed)" in fig.get_supxlabel()
    assert "1 of 8 runs have no summary row" in plots.accuracy_vs_n(str(g)).get_supxlabel()


def test_bookkeeping_columns_of_runs_table_are_never_variants():
    import pandas as pd

    from offpolicy_bench.grid import collect  # noqa: F401  (the writer of runs.parquet)
    from offpolicy_bench.report import META_COLUMNS, variant_columns

    runs = pd.DataFrame({"run_id": ["a", "b"], "method": ["vespo"] * 2, "staleness": [1, 1], "seed": [0, 1],
                         "task": ["math"] * 2, "model": ["dense"] * 2, "peak_rss_mb": [500.1, 512.3],
                         "wall_time_s": [10.0, 11.0], "status": ["finished"] * 2})
    assert variant_columns(runs) == []
    assert {"peak_rss_mb", "wall_time_s", "git_commit", "versions", "error"} <= META_COLUMNS


def test_accuracy_vs_n_shows_the_reports_endpoint_and_says_which(tiny_grid, tmp_path):
    from offpolicy_bench import report

    d = tables_only(tiny_grid, tmp_path / "g")
    m = pd.read_parquet(d / "metrics.parquet")  # tiny runs score 0: give each run its own rising-then-falling curve
    ev = (m.split == "eval") & (m.metric == "accuracy")
    rank = m.run_id.map({r: i for i, r in enumerate(sorted(m.run_id.unique()))})
    m.loc[ev, "value"] = (0.1 + 0.05 * rank + 0.3 * np.sin(m.step / m.step.max() * 2.5)).loc[ev]
    last = m[ev & (m.step == m.step.max())]  # and a second point in the late half: late_mean != final
    m = pd.concat([m, last.assign(step=(3 * m.step.max()) // 4 + 1, value=last.value + 0.2)], ignore_index=True)
    m.to_parquet(d / "metrics.parquet")
    g = plots.load(str(d))
    ep = report.endpoint_table(str(d), g.summary)  # the report's own per-run endpoints
    runs = g.runs.merge(ep, on="run_id")
    for endpoint in ("late_mean", "final", "best"):
        fig = plots.accuracy_vs_n(g, endpoint)
        ax = axes_of(fig)[0]
        assert ax.get_ylabel() == plots.LABELS[endpoint] and endpoint in fig.get_suptitle()
        assert plots.ACCURACY_NOTE in fig.get_supxlabel()
        for line in ax.get_lines():
            if line.get_gid() in set(runs.method):
                want = runs[runs.method == line.get_gid()].groupby("staleness")[endpoint].mean().sort_index()
                assert np.allclose(line.get_ydata(), want.to_numpy()), (endpoint, line.get_gid())
    # the three endpoints are different numbers here (else this test could not tell them apart)
    assert not np.allclose(runs.late_mean, runs.final) and not np.allclose(runs.best, runs.final)
    with pytest.raises(plots.OffbenchError, match="choose late_mean, final, best"):
        plots.accuracy_vs_n(g, "last")


def test_offbench_plot_endpoint_flag_and_bad_value(tiny_grid, tmp_path):
    g = tables_only(tiny_grid, tmp_path / "g")
    r = offbench("plot", str(g), "--endpoint", "final", "--out", str(tmp_path / "f"))
    assert r.returncode == 0 and os.path.isfile(tmp_path / "f" / "accuracy_vs_n.png"), r.stderr
    r = offbench("plot", str(g), "--endpoint", "last")
    assert r.returncode == 2 and "--endpoint" in r.stderr and "late_mean" in r.stderr


def contrasts():
    return pd.DataFrame([
        {"group": "C1", "panel": "lr=1e-4", "label": "a - b", "diff": 0.02, "lo": -0.01, "hi": 0.05, "n": 8,
         "mde": 0.04, "verdict": "reproduced", "margin": 0.05},
        {"group": "C1", "panel": "lr=1e-4", "label": "c - b", "diff": -0.3, "lo": -0.4, "hi": -0.2, "n": 8,
         "mde": 0.06, "verdict": "refuted", "margin": 0.05},
        {"group": "C2", "panel": "lr=1e-4", "label": "a - c", "diff": 0.0, "lo": -0.08, "hi": 0.08, "n": 8,
         "mde": 0.11, "verdict": "undecided", "margin": 0.05},
        {"group": "C2", "panel": "lr=5e-5", "label": "a - c", "diff": np.nan, "lo": np.nan, "hi": np.nan, "n": 0,
         "mde": np.nan, "verdict": "missing", "margin": 0.05},
    ])


def test_contrast_figure_draws_each_interval_in_points_coloured_by_verdict():
    fig = plots.contrast_figure(contrasts(), "t")
    panels = axes_of(fig)
    assert [ax.get_title() for ax in panels] == ["lr=1e-4", "lr=5e-5"]
    dots = {ln.get_gid(): ln for ax in panels for ln in ax.get_lines() if ln.get_gid()}
    assert set(dots) == {"C1|a - b|lr=1e-4", "C1|c - b|lr=1e-4", "C2|a - c|lr=1e-4"}  # the missing one: not drawn
    assert dots["C1|c - b|lr=1e-4"].get_xdata()[0] == pytest.approx(-30.0)
    assert to_hex(dots["C1|c - b|lr=1e-4"].get_color()) == plots.VERDICT_COLORS["refuted"]
    assert to_hex(dots["C1|a - b|lr=1e-4"].get_color()) == plots.VERDICT_COLORS["reproduced"]
    # the interval is a bar from lo to hi in points, on the dot's row
    ax = panels[0]
    y = dots["C2|a - c|lr=1e-4"].get_ydata()[0]
    bars = [ln for ln in ax.get_lines() if not ln.get_gid() and list(ln.get_ydata()) == [y, y]]
    assert [list(b.get_xdata()) for b in bars] == [[pytest.approx(-8.0), pytest.approx(8.0)]]
    # the margin lines at +-5 points, and the row labels say n and the MDE
    assert {round(ln.get_xdata()[0], 6) for ln in ax.get_lines() if ln.get_linestyle() == "--"} == {-5.0, 5.0}
    assert "C2: a - c  (n=8, MDE 11.0)" in [t.get_text() for t in ax.get_yticklabels()]
    assert "not drawn at lr=5e-5 (arms not run): C2: a - c" in fig.get_supxlabel()
    with pytest.raises(plots.OffbenchError, match="lacks hi, lo"):
        plots.contrast_figure(contrasts().drop(columns=["lo", "hi"]))


def test_plot_all_draws_the_contrasts_a_grid_folder_holds(tiny_grid, tmp_path):
    g = tables_only(tiny_grid, tmp_path / "g")
    assert "contrasts" not in plots.figures(str(g))
    contrasts().to_csv(g / plots.CONTRASTS_FILE, index=False)
    names = {os.path.basename(p) for p in plots.plot_all(str(g))}
    assert {"contrasts.png", "contrasts.pdf"} <= names


def test_probe_plane_labels_whole_decades_and_shows_every_point():
    """A panel whose variances sit inside one decade (gap 0: every method the same) labelled its minor
    ticks, which overlapped; each panel now spans whole decades, labelled only there."""
    rows = []
    for gap, xs in ((0, [0.16, 0.17, 0.66, 0.82]), (63, [0.0175, 0.3, 5.55, 142.0])):
        for i, x in enumerate(xs):
            rows.append({"method": ["naive_is", "token_clip", "vespo", "gspo"][i], "version_gap": gap,
                         "response_len": 17.9 if i % 2 else 65.8, "variance_vs_reference": x,
                         "relative_bias": 0.1 * i, "bias_noise_floor": 0.05})
    fig = plots.probe_plane(pd.DataFrame(rows))
    fig.canvas.draw()
    for ax, xs in zip(fig.axes[:2], ([0.16, 0.17, 0.66, 0.82], [0.0175, 0.3, 5.55, 142.0])):
        lo, hi = ax.get_xlim()
        assert lo <= min(xs) and max(xs) <= hi
        assert np.log10(lo) == np.floor(np.log10(lo)) and np.log10(hi) == np.floor(np.log10(hi))  # decades
        shown = [t for t in ax.xaxis.get_majorticklocs() if lo <= t <= hi]
        assert len(shown) >= 2 and all(np.isclose(np.log10(t), round(np.log10(t))) for t in shown)
        assert all(not t.get_text() for t in ax.xaxis.get_minorticklabels())
