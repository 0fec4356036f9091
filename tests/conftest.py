import os
import subprocess
import sys

import pytest

# A run small enough for a unit test: ~1 s on 2 CPU cores.
TINY = ["model.hidden_size=32", "model.num_layers=1", "model.num_heads=2", "model.num_kv_heads=1",
        "model.intermediate_size=64", "model.moe_intermediate_size=16", "model.num_experts=4",
        "warmstart.steps=4", "warmstart.batch_size=8", "task.eval_size=16", "train.steps=4",
        "train.minibatch_prompts=2", "rollout.group_size=4", "log.eval_every=2", "log.progress=false"]


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("OFFBENCH_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


def offbench(*args, cwd=None, timeout=300):
    """Run the real console script; returns CompletedProcess with text output."""
    exe = os.path.join(os.path.dirname(sys.executable), "offbench")
    return subprocess.run([exe, *args], capture_output=True, text=True, cwd=cwd, timeout=timeout)
