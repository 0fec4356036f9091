"""benchmarks/gpu_check.py runs end to end with a tiny model on the CPU, so the script a GPU session
gets ~15 minutes for is known to work before it gets there (needs trl: `pip install -e ".[bench]"`)."""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_gpu_check_runs_tiny_on_cpu(tmp_path):
    pytest.importorskip("trl")
    out = tmp_path / "gpu_check.json"
    r = subprocess.run([sys.executable, "gpu_check.py", "--tiny", "--device", "cpu", "--max-new", "16", "--steps", "3",
                        "--repeat", "1", "--out", str(out)], cwd=os.path.join(ROOT, "benchmarks"),
                       capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-2000:]
    rows = json.loads(out.read_text())
    parts = [row["part"] for row in rows]
    assert parts == ["correctness", "correctness", "sampler", "rl_step"]
    for row in rows[:2]:
        assert row["behav_vs_trainer_max_abs"] < 1e-4 and row["shared_vs_plain_logp_max_abs"] < 1e-4
        assert row["shared_vs_plain_grad_max_abs"] < 1e-3 and row["same_params_with_grad"]
    assert rows[2]["tok_per_s_ours"] > 0 and rows[2]["tok_per_s_generate"] > 0
    assert rows[3]["ours_s_per_step"] > 0 and rows[3]["trl_s_per_step"] > 0 and rows[3]["steps_timed"] == 2


def test_gpu_check_without_cuda_says_how_to_smoke_test():
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    r = subprocess.run([sys.executable, "gpu_check.py"], cwd=os.path.join(ROOT, "benchmarks"), capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 2 and "--device cpu --tiny" in r.stderr
