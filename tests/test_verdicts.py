"""The registered verdict rules (docs/reproduction/paper-cpu-v2/verdicts.py) on synthetic grids whose
truth is known: a world where the paper holds, one where no method differs, one with cells missing."""

import importlib.util
import itertools
import math
import os
import sys

import numpy as np
import pandas as pd
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
spec = importlib.util.spec_from_file_location("verdicts", os.path.join(ROOT, "docs/reproduction/paper-cpu-v2/verdicts.py"))
V = importlib.util.module_from_spec(spec)
sys.modules["verdicts"] = V  # dataclasses look their module up
spec.loader.exec_module(V)

LONG = {"task": "math_cot", "task.digits": 8}
SHORT = {"task": "math_cot", "task.digits": 2}
CODE = {"task": "code", "task.level": 6}
ARMS = [  # (method, N, model, setting, knobs, label)
    ("on_policy", 1, "dense", LONG, {}, "ref"), ("on_policy", 1, "moe", LONG, {}, "ref"),
    *[(m, n, "dense", LONG, {}, m) for m in ("token_clip", "gspo", "sapo", "vespo", "naive_is", "topr", "drop_stale",
                                              "on_policy") for n in (16, 64)],
    *[("gspo", n, "dense", LONG, {"method.eps_low": 3e-3, "method.eps_high": 4e-3}, "gspo_r") for n in (16, 64)],
    ("vespo", 64, "dense", LONG, {"method.length_norm": "lin"}, "lin"),
    ("vespo", 64, "dense", LONG, {"method.length_norm": "sqrt"}, "sqrt"),
    ("vespo", 64, "dense", LONG, {"method.c1_neg": 2, "method.c2_neg": 3}, "sym23"),
    ("vespo", 64, "dense", LONG, {"method.c1_pos": 3, "method.c2_pos": 2}, "sym32"),
    ("vespo", 16, "moe", LONG, {}, "vespo"), ("vespo", 64, "moe", LONG, {}, "vespo"),
    ("token_clip", 64, "moe", LONG, {}, "token_clip"),
    ("on_policy", 1, "dense", SHORT, {}, "ref"), ("vespo", 64, "dense", SHORT, {}, "vespo_short"),
    ("token_clip", 64, "dense", SHORT, {}, "token_clip_short"),
    ("vespo", 64, "dense", CODE, {}, "vespo"), ("token_clip", 64, "dense", CODE, {}, "token_clip"),
]


def grid(tmp_path, level: dict, sd=0.01, drop=None):
    """runs/summary tables of every registered arm x 2 rates x 8 seeds, late_mean = level(label, N) + noise."""
    rng = np.random.default_rng(0)
    runs, summ = [], []
    for i, ((method, n, model, setting, knobs, label), lr, seed) in enumerate(
            itertools.product(ARMS, (1e-4, 4e-4), range(8))):
        if drop and drop(method, n, model, setting, knobs):
            continue
        rid = f"r{i}"
        row = {"run_id": rid, "status": "finished", "method": method, "staleness": n, "model": model, "seed": seed,
               "optim.lr": lr, "task.digits": np.nan, "task.level": np.nan, **{k: np.nan for k in V.KNOBS}}
        row.update(setting)
        for k, val in V.method_defaults(method).items():  # as the grid records them: resolved values
            if f"method.{k}" in row:
                row[f"method.{k}"] = val
        row.update(knobs)
        runs.append(row)
        summ.append({"run_id": rid, "eval_accuracy_late_mean": level(label, n) + rng.normal(0, sd),
                     "collapsed": False})
    d = tmp_path / "g"
    d.mkdir()
    pd.DataFrame(runs).to_parquet(d / "runs.parquet")
    pd.DataFrame(summ).to_parquet(d / "summary.parquet")
    return str(d)


def probe(top="naive_is"):
    rows = []
    for digits in (2, 8):
        for m in V.C6_METHODS + ("cispo",):  # cispo: in the probe, not in C6, ignored
            rows.append({"method": m, "version_gap": 63, "knob.task.digits": digits,
                         "relative_variance": 10.0 if m == top else 50.0 if m == "cispo" else 1.0})
    return pd.DataFrame(rows)


