"""One run-record schema (results.RunRecord): run.json, summary.json, runs.parquet and report's column
sets all come from it, so a knob added there cannot be forgotten in one of them."""

import dataclasses
import json

import pandas as pd

from conftest import TINY
from offpolicy_bench import report
from offpolicy_bench.cli import main
from offpolicy_bench.results import RunRecord, record_columns


def test_report_column_sets_are_the_schema_roles():
    fields = {f.name: f.metadata["role"] for f in dataclasses.fields(RunRecord)}
    assert report.CORE_COLUMNS == {n for n, r in fields.items() if r == "core"}
    assert report.META_COLUMNS == {n for n, r in fields.items() if r == "meta"}
    assert set(report.KNOB_COLUMNS) == {n for n, r in fields.items() if r == "knob"}
    assert report.CORE_COLUMNS == {"method", "task", "model", "staleness", "seed"}


def test_a_knob_that_varies_splits_report_rows_and_a_constant_one_does_not():
    base = {"method": "vespo", "task": "math", "model": "dense", "staleness": 4, "lag": 0,
            "rollout_dtype": "float32", "run_id": "x", "status": "finished"}
    runs = pd.DataFrame([{**base, "seed": s, "correction": c} for s in (0, 1) for c in ("none", "token_tis")])
    assert report.variant_columns(runs) == ["correction"]  # never pooled as if they were seeds
    assert report.variant_columns(runs[runs.correction == "none"]) == []


def test_run_json_and_summary_carry_every_config_field_of_the_record(tmp_path):
    assert main(["run", "method=token_clip", "staleness=2", "correction=token_tis", *TINY,
                 f"log.out_dir={tmp_path}", "name=r"]) == 0
    run = json.load(open(tmp_path / "r" / "run.json"))
    summary = json.loads(open(tmp_path / "r" / "summary.json").read())
    keyed = {f.name for f in dataclasses.fields(RunRecord) if f.metadata["key"] is not None}
    assert keyed <= set(run) and keyed <= set(summary)
    assert (run["correction"], summary["correction"], run["staleness"], run["agg"]) == \
        ("token_tis", "token_tis", 2, "token-mean")
    assert set(record_columns("knob")) == {"lag", "correction", "advantage", "rollout_dtype", "routing_replay"}


def test_grid_tables_hold_the_record_and_only_extra_swept_keys(tiny_grid):
    runs = pd.read_parquet(tiny_grid / "runs.parquet")
    record = {f.name for f in dataclasses.fields(RunRecord)}
    # the grid swept method, staleness and seed: all three are record fields, so no extra column
    assert set(runs.columns) == record
    assert runs.warmstart_key.notna().all() and (runs.status == "finished").all()
    machines = runs.machine.map(json.loads)  # each cell names the CPU and dispatch it ran on
    assert machines.map(lambda m: bool(m["cpu"]) and bool(m["cpu_capability"]) and m["torch_threads"] == max(1, m["cores"] // 2)).all()  # jobs=2


def test_machine_names_the_cpu_and_the_kernels_torch_dispatches_to():
    """results.machine() against independent sources: /proc/cpuinfo's model name, and a dispatch forced
    with ATEN_CPU_CAPABILITY (the switch benchmarks/RESULTS.md measures under)."""
    import os
    import subprocess
    import sys

    code = "import json; from offpolicy_bench.results import machine; print(json.dumps(machine()))"
    forced = json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                                       env={**os.environ, "ATEN_CPU_CAPABILITY": "default"}).stdout)
    assert forced["cpu_capability"] == "DEFAULT"
    assert forced["cores"] == os.cpu_count() and forced["torch_threads"] >= 1
    if os.path.exists("/proc/cpuinfo"):
        names = [ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")]
        if names:
            assert forced["cpu"] == names[0]


def test_a_run_records_the_commit_its_process_loaded_not_a_later_one(tmp_path, monkeypatch):
    """A grid worker imports the code once and runs many cells; a commit or an edit in the checkout
    meanwhile must not change the commit its later cells record (they still run the loaded code)."""
    from offpolicy_bench import results

    answers = iter(["1111111111111111111111111111111111111111", "2222222222222222222222222222222222222222-dirty"])
    monkeypatch.setattr(results, "git_commit", lambda: next(answers))
    results.loaded_commit.cache_clear()
    try:
        for name in ("a", "b"):
            assert main(["run", "method=token_clip", "staleness=2", *TINY, f"log.out_dir={tmp_path}", f"name={name}"]) == 0
        recorded = [json.load(open(tmp_path / n / "run.json")) for n in ("a", "b")]
    finally:
        results.loaded_commit.cache_clear()
    assert [r["git_commit"] for r in recorded] == ["1111111111111111111111111111111111111111"] * 2
    assert all(r["machine"]["cpu_capability"] for r in recorded)


def test_machine_name_reads_the_recorded_dict_or_its_json_and_says_when_absent():
    from offpolicy_bench.results import machine_name

    m = {"cpu": "AMD EPYC", "cpu_capability": "AVX2", "cores": 2, "torch_threads": 1}
    assert machine_name(m) == "AMD EPYC (AVX2)"
    assert machine_name(json.dumps(m)) == "AMD EPYC (AVX2)"
    for absent in (None, "", float("nan"), {}):
        assert machine_name(absent) == "not recorded"
