"""`offbench report` on a synthetic grid (tables written by hand, no training): endpoints, the MDE
line under every table, collapse / dip counts, contrasts and their errors."""

import re

import numpy as np
import pandas as pd
import pytest

from conftest import offbench
from offpolicy_bench import stats
from offpolicy_bench.registry import OffbenchError
from offpolicy_bench.report import summarize_run, table

STEPS = [0, 4, 8, 12, 16]


def curve(method, n, seed):
    """Eval accuracy at STEPS: vespo above token_clip by 0.1 at every point; vespo N=4 seed 2
    collapses, token_clip N=1 seed 1 dips at step 8 and recovers."""
    base = np.array([0.10, 0.30, 0.40, 0.45, 0.50]) + 0.02 * seed - 0.05 * (n == 4)
    acc = base + (0.1 if method == "vespo" else 0.0)
    if (method, n, seed) == ("vespo", 4, 2):
        acc = np.array([0.10, 0.45, 0.40, 0.20, 0.10])
    if (method, n, seed) == ("token_clip", 1, 1):
        acc = np.array([0.10, 0.40, 0.15, 0.42, 0.44])
    return acc


def write_grid(path, methods=("token_clip", "vespo"), ns=(1, 4), seeds=(0, 1, 2)):
    runs, metrics, summ = [], [], []
    for method in methods:
        for n in ns:
            for seed in seeds:
                rid = f"{method}-{n}-{seed}"
                runs.append({"run_id": rid, "status": "finished", "method": method, "task": "math", "model": "dense",
                             "staleness": n, "lag": 0, "seed": seed, "correction": "none", "rollout_dtype": "float32"})
                m = pd.DataFrame([{"step": s, "split": "eval", "metric": "accuracy", "value": float(v)}
                                  for s, v in zip(STEPS, curve(method, n, seed))]
                                 + [{"step": s, "split": "train", "metric": "reward", "value": 0.5}
                                    for s in range(1, 17)])
                summ.append({"run_id": rid, **summarize_run(m)})
                metrics.append(m.assign(run_id=rid))
    path.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(runs).to_parquet(path / "runs.parquet")
    pd.concat(metrics)[["run_id", "step", "split", "metric", "value"]].to_parquet(path / "metrics.parquet")
    pd.DataFrame(summ).to_parquet(path / "summary.parquet")
    return path


@pytest.fixture
def grid(tmp_path):
    return write_grid(tmp_path / "g")


def late_mean(method, n, seed):
    return curve(method, n, seed)[[3, 4]].mean()  # steps 12 and 16: past half of 16 training steps


def cell(md, series, col):
    """The text of one table cell of the first markdown table."""
    lines = md.split("\n")
    header = next(ln for ln in lines if ln.startswith("| method |")).strip("|").split("|")
    row = next(ln for ln in lines if ln.startswith(f"| {series} |")).strip("|").split("|")
    return row[[h.strip() for h in header].index(col)].strip()


MDE_LINE = re.compile(r"minimum detectable effect at 80% power \(two-sided 5%\) with n=(\d+) seeds per cell: "
                      r"([\d.]+) points \(pooled seed sd ([\d.]+)\)")


def test_default_endpoint_is_the_late_mean(grid):
    md = table(str(grid))
    assert "late_mean" in md.split("\n")[0]
    vals = [late_mean("vespo", 1, s) for s in range(3)]
    iv = stats.t_interval(vals, bounds=(0, 1))
    assert cell(md, "vespo", "N=1") == f"{100 * iv.estimate:.1f} ± {100 * iv.halfwidth:.1f} (3)"
    final = table(str(grid), endpoint="final")
    assert cell(final, "vespo", "N=1") != cell(md, "vespo", "N=1")
    assert cell(final, "vespo", "N=1").startswith(f"{100 * np.mean([curve('vespo', 1, s)[-1] for s in range(3)]):.1f} ")
    best = table(str(grid), endpoint="best")
    assert cell(best, "token_clip", "N=4").startswith(
        f"{100 * np.mean([curve('token_clip', 4, s).max() for s in range(3)]):.1f} ")
    # the summary column route (--metric) is still there
    legacy = table(str(grid), metric="eval_accuracy_final")
    assert cell(legacy, "vespo", "N=1") == cell(final, "vespo", "N=1")


