"""Grids: expansion, kill -9 and resume with every cell exactly once, Ray gives the same rows, report."""

import json
import os
import re
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest

from conftest import GRID_OPTS, GRID_TINY, offbench
from offpolicy_bench import OffbenchError
from offpolicy_bench.config import build_config, config_hash
from offpolicy_bench.grid import expand

GRID = ["method=[token_clip,vespo]", "staleness=[1,2]", "seed=[0,1]", *GRID_TINY, *GRID_OPTS]


def test_expand_product_and_options():
    opts, cells, swept = expand(["method=[a,b]", "staleness=[1,4,16]", "seed=0", "jobs=3"])
    assert opts == {"jobs": "3"} and swept == ["method", "staleness"] and len(cells) == 6
    assert ["seed=0", "method=a", "staleness=1"] in cells and ["seed=0", "method=b", "staleness=16"] in cells
    with pytest.raises(OffbenchError, match="empty list"):
        expand(["seed=[]"])


def statuses(grid):
    out = {}
    cells = grid / "cells"
    for rid in os.listdir(cells) if cells.exists() else []:
        try:
            out[rid] = json.load(open(cells / rid / "run.json"))["status"]
        except (OSError, ValueError, KeyError):
            pass
    return out


def check_complete(grid):
    runs = pd.read_parquet(grid / "runs.parquet")
    metrics = pd.read_parquet(grid / "metrics.parquet")
    summary = pd.read_parquet(grid / "summary.parquet")
    assert len(runs) == 8 and runs.run_id.is_unique and set(runs.status) == {"finished"}
    assert sorted(summary.run_id) == sorted(runs.run_id)
    # no partial or duplicated rows: each run's metric rows are unique and reach the last step
    assert not metrics.duplicated(["run_id", "step", "split", "metric"]).any()
    assert set(metrics[metrics.split == "train"].groupby("run_id").step.max()) == {8}
    assert set(zip(runs.method, runs.staleness, runs.seed)) == {
        (m, n, s) for m in ("token_clip", "vespo") for n in (1, 2) for s in (0, 1)}
    return runs, summary


def test_grid_killed_with_sigkill_resumes_to_every_cell_once(tmp_path):
    exe = os.path.join(os.path.dirname(sys.executable), "offbench")
    cmd = [exe, "grid", *GRID, f"log.out_dir={tmp_path}", "name=g", "jobs=1"]
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    grid = tmp_path / "g"
    deadline = time.time() + 300
    while time.time() < deadline and sum(s == "finished" for s in statuses(grid).values()) < 2:
        time.sleep(0.2)
    os.killpg(p.pid, signal.SIGKILL)  # the grid and its worker, mid-cell
    p.wait()
    done_before = {r for r, s in statuses(grid).items() if s == "finished"}
    assert 2 <= len(done_before) < 8
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert f"{len(done_before)} finished already" in r.stdout
    runs, summary = check_complete(grid)
    # a finished cell is not re-run: its folder keeps its first wall time stamp
    r2 = offbench("grid", *GRID, f"log.out_dir={tmp_path}", "name=g")
    assert "8 finished already, 0 to run" in r2.stdout
    # same grid through Ray: the same rows
    pytest.importorskip("ray", reason="Ray not installed (optional extra: pip install '.[ray]')")
    r3 = offbench("grid", *GRID, f"log.out_dir={tmp_path}", "name=gr", "executor=ray", "jobs=1", timeout=600)
    assert r3.returncode == 0, r3.stdout + r3.stderr
    runs_r, summary_r = check_complete(tmp_path / "gr")
    assert sorted(runs_r.run_id) == sorted(runs.run_id)
    cols = ["run_id", "eval_accuracy_start", "eval_accuracy_final", "steps", "kl_mu_pi_mean"]
    a = summary[cols].sort_values("run_id").reset_index(drop=True)
    b = summary_r[cols].sort_values("run_id").reset_index(drop=True)
    pd.testing.assert_frame_equal(a, b)


