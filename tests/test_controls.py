"""The controls: drop_stale discards stale mini-batches without an optimizer step; on_policy uses them
uncorrected. Both are compared against the corrections at the same staleness."""

import json

import pytest
import torch

from conftest import TINY
from offpolicy_bench import PolicyBatch, get_method
from offpolicy_bench.cli import main


def batch(gap):
    g = torch.Generator().manual_seed(0)
    logp = (-torch.rand(3, 5, generator=g, dtype=torch.float64) - 0.1).requires_grad_()
    mask = torch.ones(3, 5, dtype=torch.float64)
    mask[1, 3:] = 0
    adv = torch.tensor([1.0, -0.5, 0.25], dtype=torch.float64)
    stale = logp.detach() - 0.3
    return logp, PolicyBatch(logp=logp, old_logp=stale, behav_logp=stale, advantages=adv, mask=mask, version_gap=gap)


@pytest.mark.parametrize("gap,max_gap", [(0, 0), (2, 3), (3, 3)])
def test_drop_stale_within_the_bound_is_the_plain_policy_gradient(gap, max_gap):
    logp, b = batch(gap)
    out = get_method("drop_stale")(b, max_gap=max_gap)
    (g,) = torch.autograd.grad(out.loss, logp)
    # plain policy gradient by hand: token-mean of -A log pi over the 13 response tokens
    expect = -(b.advantages * b.mask) / b.mask.sum()
    assert torch.allclose(g, expect, rtol=1e-12, atol=0)
    assert out.metrics["dropped"] == 0.0 and "step_skipped" not in out.metrics


@pytest.mark.parametrize("gap,max_gap", [(1, 0), (4, 3)])
def test_drop_stale_beyond_the_bound_drops_the_mini_batch(gap, max_gap):
    logp, b = batch(gap)
    out = get_method("drop_stale")(b, max_gap=max_gap)
    (g,) = torch.autograd.grad(out.loss, logp)
    assert out.loss.item() == 0.0 and torch.count_nonzero(g) == 0
    assert out.metrics == {"dropped": 1.0, "step_skipped": 1.0}


def test_dropped_mini_batches_take_no_optimizer_step(tmp_path, monkeypatch):
    """With staleness 4 and max_gap 1, two of every four mini-batches train: AdamW steps exactly then
    (a zero-gradient AdamW step would still move the weights by its momentum)."""
    calls = []
    real_step = torch.optim.AdamW.step

    def counting_step(self, *a, **kw):
        calls.append(1)
        return real_step(self, *a, **kw)

    args = [a for a in TINY if not a.startswith("train.steps")] + ["train.steps=8"]
    monkeypatch.setattr(torch.optim.AdamW, "step", counting_step)
    assert main(["run", "method=drop_stale", "method.max_gap=1", "staleness=4", *args,
                 f"log.out_dir={tmp_path}", "name=r2", "warmstart.steps=0"]) == 0  # no warm start: RL steps only
    assert len(calls) == 4
    import pandas as pd

    m = pd.read_parquet(tmp_path / "r2" / "metrics.parquet")
    tr = m[m.split == "train"].pivot_table(index="step", columns="metric", values="value")
    assert tr.version_gap.tolist() == [0, 1, 2, 3] * 2
    assert tr.dropped.tolist() == [0, 0, 1, 1] * 2
    assert (tr.grad_norm[tr.dropped == 1] == 0).all()
    s = json.loads(open(tmp_path / "r2" / "summary.json").read())
    assert s["status"] == "finished" and s["steps_done"] == 8
