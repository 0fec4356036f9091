from dataclasses import dataclass

import torch

from offpolicy_bench.losses import LOG_RATIO_CLAMP, clamp_log, ess, seq_log_ratio
from offpolicy_bench.method import register_method


@dataclass(frozen=True)
class SeqClipArgs:
    c: float = 2.0
    """cap on the sequence weight, coef = min(W, c) (2.0 = the truncated-IS level C of verl's TIS)"""
    log_w_clamp: float = LOG_RATIO_CLAMP
    """|log W| bound before exp(), for numerics only (verl's 20); the clamp rate is reported"""


@register_method("seq_clip", args=SeqClipArgs, default_agg="token-mean", ratio="behaviour", level="sequence",
                 equation="VESPO paper App. A (sequence-level truncated IS)", color="#bcbd22")
def seq_clip(batch, args):
    """Sequence-level truncated IS: the hard-clip counterpart of VESPO's soft kernel (paper App. A).

    W = exp(sum_t (logp_t - behav_logp_t)) (true product vs mu, the sampler, no length norm).
    coef = min(W, c);   L_t = -sg(coef) * A * log pi_theta(y_t), for either sign of A.
    Default c = 2.0: the paper's App. A gives no value; we take the truncation level of truncated
    IS in verl's rollout correction (rollout_is_threshold = 2.0, verl/trainer/config/algorithm.py).
    With c >= 1 the on-policy limit (W = 1) is the plain policy gradient. Alternative: SkyRL's sequence TIS cap 5.
    Only the top is truncated: W -> 0 keeps its (small) weight, unlike VESPO, whose kernel also
    damps W >> 1 smoothly. log W clamped to +-log_w_clamp before exp() (clamp rate reported).
    Aggregation token-mean (as VESPO). No KL, no entropy bonus.
    """
    log_w, clamp_frac = clamp_log(seq_log_ratio(batch.logp.detach(), batch.behav_logp, batch.mask), args.log_w_clamp)
    w = torch.exp(log_w)
    coef = w.clamp(max=args.c)
    loss = -coef[:, None] * batch.advantages * batch.logp
    return loss, {"trunc_frac": (w > args.c).double().mean().item(), "coef_mean": coef.mean().item(),
                  "coef_ess": ess(coef), "log_w_clamp_frac": clamp_frac}
