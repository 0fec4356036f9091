"""Our methods inside verl's policy-loss registry, against the real verl package (skips without it)."""

import math

import pytest
import torch

verl_algos = pytest.importorskip("verl.trainer.ppo.core_algos",
                                 reason="verl not installed: pip install --no-deps verl && pip install '.[verl]'")

from offpolicy_bench import PolicyBatch, get_method  # noqa: E402
from offpolicy_bench.export_verl import register_with_verl  # noqa: E402


class Cfg:  # the two attributes verl's losses read from the actor config
    global_batch_info = {}


def batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0], [1.0, 1.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]])
    old = -torch.rand(3, 4, generator=g)
    logp = (old + 0.1 * torch.randn(3, 4, generator=g)).requires_grad_(True)
    adv = torch.tensor([1.0, -0.5, 2.0])[:, None].expand(3, 4) * mask
    return old, logp, adv, mask


def test_registered_methods_match_ours_and_verl_vanilla():
    names = register_with_verl({"vespo": {}, "token_clip": {"eps_high": 0.2, "dual_clip_c": 3.0}})
    assert names == ["ob_vespo", "ob_token_clip"]
    old, logp, adv, mask = batch()
    for mode in ("token-mean", "seq-mean-token-mean"):
        loss, metrics = verl_algos.get_policy_loss_fn("ob_vespo")(old, logp, adv, mask, mode, Cfg())
        ours = get_method("vespo")(PolicyBatch(logp, old, old, adv, mask), agg=mode).loss
        assert loss.item() == pytest.approx(ours.item(), rel=1e-6)
        assert "actor/vespo/phi_mean" in metrics
    # our token_clip with verl's symmetric clip equals verl's own vanilla PPO loss
    from omegaconf import OmegaConf

    cfg = OmegaConf.create({"clip_ratio": 0.2, "clip_ratio_low": 0.2, "clip_ratio_high": 0.2, "clip_ratio_c": 3.0,
                            "global_batch_info": {}})
    ours, _ = verl_algos.get_policy_loss_fn("ob_token_clip")(old, logp, adv, mask, "token-mean", Cfg())
    try:
        theirs, _ = verl_algos.compute_policy_loss_vanilla(old, logp, adv, mask, "token-mean", cfg)
    except (AssertionError, AttributeError, TypeError) as e:  # verl may insist on its ActorConfig type
        pytest.skip(f"verl's vanilla loss rejects a plain config here: {e}")
    assert ours.item() == pytest.approx(theirs.item(), rel=1e-6)
    (g1,) = torch.autograd.grad(ours, logp)
    (g2,) = torch.autograd.grad(verl_algos.compute_policy_loss_vanilla(old, logp, adv, mask, "token-mean", cfg)[0], logp)
    assert torch.allclose(g1, g2, atol=1e-7)


def test_rollout_is_weights_scale_the_loss():
    register_with_verl(["on_policy"])
    old, logp, adv, mask = batch(1)
    w = torch.full_like(mask, 0.5)
    a, _ = verl_algos.get_policy_loss_fn("ob_on_policy")(old, logp, adv, mask, "token-mean", Cfg())
    b, _ = verl_algos.get_policy_loss_fn("ob_on_policy")(old, logp, adv, mask, "token-mean", Cfg(), w)
    assert b.item() == pytest.approx(0.5 * a.item()) and math.isfinite(a.item())