def paper_world(label, n):
    base = {"ref": 0.8, "vespo": 0.8, "token_clip": 0.65, "gspo": 0.65, "gspo_r": 0.66, "sapo": 0.5, "naive_is": 0.3,
            "topr": 0.66, "drop_stale": 0.6, "on_policy": 0.55, "lin": 0.6, "sqrt": 0.62, "sym23": 0.6, "sym32": 0.7,
            "vespo_short": 0.8, "token_clip_short": 0.78}
    return base[label] if n == 64 or label in ("ref",) else (base[label] + 0.8) / 2


def test_a_world_where_the_paper_holds_reproduces_every_claim(tmp_path):
    df = V.load(grid(tmp_path, paper_world))
    rows, table = V.verdicts(df, probe())
    v = dict(zip(table.claim, table.verdict))
    assert v.pop("C7") == "not run (cut by Amendment 2)"  # cut even where its cells exist
    assert set(v.values()) == {"reproduced"}, table
    assert all(r.n == 8 for r in rows)
    assert {r.claim for r in rows} == {f"C{i}" for i in range(1, 8)}


def test_a_world_where_nothing_differs_refutes_the_better_than_claims(tmp_path):
    df = V.load(grid(tmp_path, lambda label, n: 0.8))
    _, table = V.verdicts(df, probe(top="vespo"))
    v = dict(zip(table.claim, table.verdict))
    assert v["C1"] == "reproduced" and v["C2"] == "reproduced"  # "no worse" holds
    assert v["C3"] == v["C4"] == v["C5"] == v["C6"] == "refuted"  # effects of 5 points ruled out


def test_noise_larger_than_the_margin_leaves_claims_undecided(tmp_path):
    df = V.load(grid(tmp_path, paper_world, sd=0.3))
    _, table = V.verdicts(df, probe())
    assert "undecided" in set(table.verdict)


def test_missing_cells_are_never_a_verdict(tmp_path):
    df = V.load(grid(tmp_path, paper_world, drop=lambda m, n, model, setting, knobs: m == "sapo" and n == 64))
    _, table = V.verdicts(df, probe())
    v = dict(zip(table.claim, table.verdict))
    assert v["C2"] == "undecided (cells missing)" and v["C4"] == "reproduced"


def test_cut_contrasts_are_shown_as_cut_and_leave_the_claim_decided(tmp_path):
    """Amendment 2 cut moe vespo N=16 and gspo/sapo at N=16: C1 and C2 rest on the contrasts that ran."""
    cut = lambda m, n, model, setting, knobs: (n == 16 and (model == "moe" or m in ("gspo", "sapo")))  # noqa: E731
    df = V.load(grid(tmp_path, paper_world, drop=cut))
    rows, table = V.verdicts(df, probe())
    v = dict(zip(table.claim, table.verdict))
    assert v["C1"] == v["C2"] == "reproduced"
    assert {r.what for r in rows if r.verdict == "cut"} == {w for w in V.CUT}
    assert not [r for r in rows if r.verdict == "missing"]


def test_arms_run_at_one_rate_are_judged_at_that_rate(tmp_path):
    """Amendment 2: the core arms at both rates, the rest at lr_high only."""
    core = {("on_policy", 1), ("vespo", 64), ("token_clip", 64)}

    d = grid(tmp_path, paper_world)
    df = V.load(d)
    lo = df["optim.lr"].astype(float) == 1e-4
    plain = (df[[k for k in V.KNOBS if not k.startswith("task.")]] == V.DEFAULT).all(axis=1)
    is_core = [(m, n) in core and model == "dense" and s == LONG_ and p for m, n, model, s, p in
               zip(df.method, df.staleness, df.model, zip(df.task, df["task.digits"]), plain)]
    df = df[~lo | pd.Series(is_core, index=df.index)]
    rows, table = V.verdicts(df, probe())
    v = dict(zip(table.claim, table.verdict))
    assert v["C4"] == "reproduced" and table.set_index("claim").loc["C4", "lr=0.0001"] == "not run"
    assert table.set_index("claim").loc["C2", "lr=0.0001"] == "reproduced"  # vespo - token_clip at N=64 ran
    v = dict(zip(table.claim, table.verdict))
    assert v.pop("C7").startswith("not run") and set(v.values()) == {"reproduced"}, table