def test_failed_cell_is_recorded_and_does_not_stop_others(tmp_path):
    # model=<missing dir> fails in every cell that uses it; the dense cells still finish
    r = offbench("grid", "model=[dense,/no/such/model]", *GRID_TINY, *GRID_OPTS, f"log.out_dir={tmp_path}", "name=f", "jobs=2")
    assert r.returncode == 0, r.stderr
    runs = pd.read_parquet(tmp_path / "f" / "runs.parquet")
    assert sorted(runs.status) == ["failed", "finished"]
    assert "not a built-in model" in runs[runs.status == "failed"].error.iloc[0]


def test_report_prints_table_two_shape(tiny_grid):
    r = offbench("report", str(tiny_grid))
    assert r.returncode == 0, r.stderr
    assert "| method | N=1 | N=2 |" in r.stdout and "| token_clip |" in r.stdout and "| vespo |" in r.stdout
    assert "(2)" in r.stdout  # two seeds per cell
    for fmt, marker in (("csv", "method,N=1,N=2"), ("latex", r"\begin{tabular}")):
        r = offbench("report", str(tiny_grid), "--format", fmt)
        assert r.returncode == 0 and marker in r.stdout


def test_report_never_pools_variants_as_seeds(tiny_grid, tmp_path):
    """Runs that differ in a swept key besides method / N / seed / task / model (an lr, a kernel)
    are separate rows; pooling them would report a mean over different experiments."""
    import shutil

    from offpolicy_bench.report import table

    g = tmp_path / "g"
    g.mkdir()
    for name in ("runs.parquet", "summary.parquet"):
        shutil.copy(tiny_grid / name, g / name)
    runs = pd.read_parquet(g / "runs.parquet")
    runs["optim.lr"] = [1e-4 if s == 0 else 2e-4 for s in runs.seed]  # as if seed 1 ran another lr
    runs["model.name"] = runs["model"]  # how model=[...] is stored: the same key, never a variant
    runs.to_parquet(g / "runs.parquet")
    md = table(str(g))
    assert "| token_clip, optim.lr=0.0001 |" in md and "| vespo, optim.lr=0.0002 |" in md
    assert "(2)" not in md and "model.name" not in md  # one seed per row now, none pooled


def test_report_of_a_non_grid_is_a_clear_error(tmp_path):
    r = offbench("report", str(tmp_path))
    assert r.returncode == 2 and "not a grid folder" in r.stderr


def test_mean_ci_closed_form():
    from offpolicy_bench.report import mean_ci

    m, ci, n = mean_ci([0.5, 0.7, 0.6])
    assert (m, n) == (pytest.approx(0.6), 3)
    assert ci == pytest.approx(4.303 * 0.1 / 3 ** 0.5, rel=1e-4)  # exact t quantile 4.30265 (stats.t_ppf)
    assert mean_ci([0.4])[1] != mean_ci([0.4])[1]  # one seed: no interval (NaN)


def test_dry_run_lists_cells_and_projects_wall_time(tmp_path):
    r = offbench("grid", "method=[token_clip,vespo]", "seed=[0,1]", *GRID_TINY, *GRID_OPTS, f"log.out_dir={tmp_path}", "name=d",
                 "--dry-run")
    assert r.returncode == 0, r.stderr
    assert "4 cells over method, seed" in r.stdout
    # one line per cell: its run id (the config hash, built here independently) and its overrides
    listed = dict(re.findall(r"^  ([0-9a-f]{12})  (.*)$", r.stdout, re.M))
    want = {config_hash(build_config([*GRID_TINY, f"log.out_dir={tmp_path}", "name=d", f"method={m}", f"seed={s}"])):
            (m, s) for m in ("token_clip", "vespo") for s in (0, 1)}
    assert set(listed) == set(want)
    for rid, (m, s) in want.items():
        assert f"method={m}" in listed[rid].split() and f"seed={s}" in listed[rid].split()
    assert "ms per gradient step" in r.stdout and "projection:" in r.stdout
    assert not (tmp_path / "d" / "cells").exists()  # nothing ran


