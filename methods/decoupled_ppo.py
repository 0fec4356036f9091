from dataclasses import dataclass
from typing import Optional

import torch

from offpolicy_bench.losses import clamp_log, masked_mean
from offpolicy_bench.method import check_arg, register_method


@dataclass(frozen=True)
class DecoupledPPOArgs:
    eps_low: float = 0.2
    """PPO floor 1 - eps_low on pi/pi_prox (AReaL eps_clip 0.2)"""
    eps_high: float = 0.2
    """PPO cap 1 + eps_high on pi/pi_prox (AReaL eps_clip_higher unset = eps_clip)"""
    dual_clip_c: Optional[float] = None
    """dual clip for A < 0: loss capped at -c*A (AReaL c_clip, default unset); null disables it"""
    weight_cap: Optional[float] = 5.0
    """tokens whose behaviour weight pi_prox/mu exceeds this are dropped (AReaL's token-level rejection:
    the former behave_imp_weight_cap 5 with token_mask, today's rejection_sampling upper 5); null keeps all"""
    alpha: Optional[float] = None
    """null: pi_prox = pi_old, the trainer's own pass at the start of the rollout batch (AReaL 'recompute');
    a value in [0, 1]: A-3PO's approximation log pi_prox = log mu + alpha (sg(log pi_theta) - log mu)
    (AReaL 'loglinear'), which needs no pi_old pass"""

    def __post_init__(self):
        check_arg("decoupled_ppo", "eps_low", self.eps_low, 0.0, 1.0)
        check_arg("decoupled_ppo", "eps_high", self.eps_high, 0.0, None)
        check_arg("decoupled_ppo", "dual_clip_c", self.dual_clip_c, 1.0, None, low_open=True, none_ok=True)
        check_arg("decoupled_ppo", "weight_cap", self.weight_cap, 0.0, None, low_open=True, none_ok=True)
        check_arg("decoupled_ppo", "alpha", self.alpha, 0.0, 1.0, none_ok=True)


def proximal_logp(batch, alpha):
    """log pi_prox [B, T], detached: pi_old, or A-3PO's log-linear interpolation between mu and pi_theta."""
    if alpha is None:
        return batch.old_logp
    return batch.behav_logp + alpha * (batch.logp.detach() - batch.behav_logp)


@register_method("decoupled_ppo", args=DecoupledPPOArgs, default_agg="token-mean", ratio="old", level="token",
                 equation="AReaL decoupled PPO, arXiv 2505.24298; A-3PO arXiv 2512.06547 (alpha)", color="#a6761d")
def decoupled_ppo(batch, args):
    """Decoupled PPO (AReaL): the trust region is anchored to a proximal policy, the off-policy correction
    to the behaviour policy, each by its own ratio.

    mu = behav_logp (the sampler, possibly k versions old or another engine), pi_prox = the proximal policy,
    here pi_old: the trainer's pass at the start of the rollout batch, which is what AReaL recomputes once
    per training step before its mini-batch updates (PolicyBatch.old_logp).
        w_t = sg(pi_prox / mu)          behaviour weight (dropped to 0 when w_t > weight_cap)
        u_t = pi_theta / pi_prox        trust-region ratio, differentiated
        L_t = w_t * max(-A u_t, -A clip(u_t, 1 - eps_low, 1 + eps_high))   [for A < 0 also min(., -c A)]
    This is `token_clip` (eps_high=0.2, dual_clip_c=null) times the weight pi_old/mu; with weight_cap=null
    it equals token_clip with correction=token_tis and a cap no weight reaches (tests check both).
    A-3PO (alpha set): pi_prox is not computed but interpolated, log pi_prox = log mu + alpha (sg(log
    pi_theta) - log mu), so u_t = exp((1 - alpha)(log pi_theta - log mu)) in value (gradient u_t grad log
    pi) and w_t = exp(alpha (log pi_theta - log mu)). AReaL derives alpha per token from policy versions,
    (v_prox - v_mu) / (v_theta - v_mu) with v_prox = v_theta - 1; here it is one number (alpha=0: pi_prox =
    mu, plain PPO against the sampler; alpha=1: u = 1, w = pi/mu, no trust region).
    Sources: arXiv 2505.24298 (AReaL, decoupled PPO objective); inclusionAI/AReaL
    areal/utils/functional/functional.py ppo_actor_loss_fn and apply_rejection_sampling; arXiv 2512.06547
    (A-3PO) and AReaL areal/trainer/ppo/actor.py compute_prox_logp_approximations, docs/en/algorithms/
    prox_approx.md. Deviation: AReaL's rejection also offers sequence-level and KL-based filters and a
    clamp mode (use the rollout corrections for those); a dropped token stays in the token-mean
    denominator, as AReaL's. Conventions: log ratios clamped to +-20 before exp() (clamp rates reported).
    Aggregation token-mean (AReaL divides by the token count). Diagnostics: clip_frac, weight_drop_frac,
    behav_weight_mean (over kept tokens), dual_clip_frac.
    """
    m = batch.mask
    adv = batch.advantages
    prox = proximal_logp(batch, args.alpha)
    log_w, w_clamp = clamp_log(prox - batch.behav_logp)
    w = torch.exp(log_w)
    kept = torch.ones_like(w) if args.weight_cap is None else (w <= args.weight_cap).to(w.dtype)
    log_u, u_clamp = clamp_log(batch.logp - prox)
    u = torch.exp(log_u)
    loss1 = -adv * u
    loss2 = -adv * u.clamp(1.0 - args.eps_low, 1.0 + args.eps_high)
    loss = torch.maximum(loss1, loss2)
    metrics = {"clip_frac": masked_mean((loss2 > loss1).to(u.dtype), m).item(),
               "weight_drop_frac": masked_mean(1.0 - kept, m).item(),
               "behav_weight_mean": ((w * kept * m).sum() / (kept * m).sum().clamp_min(1.0)).item(),
               "ratio_clamp_frac": u_clamp, "weight_clamp_frac": w_clamp}
    if args.dual_clip_c is not None:
        loss3 = -adv * args.dual_clip_c
        metrics["dual_clip_frac"] = masked_mean(((adv < 0) & (loss > loss3)).to(u.dtype), m).item()
        loss = torch.where(adv < 0, torch.minimum(loss, loss3), loss)
    return loss * (w * kept), metrics
