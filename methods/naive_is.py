from dataclasses import dataclass

import torch

from offpolicy_bench.losses import LOG_RATIO_CLAMP, clamp_log, ess, seq_log_ratio
from offpolicy_bench.method import WeightCurve, register_method


@dataclass(frozen=True)
class NaiveISArgs:
    log_w_clamp: float = LOG_RATIO_CLAMP
    """|log W| bound before exp(), for numerics only (verl's 20); the clamp rate is reported"""


CURVE = WeightCurve(weight=lambda args, w, positive: w, label=lambda a, pos: "naive IS: W (unbounded)",
                    style=(":", 1.2))

@register_method("naive_is", args=NaiveISArgs, default_agg="token-mean", ratio="behaviour", level="sequence",
                 equation="VESPO paper Eq. 3 (sequence-level IS)", color="#8c564b", curve=CURVE)
def naive_is(batch, args):
    """Plain sequence-level importance sampling against the behaviour policy (paper Eq. 3).

    W = prod_t pi_theta(y_t)/mu(y_t) = exp(sum_t (logp_t - behav_logp_t)) over response tokens
    (the true product, no length normalisation; ratio vs mu, the sampler, not pi_old).
    L_t = -sg(W) * A * log pi_theta(y_t)   gradient: -W A grad log pi_theta(y_t)
    Unbiased, unbounded variance. Convention: log W is clamped to [-log_w_clamp, log_w_clamp]
    before exp() (numerics only, as verl); the clamp rate is reported as log_w_clamp_frac.
    Aggregation token-mean (as VESPO's released code), so naive_is and vespo differ only in the
    coefficient. No KL, no entropy bonus.
    """
    log_w, clamp_frac = clamp_log(seq_log_ratio(batch.logp.detach(), batch.behav_logp, batch.mask), args.log_w_clamp)
    w = torch.exp(log_w)
    loss = -w[:, None] * batch.advantages * batch.logp
    return loss, {"w_mean": w.mean().item(), "w_max": w.max().item(), "w_ess": ess(w),
                  "log_w_clamp_frac": clamp_frac}
