from dataclasses import dataclass
from typing import Optional

import torch

from offpolicy_bench.losses import clamp_log, masked_mean
from offpolicy_bench.method import WeightCurve, register_method


@dataclass(frozen=True)
class TokenClipArgs:
    eps_low: float = 0.2
    """lower clip: ratio floored at 1 - eps_low (PPO/GRPO)"""
    eps_high: float = 0.28
    """upper clip: ratio capped at 1 + eps_high (DAPO clip-higher; 0.2 is symmetric PPO)"""
    dual_clip_c: Optional[float] = 3.0
    """dual clip for A < 0: loss capped at -c*A (verl default 3.0); null disables it"""


def _clip_weight(args, w, positive):
    """The clipped surrogate's gradient weight: 1 inside the band, 0 where the ratio is clipped on A's side."""
    import numpy as np

    return np.where(w <= 1 + args.eps_high, 1.0, 0.0) if positive else np.where(w >= 1 - args.eps_low, 1.0, 0.0)


CURVE = WeightCurve(
    weight=_clip_weight,
    label=lambda a, pos: f"hard clip (token_clip): 1, zero {'above 1+' if pos else 'below 1-'}"
                         f"{a.eps_high if pos else a.eps_low:g}",
    knots=lambda a, pos: [1 - a.eps_low, 1 + a.eps_high], style=("-", 1.6), steps=True)

@register_method("token_clip", args=TokenClipArgs, default_agg="token-mean", ratio="old", level="token",
                 equation="VESPO paper Eq. 7 (PPO/GRPO clipped surrogate)", color="#1f77b4", curve=CURVE)
def token_clip(batch, args):
    """PPO/GRPO token-level clipped surrogate with DAPO clip-higher and optional dual clip.

    r_t = pi_theta / pi_old (per token, vs the policy at the start of the rollout batch, not mu)
    L_t = max(-A r_t, -A clip(r_t, 1-eps_low, 1+eps_high)); for A < 0 also min(L_t, -c A).
    Deviations: no KL term, no entropy bonus (as in the paper's setup). log r_t is clamped to
    +-20 before exp (verl), and the clamp rate is reported.
    """
    log_r, clamp_frac = clamp_log(batch.logp - batch.old_logp)
    ratio = torch.exp(log_r)
    adv = batch.advantages
    loss1 = -adv * ratio
    loss2 = -adv * ratio.clamp(1.0 - args.eps_low, 1.0 + args.eps_high)
    loss = torch.maximum(loss1, loss2)
    m = batch.mask
    metrics = {"clip_frac": masked_mean((loss2 > loss1).float(), m).item(), "ratio_clamp_frac": clamp_frac}
    if args.dual_clip_c is not None:
        loss3 = -adv * args.dual_clip_c
        dual = (adv < 0) & (loss > loss3)
        loss = torch.where(adv < 0, torch.minimum(loss, loss3), loss)
        metrics["dual_clip_frac"] = masked_mean(dual.float(), m).item()
    return loss, metrics
