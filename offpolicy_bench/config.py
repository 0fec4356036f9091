"""Typed run configuration: structured dataclasses, `key=value` overrides, validation.

`method=vespo`, `task=math`, `correction=token_tis` and `advantage=rloo` select a registry entry and
bring its typed arguments in, so `method.c1_pos=3` is type-checked; `model=moe` is shorthand for
`model.name=moe`. Unknown keys and wrong types are errors. Every value is resolved before the run
starts and saved with it.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import os
from dataclasses import dataclass, field
from typing import Any, List, Optional

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from .losses import AGG_MODES
from .registry import OffbenchError


@dataclass
class ModelConfig:
    name: str = "dense"
    """dense | moe (tiny Qwen3-style models built locally) | path to a Hugging Face model dir"""
    hidden_size: int = 128
    """width of the built-in models"""
    num_layers: int = 4
    """decoder layers of the built-in models"""
    num_heads: int = 4
    """attention heads"""
    num_kv_heads: int = 2
    """key/value heads (grouped-query attention)"""
    intermediate_size: int = 384
    """MLP width of the dense model"""
    num_experts: int = 8
    """experts per MoE layer (model=moe)"""
    experts_per_token: int = 2
    """top-k routing (model=moe)"""
    moe_intermediate_size: int = 96
    """width of one expert (model=moe)"""


@dataclass
class WarmStartConfig:
    steps: Optional[int] = None
    """supervised steps on the task's reference answers before RL (0 = start RL from the raw model);
    null = the task's default, enough for the built-in models to reach the task's loss floor"""
    batch_size: int = 64
    """examples per supervised step"""
    lr: float = 3e-3
    """supervised learning rate (AdamW, cosine decay)"""
    seed: int = 0
    """seed of model init and warm start; kept apart from `seed` so RL seeds share one warm start"""
    cache: bool = True
    """reuse a warm start cached on disk under the hash of everything that determines it"""
    max_excess: Optional[float] = 0.02
    """largest accepted excess of the warm start's loss over the task's floor (nats/token; the floor is
    the entropy of the habit-bearing targets); above it the run stops with an error. null = no check"""


@dataclass
class RolloutConfig:
    engine: str = "hf"
    """rollout engine: hf (transformers, CPU or GPU) | vllm (optional extra)"""
    group_size: int = 8
    """responses sampled per prompt (G); the advantage estimator's baselines are computed within each group"""
    temperature: float = 1.0
    """sampling temperature; behaviour and trainer log-probs both use softmax(logits / T)"""
    max_new_tokens: Optional[int] = None
    """response length cap; a response that hits it without EOS is graded as it stands. null = the
    task's own cap (8 for the short built-in tasks; math_cot: room for its whole chain)"""
    dtype: str = "float32"
    """engine precision (float32 | bfloat16 | float16); not float32 = train/inference mismatch"""
    routing_replay: str = "none"
    """MoE routing replay (model=moe): none | r2 (update passes reuse the experts of the trainer's pi_old
    pass) | r3 (pi_old and update passes reuse the experts the engine routed at sampling time, hf engine)"""


@dataclass
class OptimConfig:
    lr: float = 1e-4
    """RL learning rate (AdamW); keep it well below the warm start's"""
    beta1: float = 0.9
    """AdamW beta1"""
    beta2: float = 0.999
    """AdamW beta2"""
    weight_decay: float = 0.0
    """AdamW weight decay"""
    grad_clip: float = 1.0
    """max global grad norm (<= 0 disables clipping)"""


@dataclass
class TrainConfig:
    steps: int = 256
    """gradient steps (one per mini-batch, as on the paper's plots); a multiple of staleness"""
    minibatch_prompts: Optional[int] = None
    """prompts per mini-batch (one optimizer step); null = batch_prompts / staleness, or 8"""
    batch_prompts: Optional[int] = None
    """prompts per rollout batch; null = minibatch_prompts x staleness (the paper's scheme)"""


