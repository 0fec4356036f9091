"""Config overrides and every bad-input error: one clear line naming the fix."""

import pytest

from offpolicy_bench import OffbenchError
from offpolicy_bench.config import build_config, config_hash, help_text


def test_defaults_resolve_derived_values():
    cfg = build_config([])
    assert cfg.method.name == "vespo" and cfg.method.agg == "token-mean"
    assert cfg.train.batch_prompts == cfg.train.minibatch_prompts * cfg.staleness
    assert cfg.method.agg_norm_len == cfg.rollout.max_new_tokens
    assert cfg.name == f"vespo_math_dense_N{cfg.staleness}_seed0"


def test_overrides_shorthands_and_nested_keys():
    cfg = build_config(["method=token_clip", "method.eps_high=0.3", "model=moe", "staleness=16", "optim.lr=1e-5",
                        "task.level=2", "train.minibatch_prompts=4"])
    assert cfg.method.name == "token_clip" and cfg.method.eps_high == 0.3 and cfg.method.dual_clip_c == 3.0
    assert cfg.model.name == "moe" and cfg.staleness == 16 and cfg.optim.lr == 1e-5 and cfg.task.level == 2
    assert cfg.train.batch_prompts == 64
    assert "c1_pos" not in cfg.method  # vespo's args are not carried into another method


def test_method_args_are_typed():
    cfg = build_config(["method.c1_pos=3"])
    assert cfg.method.c1_pos == 3.0 and isinstance(cfg.method.c1_pos, float)
    with pytest.raises(OffbenchError, match="bad value for method.c1_pos"):
        build_config(["method.c1_pos=abc"])


def test_batch_prompts_derives_minibatch():
    cfg = build_config(["staleness=4", "train.batch_prompts=32"])
    assert cfg.train.minibatch_prompts == 8


@pytest.mark.parametrize("overrides, pattern", [
    (["method=vespoo"], r"unknown method 'vespoo'\. Did you mean 'vespo'[ ?].*Registered: .*on_policy.*token_clip"),
    (["task=maths"], r"unknown task 'maths'\. Did you mean 'math'[ ?].*Registered: .*\bmath\b"),
    (["optim.lrr=1e-4"], r"unknown config key 'optim.lrr'\. Did you mean optim.lr\? "),
    (["lr=1e-4"], r"unknown config key 'lr'\. Did you mean (warmstart.lr or optim.lr|optim.lr or warmstart.lr)\?"),
    (["method.c3=1"], r"unknown config key 'method.c3'.*offbench methods"),
    (["methd=vespo"], r"unknown config key 'methd'\. Did you mean method\? "),
    (["tsak=math"], r"unknown config key 'tsak'\. Did you mean task\? "),
    (["corection=token_tis"], r"unknown config key 'corection'\. Did you mean correction\? "),
    (["modle=moe"], r"unknown config key 'modle'\. Did you mean model\? "),
    (["staleness=abc"], r"bad value for staleness: 'abc'"),
    (["staleness=0"], r"staleness must be positive, got 0"),
    (["rollout.group_size=-2"], r"rollout.group_size must be positive"),
    (["train.steps=0"], r"train.steps must be positive"),
    (["staleness=16", "train.batch_prompts=100"],
     r"train.batch_prompts=100 is not divisible by staleness=16: choose a multiple of 16 \(e.g. 96 or 112\)"),
    (["staleness=16", "train.steps=200"], r"train.steps=200 is not a multiple of staleness=16.*use 192 or 208"),
    (["staleness=4", "train.batch_prompts=32", "train.minibatch_prompts=4"], r"set only one of them"),
    (["method.agg=mean"], r"method.agg='mean' is not an aggregation mode"),
    (["staleness"], r"is not key=value"),
    (["plugins=[no_such_module_xyz]"], r"plugin module 'no_such_module_xyz' could not be imported"),
    (["name=a/b"], r"must be a plain folder name"),
])
def test_bad_input_is_a_clear_error(overrides, pattern):
    with pytest.raises(OffbenchError, match=pattern):
        build_config(overrides)


def test_config_hash_ignores_name_and_logging_only():
    a = build_config(["name=x", "log.eval_every=4"])
    b = build_config(["name=y", "log.eval_every=8"])
    c = build_config(["name=x", "seed=1"])
    assert config_hash(a) == config_hash(b) != config_hash(c)


def test_help_lists_every_key_with_default():
    text = help_text()
    for key in ("staleness=4", "optim.lr=0.0001", "train.steps=", "model.name=\"dense\"", "method.c1_pos=2.0",
                "method.agg=null", "rollout.temperature=1.0", "log.eval_every="):
        assert key in text, key


def test_help_lists_the_arguments_of_every_method_task_and_correction():
    import dataclasses
    import json

    from offpolicy_bench.correction import CORRECTIONS
    from offpolicy_bench.method import METHODS
    from offpolicy_bench.tasks_api import TASKS

    text = help_text()
    for key in ("task.level=2", "task.habit=0.5", "correction.cap=2.0", "method.eps_high=0.28"):
        assert key in text, key
    lines = text.splitlines()
    for group, reg in (("method", METHODS), ("task", TASKS), ("correction", CORRECTIONS)):
        for name in reg:
            for f in dataclasses.fields(reg.get(name).args):
                default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
                want = f"{group}.{f.name}={json.dumps(default)}"
                assert any(line.partition(f" [{name}]")[0].strip() == want for line in lines), (want, name)