LONG_ = ("math_cot", 8)


def test_the_command_prints_the_verdict_table(tmp_path, capsys):
    d = grid(tmp_path, paper_world)
    probe().to_parquet(tmp_path / "probe.parquet")
    assert V.main([d, "--probe", str(tmp_path / "probe.parquet")]) == 0
    out = capsys.readouterr().out
    assert out.startswith("| claim | verdict |") and "| C6 | reproduced |" in out and "| C7 | not run" in out


if __name__ == "__main__":
    pytest.main([__file__])


def test_contrasts_file_holds_every_contrast_in_the_plot_schema(tmp_path):
    from offpolicy_bench import plots

    d = grid(tmp_path, paper_world, drop=lambda m, n, model, setting, knobs: setting is CODE)
    out = tmp_path / "contrasts.csv"
    assert V.main([d, "--contrasts", str(out)]) == 0
    t = pd.read_csv(out)
    rows, _ = V.verdicts(V.load(d))
    assert len(t) == len(rows) and set(t.margin) == {V.DELTA}
    assert list(t.group) == [r.claim for r in rows] and list(t.verdict) == [r.verdict for r in rows]
    assert np.allclose(t["diff"], [r.diff for r in rows], equal_nan=True)
    assert set(t.panel) == {"lr=0.0001", "lr=0.0004"}
    fig = plots.contrast_figure(t)
    drawn = {ln.get_gid() for ax in fig.axes for ln in ax.get_lines() if ln.get_gid()}
    assert len(drawn) == int(np.isfinite(t["diff"]).sum()) and "code: vespo - token_clip" in fig.get_supxlabel()


def test_starts_line_gives_each_warm_starts_range_of_start_accuracy_and_fit(tmp_path):
    d = grid(tmp_path, paper_world)
    df = V.load(d)
    assert V.starts(df).startswith("not recorded")
    df["eval_accuracy_start"] = np.where(df.model == "moe", 0.20, np.where(df.seed == 3, 0.121, 0.118))
    df["warmstart_excess_loss"] = 0.003
    line = V.starts(df)
    assert "dense, math_cot, 8 digits: " in line and "start 0.118-0.121" in line and "moe, math_cot, 8 digits" in line
    assert "dense, code: 32 cells" in line  # a task without digits is named by itself
    assert "start 0.200-0.200, fit excess 0.0030-0.0030" in line