def test_a_line_with_the_mde_under_every_table_in_every_format(grid):
    for fmt, n_tables in (("md", 1), ("csv", 1), ("latex", 1)):
        out = table(str(grid), fmt=fmt)
        found = MDE_LINE.findall(out)
        assert len(found) == n_tables, (fmt, out)
    md = table(str(grid), contrasts=["vespo-token_clip"])
    k, mde_pts, sd_pts = MDE_LINE.findall(md)[0]
    assert len(MDE_LINE.findall(md)) == 2  # main table and contrast table
    groups = [[late_mean(m, n, s) for s in range(3)] for m in ("token_clip", "vespo") for n in (1, 4)]
    sd = stats.pooled_sd(groups)
    assert (int(k), float(sd_pts), float(mde_pts)) == (3, round(100 * sd, 1), round(100 * stats.mde(sd, 3), 1))
    # the MDE line sits under the table: after its last row
    lines = md.split("\n")
    last_row = max(i for i, ln in enumerate(lines[:lines.index(next(ln for ln in lines if "contrasts" in ln))])
                   if ln.startswith("| "))
    assert any(MDE_LINE.search(ln) for ln in lines[last_row + 1:last_row + 3])


def test_formats_keep_their_shape(grid):
    csv_out = table(str(grid), fmt="csv")
    assert csv_out.split("\n")[0] == "method,N=1,N=4"
    assert "vespo," in csv_out and "+-" in csv_out and "# minimum detectable effect" in csv_out
    tex = table(str(grid), fmt="latex", contrasts=["vespo-token_clip"])
    assert tex.count(r"\begin{tabular}") == 2 and r"token\_clip" in tex and r"$\pm$" in tex
    assert all(ln.startswith(("%", "\\", " ")) or "&" in ln for ln in tex.split("\n") if ln), tex


def test_collapsed_and_dips_are_counted_apart(grid):
    md = table(str(grid))
    line = next(ln for ln in md.split("\n") if ln.startswith("collapsed"))
    assert "collapsed (final below 50% of best): 1 of 12 runs (vespo N=4: 1/3)" in line
    assert "dips (fell below 50% of best so far, recovered): 1 of 12 runs (token_clip N=1: 1/3)" in line


def test_contrast_paired_by_seed_with_its_interval_and_mde(grid):
    md = table(str(grid), contrasts=["vespo-token_clip"])
    rows = [ln for ln in md.split("\n") if ln.startswith("| vespo - token_clip |")]
    assert len(rows) == 2
    _, n, diff, ci, seeds, pairing, mde = [c.strip() for c in rows[0].strip("|").split("|")]
    d = [late_mean("vespo", 1, s) - late_mean("token_clip", 1, s) for s in range(3)]
    c = stats.contrast([late_mean("vespo", 1, s) for s in range(3)], [late_mean("token_clip", 1, s) for s in range(3)],
                       [0, 1, 2], [0, 1, 2])
    assert (n, seeds, pairing) == ("1", "3/3", "paired")
    assert diff == f"{100 * np.mean(d):+.1f}" and ci == f"[{100 * c.lo:+.1f}, {100 * c.hi:+.1f}]"
    assert mde == f"{100 * stats.mde_paired(np.std(d, ddof=1), 3):.1f}"
    assert c.lo <= np.mean(d) <= c.hi


def test_contrast_is_unpaired_when_the_seeds_differ(grid):
    summ = pd.read_parquet(grid / "summary.parquet")
    summ[summ.run_id != "token_clip-4-0"].to_parquet(grid / "summary.parquet")  # a run that never finished
    md = table(str(grid), contrasts=["vespo-token_clip"])
    rows = {ln.split("|")[2].strip(): ln for ln in md.split("\n") if ln.startswith("| vespo - token_clip |")}
    assert "| 3/3 | paired |" in rows["1"] and "| 3/2 | unpaired |" in rows["4"]


def contrast_labels(md):
    return [c for c in (ln.split("|")[1].strip() for ln in md.split("\n") if ln.startswith("| ")) if " - " in c]


