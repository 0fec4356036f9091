"""Grids: the product of list-valued overrides, every cell a run with a stable id, run in parallel,
resumable, with tidy tables rebuilt from the cell folders.

    offbench grid method=[token_clip,vespo] staleness=[1,4,16] model=[dense,moe] seed=[0,1,2] name=g

results/<grid>/
  cells/<run_id>/     one run folder per cell (config.yaml, run.json, metrics.parquet, summary.json)
  runs.parquet        one row per cell: run_id, every swept knob, seed, status, wall time, error, versions
  metrics.parquet     long: run_id, step, split, metric, value
  summary.parquet     one row per finished cell: final / best eval accuracy, collapse step, measured KL ...
A cell whose run.json says `finished` is skipped on a re-run; a cell killed in flight is re-run from
scratch; the tables are rebuilt from the folders, so each cell appears exactly once.
"""

from __future__ import annotations

import itertools
import json
import os
import sys
import time
import traceback
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

import pandas as pd
from omegaconf import OmegaConf

from .config import build_config, config_hash, parse_overrides
from .registry import OffbenchError
from .results import atomic_write, atomic_write_parquet, git_commit, read_parquet_stable, record_columns, run_record

GRID_KEYS = {"jobs", "executor", "ray_address", "dry_run", "project", "allow_dirty"}  # grid options, not run config
LIST_KEYS = {"plugins", "log.trackers"}  # run keys whose value is a list: given to every cell, never swept
EXECUTORS = ("local", "ray")
_TRUE, _FALSE = ("1", "true", "yes"), ("0", "false", "no")


def _flag(key: str, value: str) -> bool:
    v = value.strip().lower()
    if v not in _TRUE + _FALSE:
        raise OffbenchError(f"{key}={value!r}: use {key}=true or {key}=false")
    return v in _TRUE


def check_options(options: dict[str, str]) -> dict:
    """The grid options typed and checked, so that a typo stops the grid before any work starts:
    jobs (None = default_jobs()), executor, ray_address, dry_run, project."""
    jobs = options.get("jobs")
    if jobs is not None:
        try:
            jobs = int(jobs)
        except ValueError:
            raise OffbenchError(f"jobs={jobs!r} is not a whole number: use jobs=N with N >= 1 parallel runs, "
                                f"or leave it out for one per core") from None
        if jobs < 1:
            raise OffbenchError(f"jobs={jobs} must be >= 1 parallel runs (leave it out for one per core)")
    executor = options.get("executor", "local").strip()
    if executor not in EXECUTORS:
        raise OffbenchError(f"executor={executor!r}: choose {' or '.join(EXECUTORS)}")
    address = options.get("ray_address")
    if address is not None:
        if executor != "ray":
            raise OffbenchError("ray_address= is for executor=ray; add executor=ray or drop ray_address=")
        if not address.strip():
            raise OffbenchError("ray_address= is empty: give the cluster address (e.g. ray_address=auto) or drop it")
    if executor == "ray":
        import importlib.util

        if importlib.util.find_spec("ray") is None:
            raise OffbenchError("executor=ray needs Ray: pip install \"offpolicy-bench[ray]\" (or executor=local)")
    return {"jobs": jobs, "executor": executor, "ray_address": address or None,
            "dry_run": _flag("dry_run", options.get("dry_run", "false")),
            "project": _flag("project", options.get("project", "true")),
            "allow_dirty": _flag("allow_dirty", options.get("allow_dirty", "false"))}


def _split_list(value: str) -> list[str] | None:
    v = value.strip()
    if v.startswith("[") and v.endswith("]"):
        items = [x.strip() for x in v[1:-1].split(",") if x.strip()]
        if not items:
            raise OffbenchError(f"empty list {value!r}")
        return items
    return None


PRESETS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "presets")


def _preset(name: str):
    path = os.path.join(PRESETS, f"{name}.yaml")
    if not os.path.isfile(path):
        have = sorted(f[:-5] for f in os.listdir(PRESETS) if f.endswith(".yaml"))
        raise OffbenchError(f"unknown preset {name!r}; presets: {', '.join(have)}")
    preset = OmegaConf.load(path)
    unknown = set(preset.keys()) - {"overrides", "variants"}
    if unknown:
        raise OffbenchError(f"preset {name!r} has unknown keys {sorted(unknown)}: a preset holds overrides and "
                            f"optionally variants")
    return preset


