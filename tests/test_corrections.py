"""Rollout-correction modifiers compose with any method; values against hand formulas."""

import math

import pytest
import torch

from offpolicy_bench import OffbenchError, PolicyBatch, get_method
from offpolicy_bench.correction import CORRECTIONS, get_correction
from offpolicy_bench.plugins import load_builtin

load_builtin()
MASK = torch.tensor([[1.0, 1.0, 1.0, 0.0], [1.0, 1.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]])


def batch_with_engine_gap(gaps):
    """old_logp - behav_logp = gaps[i] on every real token of sequence i; logp = old_logp."""
    logp = torch.full((3, 4), -1.0, dtype=torch.float64, requires_grad=True)
    old = logp.detach().clone()
    behav = old - torch.tensor(gaps, dtype=torch.float64)[:, None]
    return logp, PolicyBatch(logp=logp, old_logp=old, behav_logp=behav,
                             advantages=torch.tensor([1.0, -1.0, 0.5], dtype=torch.float64), mask=MASK.double())


def pg_token_losses(logp, adv):
    return [[-adv[i] * logp[i, t].item() for t in range(4)] for i in range(3)]


def test_none_is_identity():
    logp, b = batch_with_engine_gap([0.3, -0.2, 1.0])
    plain = get_method("on_policy")(b).loss.item()
    assert get_method("on_policy")(b, correction="none").loss.item() == plain


def test_token_tis_weights_each_token():
    gaps = [0.3, -0.2, 1.0]  # ratios e^0.3, e^-0.2, e^1 -> truncated at 2
    logp, b = batch_with_engine_gap(gaps)
    out = get_method("on_policy")(b, correction="token_tis")
    w = [min(math.exp(g), 2.0) for g in gaps]
    L = pg_token_losses(logp, [1.0, -1.0, 0.5])
    expect = sum(w[i] * L[i][t] for i in range(3) for t in range(4) if MASK[i, t]) / 9
    assert out.loss.item() == pytest.approx(expect, rel=1e-12)
    assert out.metrics["corr_truncated_frac"] == pytest.approx(4 / 9)


def test_seq_tis_uses_the_product_over_tokens():
    gaps = [0.1, -0.2, 0.05]
    logp, b = batch_with_engine_gap(gaps)
    out = get_method("on_policy")(b, correction="seq_tis", correction_cfg={"cap": 1.2})
    lens = [3, 2, 4]
    w = [min(math.exp(g * n), 1.2) for g, n in zip(gaps, lens)]
    L = pg_token_losses(logp, [1.0, -1.0, 0.5])
    expect = sum(w[i] * L[i][t] for i in range(3) for t in range(4) if MASK[i, t]) / 9
    assert out.loss.item() == pytest.approx(expect, rel=1e-12)


@pytest.mark.parametrize("name, cfg, gaps, kept_rows", [
    ("masked_is", {}, [0.1, -1.0, 0.15], [0, 2]),  # sequence ratios e^0.3, e^-2 (dropped), e^0.6
    ("geo_reject", {}, [0.0, 0.0005, 0.01], [0, 1]),  # geometric means 1, e^0.0005, e^0.01 (dropped)
    ("token_veto", {}, [0.0, -10.0, 0.0], [0, 2]),  # e^-10 < 1e-4 vetoes sequence 1
])
def test_masking_corrections_drop_whole_sequences(name, cfg, gaps, kept_rows):
    logp, b = batch_with_engine_gap(gaps)
    out = get_method("on_policy")(b, correction=name, correction_cfg=cfg)
    L = pg_token_losses(logp, [1.0, -1.0, 0.5])
    kept = [(i, t) for i in kept_rows for t in range(4) if MASK[i, t]]
    assert out.loss.item() == pytest.approx(sum(L[i][t] for i, t in kept) / len(kept), rel=1e-12)
    (g,) = torch.autograd.grad(out.loss, logp)
    dropped = [i for i in range(3) if i not in kept_rows]
    assert (g[dropped] == 0).all()


def test_masked_is_token_level_and_bad_level():
    logp, b = batch_with_engine_gap([0.0, 0.0, 0.0])
    b.behav_logp[2, 1] = b.old_logp[2, 1] - 2.0  # one token with ratio e^2 > 2
    out = get_method("on_policy")(b, correction="masked_is", correction_cfg={"level": "token"})
    assert out.metrics["corr_kept_token_frac"] == pytest.approx(8 / 9)
    with pytest.raises(OffbenchError, match="sequence or token"):
        get_method("on_policy")(b, correction="masked_is", correction_cfg={"level": "seq"})
    with pytest.raises(OffbenchError, match="has no argument"):
        get_method("on_policy")(b, correction="token_tis", correction_cfg={"capp": 1})


@pytest.mark.parametrize("corr", sorted(CORRECTIONS))
def test_every_correction_is_inert_when_engine_matches(corr):
    logp, b = batch_with_engine_gap([0.0, 0.0, 0.0])
    base = get_method("vespo")(b)
    out = get_method("vespo")(b, correction=corr)
    assert out.loss.item() == pytest.approx(base.loss.item(), rel=1e-12)


def test_correction_through_the_cli(tmp_path):
    from conftest import TINY, offbench

    r = offbench("run", *TINY, "method=token_clip", "correction=token_tis", "correction.cap=1.5",
                 f"log.out_dir={tmp_path}", "name=c")
    assert r.returncode == 0, r.stderr
    import pandas as pd

    df = pd.read_parquet(tmp_path / "c" / "metrics.parquet")
    assert "corr_w_mean" in set(df.metric)
    r = offbench("run", *TINY, "correction=tis", f"log.out_dir={tmp_path}")
    assert r.returncode == 2 and "unknown correction 'tis'" in r.stderr and "token_tis" in r.stderr