def test_pilot_rules_pick_rates_band_and_sd(tmp_path):
    spec_p = importlib.util.spec_from_file_location("pilot", os.path.join(ROOT, "docs/reproduction/paper-cpu-v2/pilot.py"))
    P = importlib.util.module_from_spec(spec_p)
    spec_p.loader.exec_module(P)
    # late_mean by (lr, method, N); start 0.1: 5e-5 and 1e-4 learn, 2e-4 collapses on-policy (late 0.0)
    late = {(5e-5, "on_policy", 1): 0.5, (5e-5, "token_clip", 64): 0.45, (1e-4, "on_policy", 1): 0.7,
            (1e-4, "token_clip", 64): 0.5, (2e-4, "on_policy", 1): 0.0, (2e-4, "token_clip", 64): 0.3}
    clip = {"paper": 0.9, "(0.003, 0.004)": 0.25, "(0.03, 0.04)": 0.02}
    resolved = {"gspo": (3e-4, 4e-4), "token_clip": (0.2, 0.28)}  # the grid records every cell's resolved eps
    cells = [(lr, m, n, None, v) for (lr, m, n), v in late.items()]
    cells += [(1e-4, "gspo", 64, band, 0.5) for band in (None, (0.003, 0.004), (0.03, 0.04))]
    cells = [(lr, m, n, band or resolved.get(m), v) for lr, m, n, band, v in cells]
    runs, summ, mets = [], [], []
    for i, ((lr, method, n, band, v), seed) in enumerate(itertools.product(cells, (100, 101))):
        rid = f"r{i}"
        runs.append({"run_id": rid, "status": "finished", "optim.lr": lr, "method": method, "staleness": n,
                     "seed": seed, "method.eps_low": band[0] if band else np.nan,
                     "method.eps_high": band[1] if band else np.nan})
        summ.append({"run_id": rid, "eval_accuracy_start": 0.1, "eval_accuracy_late_mean": v + (0.01 if seed == 100
                     else -0.01), "eval_accuracy_best": v + 0.05, "collapsed": v == 0.0})
        key = "paper" if band == (3e-4, 4e-4) else f"({band[0]:g}, {band[1]:g})" if band else "-"
        cf = 0.3 if method == "token_clip" else clip.get(key, 0.0)
        mets.append({"run_id": rid, "split": "train", "step": 1, "metric": "clip_frac", "value": cf})
    d = tmp_path / "pilot"
    d.mkdir()
    pd.DataFrame(runs).to_parquet(d / "runs.parquet")
    pd.DataFrame(summ).to_parquet(d / "summary.parquet")
    pd.DataFrame(mets).to_parquet(d / "metrics.parquet")
    df = P.load(str(d))
    t = P.cell_table(df)
    lo, hi, _ = P.choose_rates(t)
    assert (lo, hi) == (5e-5, 1e-4)  # 2e-4: on-policy training itself collapses
    band, cf, target = P.choose_band(t)
    assert band == "(0.003, 0.004)" and cf == 0.25 and target == 0.3
    assert abs(P.planning_sd(df) - 0.01 * math.sqrt(2)) < 1e-9
    assert P.main([str(d)]) == 0


def test_the_registered_preset_holds_every_arm_the_verdicts_read(tmp_path):
    """Amendment 2's preset (184 cells) against verdicts.py: every contrast not cut finds its arms at some
    rate with 8 seeds, so no claim can end "undecided (cells missing)" through a typo in either file."""
    from offpolicy_bench.grid import expand
    from offpolicy_bench.config import parse_overrides

    _, cells, _ = expand(["preset=paper-cpu-v2"])
    assert len(cells) == 184
    rows = []
    for i, cell in enumerate(cells):
        kv = dict(parse_overrides(cell))
        row = {"run_id": f"r{i}", "status": "finished", "method": kv["method"], "staleness": int(kv["staleness"]),
               "model": kv.get("model", kv.get("model.name")), "seed": int(kv["seed"]), "optim.lr": float(kv["optim.lr"]), "task": kv["task"]}
        row.update({k: kv.get(k, np.nan) for k in V.KNOBS})
        rows.append(row)
    runs = pd.DataFrame(rows)
    for k in V.KNOBS:
        runs[k] = runs[k].astype(object)
    rng = np.random.default_rng(0)
    summ = pd.DataFrame({"run_id": runs.run_id, "eval_accuracy_late_mean": rng.uniform(0.4, 0.8, len(runs)),
                         "collapsed": False})
    d = tmp_path / "g"
    d.mkdir()
    runs.to_parquet(d / "runs.parquet")
    summ.to_parquet(d / "summary.parquet")
    out, table = V.verdicts(V.load(str(d)), probe())
    assert not [r.what for r in out if r.verdict == "missing" and r.lr == 1e-4], "arms missing at lr_high"
    assert {r.what for r in out if r.verdict == "cut"} == V.CUT | {"code: vespo - token_clip, N=64"}
    assert all(r.n == 8 for r in out if r.verdict not in ("missing", "cut"))
    assert not table.verdict.str.contains("cells missing").any(), table


def test_machines_line_counts_cells_per_cpu_and_dispatch(tmp_path):
    df = V.load(grid(tmp_path, paper_world))
    assert V.machines(df) == f"not recorded: {len(df)} cells"
    avx2 = '{"cores": 2, "cpu": "AMD EPYC", "cpu_capability": "AVX2", "torch_threads": 1}'
    df["machine"] = np.where(df.seed < 2, None, avx2)
    line = V.machines(df)
    assert f"AMD EPYC (AVX2): {int((df.seed >= 2).sum())} cells" in line
    assert f"not recorded: {int((df.seed < 2).sum())} cells" in line