def test_contrasts_repeat_or_split_on_commas_and_follow_variants(grid):
    runs = pd.read_parquet(grid / "runs.parquet")
    # vespo's own knob (unset for token_clip): each vespo variant is contrasted with token_clip
    runs["method.length_norm"] = np.where(runs.method != "vespo", None, np.where(runs.staleness == 1, "none", "lin"))
    runs.to_parquet(grid / "runs.parquet")
    md = table(str(grid), contrasts=["vespo-token_clip,token_clip-vespo", "vespo-token_clip"])
    labels = contrast_labels(md)
    assert sorted(set(labels)) == ["token_clip - vespo, length_norm=lin", "token_clip - vespo, length_norm=none",
                                   "vespo, length_norm=lin - token_clip", "vespo, length_norm=none - token_clip"]
    assert len(labels) == 8  # 4 pairs x 2 N, the repeated contrast once
    # a shared swept key (an lr) is never contrasted across its values
    runs["method.length_norm"] = None
    runs["optim.lr"] = np.where(runs.seed == 0, 1e-4, 2e-4)
    runs.to_parquet(grid / "runs.parquet")
    md = table(str(grid), contrasts=["vespo-token_clip"])
    labels = set(contrast_labels(md))
    assert labels == {"vespo, optim.lr=0.0001 - token_clip, optim.lr=0.0001",
                      "vespo, optim.lr=0.0002 - token_clip, optim.lr=0.0002"}


def test_contrast_with_an_absent_method_is_a_one_line_error_before_any_work(grid):
    pd.DataFrame(columns=["run_id"]).to_parquet(grid / "summary.parquet")  # "no finished runs" comes later
    r = offbench("report", str(grid), "--contrast", "vespo-gspo")
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.strip().count("\n") == 0, r.stderr
    assert "no method gspo in this grid; methods present: token_clip, vespo" in r.stderr
    with pytest.raises(OffbenchError, match="methods present: token_clip, vespo"):
        table(str(grid), contrasts=["vespo"])
    with pytest.raises(OffbenchError, match="two different methods; methods present: token_clip, vespo"):
        table(str(grid), contrasts=["vespo-vespo"])


def test_cli_prints_contrasts_and_takes_the_endpoint(grid):
    r = offbench("report", str(grid), "--contrast", "vespo-token_clip", "--endpoint", "final", "--format", "csv")
    assert r.returncode == 0, r.stderr
    assert "contrast,N,difference,95% CI,seeds A/B,pairing,MDE" in r.stdout
    assert r.stdout.count("# minimum detectable effect") == 2
    d = np.mean([curve("vespo", 1, s)[-1] - curve("token_clip", 1, s)[-1] for s in range(3)])
    assert f"vespo - token_clip,1,{100 * d:+.1f}," in r.stdout
    r = offbench("report", str(grid), "--endpoint", "median")
    assert r.returncode == 2 and "invalid choice" in r.stderr


def test_endpoints_come_from_the_summary_when_metrics_are_absent(grid):
    with_metrics = table(str(grid))
    (grid / "metrics.parquet").unlink()
    assert table(str(grid)) == with_metrics
    summ = pd.read_parquet(grid / "summary.parquet")
    summ.drop(columns=["eval_accuracy_late_mean"]).to_parquet(grid / "summary.parquet")  # a grid from before
    with pytest.raises(OffbenchError, match="no metrics.parquet"):
        table(str(grid))
    assert "eval_accuracy_final" in table(str(grid), metric="eval_accuracy_final")


def test_summarize_run_uses_the_endpoints():
    evals = [0.1, 0.5, 0.2, 0.4, 0.45]
    m = pd.DataFrame([{"step": s, "split": "eval", "metric": "accuracy", "value": v}
                      for s, v in zip([0, 4, 8, 12, 16], evals)]
                     + [{"step": s, "split": "train", "metric": "reward", "value": 0.5} for s in range(1, 17)])
    row = summarize_run(m)
    assert row["steps"] == 16 and row["eval_accuracy_late_mean"] == pytest.approx(0.425)
    assert row["collapse_step"] == 8 and row["dip"] and not row["collapsed"]
    assert (row["eval_accuracy_final"], row["eval_accuracy_best"], row["eval_accuracy_start"]) == (0.45, 0.5, 0.1)
