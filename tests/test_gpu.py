"""The CUDA path of the HF engine and trainer. Skipped without a GPU (CI has none); run on a GPU
machine with `pytest tests/test_gpu.py`."""

import pytest
import torch

from conftest import TINY, offbench

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def test_run_on_cuda_end_to_end(tmp_path):
    r = offbench("run", *TINY, "device=cuda", "staleness=2", f"log.out_dir={tmp_path}", "name=gpu")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "finished: eval accuracy" in r.stdout


def test_cuda_sampling_is_reproducible_from_the_cpu_seed_generator():
    from test_rollout import tiny_model

    from offpolicy_bench.rollout import sample, sequence_logprobs

    model, tok = tiny_model()
    model = model.cuda()
    ros = [sample(model, tok, ["3+4=", "91-17="], 4, 1.0, 8, generator=torch.Generator().manual_seed(7))
           for _ in range(2)]
    assert torch.equal(ros[0].input_ids, ros[1].input_ids)  # same CPU seed -> same samples on the GPU
    with torch.no_grad():
        logp, _ = sequence_logprobs(model, ros[0], 1.0)
    assert torch.allclose(logp, ros[0].behav_logp, atol=1e-4)
