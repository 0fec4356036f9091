import os
import subprocess
import sys

import pytest

# A run small enough for a unit test: ~1 s on 2 CPU cores.
TINY = ["model.hidden_size=32", "model.num_layers=1", "model.num_heads=2", "model.num_kv_heads=1",
        "model.intermediate_size=64", "model.moe_intermediate_size=16", "model.num_experts=4",
        "warmstart.steps=4", "warmstart.batch_size=8", "warmstart.max_excess=null", "task.eval_size=16", "train.steps=4",
        "train.minibatch_prompts=2", "rollout.group_size=4", "log.eval_every=2", "log.progress=false"]


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("OFFBENCH_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


def offbench(*args, cwd=None, timeout=300):
    """Run the real console script; returns CompletedProcess with text output."""
    exe = os.path.join(os.path.dirname(sys.executable), "offbench")
    return subprocess.run([exe, *args], capture_output=True, text=True, cwd=cwd, timeout=timeout)


# grids refuse a dirty working tree (provenance); the tests run in developers' trees too
GRID_OPTS = ["allow_dirty=true"]
GRID_TINY = [a for a in TINY if not a.startswith(("train.steps", "log.eval_every"))] + [
    "train.steps=8", "log.eval_every=4", "warmstart.steps=30"]


@pytest.fixture(scope="session")
def tiny_grid(tmp_path_factory):
    """A real 2 methods x 2 staleness x 2 seeds grid of tiny runs, shared by report / plot / notebook
    tests. Returns the grid folder."""
    out = tmp_path_factory.mktemp("grid")
    os.environ.setdefault("OFFBENCH_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
    r = offbench("grid", "method=[token_clip,vespo]", "staleness=[1,2]", "seed=[0,1]", *GRID_TINY, *GRID_OPTS,
                 f"log.out_dir={out}", "name=g", "jobs=2", timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    return out / "g"