def preset_overrides(name: str) -> list[str]:
    """The override list of a named grid preset (offpolicy_bench/presets/<name>.yaml)."""
    return [str(x) for x in _preset(name).overrides]


def preset_variants(name: str) -> list[list[str]]:
    """A preset's `variants`: override sets that are not a product (e.g. ablation arms that each
    change several keys). The grid is the product of the swept lists times this union."""
    return [[str(x) for x in v] for v in _preset(name).get("variants", None) or []]


def expand(overrides: list[str]) -> tuple[dict[str, str], list[list[str]], list[str]]:
    """(grid options, the override list of every cell, the swept keys in order). `preset=NAME`
    contributes its overrides first; later overrides of the same key replace them. A preset's
    `variants` multiply the product: each cell runs once per variant, the variant's keys last."""
    expanded, variants = [], []
    for item in overrides:
        key, _, value = item.partition("=")
        if key.strip() == "preset":
            expanded += preset_overrides(value)
            variants = preset_variants(value) or variants
        else:
            expanded.append(item)
    last = {}
    for key, value in parse_overrides(expanded):
        last.pop(key, None)
        last[key] = value
    variant_keys = []
    for v in variants:
        for key, _ in parse_overrides(v):
            if key in GRID_KEYS or key in LIST_KEYS:
                raise OffbenchError(f"preset variants may set run keys only, not {key}=")
            if key not in variant_keys:
                variant_keys.append(key)
    if clash := [k for k in variant_keys if k in last]:
        raise OffbenchError(f"{', '.join(clash)} set by the preset's variants; drop the override "
                            f"(or run a plain grid without the preset)")
    options, fixed, swept = {}, [], []
    for key, value in last.items():
        if key in GRID_KEYS:
            options[key] = value
        elif key in LIST_KEYS:
            fixed.append(f"{key}={value}")
        elif (items := _split_list(value)) is not None:
            swept.append((key, items))
        else:
            fixed.append(f"{key}={value}")
    cells = []
    for combo in itertools.product(*[items for _, items in swept]):
        base = fixed + [f"{k}={v}" for (k, _), v in zip(swept, combo)]
        cells += [base + v for v in variants or [[]]]  # variant keys are never in base (refused above)
    return options, cells, [k for k, _ in swept] + variant_keys


WORKER_MEM_GB = 2.0  # budget per grid worker: a default-size run peaks at ~0.65 GB RSS (RESULTS.md)


