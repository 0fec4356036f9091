"""Live trackers (log.trackers): each one holds the metrics.parquet values at the same steps, read back
with the tracker's own reader; a failing tracker never costs the run or its record; a missing extra
is a one-line error before any work; `offbench export-tb` writes the same events from a finished run."""

import importlib.util
import json
import math
import os
import re
import shutil
import struct
import subprocess
import sys

import pandas as pd
import pytest

from conftest import GRID_OPTS, TINY, offbench
from offpolicy_bench.config import build_config
from offpolicy_bench.registry import OffbenchError

ALL = ("tensorboard", "wandb", "mlflow")
INSTALLED = [n for n in ALL if importlib.util.find_spec(n) is not None]
RUN = [*TINY, "staleness=2"]  # train steps 1..4, eval at 0, 2, 4


def tracker_env(mp, root):
    """Each tracker's defaults (offline W&B, local MLflow store), with its own files under `root`."""
    for var in ("WANDB_MODE", "WANDB_DIR", "WANDB_PROJECT", "WANDB_RUN_GROUP", "MLFLOW_TRACKING_URI",
                "MLFLOW_EXPERIMENT_NAME", "MLFLOW_ALLOW_FILE_STORE"):
        mp.delenv(var, raising=False)
    for var, sub in (("WANDB_CONFIG_DIR", "wandb-config"), ("WANDB_CACHE_DIR", "wandb-cache"),
                     ("WANDB_DATA_DIR", "wandb-data")):
        mp.setenv(var, str(root / sub))


