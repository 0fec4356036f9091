"""The testbed's promises: the default warm start converges to the same policy on every machine, and
the default run learns. The fast checks run in the default suite (one real warm start, shared, about
2-3 minutes on 2 cores); the full main job, dense and MoE, is `pytest -m slow`.

Figures are recorded in benchmarks/RESULTS.md; these tests guard them against regressions.
"""

import json

import pytest

from conftest import offbench
from offpolicy_bench import OffbenchError
from offpolicy_bench.config import build_config
from offpolicy_bench.trainer import train

MAIN = ["method=vespo", "task=math_cot", "staleness=16"]
# measured start of the main job (benchmarks/RESULTS.md): 0.468-0.473 dense on an AMD EPYC under four
# CPU kernel dispatches, 0.472 under torch 2.13 and 2.14; the v1 warm start, on a knife edge, moved 0.07
START = {"dense": 0.472}


@pytest.fixture(scope="module")
def default_start(tmp_path_factory):
    """The main job's real warm start (default model and task) and a short on-policy run after it."""
    out = tmp_path_factory.mktemp("learn")
    cfg = build_config([*MAIN, "staleness=1", "method=on_policy", "train.steps=32", "log.eval_every=32",
                        "log.progress=false", f"log.out_dir={out}", "name=short"])
    summary = train(cfg, log=lambda m: None)
    run = json.load(open(out / "short" / "run.json"))
    return summary, run


def test_default_warm_start_converges_to_its_floor(default_start):
    _, run = default_start
    assert run["warmstart_excess_loss"] is not None and run["warmstart_excess_loss"] <= 0.02, run
    assert run["warmstart_loss_floor"] == pytest.approx(0.0287, abs=0.002)  # the habit's entropy per token


def test_default_start_is_the_recorded_one(default_start):
    summary, _ = default_start
    assert summary["eval_accuracy_start"] == pytest.approx(START["dense"], abs=0.03), summary


def test_default_learns_within_32_steps(default_start):
    summary, _ = default_start
    # measured: 0.47 -> 0.75-0.8 after 32 on-policy steps; a clear gain is the product's promise
    assert summary["eval_accuracy_final"] >= summary["eval_accuracy_start"] + 0.15, summary


def test_a_warm_start_that_did_not_converge_is_an_error(tmp_path):
    cfg = build_config(["task=math_cot", "task.digits=2", "warmstart.steps=3", "warmstart.max_excess=0.02",
                        "model.hidden_size=32", "model.num_layers=1", "model.num_heads=2", "model.num_kv_heads=1",
                        "model.intermediate_size=64", "log.progress=false", f"log.out_dir={tmp_path}", "name=w"])
    with pytest.raises(OffbenchError, match=r"warm start did not converge: loss .* raise warmstart.steps"):
        train(cfg, log=lambda m: None)


@pytest.mark.slow
@pytest.mark.parametrize("model", ["dense", "moe"])
def test_default_run_learns(tmp_path, model):
    r = offbench("run", *MAIN, f"model={model}", "log.progress=false", f"log.out_dir={tmp_path}", "name=learn",
                 timeout=900)
    assert r.returncode == 0, r.stderr
    s = json.loads(open(tmp_path / "learn" / "summary.json").read())
    assert s["status"] == "finished"
    # held-out sampled accuracy must rise clearly (benchmarks/RESULTS.md: +0.37 dense)
    assert s["eval_accuracy_final"] >= s["eval_accuracy_start"] + 0.15, s
