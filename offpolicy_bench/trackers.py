"""Live trackers, opt-in: `log.trackers=[tensorboard,wandb,mlflow]`.

metrics.parquet stays the record; a tracker gets a copy of every row the run writes there, at the
same gradient step (tag `<split>/<metric>`, e.g. `train/kl_mu_pi`, `eval/accuracy`), and the resolved
config as hyperparameters. Each backend is an optional extra and imports its library only when a run
names it: with `log.trackers=[]` (the default) none of them is ever imported.

A backend that raises, at start or at any later call, is reported once on stderr, recorded in
run.json (`tracker_errors`) and dropped; the run and its parquet record go on.

  tensorboard  event files in <run>/tensorboard/ (old event files there are replaced)
  wandb        offline run under <run>/wandb/ (unless WANDB_MODE / WANDB_DIR say otherwise);
               `wandb sync <run>/wandb/offline-run-*` uploads it later
  mlflow       local file store <run>/mlruns/ (unless MLFLOW_TRACKING_URI names another store)

`export_tensorboard` writes the TensorBoard events of finished runs from their metrics.parquet
(`offbench export-tb`).
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import time

from .registry import OffbenchError, Registry

TRACKERS: Registry[type] = Registry("tracker")
DEFAULT_PROJECT = "offpolicy-bench"  # W&B project and MLflow experiment of a run outside any grid


def register_tracker(cls):
    cls.origin = f"{cls.__module__}.{cls.__qualname__}"
    TRACKERS.add(cls.name, cls, cls.origin)
    return cls


def check_trackers(names) -> None:
    """Config validation, before any work: every name is a tracker and its library imports."""
    seen = set()
    for name in names:  # the names first: a typo or a repeat is reported whatever is installed
        TRACKERS.get(name)  # unknown: one line with the valid names
        if name in seen:
            raise OffbenchError(f"log.trackers names {name!r} twice")
        seen.add(name)
    for name in names:
        cls = TRACKERS.get(name)
        try:
            importlib.import_module(cls.requires)
        except Exception as e:  # noqa: BLE001 - missing or broken, the fix is the same
            reason = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise OffbenchError(f"the {name} tracker needs its extra: pip install -e \".[{name}]\" "
                                f"(or pip install \"offpolicy-bench[{name}]\"); import {cls.requires} failed: "
                                f"{reason}") from None


def flat_config(config: dict | None, prefix: str = "") -> dict:
    """{'optim.lr': 1e-4, 'plugins': '[]', ...}: nested config as dotted scalar keys (lists as JSON)."""
    out = {}
    for k, v in (config or {}).items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flat_config(v, key + "."))
        elif isinstance(v, (list, tuple)):
            out[key] = json.dumps(v)
        else:
            out[key] = v
    return out


class Tracker:
    """One backend. Started with the run, given every metric row the run writes, finished with its
    status (finished | interrupted | failed). `requires` is the module `check_trackers` imports; the
    extra of the same name as the tracker installs it."""

    name = ""
    requires = ""

    def __init__(self, config: dict, run_dir: str, run_name: str, run_id: str, group: str | None):
        raise NotImplementedError

    def log(self, step: int, split: str, metrics: dict[str, float]) -> None:
        raise NotImplementedError

    def flush(self) -> None:
        pass

    def finish(self, status: str) -> None:
        pass


@register_tracker
class TensorBoardTracker(Tracker):
    name, requires = "tensorboard", "tensorboard"
    HPARAM_METRICS = ("eval/accuracy", "train/reward")  # the columns of TensorBoard's HParams table

    def __init__(self, config, run_dir, run_name, run_id, group):
        from torch.utils.tensorboard import SummaryWriter
        from torch.utils.tensorboard.summary import hparams

        logdir = os.path.join(run_dir, "tensorboard")
        if os.path.isdir(logdir):  # a re-run of this folder: its old curves would mix with the new ones
            for f in os.listdir(logdir):
                if f.startswith("events.out.tfevents."):
                    os.unlink(os.path.join(logdir, f))
        self.writer = SummaryWriter(logdir)
        params = {k: v for k, v in flat_config(config).items() if v is not None}
        params["run_id"] = run_id
        for summary in hparams(params, {m: 0.0 for m in self.HPARAM_METRICS}):  # in this run's own folder
            self.writer.file_writer.add_summary(summary)
        if config:
            self.writer.add_text("config", "```\n" + json.dumps(config, indent=1) + "\n```")

    def log(self, step, split, metrics):
        for k, v in metrics.items():
            self.writer.add_scalar(f"{split}/{k}", v, step)

    def flush(self):
        self.writer.flush()

    def finish(self, status):
        self.writer.close()


@register_tracker
class WandbTracker(Tracker):
    name, requires = "wandb", "wandb"

    def __init__(self, config, run_dir, run_name, run_id, group):
        import wandb

        self.run = wandb.init(
            mode=None if os.environ.get("WANDB_MODE") else "offline",  # no network unless the user says so
            dir=os.environ.get("WANDB_DIR") or run_dir,
            project=os.environ.get("WANDB_PROJECT") or DEFAULT_PROJECT,
            group=group, name=run_name, config={**(config or {}), "run_id": run_id},
            reinit="finish_previous")  # a run left open in this process (a notebook) is ended first

    def log(self, step, split, metrics):
        self.run.log({f"{split}/{k}": v for k, v in metrics.items()}, step=step)

    def finish(self, status):
        self.run.finish(exit_code=0 if status == "finished" else 1)


@register_tracker
class MlflowTracker(Tracker):
    name, requires = "mlflow", "mlflow"
    STATUS = {"finished": "FINISHED", "interrupted": "KILLED"}

    def __init__(self, config, run_dir, run_name, run_id, group):
        import pathlib

        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        uri = os.environ.get("MLFLOW_TRACKING_URI")
        if not uri:
            # MLflow 3 keeps its file store behind this switch; a local folder is what this tracker promises
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
            uri = pathlib.Path(run_dir, "mlruns").absolute().as_uri()
        self.client = MlflowClient(tracking_uri=uri)
        experiment = group or os.environ.get("MLFLOW_EXPERIMENT_NAME") or DEFAULT_PROJECT
        found = self.client.get_experiment_by_name(experiment)
        if found is None:
            try:
                exp_id = self.client.create_experiment(experiment)
            except Exception:  # noqa: BLE001 - another cell of the grid created it meanwhile
                exp_id = self.client.get_experiment_by_name(experiment).experiment_id
        else:
            exp_id = found.experiment_id
        self.run_id = self.client.create_run(exp_id, run_name=run_name, tags={"offbench.run_id": run_id}).info.run_id
        params = [Param(k, str(v)) for k, v in flat_config(config).items()]
        for i in range(0, len(params), 100):  # MLflow takes at most 100 params per batch
            self.client.log_batch(self.run_id, params=params[i:i + 100])

    def log(self, step, split, metrics):
        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        rows = [Metric(f"{split}/{k}", v, ts, step) for k, v in metrics.items()]
        for i in range(0, len(rows), 1000):
            self.client.log_batch(self.run_id, metrics=rows[i:i + 1000])

    def finish(self, status):
        self.client.set_terminated(self.run_id, self.STATUS.get(status, "FAILED"))


def _warn(msg: str) -> None:
    print(f"offbench: warning: {msg}", file=sys.stderr, flush=True)


class Trackers:
    """The live trackers of one run, called by the run's writer wherever it writes metrics. Falsy when
    there are none, so the writer skips them at no cost. A tracker that raises is reported once (one
    warning line), its error kept in `errors`, and it is dropped; nothing it does reaches the caller."""

    def __init__(self, names, config: dict | None, run_dir: str, run_name: str, run_id: str,
                 group: str | None = None, warn=_warn):
        self.live: list[tuple[str, Tracker]] = []
        self.errors: dict[str, str] = {}
        self.warn = warn
        for name in names:  # names were checked by check_trackers with the rest of the config
            try:
                self.live.append((name, TRACKERS.get(name)(config, run_dir, run_name, run_id, group)))
            except Exception as e:  # noqa: BLE001
                self._drop(name, e, "could not start")

    @classmethod
    def for_run(cls, cfg, run_dir: str, run_id: str) -> "Trackers":
        """The trackers `log.trackers` names for this run, given its resolved config as hyperparameters."""
        from omegaconf import OmegaConf

        names = list(cfg.log.trackers)
        config = OmegaConf.to_container(cfg, resolve=True) if names else None
        return cls(names, config, run_dir, cfg.name, run_id, cfg.log.tracker_group)

    def __bool__(self) -> bool:
        return bool(self.live)

    def _drop(self, name: str, e: Exception, what: str) -> None:
        first = str(e).splitlines()[0] if str(e) else ""
        self.errors[name] = f"{type(e).__name__}: {first}"
        self.live = [(n, t) for n, t in self.live if n != name]
        self.warn(f"tracker {name} {what} ({self.errors[name]}); it is off for the rest of this run, "
                  f"metrics.parquet is unaffected")

    def _each(self, what: str, call) -> None:
        for name, tracker in list(self.live):
            try:
                call(tracker)
            except Exception as e:  # noqa: BLE001 - a tracker never stops the run
                self._drop(name, e, what)

    def log(self, step: int, split: str, metrics: dict[str, float]) -> None:
        self._each("failed", lambda t: t.log(step, split, metrics))

    def flush(self) -> None:
        self._each("failed", lambda t: t.flush())

    def finish(self, status: str) -> None:
        self._each("failed at the end", lambda t: t.finish(status))
        self.live = []


def export_tensorboard(path: str, log=print) -> list[str]:
    """TensorBoard event files from existing results: a run folder (its metrics.parquet) or a grid
    folder (every cell that has one). Each goes to <run>/tensorboard/, tagged as a live run would be.
    Returns the event folders written."""
    import pandas as pd
    from omegaconf import OmegaConf

    cells = os.path.join(path, "cells")
    if os.path.isdir(cells):
        runs = [os.path.join(cells, c) for c in sorted(os.listdir(cells))
                if os.path.isfile(os.path.join(cells, c, "metrics.parquet"))]
    else:
        runs = [path] if os.path.isfile(os.path.join(path, "metrics.parquet")) else []
    if not runs:
        raise OffbenchError(f"{path!r} holds no metrics.parquet: give a run folder (results/<name>) or a grid "
                            f"folder (results/<grid>) with finished cells")
    check_trackers(["tensorboard"])
    out = []
    for run_dir in runs:
        cfg_path, run_path = os.path.join(run_dir, "config.yaml"), os.path.join(run_dir, "run.json")
        config = OmegaConf.to_container(OmegaConf.load(cfg_path)) if os.path.isfile(cfg_path) else None
        run = json.load(open(run_path)) if os.path.isfile(run_path) else {}
        tb = TensorBoardTracker(config, run_dir, run.get("name", os.path.basename(run_dir)),
                                run.get("run_id", ""), None)
        m = pd.read_parquet(os.path.join(run_dir, "metrics.parquet"))
        for (step, split), rows in m.groupby(["step", "split"], sort=True):
            tb.log(int(step), split, dict(zip(rows.metric, rows.value.astype(float))))
        tb.finish(run.get("status", "finished"))
        out.append(os.path.join(run_dir, "tensorboard"))
        log(f"{out[-1]}: {len(m)} scalars")
    return out