@pytest.mark.parametrize("bad, message", [
    ("jobs=x", r"jobs='x' is not a whole number"), ("jobs=0", r"jobs=0 must be >= 1"), ("jobs=-3", r"jobs=-3"),
    ("executor=lcoal", r"executor='lcoal': choose local or ray"), ("executor=", r"executor='': choose"),
    ("ray_address=auto", r"ray_address= is for executor=ray"), ("project=nah", r"project=true or project=false"),
    ("allow_dirty=maybe", r"allow_dirty=true or allow_dirty=false"),
])
def test_grid_options_are_checked_before_any_work(tmp_path, monkeypatch, bad, message):
    import offpolicy_bench.grid as grid

    def no_work(*a, **k):
        raise AssertionError("the grid started work before checking its options")

    for name in ("_warm_starts", "_run_local", "_run_ray", "project"):
        monkeypatch.setattr(grid, name, no_work)
    with pytest.raises(OffbenchError, match=message):
        grid.run_grid(["seed=[0,1]", *GRID_TINY, f"log.out_dir={tmp_path}", "name=g", "dry_run=true", bad])
    with pytest.raises(OffbenchError, match=message):
        grid.run_grid(["seed=[0,1]", *GRID_TINY, f"log.out_dir={tmp_path}", "name=g", bad])
    assert not (tmp_path / "g").exists()


def test_presets_expand_and_unknown_preset_is_clear():
    from offpolicy_bench.grid import expand

    _, cells, swept = expand(["preset=paper-cpu"])  # the full comparison: 4 x 4 x 2 x 2 x 8 seeds
    assert swept == ["method", "staleness", "model.name", "task", "seed"] and len(cells) == 512
    _, cells, swept = expand(["preset=paper-cpu", "seed=[0]", "model=dense", "task=math"])  # later keys win
    assert swept == ["method", "staleness", "seed"] and len(cells) == 16
    assert all("model.name=dense" in c and "optim.lr=2e-4" in c for c in cells)
    with pytest.raises(OffbenchError, match="unknown preset 'nope'; presets: paper-cpu"):
        expand(["preset=nope"])


def test_every_shipped_preset_loads_and_unknown_preset_keys_are_errors(tmp_path, monkeypatch):
    import offpolicy_bench.grid as grid

    for f in sorted(os.listdir(grid.PRESETS)):
        _, cells, _ = expand([f"preset={f[:-5]}"])
        build_config(cells[0])  # every cell of every preset is a valid run config
    (tmp_path / "typo.yaml").write_text("overrides: [seed=0]\nvariant: [[seed=1]]\n")
    monkeypatch.setattr(grid, "PRESETS", str(tmp_path))
    with pytest.raises(OffbenchError, match=r"preset 'typo' has unknown keys \['variant'\]"):
        expand(["preset=typo"])


def test_preset_variants_multiply_the_product_and_build_distinct_configs():
    from offpolicy_bench.grid import expand

    _, cells, swept = expand(["preset=paper-cpu-ablation"])
    assert len(cells) == 8 * 5  # seeds x (3 length norms + 2 symmetric kernels)
    assert swept[:2] == ["seed", "method.length_norm"] and "method.c1_neg" in swept and "method.c2_pos" in swept
    cfgs = [build_config(c) for c in cells if "seed=0" in c]
    kernels = [(c.method.length_norm, c.method.c1_pos, c.method.c2_pos, c.method.c1_neg, c.method.c2_neg) for c in cfgs]
    assert kernels == [("none", 2, 3, 3, 2), ("lin", 2, 3, 3, 2), ("sqrt", 2, 3, 3, 2),
                       ("none", 2, 3, 2, 3), ("none", 3, 2, 3, 2)]
    assert len({config_hash(c) for c in cfgs}) == 5
    with pytest.raises(OffbenchError, match="method.length_norm set by the preset's variants"):
        expand(["preset=paper-cpu-ablation", "method.length_norm=lin"])


def _cmdline(pid: str) -> str:
    """A process's command line, "" once it has exited (a short-lived child, e.g. git, can go between
    pgrep listing it and this read)."""
    try:
        return open(f"/proc/{pid}/cmdline").read().replace("\0", " ")
    except OSError:
        return ""


