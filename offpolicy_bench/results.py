"""Run folders: resolved config, tidy long metrics table, one-line summary; every write atomic.

results/<name>/
  config.yaml      the resolved config (every value that ran)
  run.json         run_id, status (running | finished | interrupted | failed), versions, commit, machine,
                   wall time
  metrics.parquet  long: step, split, metric, value
  summary.json     one line: the headline numbers
"""

from __future__ import annotations

import dataclasses
import functools
import io
import json
import os
import platform
import subprocess
import tempfile
import time
from importlib import metadata

import pandas as pd
from omegaconf import DictConfig, OmegaConf

from .registry import OffbenchError
from .trackers import Trackers

METRIC_COLUMNS = ["step", "split", "metric", "value"]


def _col(role: str, key: str | None = None):
    return dataclasses.field(default=None, metadata={"role": role, "key": key})


@dataclasses.dataclass
class RunRecord:
    """One row of runs.parquet, and what every run records about itself. The single schema the
    trainer's run.json / summary.json, `grid.collect` and `report`'s column sets are derived from:
    adding a knob is adding one field here, with its role and the config key it is read from.

    core: the axes of every table (never a variant); knob: recorded for every run, a separate series
    in reports wherever it varies within a grid; meta: bookkeeping, never a variant."""

    method: str = _col("core", "method.name")
    task: str = _col("core", "task.name")
    model: str = _col("core", "model.name")
    staleness: int = _col("core", "staleness")
    seed: int = _col("core", "seed")
    lag: int = _col("knob", "lag")
    correction: str = _col("knob", "correction.name")
    advantage: str = _col("knob", "advantage.name")  # the advantage estimator: runs with two are never pooled
    rollout_dtype: str = _col("knob", "rollout.dtype")
    routing_replay: str = _col("knob", "rollout.routing_replay")
    agg: str = _col("meta", "method.agg")  # the aggregation mode actually used (method default or override)
    run_id: str = _col("meta")
    status: str = _col("meta")
    error: str = _col("meta")
    wall_time_s: float = _col("meta")
    peak_rss_mb: float = _col("meta")
    git_commit: str = _col("meta")
    task_version: str = _col("meta")
    versions: str = _col("meta")  # JSON of package versions
    warmstart_key: str = _col("meta")
    warmstart_excess_loss: float = _col("meta")
    machine: str = _col("meta")  # JSON of machine(): CPU model, torch's CPU kernel dispatch, cores, threads


def record_columns(role: str) -> dict[str, str | None]:
    """{column: config key} of the RunRecord fields with this role (core | knob | meta)."""
    return {f.name: f.metadata["key"] for f in dataclasses.fields(RunRecord) if f.metadata["role"] == role}


def record_from_config(cfg: DictConfig) -> dict:
    """The RunRecord fields a resolved config determines (core, knobs, and agg)."""
    return {f.name: OmegaConf.select(cfg, f.metadata["key"]) for f in dataclasses.fields(RunRecord)
            if f.metadata["key"] is not None}


def run_record(cfg: DictConfig | None, run: dict) -> dict:
    """A full runs.parquet row from a run folder's config and run.json (config wins where both say)."""
    row = {f.name: run.get(f.name) for f in dataclasses.fields(RunRecord)}
    row["versions"] = json.dumps(run.get("versions", {}), sort_keys=True)
    row["machine"] = json.dumps(run["machine"], sort_keys=True) if run.get("machine") else None  # older runs: none
    if cfg is not None:
        row.update(record_from_config(cfg))
    return row


