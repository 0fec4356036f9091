from dataclasses import dataclass

import torch

from offpolicy_bench.losses import clamp_log, masked_mean
from offpolicy_bench.method import register_method


@dataclass(frozen=True)
class GSPOArgs:
    eps_low: float = 3e-4
    """lower clip: sequence ratio floored at 1 - eps_low (GSPO paper 3e-4)"""
    eps_high: float = 4e-4
    """upper clip: sequence ratio capped at 1 + eps_high (GSPO paper 4e-4)"""


@register_method("gspo", args=GSPOArgs, default_agg="seq-mean-token-mean", ratio="old", level="sequence",
                 equation="VESPO paper Eq. 8 (GSPO, token form)", color="#2ca02c")
def gspo(batch, args):
    """GSPO: PPO-style clipping of the length-normalised sequence ratio (paper Eq. 8).

    log s = (1/T) sum_t (logp_t - old_logp_t), T = the sequence's response length; ratio vs
    pi_old (the policy at the start of the rollout batch), not mu.
    Token form (GSPO-token with a sequence advantage): log s_t = sg(log s) + logp_t - sg(logp_t),
    so s_t has the value s and d s_t / d logp_t = s (the gradient flows per token).
    L_t = max(-A s_t, -A clip(s_t, 1-eps_low, 1+eps_high)); the clip decision is per sequence.
    With seq-mean-token-mean aggregation (the default, as verl) this is exactly sequence GSPO:
    grad = -(1/B) sum_i A_i s_i (1/T_i) sum_t grad log pi. Unlike verl, a configured aggregation
    is honoured, not overridden. Conventions: sg(log s) is clamped to +-20 before exp() (verl
    clamps at +10) and the clamp rate is reported; the clamp is on the detached part, so the
    gradient stays -A clamp(s) instead of vanishing. clip_frac is token-weighted (as verl), i.e.
    the share of response tokens that sit in a clipped sequence. No KL, no entropy bonus.
    """
    m = batch.mask
    log_s, clamp_frac = clamp_log(masked_mean((batch.logp - batch.old_logp).detach(), m, -1))
    log_s_t = log_s[:, None] + batch.logp - batch.logp.detach()
    s_t = torch.exp(log_s_t)
    adv = batch.advantages
    loss1 = -adv * s_t
    loss2 = -adv * s_t.clamp(1.0 - args.eps_low, 1.0 + args.eps_high)
    loss = torch.maximum(loss1, loss2)
    return loss, {"clip_frac": masked_mean((loss2 > loss1).float(), m).item(),
                  "seq_ratio_mean": torch.exp(log_s).mean().item(), "seq_ratio_clamp_frac": clamp_frac}
