"""The advantage-estimator registry: every built-in against hand-computed numbers and an independent
loop, grpo identical to the function the trainer used before the registry, the RLOO identity,
REINFORCE++'s batch normalisation, errors, the config key, the record, and real training runs."""

import json
import math
import random

import pandas as pd
import pytest
import torch

from conftest import TINY
from offpolicy_bench import OffbenchError
from offpolicy_bench.advantages import ADVANTAGES, get_advantage
from offpolicy_bench.cli import main
from offpolicy_bench.config import build_config, help_text
from offpolicy_bench.losses import grpo_advantages

NAMES = ["grpo", "dr_grpo", "rloo", "reinforce_pp"]


# ----------------------------------------------------------------------------- loop references
def groups(rewards, g):
    return [rewards[k:k + g] for k in range(0, len(rewards), g)]


def ref_grpo(rewards, g, eps=1e-6):
    out = []
    for grp in groups(rewards, g):
        mean = sum(grp) / g
        std = math.sqrt(sum((r - mean) ** 2 for r in grp) / (g - 1))
        out += [(r - mean) / (std + eps) for r in grp]
    return out


def ref_dr_grpo(rewards, g):
    out = []
    for grp in groups(rewards, g):
        out += [r - sum(grp) / g for r in grp]
    return out


def ref_rloo(rewards, g):
    out = []
    for grp in groups(rewards, g):
        for i, r in enumerate(grp):
            others = [x for j, x in enumerate(grp) if j != i]
            out.append(r - sum(others) / len(others))
    return out


def ref_reinforce_pp(rewards, g, lengths, level="token", eps=1e-8):
    a = ref_dr_grpo(rewards, g)
    w = lengths if level == "token" else [1.0] * len(a)
    n = sum(w)
    mean = sum(wi * ai for wi, ai in zip(w, a)) / n
    var = sum(wi * (ai - mean) ** 2 for wi, ai in zip(w, a)) / n * n / (n - 1)
    return [(ai - mean) / math.sqrt(var + eps) for ai in a]


def run(name, rewards, g, lengths=None, **cfg):
    lens = None if lengths is None else torch.tensor(lengths, dtype=torch.float64)
    return get_advantage(name)(torch.tensor(rewards, dtype=torch.float64), g, lengths=lens, cfg=cfg).tolist()


# ----------------------------------------------------------------------------- hand-computed
R = [1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 0.0]  # two groups of four


def test_hand_computed_small_example():
    s = 1 / math.sqrt(1 / 3)  # group 1: mean 1/2, unbiased std sqrt(1/3)
    assert run("grpo", R, 4)[:4] == pytest.approx([0.5 * s, -0.5 * s, -0.5 * s, 0.5 * s], rel=1e-5)
    assert run("dr_grpo", R, 4) == pytest.approx([0.5, -0.5, -0.5, 0.5, 0.25, 0.25, 0.25, -0.75])
    assert run("rloo", R, 4) == pytest.approx([2 / 3, -2 / 3, -2 / 3, 2 / 3, 1 / 3, 1 / 3, 1 / 3, -1.0])
    # sequence level: the dr_grpo values have mean 0 and unbiased variance 1.75 / 7 = 0.25, so A = 2 a
    assert run("reinforce_pp", R, 4, level="sequence") == pytest.approx(
        [1.0, -1.0, -1.0, 1.0, 0.5, 0.5, 0.5, -1.5], rel=1e-6)


def test_reinforce_pp_token_level_weights_by_length():
    # group of two: a = [+0.5, -0.5]; lengths 3 and 1: token mean (1.5 - 0.5) / 4 = 0.25,
    # token variance (3 * 0.0625 + 0.5625) / 4 * 4 / 3 = 0.25, std 0.5
    assert run("reinforce_pp", [1.0, 0.0], 2, lengths=[3.0, 1.0]) == pytest.approx([0.5, -1.5], rel=1e-6)


