from dataclasses import dataclass

import torch

from offpolicy_bench.losses import LOG_RATIO_CLAMP, clamp_log, seq_log_ratio
from offpolicy_bench.method import register_method


@dataclass(frozen=True)
class TOPRArgs:
    log_w_clamp: float = LOG_RATIO_CLAMP
    """|log W| bound before exp(), for numerics only (verl's 20); the clamp rate is reported"""


@register_method("topr", args=TOPRArgs, default_agg="token-mean", ratio="behaviour", level="sequence",
                 equation="TOPR, arXiv 2503.14286 (tapered off-policy REINFORCE)", color="#e377c2")
def topr(batch, args):
    """TOPR: no IS weight on positive samples, truncated sequence IS on negative ones.

    W = exp(sum_t (logp_t - behav_logp_t)) (true product vs mu, the sampler).
    A > 0:  L_t = -A log pi_theta(y_t)                       (SFT-like, coefficient 1)
    A < 0:  L_t = -sg(clip(W, 0, 1)) * A * log pi_theta(y_t)  (= min(W, 1); W > 0 always)
    A = 0:  our choice: coefficient 1 (the A > 0 branch); the loss and its gradient are 0 either
    way, so only the coefficient diagnostics see it. The sign is the sequence advantage
    (batch.seq_adv), as VESPO's sign rule. Conventions: log W clamped to +-log_w_clamp before
    exp() (clamp rate reported; for A < 0 only the lower clamp can matter, W < e^-20 ~ 0).
    Aggregation token-mean (as VESPO's released code) so the correction ablates apart from the
    aggregation; the TOPR paper sums per trajectory. No KL, no entropy bonus, no baseline change.
    Source: arXiv 2503.14286 (Le Roux, Bellemare et al., "Tapered Off-Policy REINFORCE").
    """
    log_w, clamp_frac = clamp_log(seq_log_ratio(batch.logp.detach(), batch.behav_logp, batch.mask), args.log_w_clamp)
    w = torch.exp(log_w)
    neg = batch.seq_adv < 0
    coef = torch.where(neg, w.clamp(0.0, 1.0), torch.ones_like(w))
    loss = -coef[:, None] * batch.advantages * batch.logp
    n_neg = int(neg.sum())
    metrics = {"neg_frac": neg.double().mean().item(), "log_w_clamp_frac": clamp_frac}
    if n_neg:
        metrics["neg_coef_mean"] = coef[neg].mean().item()
        metrics["neg_trunc_frac"] = (w[neg] > 1.0).double().mean().item()
    return loss, metrics