def default_jobs() -> int:
    """One job per core, one thread each, but never more than the memory holds (no swapping)."""
    try:
        avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / 2**30
    except (ValueError, OSError):
        avail = float("inf")
    return max(1, min(os.cpu_count() or 1, int(avail // WORKER_MEM_GB)))


def _cell_dir(grid_dir: str, run_id: str) -> str:
    return os.path.join(grid_dir, "cells", run_id)


def _status(cell_dir: str) -> str | None:
    try:
        return json.load(open(os.path.join(cell_dir, "run.json"))).get("status")
    except (OSError, ValueError):
        return None


def run_cell(overrides: list[str], threads: int) -> dict:
    """Run one cell in this process (a pool worker or a Ray task); never raises."""
    import torch

    torch.set_num_threads(max(1, threads))
    t0 = time.time()
    try:
        from .trainer import train

        cfg = build_config(overrides + [f"threads={threads}", "log.progress=false"])
        summary = train(cfg, log=lambda m: None)
        return {"status": summary["status"], "wall_s": time.time() - t0}
    except BaseException as e:  # recorded, never allowed to stop the other cells
        return {"status": "failed", "error": f"{type(e).__name__}: {e}", "trace": traceback.format_exc()[-2000:],
                "wall_s": time.time() - t0}


def _warm_starts(cfgs) -> None:
    """Build each distinct warm start once, before the cells run in parallel (no duplicate work)."""
    from .models import load_model
    from .tasks_api import build_task

    seen = set()
    for cfg in cfgs:
        key = json.dumps([OmegaConf.to_container(cfg[k]) for k in ("model", "task", "warmstart")], sort_keys=True)
        if key in seen or cfg.model.name not in ("dense", "moe") or not cfg.warmstart.cache:
            continue
        seen.add(key)
        task = build_task(cfg)
        load_model(cfg, task, log=lambda m: print(f"  {m}", file=sys.stderr))


def run_grid(overrides: list[str], log=print) -> str:
    options, cell_overrides, swept = expand(overrides)
    opts = check_options(options)
    names = [v for k, v in parse_overrides(overrides) if k == "name"]
    presets = [v for k, v in parse_overrides(overrides) if k == "preset"]
    if not names and presets:
        names = [presets[-1]]
    if not names:
        raise OffbenchError("a grid needs name=<grid name> (its folder under log.out_dir)")
    cfgs = []
    for ov in cell_overrides:
        cfg = build_config(ov)
        run_id = config_hash(cfg)
        cfg.name = run_id
        cfgs.append((ov, cfg, run_id))
    out_root = cfgs[0][1].log.out_dir
    grid_dir = os.path.join(out_root, names[-1])
    ids = [r for _, _, r in cfgs]
    if len(set(ids)) != len(ids):
        raise OffbenchError("two cells resolve to the same config (a swept key has repeated values)")
    todo = [(ov, cfg, rid) for ov, cfg, rid in cfgs if _status(_cell_dir(grid_dir, rid)) != "finished"]
    jobs = min(opts["jobs"] or default_jobs(), max(1, len(todo)))
    threads = max(1, (os.cpu_count() or 1) // jobs)
    executor = opts["executor"]
    log(f"grid {names[-1]}: {len(cfgs)} cells over {', '.join(swept) or 'nothing'}; {len(cfgs) - len(todo)} "
        f"finished already, {len(todo)} to run with {jobs} job(s) x {threads} thread(s) on {executor} -> {grid_dir}")
    if opts["dry_run"]:
        for ov, cfg, rid in cfgs:
            log(f"  {rid}  {' '.join(ov)}")
        if opts["project"]:
            project([cfg for _, cfg, _ in todo], jobs, threads, log)
        return grid_dir
    commit = git_commit()
    if commit and commit.endswith("-dirty") and not opts["allow_dirty"]:
        raise OffbenchError(f"the working tree of {commit[:12]} has uncommitted changes, so no cell could say which "
                            f"code produced it: commit them first, or add allow_dirty=true (recorded as -dirty)")
    os.makedirs(os.path.join(grid_dir, "cells"), exist_ok=True)
    _write_grid_meta(grid_dir, overrides, swept)
    _warm_starts([cfg for _, cfg, _ in todo])
    # every cell is its own tracker run, grouped by the grid's name (unless the overrides set a group)
    cells_dir = os.path.join(grid_dir, "cells")
    cell_args = [([f"log.tracker_group={names[-1]}", *ov, f"name={rid}", f"log.out_dir={cells_dir}"], rid)
                 for ov, _, rid in todo]
    if executor == "local":
        results = _run_local(cell_args, jobs, threads, grid_dir, swept, log)
    else:  # ray (check_options refused anything else)
        results = _run_ray(cell_args, threads, opts["ray_address"], grid_dir, swept, log)
    for rid, res in results.items():
        if res["status"] == "failed" and _status(_cell_dir(grid_dir, rid)) != "failed":
            _mark_failed(_cell_dir(grid_dir, rid), rid, res)
    collect(grid_dir, swept)
    failed = sum(r["status"] == "failed" for r in results.values())
    log(f"grid done: {len(results) - failed} finished, {failed} failed this time; tables in {grid_dir}")
    return grid_dir


def _progress(log, done, total, failed, pending, slots, t0):
    el = time.time() - t0
    eta = el / done * (total - done) if done else float("nan")
    running = min(pending, slots)
    log(f"  cells {done}/{total} done ({failed} failed), {running} running, {pending - running} queued, "
        f"elapsed {el:.0f}s, ETA {eta:.0f}s")


def _run_local(cell_args, jobs, threads, grid_dir, swept, log) -> dict:
    import multiprocessing as mp

    import signal

    def on_term(signum, frame):  # `kill <grid>` stops its workers too, like Ctrl-C does
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, on_term)
    results, t0 = {}, time.time()
    pool = ProcessPoolExecutor(max_workers=jobs, mp_context=mp.get_context("spawn"))
    try:
        futures = {pool.submit(run_cell, ov, threads): rid for ov, rid in cell_args}
        pending = set(futures)
        while pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for f in done:
                rid = futures[f]
                try:
                    results[rid] = f.result()
                except BaseException as e:  # a worker died (OOM, kill): record, go on
                    results[rid] = {"status": "failed", "error": f"worker died: {type(e).__name__}: {e}"}
                if results[rid]["status"] == "failed":
                    _mark_failed(_cell_dir(grid_dir, rid), rid, results[rid])
            collect(grid_dir, swept)
            _progress(log, len(results), len(cell_args), sum(r["status"] == "failed" for r in results.values()),
                      len(pending), jobs, t0)
    except BaseException:
        for proc in list(getattr(pool, "_processes", {}).values()):  # no orphaned workers
            proc.terminate()
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)
    pool.shutdown()
    return results


def _run_ray(cell_args, threads, address, grid_dir, swept, log) -> dict:
    try:
        import ray
    except ImportError:
        raise OffbenchError("executor=ray needs Ray: pip install \"offpolicy-bench[ray]\"") from None
    started_here = not ray.is_initialized()
    if started_here:
        ray.init(address=address or None, include_dashboard=False, log_to_driver=False,
                 **({} if address else {"num_cpus": os.cpu_count()}))
    try:
        remote = ray.remote(num_cpus=threads)(run_cell)
        refs = {remote.remote(ov, threads): rid for ov, rid in cell_args}
        results, pending, t0 = {}, list(refs), time.time()
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            for ref in done:
                rid = refs[ref]
                try:
                    results[rid] = ray.get(ref)
                except Exception as e:  # noqa: BLE001 - a lost worker is a failed cell, not a failed grid
                    results[rid] = {"status": "failed", "error": f"ray task failed: {type(e).__name__}: {e}"}
                if results[rid]["status"] == "failed":
                    _mark_failed(_cell_dir(grid_dir, rid), rid, results[rid])
            collect(grid_dir, swept)
            _progress(log, len(results), len(cell_args), sum(r["status"] == "failed" for r in results.values()),
                      len(pending), max(1, int(ray.available_resources().get("CPU", 1) // threads)), t0)
        return results
    finally:
        if started_here:
            ray.shutdown()


def _mark_failed(cell_dir: str, run_id: str, res: dict) -> None:
    os.makedirs(cell_dir, exist_ok=True)
    path = os.path.join(cell_dir, "run.json")
    run = {}
    try:
        run = json.load(open(path))
    except (OSError, ValueError):
        pass
    run.update({"run_id": run_id, "status": "failed", "error": res.get("error", "unknown")})
    atomic_write(path, (json.dumps(run, indent=1) + "\n").encode())


def _write_grid_meta(grid_dir: str, overrides: list[str], swept: list[str]) -> None:
    path = os.path.join(grid_dir, "grid.json")
    meta = {"overrides": overrides, "swept": swept}
    if os.path.isfile(path):
        old = json.load(open(path))
        if old.get("swept") != swept:
            raise OffbenchError(f"{grid_dir} holds a grid over {old.get('swept')}; use another name=")
    atomic_write(path, (json.dumps(meta, indent=1) + "\n").encode())


def collect(grid_dir: str, swept: list[str] | None = None) -> None:
    """Rebuild runs / metrics / summary tables from the cell folders (atomic writes)."""
    from .report import summarize_run

    if swept is None:
        swept = json.load(open(os.path.join(grid_dir, "grid.json")))["swept"]
    runs, metrics, summaries = [], [], []
    cells = os.path.join(grid_dir, "cells")
    for rid in sorted(os.listdir(cells)) if os.path.isdir(cells) else []:
        d = os.path.join(cells, rid)
        try:
            run = json.load(open(os.path.join(d, "run.json")))
        except (OSError, ValueError):
            continue  # a cell that never started writing: not a row
        cfg_path = os.path.join(d, "config.yaml")
        cfg = OmegaConf.load(cfg_path) if os.path.isfile(cfg_path) else None
        row = run_record(cfg, {**run, "run_id": rid})
        if cfg is not None:
            schema_keys = {k for role in ("core", "knob") for k in record_columns(role).values()}
            for key in swept:  # a swept key the record does not hold already (e.g. optim.lr) is a column
                sel = f"{key}.name" if key in ("method", "task", "correction", "advantage", "model") else key
                if sel in schema_keys:
                    continue
                val = OmegaConf.select(cfg, sel)
                row[key] = val if not OmegaConf.is_config(val) else json.dumps(OmegaConf.to_container(val))
        runs.append(row)
        mpath = os.path.join(d, "metrics.parquet")
        if os.path.isfile(mpath):
            m = read_parquet_stable(mpath)  # a running cell replaces it at every flush
            m.insert(0, "run_id", rid)
            metrics.append(m)
            if run.get("status") == "finished":
                summaries.append({"run_id": rid, **summarize_run(m)})
    runs_df = pd.DataFrame(runs)
    for key in swept:  # mixed-type columns (e.g. staleness ints) stay typed; others as strings
        if key in runs_df and runs_df[key].map(type).nunique() > 1:
            runs_df[key] = runs_df[key].astype(str)
    atomic_write_parquet(runs_df, os.path.join(grid_dir, "runs.parquet"))
    cols = ["run_id", "step", "split", "metric", "value"]
    atomic_write_parquet(pd.concat(metrics, ignore_index=True) if metrics else pd.DataFrame(columns=cols),
                         os.path.join(grid_dir, "metrics.parquet"))
    atomic_write_parquet(pd.DataFrame(summaries), os.path.join(grid_dir, "summary.parquet"))


def project(cfgs, jobs: int, threads: int, log=print) -> dict:
    """Wall-time projection of the cells still to run, from short probes measured now.

    Per kind of cell (model x task x rollout and batch sizes): one warm start (0 if cached, else
    timed over 20 supervised steps and scaled), the seconds per gradient step (median of a 6-step
    probe run at the grid's threads per cell, staleness 1) and the seconds per evaluation. A cell
    costs steps x step time + evaluations; cells run `jobs` at a time. Staleness changes how
    work is batched, not how much: a gradient step costs about the same at every N.
    """
    import tempfile

    import torch

    from .trainer import evaluate, train

    kinds = {}
    for cfg in cfgs:
        key = json.dumps([OmegaConf.to_container(cfg[k]) for k in ("model", "task", "warmstart", "rollout")] +
                         [cfg.train.minibatch_prompts], sort_keys=True)
        kinds.setdefault(key, []).append(cfg)
    torch.set_num_threads(threads)
    total_cells, warm_total, per_kind = 0.0, 0.0, []
    for key, group in kinds.items():
        cfg = group[0]
        with tempfile.TemporaryDirectory() as d:
            t0 = time.time()
            _warm_starts([cfg])  # builds (and caches) it if needed: the real cost, paid once
            warm_s = time.time() - t0
            probe = build_config([f"model={cfg.model.name}", f"task={cfg.task.name}", "staleness=1", "train.steps=6",
                                  "log.eval_every=1000", "log.progress=false", f"log.out_dir={d}", "name=probe",
                                  f"threads={threads}", f"train.minibatch_prompts={cfg.train.minibatch_prompts}",
                                  f"rollout.group_size={cfg.rollout.group_size}",
                                  f"rollout.max_new_tokens={cfg.rollout.max_new_tokens}"])
            for sec in ("model", "task", "warmstart"):
                probe[sec] = cfg[sec]
            train(probe, log=lambda m: None)
            m = pd.read_parquet(os.path.join(d, "probe", "metrics.parquet"))
            step_s = float(m[m.metric == "time_step_s"].sort_values("step").value.iloc[1:].median())
        from .models import load_model
        from .tasks_api import build_task

        task = build_task(cfg)
        model, tok, _ = load_model(cfg, task, log=lambda m: None)
        t0 = time.time()
        evaluate(model, tok, task, cfg)
        eval_s = time.time() - t0
        cells = sum(c.train.steps * step_s + (c.train.steps // c.log.eval_every + 2) * eval_s for c in group)
        total_cells += cells
        warm_total += warm_s
        per_kind.append({"model": cfg.model.name, "task": cfg.task.name, "cells": len(group), "step_s": step_s,
                         "eval_s": eval_s, "warmstart_s": warm_s})
        log(f"  kind model={cfg.model.name} task={cfg.task.name}: {len(group)} cells, {step_s * 1000:.0f} ms per "
            f"gradient step, {eval_s:.2f} s per eval, warm start {warm_s:.0f} s (0 if cached)")
    hours = (warm_total + total_cells / max(1, jobs)) / 3600
    log(f"projection: {hours:.2f} h for {len(cfgs)} cells with {jobs} job(s) x {threads} thread(s) "
        f"(measured now, on this machine; a shared machine varies)")
    return {"hours": hours, "kinds": per_kind}