# ----------------------------------------------------------------------------- independent loops
@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("g", [2, 3, 8])
def test_every_estimator_matches_its_loop(seed, g):
    rng = random.Random(seed)
    rewards = [rng.choice([0.0, 1.0, rng.random()]) for _ in range(6 * g)]
    lengths = [float(rng.randint(1, 40)) for _ in rewards]
    assert run("grpo", rewards, g) == pytest.approx(ref_grpo(rewards, g), rel=1e-9, abs=1e-9)
    assert run("grpo", rewards, g, eps=0.1) == pytest.approx(ref_grpo(rewards, g, eps=0.1), rel=1e-9, abs=1e-12)
    assert run("dr_grpo", rewards, g) == pytest.approx(ref_dr_grpo(rewards, g), abs=1e-12)
    assert run("rloo", rewards, g) == pytest.approx(ref_rloo(rewards, g), abs=1e-12)
    for level in ("token", "sequence"):
        assert run("reinforce_pp", rewards, g, lengths=lengths, level=level) == pytest.approx(
            ref_reinforce_pp(rewards, g, lengths, level), rel=1e-9, abs=1e-9)


def test_grpo_numbers_are_unchanged():
    """The default estimator gives bit-identical advantages to the function the trainer called before."""
    for dtype in (torch.float32, torch.float64):
        r = torch.rand(64, generator=torch.Generator().manual_seed(0), dtype=dtype).round()
        assert torch.equal(get_advantage("grpo")(r, 8), grpo_advantages(r, 8))
        assert torch.equal(get_advantage("dr_grpo")(r, 8), grpo_advantages(r, 8, std_norm=False))


@pytest.mark.parametrize("g", [2, 4, 8])
def test_rloo_is_a_rescaled_group_mean_baseline(g):
    r = torch.rand(10 * g, generator=torch.Generator().manual_seed(g), dtype=torch.float64)
    assert torch.allclose(get_advantage("rloo")(r, g), g / (g - 1) * get_advantage("dr_grpo")(r, g), atol=1e-14)


def test_reinforce_pp_is_normalised_over_the_batch():
    r = torch.rand(48, generator=torch.Generator().manual_seed(1), dtype=torch.float64).round()
    lens = torch.randint(1, 30, (48,), generator=torch.Generator().manual_seed(2)).double()
    a = get_advantage("reinforce_pp")(r, 8, lengths=lens)
    n = lens.sum()
    mean = (lens * a).sum() / n
    var = (lens * (a - mean) ** 2).sum() / (n - 1)
    assert mean.item() == pytest.approx(0.0, abs=1e-12) and var.item() == pytest.approx(1.0, rel=1e-6)


@pytest.mark.parametrize("name", NAMES)
def test_equal_rewards_give_zero_advantages_not_nan(name):
    r = torch.ones(16)
    a = get_advantage(name)(r, 4, lengths=torch.full((16,), 5.0))
    assert torch.isfinite(a).all() and (a == 0).all()


@pytest.mark.parametrize("name", NAMES)
def test_zero_length_responses_are_finite(name):
    a = get_advantage(name)(torch.tensor([1.0, 0.0, 0.0, 0.0]), 2, lengths=torch.zeros(4))
    assert torch.isfinite(a).all()


# ----------------------------------------------------------------------------- errors and config
@pytest.mark.parametrize("name", NAMES)
def test_group_size_errors(name):
    est = get_advantage(name)
    with pytest.raises(OffbenchError, match="do not split into groups of 4"):
        est(torch.ones(6), 4)
    with pytest.raises(OffbenchError, match="needs rollout.group_size >= 2"):
        est(torch.ones(6), 1)
    with pytest.raises(OffbenchError, match=f"advantage={name} needs rollout.group_size >= 2"):
        build_config([f"advantage={name}", "rollout.group_size=1"])


