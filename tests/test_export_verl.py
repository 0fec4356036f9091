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


def verl_cfg(**kw):
    """An actor config as verl's policy losses read it (clip ratios, policy_loss section, batch info)."""
    from omegaconf import OmegaConf

    policy_loss = {"clip_cov_ratio": 2e-4, "clip_cov_lb": 1.0, "clip_cov_ub": 5.0, "kl_cov_ratio": 2e-4,
                   "ppo_kl_coef": 1.0, "dro_beta": None}
    top = {"clip_ratio": 0.2, "clip_ratio_low": None, "clip_ratio_high": None, "clip_ratio_c": 3.0,
           "global_batch_info": {}}
    for k, v in kw.items():
        (policy_loss if k in policy_loss else top)[k] = v
    return OmegaConf.create({**top, "policy_loss": policy_loss})


# (ours with its arguments, verl's loss mode with its config): the same loss in both. Our method sees
# behav_logp = old_logp = verl's old_log_prob (the export's mapping), so mu-based methods match verl's
# pi_old-based ones; clip_cov cuts every candidate (clip_ratio 1), so its random draw is out of play.
SAME_LOSS = [
    (("dppo_tv", {"delta_low": 0.05, "delta_high": 0.1, "is_cap": 20.0}),
     ("dppo_tv", {"clip_ratio_low": 0.05, "clip_ratio_high": 0.1, "clip_ratio_c": 20.0})),
    (("dppo_kl", {"delta_low": 0.02, "delta_high": 0.05, "is_cap": 1.5}),
     ("dppo_kl", {"clip_ratio_low": 0.02, "clip_ratio_high": 0.05, "clip_ratio_c": 1.5})),
    (("kl_cov", {"kl_ratio": 0.3, "kl_coef": 0.7}), ("kl_cov", {"kl_cov_ratio": 0.3, "ppo_kl_coef": 0.7})),
    (("clip_cov", {"clip_ratio": 1.0, "cov_lb": 0.0, "cov_ub": 5.0, "eps_low": 0.2, "eps_high": 0.2}),
     ("clip_cov", {"clip_cov_ratio": 1.0, "clip_cov_lb": 0.0, "clip_cov_ub": 5.0})),
    (("ipo", {"pg": "logp", "mask_threshold": None, "tau": 0.15}), ("dro", {"dro_beta": 0.3})),
]


@pytest.mark.parametrize("ours,theirs", SAME_LOSS, ids=[t[0] for _, t in SAME_LOSS])
@pytest.mark.parametrize("mode", ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"])
@pytest.mark.parametrize("seed", [0, 1])
def test_frontier_losses_match_verls_own(ours, theirs, mode, seed):
    (name, kw), (mode_name, cfg_kw) = ours, theirs
    if mode_name not in verl_algos.POLICY_LOSS_REGISTRY:
        pytest.skip(f"this verl has no {mode_name!r} loss")
    g = torch.Generator().manual_seed(seed)
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0], [1.0, 1.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]], dtype=torch.float64)
    old = -torch.rand(3, 4, generator=g, dtype=torch.float64) * 2
    logp = (old + 0.5 * torch.randn(3, 4, generator=g, dtype=torch.float64)).requires_grad_(True)
    adv = torch.tensor([1.0, -0.5, 2.0], dtype=torch.float64)[:, None].expand(3, 4) * mask
    (exported,) = register_with_verl({name: kw}, prefix="cmp_")
    a, _ = verl_algos.get_policy_loss_fn(exported)(old, logp, adv, mask, mode, Cfg())
    b, _ = verl_algos.get_policy_loss_fn(mode_name)(old, logp, adv, mask, mode, verl_cfg(**cfg_kw))
    (ga,) = torch.autograd.grad(a, logp)
    (gb,) = torch.autograd.grad(b, logp)
    assert a.item() == pytest.approx(b.item(), rel=1e-7)
    assert torch.allclose(ga, gb, rtol=1e-7, atol=1e-12)
