from dataclasses import dataclass

import torch

from offpolicy_bench.losses import clamp_log, masked_mean
from offpolicy_bench.method import register_method


@dataclass(frozen=True)
class CISPOArgs:
    eps_low: float = 1.0
    """IS weight floored at 1 - eps_low; 1.0 = floor 0, i.e. no lower bound (MiniMax-M1 sets it large)"""
    eps_high: float = 4.0
    """IS weight capped at 1 + eps_high; 4.0 = cap 5 (ScaleRL recipe, SkyRL's default)"""


@register_method("cispo", args=CISPOArgs, default_agg="token-mean", ratio="old", level="token",
                 equation="MiniMax-M1 Eq. 4-5 (CISPO)", color="#9467bd")
def cispo(batch, args):
    """CISPO: REINFORCE with a clipped, detached token IS weight (MiniMax-M1, arXiv 2506.13585).

    r_t = pi_theta / pi_old per token (vs pi_old, not mu).
    L_t = -sg(clip(r_t, 1 - eps_low, 1 + eps_high)) * A * log pi_theta(y_t)
    Unlike PPO no token loses its gradient: a clipped weight still multiplies grad log pi.
    Defaults [0, 5]: MiniMax-M1 imposes no lower bound ("setting eps_low^IS to a large value")
    and tunes only eps_high without publishing it; we take the cap 5 of the ScaleRL recipe
    (arXiv 2510.13786) as SkyRL does (cispo_eps_clip_low=1, cispo_eps_clip_high=4).
    Alternatives: verl/slime use the actor's PPO clip, 1 +- eps (e.g. eps_low=0.2,
    eps_high=0.28: `method.eps_low=0.2 method.eps_high=0.28`); TRL's default caps at
    eps_high=0.2, which clips almost every off-policy token. log r_t is clamped to +-20 before
    exp() (irrelevant once clipped), clamp rate reported. Aggregation token-mean (M1 Eq. 4
    normalises by the total token count). No KL, no entropy bonus.
    """
    log_r, clamp_frac = clamp_log((batch.logp - batch.old_logp).detach())
    r = torch.exp(log_r)
    w = r.clamp(1.0 - args.eps_low, 1.0 + args.eps_high)
    loss = -w * batch.advantages * batch.logp
    m = batch.mask
    return loss, {"clip_frac": masked_mean((w != r).float(), m).item(),
                  "clip_high_frac": masked_mean((r > 1.0 + args.eps_high).float(), m).item(),
                  "is_weight_mean": masked_mean(w, m).item(), "ratio_clamp_frac": clamp_frac}