@pytest.mark.parametrize("overrides, message", [
    (["advantage=rlo"], r"unknown advantage estimator 'rlo'\. Did you mean 'rloo'"),
    (["advantage=grpo", "advantage.eps=0"], "advantage.eps=0.0: must be > 0"),
    (["advantage=reinforce_pp", "advantage.level=batch"], "choose token or sequence"),
    (["advantage=rloo", "advantage.eps=1e-6"], "unknown config key 'advantage.eps'"),
    (["train.adv_std_norm=false"], "advantage=dr_grpo for the old false"),
    (["train.adv_std_norm=true"], "advantage=grpo for the old true"),
])
def test_bad_config_is_a_one_line_error(overrides, message):
    with pytest.raises(OffbenchError, match=message) as e:
        build_config(overrides)
    assert "\n" not in str(e.value)


def test_config_key_help_and_listing(capsys):
    cfg = build_config([])
    assert cfg.advantage.name == "grpo" and cfg.advantage.eps == 1e-6  # the default: today's GRPO
    cfg = build_config(["advantage=reinforce_pp", "advantage.level=sequence"])
    assert cfg.advantage.level == "sequence"
    text = help_text()
    assert 'advantage="grpo"' in text and 'advantage.level="token"' in text and "[reinforce_pp]" in text
    assert main(["advantages"]) == 0
    out = capsys.readouterr().out
    for name in NAMES:
        assert f"| `{name}` |" in out


def test_registry_rejects_a_duplicate_name():
    from dataclasses import dataclass

    from offpolicy_bench.advantages import register_advantage

    @dataclass(frozen=True)
    class A:
        pass

    with pytest.raises(OffbenchError, match="already registered"):
        register_advantage("grpo", args=A, source="x")(lambda r, g, lens, args: r)


def test_trainer_names_no_estimator():
    import offpolicy_bench.trainer as trainer

    src = open(trainer.__file__).read()
    for name in ADVANTAGES:
        assert f'"{name}"' not in src and f"'{name}'" not in src and f" {name}(" not in src, name


def test_the_estimator_is_a_knob_that_splits_report_rows():
    from offpolicy_bench import report

    base = {"method": "vespo", "task": "math", "model": "dense", "staleness": 4, "lag": 0, "correction": "none",
            "rollout_dtype": "float32", "run_id": "x", "status": "finished"}
    runs = pd.DataFrame([{**base, "seed": s, "advantage": a} for s in (0, 1) for a in ("grpo", "rloo")])
    assert report.variant_columns(runs) == ["advantage"]
    assert report.variant_columns(runs[runs.advantage == "grpo"]) == []


# ----------------------------------------------------------------------------- real training runs
@pytest.mark.parametrize("name", NAMES)
def test_each_estimator_trains_and_is_recorded(tmp_path, name):
    assert main(["run", f"advantage={name}", "method=token_clip", "staleness=2", *TINY, f"log.out_dir={tmp_path}",
                 "name=r"]) == 0
    d = tmp_path / "r"
    run_json, summary = json.load(open(d / "run.json")), json.loads(open(d / "summary.json").read())
    assert run_json["advantage"] == summary["advantage"] == name and summary["status"] == "finished"
    m = pd.read_parquet(d / "metrics.parquet")
    train = m[m.split == "train"]
    assert len(train) and train.value.map(math.isfinite).all()
    assert set(train.step) == {1, 2, 3, 4}


def test_a_grid_swept_over_estimators_keeps_them_apart(tmp_path):
    from conftest import GRID_OPTS, GRID_TINY, offbench

    r = offbench("grid", "advantage=[grpo,rloo]", *GRID_TINY, *GRID_OPTS, f"log.out_dir={tmp_path}", "name=g",
                 "jobs=1", timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    runs = pd.read_parquet(tmp_path / "g" / "runs.parquet")
    assert sorted(runs.advantage) == ["grpo", "rloo"] and (runs.status == "finished").all()
    from offpolicy_bench import report

    assert report.variant_columns(runs) == ["advantage"]