def _running(pid: str) -> bool:
    """Alive and not a zombie; a process that exits between the check and the read is not running."""
    try:
        return "Z" not in open(f"/proc/{pid}/stat").read().split()[2]
    except OSError:
        return False


def test_sigterm_to_the_grid_stops_its_workers(tmp_path):
    exe = os.path.join(os.path.dirname(sys.executable), "offbench")
    args = [a for a in GRID_TINY if not a.startswith("train.steps")] + ["train.steps=400"]
    p = subprocess.Popen([exe, "grid", "seed=[0,1]", *args, *GRID_OPTS, f"log.out_dir={tmp_path}", "name=t", "jobs=2"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    workers = []
    while time.time() < deadline:
        running = [s for s in statuses(tmp_path / "t").values() if s == "running"]
        kids = subprocess.run(["pgrep", "-P", str(p.pid)], capture_output=True, text=True).stdout.split()
        workers = [k for k in kids if "spawn_main" in _cmdline(k)]
        if running and workers:
            break
        time.sleep(0.2)
    assert workers, "no worker started"
    p.send_signal(signal.SIGTERM)  # the grid process alone, not its group
    p.wait(timeout=60)
    time.sleep(1.0)
    alive = [w for w in workers if _running(w)]
    assert not alive, f"orphaned workers {alive}"


def test_grid_on_a_dirty_tree_refuses_to_start_unless_allowed(tmp_path, monkeypatch):
    """Provenance: a cell run from uncommitted code could not say which code produced it."""
    import offpolicy_bench.grid as grid

    started = []
    monkeypatch.setattr(grid, "git_commit", lambda: "0123456789abcdef-dirty")
    monkeypatch.setattr(grid, "_warm_starts", lambda cfgs: started.append(cfgs))
    with pytest.raises(OffbenchError) as e:
        grid.run_grid(["seed=[0,1]", *GRID_TINY, f"log.out_dir={tmp_path}", "name=g"])
    assert "uncommitted changes" in str(e.value) and "allow_dirty=true" in str(e.value)
    assert not started and not (tmp_path / "g").exists()
    grid.run_grid(["seed=[0,1]", *GRID_TINY, f"log.out_dir={tmp_path}", "name=g", "dry_run=true",
                   "project=false"])  # lists the cells, runs nothing: allowed
    assert not started
    monkeypatch.setattr(grid, "git_commit", lambda: "0123456789abcdef")
    monkeypatch.setattr(grid, "_run_local", lambda *a: started.append(a) or {})
    grid.run_grid(["seed=[0,1]", *GRID_TINY, f"log.out_dir={tmp_path}", "name=g"])  # a clean tree starts
    assert len(started) == 2


def _replace_forever(path, stop):
    import numpy as np

    from offpolicy_bench.results import atomic_write_parquet

    i = 0
    while not stop.is_set():
        n = 2000 + (i % 7) * 3000  # sizes change, so an old footer never fits new pages
        atomic_write_parquet(pd.DataFrame({"k": np.full(n, i), "v": np.random.rand(n)}), path)
        i += 1


def test_tables_read_while_a_running_cell_replaces_them(tmp_path):
    """A grid collects its tables while cells rewrite their metrics.parquet (and `offbench report` may read
    a live grid's tables): pyarrow given a path can open the file twice, and a rename in between paired
    an old footer with new pages ("Couldn't deserialize thrift", which once stopped a grid). Reads go
    through one open handle: every read sees one whole version of the file."""
    import multiprocessing as mp

    from offpolicy_bench.results import atomic_write_parquet, read_parquet_stable

    path = str(tmp_path / "metrics.parquet")
    atomic_write_parquet(pd.DataFrame({"k": [0], "v": [0.0]}), path)
    ctx = mp.get_context("spawn")
    stop = ctx.Event()
    writer = ctx.Process(target=_replace_forever, args=(path, stop))
    writer.start()
    try:
        reads, t0 = 0, time.time()
        while time.time() - t0 < 3 or reads < 50:
            df = read_parquet_stable(path)
            assert df.k.nunique() == 1  # one version, whole
            reads += 1
    finally:
        stop.set()
        writer.join(10)