@dataclass
class LogConfig:
    eval_every: int = 16
    """held-out accuracy every this many gradient steps (and at step 0 and the end)"""
    eval_samples: int = 4
    """responses sampled per held-out problem at rollout.temperature (fixed seed); accuracy = their
    mean, the policy's expected pass@1. 0 = greedy decoding (jumps where answers are nearly tied)"""
    eval_greedy: bool = False
    """also log greedy accuracy (accuracy_greedy)"""
    out_dir: str = "results"
    """results root; the run goes to <out_dir>/<name>/"""
    progress: bool = True
    """show a progress bar"""
    trackers: List[str] = field(default_factory=list)
    """live trackers that also get every metric at its gradient step, and the config as hyperparameters:
    any of [tensorboard,wandb,mlflow], each an optional extra (pip install -e ".[tensorboard]"); [] = none"""
    tracker_group: Optional[str] = None
    """W&B group and MLflow experiment of this run (null: no group, experiment offpolicy-bench); a grid
    sets its name"""


@dataclass
class RunConfig:
    method: Any = "vespo"
    """correction method (see `offbench methods`); its arguments are method.<arg>"""
    task: Any = "math"
    """task (see `offbench tasks`); its arguments are task.<arg>"""
    correction: Any = "none"
    """rollout-correction modifier wrapping the method (see `offbench corrections`; none = no correction);
    its arguments are correction.<arg>"""
    advantage: Any = "grpo"
    """advantage estimator from the rollout batch's rewards (see `offbench advantages`; grpo = group mean and
    std); its arguments are advantage.<arg>"""
    staleness: int = 4
    """N: a rollout batch is split into N mini-batches updated in turn; the last is N-1 versions old"""
    lag: int = 0
    """k: each rollout batch is sampled by the policy of k optimizer steps earlier (async lag)"""
    correction_mode: str = "decoupled"
    """decoupled: pi_old = trainer policy at the rollout start, mu apart; bypass: pi_old = mu"""
    seed: int = 0
    """RL seed (sampling, prompt order)"""
    name: Optional[str] = None
    """run folder name; null = <method>_<task>_<model>_N<staleness>_seed<seed>"""
    device: str = "cpu"
    """torch device"""
    threads: int = 0
    """torch CPU threads (0 = torch's default)"""
    plugins: List[str] = field(default_factory=list)
    """extra modules (my_pkg.my_loss) or .py files (./my_loss.py) to import so they register methods, tasks
    or corrections, e.g. [./my_loss.py]"""
    model: ModelConfig = field(default_factory=ModelConfig)
    warmstart: WarmStartConfig = field(default_factory=WarmStartConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    log: LogConfig = field(default_factory=LogConfig)


GROUPS = ("method", "task", "correction", "advantage")  # keys whose value selects a registry entry
SHORTHANDS = {"model": "model.name"}
# keys that once existed: an override of one is an error that names its replacement
RETIRED = {"train.adv_std_norm": "train.adv_std_norm was replaced by the advantage estimator registry: use "
                                 "advantage=grpo for the old true (std scaling) or advantage=dr_grpo for the old false"}


@dataclass
class _MethodCommon:
    name: str = ""
    agg: Optional[str] = None
    """loss aggregation mode; null = the method's declared default (the mode used is recorded)"""
    agg_norm_len: Optional[float] = None
    """constant of seq-mean-token-sum-norm; null = rollout.max_new_tokens"""


@dataclass
class _NameCommon:
    """The common part of a task, correction or advantage node: just the registry name."""

    name: str = ""


def _group_node(common: type, name: str, args_cls: type) -> DictConfig:
    """A typed config node: the common fields plus the registry entry's args dataclass."""
    import typing

    common_types, arg_types = typing.get_type_hints(common), typing.get_type_hints(args_cls)
    fields = [(f.name, common_types[f.name], field(default=f.default)) for f in dataclasses.fields(common)]
    for f in dataclasses.fields(args_cls):
        if f.name in common_types:
            raise OffbenchError(f"{args_cls.__name__}.{f.name} clashes with a common config key; rename it")
        default = (field(default_factory=f.default_factory) if f.default_factory is not dataclasses.MISSING
                   else field(default=f.default))
        fields.append((f.name, arg_types[f.name], default))
    cls = dataclasses.make_dataclass(f"{args_cls.__name__}Node", fields)
    node = OmegaConf.structured(cls)
    node.name = name
    return node


def parse_overrides(overrides: list[str]) -> list[tuple[str, str]]:
    pairs = []
    for item in overrides:
        if "=" not in item:
            raise OffbenchError(f"override {item!r} is not key=value (e.g. staleness=16 or method.c1_pos=3)")
        key, value = item.split("=", 1)
        key = key.strip().lstrip("+")
        if not key:
            raise OffbenchError(f"override {item!r} has an empty key")
        pairs.append((SHORTHANDS.get(key, key), value))
    return pairs


def _all_keys(node, prefix="") -> list[str]:
    keys = []
    for k in node.keys():
        full = f"{prefix}{k}"
        keys.append(full)
        child = node._get_node(k)
        if isinstance(child, DictConfig):
            keys.extend(_all_keys(child, full + "."))
    return keys


def _check_key(cfg: DictConfig, key: str) -> None:
    keys = _all_keys(cfg)
    if key in keys:
        return
    leaves = [k for k in keys if not isinstance(OmegaConf.select(cfg, k), DictConfig)]
    # what a user can set: every leaf, and the group selectors / shorthands (method=, task=, model=)
    settable = leaves + [k for k in (*GROUPS, *SHORTHANDS) if k not in leaves]
    close = difflib.get_close_matches(key, settable, n=3, cutoff=0.8)
    if not close:  # a bare leaf name the user put at the wrong level, e.g. `lr=` for `optim.lr=`
        close = [k for k in leaves if k.rsplit(".", 1)[-1] == key.rsplit(".", 1)[-1]][:3]
    if not close and "." not in key:  # a short top-level name is easily mistyped past the 0.8 cutoff (tsak)
        close = difflib.get_close_matches(key, [k for k in settable if "." not in k], n=3, cutoff=0.6)
    hint = f" Did you mean {' or '.join(close)}?" if close else ""
    group = key.split(".")[0]
    extra = f" (`offbench {group}s` lists each one's arguments)" if group in GROUPS else ""
    raise OffbenchError(f"unknown config key {key!r}.{hint} `offbench run --help` lists every key{extra}")


def build_config(overrides: list[str] | None = None) -> DictConfig:
    """Defaults <- group selections <- overrides, then validation and derived values."""
    from . import plugins
    from .advantages import ADVANTAGES
    from .correction import CORRECTIONS
    from .method import METHODS
    from .tasks_api import TASKS

    specs = {"method": (METHODS, _MethodCommon), "task": (TASKS, _NameCommon),
             "correction": (CORRECTIONS, _NameCommon), "advantage": (ADVANTAGES, _NameCommon)}
    pairs = parse_overrides(overrides or [])
    for key, _ in pairs:
        if key in RETIRED:
            raise OffbenchError(RETIRED[key])
    cfg = OmegaConf.structured(RunConfig)
    # plugins first: they may register the method or task the other overrides name
    plugin_values = [v for k, v in pairs if k == "plugins"]
    if plugin_values:
        _merge(cfg, "plugins", plugin_values[-1])
    plugins.load_plugins(list(cfg.plugins))
    for group, (reg, common) in specs.items():
        chosen = [v for k, v in pairs if k == group or k == f"{group}.name"]
        name = chosen[-1].strip() if chosen else getattr(RunConfig, group)
        args = reg.get(name).args
        OmegaConf.set_struct(cfg, False)
        cfg[group] = _group_node(common, name, args)
        OmegaConf.set_struct(cfg, True)
    for key, value in pairs:
        if key in specs or key in (f"{g}.name" for g in specs) or key == "plugins":
            continue
        _check_key(cfg, key)
        _merge(cfg, key, value)
    resolve(cfg)
    return cfg


def _merge(cfg: DictConfig, key: str, value: str) -> None:
    try:
        update = OmegaConf.from_dotlist([f"{key}={value}"])
        merged = OmegaConf.merge(cfg, update)
    except OmegaConfBaseException as e:
        node = OmegaConf.select(cfg, key, throw_on_missing=False)
        expected = type(node).__name__ if node is not None else "another type"
        msg = str(e).splitlines()[0]
        raise OffbenchError(f"bad value for {key}: {value!r} ({msg}; current value {node!r} is {expected})") from None
    for k in merged:
        cfg[k] = merged[k]


def _positive(cfg: DictConfig, *keys: str) -> None:
    for key in keys:
        v = OmegaConf.select(cfg, key)
        if v is not None and v <= 0:
            raise OffbenchError(f"{key} must be positive, got {v}")


def resolve(cfg: DictConfig) -> None:
    """Validate and fill derived values in place, so the saved config says what actually ran."""
    from .method import METHODS

    _positive(cfg, "staleness", "train.steps", "train.minibatch_prompts", "train.batch_prompts",
              "rollout.group_size", "rollout.temperature", "rollout.max_new_tokens", "optim.lr",
              "log.eval_every", "warmstart.batch_size", "model.hidden_size", "model.num_layers",
              "model.num_heads", "model.num_kv_heads")
    if cfg.warmstart.steps is not None and cfg.warmstart.steps < 0:
        raise OffbenchError(f"warmstart.steps must be >= 0, got {cfg.warmstart.steps}")
    if cfg.lag < 0:
        raise OffbenchError(f"lag must be >= 0 optimizer steps, got {cfg.lag}")
    from .offpolicy import CORRECTION_MODES
    from .rollout.engines import DTYPES, ENGINES, _load_engines

    _load_engines()

    if cfg.correction_mode not in CORRECTION_MODES:
        raise OffbenchError(f"correction_mode={cfg.correction_mode!r}: choose {' or '.join(CORRECTION_MODES)}")
    if cfg.rollout.dtype not in DTYPES:
        raise OffbenchError(f"rollout.dtype={cfg.rollout.dtype!r}: choose one of {', '.join(DTYPES)}")
    ENGINES.get(cfg.rollout.engine)
    _check_routing_replay(cfg)
    n = cfg.staleness
    t = cfg.train
    if t.batch_prompts is not None and t.batch_prompts % n:
        lo, hi = (t.batch_prompts // n) * n, (t.batch_prompts // n + 1) * n
        raise OffbenchError(
            f"train.batch_prompts={t.batch_prompts} is not divisible by staleness={n}: choose a multiple of "
            f"{n} (e.g. {lo or hi} or {hi}), or leave it unset to use minibatch_prompts x staleness")
    if t.minibatch_prompts is None:
        t.minibatch_prompts = t.batch_prompts // n if t.batch_prompts is not None else 8
    if t.batch_prompts is None:
        t.batch_prompts = t.minibatch_prompts * n
    if t.batch_prompts != t.minibatch_prompts * n:
        raise OffbenchError(
            f"train.batch_prompts={t.batch_prompts} != minibatch_prompts={t.minibatch_prompts} x staleness={n}; "
            f"set only one of them")
    if t.steps % n:
        raise OffbenchError(
            f"train.steps={t.steps} is not a multiple of staleness={n} (each rollout batch gives {n} gradient "
            f"steps): use {max(n, t.steps // n * n)} or {(t.steps // n + 1) * n}")
    if cfg.rollout.max_new_tokens is None or cfg.warmstart.steps is None:
        from .tasks_api import get_task, task_args

        task_cls, args = get_task(cfg.task.name), task_args(cfg)
        if cfg.rollout.max_new_tokens is None:
            cfg.rollout.max_new_tokens = task_cls.default_max_new_tokens(args)
        if cfg.warmstart.steps is None:
            cfg.warmstart.steps = task_cls.default_warmstart_steps(args)
    m = cfg.method
    METHODS.get(m.name).make_args(m)  # the method's own checks, before any work starts
    from .advantages import ADVANTAGES
    from .correction import CORRECTIONS

    CORRECTIONS.get(cfg.correction.name).make_args(cfg.correction)  # likewise the correction's and the estimator's
    estimator = ADVANTAGES.get(cfg.advantage.name)
    estimator.make_args(cfg.advantage)
    estimator.check_group_size(cfg.rollout.group_size)
    if m.agg is None:
        m.agg = METHODS.get(m.name).default_agg
    if m.agg not in AGG_MODES:
        raise OffbenchError(f"method.agg={m.agg!r} is not an aggregation mode; choose one of {', '.join(AGG_MODES)}")
    if m.agg_norm_len is None:
        m.agg_norm_len = float(cfg.rollout.max_new_tokens)
    if cfg.name is None:
        model_tag = os.path.basename(os.path.normpath(cfg.model.name))
        cfg.name = f"{m.name}_{cfg.task.name}_{model_tag}_N{n}_seed{cfg.seed}"
    if os.sep in cfg.name or cfg.name in ("", ".", ".."):
        raise OffbenchError(f"name={cfg.name!r} must be a plain folder name")
    if cfg.log.trackers:  # a missing extra stops the run here, before any work
        from .trackers import check_trackers

        check_trackers(cfg.log.trackers)


def _check_routing_replay(cfg: DictConfig) -> None:
    """rollout.routing_replay: a known mode, on a Qwen3-MoE model, in a setting where it has a pass to act on."""
    from .routing import MODES

    mode, name = cfg.rollout.routing_replay, cfg.model.name
    if mode not in MODES:
        raise OffbenchError(f"rollout.routing_replay={mode!r}: choose one of {', '.join(MODES)}")
    if mode == "none":
        return
    if name == "dense":
        raise OffbenchError(f"rollout.routing_replay={mode} replays MoE expert routing; model=dense has none: "
                            f"set model=moe or rollout.routing_replay=none")
    path_cfg = os.path.join(name, "config.json")
    if os.path.isfile(path_cfg):
        with open(path_cfg) as f:
            model_type = json.load(f).get("model_type")
        if model_type != "qwen3_moe":
            raise OffbenchError(f"rollout.routing_replay={mode} needs a Qwen3-MoE model; model={name!r} is "
                                f"{model_type!r}: set rollout.routing_replay=none")
    if mode == "r3" and cfg.rollout.engine != "hf":
        raise OffbenchError(f"rollout.routing_replay=r3 needs the engine to record its routing, which only "
                            f"rollout.engine=hf does: set rollout.engine=hf, or rollout.routing_replay=r2")
    if mode == "r2" and cfg.correction_mode == "bypass":
        raise OffbenchError("rollout.routing_replay=r2 replays the trainer's pi_old pass, which "
                            "correction_mode=bypass does not run: set correction_mode=decoupled, or "
                            "rollout.routing_replay=r3")


def config_hash(cfg: DictConfig, exclude: tuple[str, ...] = ("name", "log", "threads")) -> str:
    """Stable id of everything that changes the result (not the name, logging or thread count)."""
    d = OmegaConf.to_container(cfg, resolve=True)
    for k in exclude:
        d.pop(k, None)
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:12]


def _default_of(f: dataclasses.Field) -> Any:
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


def _help_line(key: str, default: Any, doc: str) -> str:
    try:
        shown = json.dumps(default)
    except TypeError:
        shown = repr(default)
    return f"  {key + '=' + shown:<40} {doc}"


def help_text() -> str:
    """Every key with its default and doc, from the dataclasses themselves: the run config, the
    common method keys, then the arguments of every registered method, task, correction and advantage
    estimator (tagged [name]; `method=NAME` etc. brings that entry's), the default entry first."""
    from . import plugins
    from .advantages import ADVANTAGES
    from .correction import CORRECTIONS
    from .method import METHODS, field_docs
    from .tasks_api import TASKS

    lines = []

    def walk(cls, prefix):
        docs = field_docs(cls)
        for f in dataclasses.fields(cls):
            if dataclasses.is_dataclass(f.type if isinstance(f.type, type) else None) or (
                    f.default_factory is not dataclasses.MISSING and dataclasses.is_dataclass(f.default_factory)):
                walk(f.default_factory, f"{prefix}{f.name}.")
                continue
            lines.append(_help_line(prefix + f.name, _default_of(f), docs.get(f.name, "")))

    walk(RunConfig, "")
    plugins.load_builtin()
    docs = field_docs(_MethodCommon)
    for f in dataclasses.fields(_MethodCommon)[1:]:
        lines.append(_help_line(f"method.{f.name}", f.default, docs.get(f.name, "")))
    for group, reg in (("method", METHODS), ("task", TASKS), ("correction", CORRECTIONS),
                       ("advantage", ADVANTAGES)):
        default = getattr(RunConfig, group)
        for name in sorted(reg, key=lambda n: (n != default, n)):
            args = reg.get(name).args
            docs = field_docs(args)
            for f in dataclasses.fields(args):
                lines.append(_help_line(f"{group}.{f.name}", _default_of(f), f"[{name}] {docs.get(f.name, '')}"))
    return "\n".join(lines)