def _umask_mode() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def atomic_write(path: str, data: bytes) -> None:
    """Write to a temp file in the same folder, fsync, rename: readers see old or new, never half."""
    d = os.path.dirname(path) or "."
    fd, tmp = tempfile.mkstemp(dir=d, prefix=".tmp-")
    os.chmod(tmp, _umask_mode())
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_parquet(df: pd.DataFrame, path: str) -> None:
    d = os.path.dirname(path) or "."
    fd, tmp = tempfile.mkstemp(dir=d, prefix=".tmp-", suffix=".parquet")
    os.close(fd)
    os.chmod(tmp, _umask_mode())
    try:
        df.to_parquet(tmp, index=False)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def read_parquet_stable(path: str, **kw) -> pd.DataFrame:
    """Read a parquet file that a running process may replace at any moment (atomic_write_parquet):
    through one open handle, so footer and pages come from the same file. pyarrow given a path may open
    it more than once, and a rename in between pairs the old footer with the new pages ("Couldn't
    deserialize thrift")."""
    with open(path, "rb") as f:
        return pd.read_parquet(io.BytesIO(f.read()), **kw)


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in ("offpolicy-bench", "torch", "transformers", "omegaconf", "pandas"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def cpu_model() -> str:
    """The CPU model name (`lscpu`'s Model name), which every figure is stated with."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def machine() -> dict:
    """What a float result depends on beyond the code and the seed: the CPU, and the kernels torch
    dispatches to on it (`ATEN_CPU_CAPABILITY` can lower that; the same seed can give another trajectory
    under another dispatch: README, "Two commands"), with the cores and the threads used."""
    import torch

    try:
        capability = torch.backends.cpu.get_cpu_capability()
    except AttributeError:  # older torch
        capability = "unknown"
    return {"cpu": cpu_model(), "cpu_capability": capability, "cores": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "platform": f"{platform.system()} {platform.machine()}"}


def machine_name(m: dict | str | None) -> str:
    """A recorded `machine` (the dict of `machine()`, or its JSON as run.json and the tables store it)
    as "CPU (kernel dispatch)", the name every table gives a machine; "not recorded" when absent."""
    if isinstance(m, str):
        m = json.loads(m) if m.strip() else None
    if not isinstance(m, dict) or not m:  # None, "", or NaN from a table's empty cell
        return "not recorded"
    return f"{m.get('cpu', '?')} ({m.get('cpu_capability', '?')})"


@functools.cache
def loaded_commit() -> str | None:
    """The commit of the code this process runs: git_commit() at its first call, then the same
    answer. A grid's workers import the code once and run many cells; a commit or an edit made in the
    checkout while they run does not change the code they run, so it must not change what their cells
    record. (The grid's refusal of a dirty tree asks git_commit() afresh: its workers import the tree
    as it is then.)"""
    return git_commit()


def git_commit() -> str | None:
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        r = subprocess.run(["git", "-C", here, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        if r.returncode == 0:
            dirty = subprocess.run(["git", "-C", here, "status", "--porcelain"], capture_output=True, text=True,
                                   timeout=5).stdout.strip()
            return r.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        pass
    return None


class RunWriter:
    """Collects metric rows in memory and writes the run folder atomically on every flush."""

    def __init__(self, cfg: DictConfig, run_id: str, extra: dict):
        self.dir = os.path.join(cfg.log.out_dir, cfg.name)
        self.rows: list[tuple[int, str, str, float]] = []
        self.t0 = time.time()
        try:
            os.makedirs(self.dir, exist_ok=True)
            probe = os.path.join(self.dir, ".write-test")
            open(probe, "w").close()
            os.unlink(probe)
        except OSError as e:
            raise OffbenchError(f"output folder {self.dir!r} is not writable ({e.strerror}); "
                                f"set log.out_dir= to a writable folder") from None
        prev = os.path.join(self.dir, "run.json")
        if os.path.isfile(prev):
            old = json.load(open(prev))
            if old.get("run_id") != run_id:
                raise OffbenchError(f"{self.dir} holds another run ({old.get('run_id')}, a different config); "
                                    f"choose another name= or delete that folder")
        for stale in ("metrics.parquet", "summary.json"):
            if os.path.exists(os.path.join(self.dir, stale)):
                os.unlink(os.path.join(self.dir, stale))
        self.run = {"run_id": run_id, "name": cfg.name, "status": "running", "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
                    "git_commit": loaded_commit(), "versions": versions(), "machine": machine(), **extra}
        atomic_write(os.path.join(self.dir, "config.yaml"), OmegaConf.to_yaml(cfg).encode())
        self.trackers = Trackers.for_run(cfg, self.dir, run_id)  # log.trackers; none by default
        self._write_run()

    def _write_run(self) -> None:
        import resource

        self.run["wall_time_s"] = round(time.time() - self.t0, 2)
        self.run["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # Linux: KiB
        if self.trackers.errors:
            self.run["tracker_errors"] = dict(self.trackers.errors)
        atomic_write(os.path.join(self.dir, "run.json"), (json.dumps(self.run, indent=1) + "\n").encode())

    def log(self, step: int, split: str, metrics: dict[str, float]) -> None:
        values = {k: float(v) for k, v in metrics.items()}
        self.rows.extend((step, split, k, v) for k, v in values.items())
        if self.trackers:  # the same rows, at the same step, to every live tracker
            self.trackers.log(step, split, values)

    def flush(self) -> None:
        df = pd.DataFrame(self.rows, columns=METRIC_COLUMNS).astype({"step": "int64", "value": "float64"})
        atomic_write_parquet(df, os.path.join(self.dir, "metrics.parquet"))
        if self.trackers:
            self.trackers.flush()
        self._write_run()

    def finish(self, status: str, summary: dict, error: str | None = None) -> None:
        self.run["status"] = status
        if error:
            self.run["error"] = error
        self.flush()
        if self.trackers:
            self.trackers.finish(status)
            self._write_run()  # with any tracker error of the finish itself
        line = json.dumps({"run_id": self.run["run_id"], "status": status, **summary})
        atomic_write(os.path.join(self.dir, "summary.json"), (line + "\n").encode())