@pytest.fixture(scope="module")
def tracked_run(tmp_path_factory):
    """One short real run (CLI) with every installed tracker on. Returns its run folder."""
    if not INSTALLED:
        pytest.skip("no tracker extra installed (pip install -e \".[tensorboard,wandb,mlflow]\")")
    out = tmp_path_factory.mktemp("tracked")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("OFFBENCH_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
        tracker_env(mp, out)
        r = offbench("run", *RUN, f"log.trackers=[{','.join(INSTALLED)}]", f"log.out_dir={out}", "name=t")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "warning" not in r.stderr, r.stderr
    return out / "t"


def parquet_values(run_dir) -> dict:
    """{(split/metric, step): value} of a run's record: what every tracker must hold."""
    m = pd.read_parquet(os.path.join(run_dir, "metrics.parquet"))
    return {(f"{s}/{k}", int(st)): float(v) for s, k, st, v in zip(m.split, m.metric, m.step, m.value)}


def assert_same(got: dict, want: dict, rel=1e-12):
    assert len(want) > 100 and set(got) == set(want), sorted(set(got) ^ set(want))[:10]
    for key, v in want.items():
        assert got[key] == pytest.approx(v, rel=rel, abs=1e-30, nan_ok=True), key


# ---------------------------------------------------------------- readers, each the tracker's own

def tensorboard_values(logdir) -> dict:
    from tensorboard.backend.event_processing.event_accumulator import SCALARS, EventAccumulator

    ea = EventAccumulator(str(logdir), size_guidance={SCALARS: 0})  # 0: keep every event
    ea.Reload()
    return {(tag, e.step): e.value for tag in ea.Tags()["scalars"] for e in ea.Scalars(tag)}


def wandb_records(run_dir) -> list:
    """The records of the run's offline .wandb file, decoded with wandb's own protobuf messages. The
    file is W&B's 7-byte header, then LevelDB-log framing: 32 KiB blocks of chunks, each with a 7-byte
    header (crc32, length, type: 1 full, 2 first, 3 middle, 4 last)."""
    from wandb.proto import wandb_internal_pb2

    (path,) = [os.path.join(dp, f) for dp, _, fs in os.walk(os.path.join(run_dir, "wandb")) for f in fs
               if f.endswith(".wandb")]
    data = open(path, "rb").read()
    assert data[:4] == b":W&B"
    pos, pending, records = 7, b"", []
    while pos + 7 <= len(data):
        left = 32768 - pos % 32768
        if left < 7:  # a block's tail too short for a chunk header is padding
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0:
            pos += left
            continue
        pending += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            rec = wandb_internal_pb2.Record()
            rec.ParseFromString(pending)
            records.append(rec)
            pending = b""
    return records


def wandb_values(run_dir) -> dict:
    out = {}
    for rec in wandb_records(run_dir):
        if rec.WhichOneof("record_type") == "history":
            step = rec.history.step.num
            for item in rec.history.item:
                key = item.key or "/".join(item.nested_key)
                if not key.startswith("_"):
                    out[(key, step)] = float(json.loads(item.value_json))
    return out


def wandb_run(run_dir):
    (run,) = [r.run for r in wandb_records(run_dir) if r.WhichOneof("record_type") == "run"]
    config = {}
    for item in run.config.update:
        value = json.loads(item.value_json)
        config[item.key or "/".join(item.nested_key)] = value.get("value", value) if isinstance(value, dict) else value
    return run, config


def mlflow_client(run_dir):
    from mlflow.tracking import MlflowClient

    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    return MlflowClient(tracking_uri=(run_dir / "mlruns").absolute().as_uri())


def mlflow_runs(run_dir, experiment):
    client = mlflow_client(run_dir)
    exp = client.get_experiment_by_name(experiment)
    assert exp is not None, [e.name for e in client.search_experiments()]
    return client, client.search_runs([exp.experiment_id])


def mlflow_values(client, run) -> dict:
    return {(key, m.step): m.value for key in run.data.metrics for m in client.get_metric_history(run.info.run_id, key)}


# ---------------------------------------------------------------- each tracker holds the record

def test_tensorboard_events_hold_the_parquet_values(tracked_run):
    pytest.importorskip("tensorboard")
    got = tensorboard_values(tracked_run / "tensorboard")
    assert_same(got, parquet_values(tracked_run), rel=1e-6)  # TensorBoard scalars are float32
    assert got[("train/version_gap", 2)] == 1.0 and ("eval/accuracy", 0) in got


def test_wandb_offline_history_holds_the_parquet_values_and_the_config(tracked_run):
    pytest.importorskip("wandb")
    assert [d for d in os.listdir(tracked_run / "wandb") if d.startswith("offline-run-")]  # offline by default
    assert_same(wandb_values(tracked_run), parquet_values(tracked_run))
    run, config = wandb_run(tracked_run)
    assert run.display_name == "t" and run.project == "offpolicy-bench"
    assert config["staleness"] == 2 and config["method"]["name"] == "vespo"
    assert config["run_id"] == json.load(open(tracked_run / "run.json"))["run_id"]


def test_mlflow_local_store_holds_the_parquet_values_and_the_config(tracked_run):
    pytest.importorskip("mlflow")
    client, runs = mlflow_runs(tracked_run, "offpolicy-bench")
    (run,) = runs
    assert_same(mlflow_values(client, run), parquet_values(tracked_run))
    assert run.info.status == "FINISHED" and run.info.run_name == "t"
    assert run.data.params["staleness"] == "2" and run.data.params["method.name"] == "vespo"


def test_grid_cells_are_separate_tracker_runs_grouped_by_the_grid(tmp_path, monkeypatch):
    names = [n for n in ("wandb", "mlflow") if n in INSTALLED]  # the trackers with a notion of group
    if not names:
        pytest.skip("neither wandb nor mlflow installed")
    tracker_env(monkeypatch, tmp_path)
    r = offbench("grid", *TINY, "staleness=1", "train.steps=2", "seed=[0,1]", f"log.trackers=[{','.join(names)}]", *GRID_OPTS,
                 "jobs=1", f"log.out_dir={tmp_path}", "name=gg")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    runs = pd.read_parquet(tmp_path / "gg" / "runs.parquet")
    assert sorted(runs.status) == ["finished", "finished"]
    for rid in runs.run_id:
        cell = tmp_path / "gg" / "cells" / rid
        want = parquet_values(cell)
        if "wandb" in names:
            run, _ = wandb_run(cell)
            assert run.run_group == "gg" and run.display_name == rid
            assert wandb_values(cell) == pytest.approx(want)
        if "mlflow" in names:
            client, (run,) = mlflow_runs(cell, "gg")
            assert run.info.run_name == rid and mlflow_values(client, run) == pytest.approx(want)


# ---------------------------------------------------------------- a failing tracker costs nothing

def test_a_failing_tracker_is_reported_once_and_the_run_and_its_record_go_on(tmp_path, monkeypatch, capsys):
    """One tracker raises on its third metric row (a full disk); it is reported once and dropped, the
    other tracker and metrics.parquet get every row. Both backends are stand-ins: no library needed."""
    from offpolicy_bench.trackers import TRACKERS
    from offpolicy_bench.trainer import train

    rows = {"tensorboard": [], "mlflow": []}
    for name in rows:
        cls = TRACKERS.get(name)
        monkeypatch.setattr(cls, "requires", "json")  # importable everywhere: validation passes
        monkeypatch.setattr(cls, "__init__", lambda self, *a, _n=name: setattr(self, "n", _n))
        monkeypatch.setattr(cls, "flush", lambda self: None)
        monkeypatch.setattr(cls, "finish", lambda self, status: rows[self.n].append(("finish", status)))

    def log(self, step, split, metrics):
        if self.n == "tensorboard" and len(rows[self.n]) == 2:
            raise OSError(28, "No space left on device")
        rows[self.n].append((step, split, dict(metrics)))

    for name in rows:
        monkeypatch.setattr(TRACKERS.get(name), "log", log)
    cfg = build_config([*RUN, "log.trackers=[tensorboard,mlflow]", f"log.out_dir={tmp_path}", "name=f"])
    result = train(cfg, log=lambda m: None)
    err = capsys.readouterr().err
    assert result["status"] == "finished"
    warnings = [line for line in err.splitlines() if "tracker tensorboard" in line]
    assert len(warnings) == 1 and "No space left on device" in warnings[0], err
    run = json.load(open(tmp_path / "f" / "run.json"))
    assert run["status"] == "finished" and "No space left" in run["tracker_errors"]["tensorboard"]
    want = parquet_values(tmp_path / "f")
    m = pd.read_parquet(tmp_path / "f" / "metrics.parquet")
    assert sorted(m[m.split == "train"].step.unique()) == [1, 2, 3, 4]
    assert sorted(m[m.split == "eval"].step.unique()) == [0, 2, 4]
    assert m.groupby(["split", "step"]).size().groupby("split").nunique().tolist() == [1, 1]  # no row lost
    # the healthy tracker got every row of the record, then the run's status
    got = {(f"{split}/{k}", step): v for step, split, metrics in rows["mlflow"][:-1] for k, v in metrics.items()}
    assert got == want and rows["mlflow"][-1] == ("finish", "finished")
    assert len(rows["tensorboard"]) == 2 and rows["tensorboard"][:2] == rows["mlflow"][:2]  # dropped: no finish


# ---------------------------------------------------------------- errors before any work

@pytest.mark.parametrize("name", ALL)
def test_a_missing_extra_is_a_one_line_error_before_any_work(tmp_path, monkeypatch, capsys, name):
    import offpolicy_bench.models as models
    import offpolicy_bench.trainer as trainer
    from offpolicy_bench.cli import main

    monkeypatch.setitem(sys.modules, name, None)  # `import <name>` now raises ImportError

    def no_work(*a, **k):
        raise AssertionError("work started before the config was checked")

    monkeypatch.setattr(trainer, "train", no_work)
    monkeypatch.setattr(models, "load_model", no_work)
    for cmd in (["run"], ["grid", "seed=[0,1]", *GRID_OPTS]):
        assert main([*cmd, *TINY, f"log.trackers=[{name}]", f"log.out_dir={tmp_path}", "name=x"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f'pip install -e ".[{name}]"' in err, err
        assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("value, message", [
    ("[tensorbord]", "unknown tracker 'tensorbord'. Did you mean 'tensorboard'? Registered: mlflow, tensorboard, wandb"),
    ("[neptune]", "Registered: mlflow, tensorboard, wandb"),
    ("[wandb,wandb]", "names 'wandb' twice"),
])
def test_bad_tracker_names_are_one_line_errors(value, message):
    with pytest.raises(OffbenchError, match=re.escape(message)):
        build_config([f"log.trackers={value}"])


def test_the_extras_exist_for_every_tracker():
    from offpolicy_bench.trackers import TRACKERS

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    extras = open(os.path.join(root, "pyproject.toml")).read().split("[project.optional-dependencies]")[1]
    assert sorted(TRACKERS) == sorted(ALL)
    for name in TRACKERS:
        assert re.search(rf"^{name} = \[\"", extras, re.M), name
    ci = open(os.path.join(root, ".ci", "run")).read()
    assert all(f",{name}" in ci for name in ALL)  # CI installs them, so these tests run there


def test_no_tracker_named_imports_no_tracker_library(tmp_path):
    """The default run is the run it was before: none of the libraries is even imported."""
    code = ("import sys; from offpolicy_bench.config import build_config; from offpolicy_bench.trainer import train; "
            f"train(build_config({[*RUN, f'log.out_dir={tmp_path}', 'name=d']!r}), log=lambda m: None); "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('tensorboard', 'wandb', 'mlflow') "
            "or m.startswith('torch.utils.tensorboard')))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.strip().splitlines()[-1] == "[]"
    assert sorted(os.listdir(tmp_path / "d")) == ["config.yaml", "metrics.parquet", "run.json", "summary.json"]


# ---------------------------------------------------------------- export-tb

def test_export_tb_writes_the_record_of_a_run_and_of_a_grid(tracked_run, tmp_path):
    pytest.importorskip("tensorboard")
    run = tmp_path / "run"
    shutil.copytree(tracked_run, run, ignore=shutil.ignore_patterns("wandb", "mlruns"))
    r = offbench("export-tb", str(run))
    assert r.returncode == 0, r.stderr
    assert len(os.listdir(run / "tensorboard")) == 1  # the live run's events were replaced, not doubled
    assert_same(tensorboard_values(run / "tensorboard"), parquet_values(run), rel=1e-6)
    grid = tmp_path / "grid"
    for cell in ("a", "b"):
        shutil.copytree(tracked_run, grid / "cells" / cell,
                        ignore=shutil.ignore_patterns("wandb", "mlruns", "tensorboard"))
    (grid / "cells" / "empty").mkdir()  # a cell that never wrote metrics is left alone
    r = offbench("export-tb", str(grid))
    assert r.returncode == 0, r.stderr
    for cell in ("a", "b"):
        assert_same(tensorboard_values(grid / "cells" / cell / "tensorboard"), parquet_values(run), rel=1e-6)
    assert not (grid / "cells" / "empty" / "tensorboard").exists()


def test_export_tb_of_a_folder_without_metrics_is_a_one_line_error(tmp_path):
    r = offbench("export-tb", str(tmp_path))
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "holds no metrics.parquet" in r.stderr, r.stderr


def test_parquet_values_reader_is_not_vacuous(tracked_run):
    """The comparisons above would pass on two empty dicts; the record they compare against is not."""
    want = parquet_values(tracked_run)
    assert ("train/reward", 4) in want and ("eval/accuracy", 4) in want
    assert not math.isnan(want[("train/grad_norm", 1)])
