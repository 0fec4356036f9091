from dataclasses import dataclass
from typing import Optional

import torch

from offpolicy_bench.losses import clamp_log, masked_mean
from offpolicy_bench.method import check_arg, check_choice, register_method

PG_FORMS = ("ratio", "logp")


@dataclass(frozen=True)
class IPOArgs:
    tau: float = 1e-3
    """weight of the quadratic log-ratio penalty tau * (log pi/mu)^2 (prime-rl kl_tau 1e-3)"""
    mask_threshold: Optional[float] = 0.1
    """a token whose probability moved by more than this, |pi - mu| > threshold, loses its policy-gradient
    term (the penalty stays) (prime-rl ipo_threshold 0.1); null = no mask (Kimi k1.5, verl dro)"""
    pg: str = "ratio"
    """ratio: policy term -A * pi/mu, differentiated (prime-rl); logp: -A * log pi (Kimi k1.5's gradient,
    verl dro)"""

    def __post_init__(self):
        check_arg("ipo", "tau", self.tau, 0.0, None)
        check_arg("ipo", "mask_threshold", self.mask_threshold, 0.0, 1.0, low_open=True, none_ok=True)
        check_choice("ipo", "pg", self.pg, PG_FORMS)


@register_method("ipo", args=IPOArgs, default_agg="token-mean", ratio="behaviour", level="token",
                 equation="prime-rl ipo loss (Kimi k1.5 arXiv 2501.12599 family; verl dro)", color="#fd8d3c")
def ipo(batch, args):
    """IPO: policy gradient plus a quadratic penalty on the log-ratio, instead of a clip.

    r_t = pi_theta(y_t) / mu(y_t) (vs mu, the sampler: prime-rl's trainer vs inference log-probs).
    keep_t = |pi_t - mu_t| <= mask_threshold (a symmetric probability trust region; null: every token)
    pg=ratio:  L_t = -keep_t * A_t * r_t + tau * (log r_t)^2     (r differentiated: grad -A r grad log pi)
    pg=logp:   L_t = -keep_t * A_t * log pi_t + tau * (log r_t)^2
    The penalty's gradient 2 tau log r_t pulls pi back toward mu on every response token; at r = 1 it is 0
    and both forms are the plain policy gradient.
    Sources: prime-rl src/prime_rl/trainer/rl/loss.py `ipo_loss_fn` (IPOLossConfig: ipo_threshold 0.1,
    kl_tau 1e-3, adv_tau 1; the ratio is undetached and against the inference log-probs) - our default.
    Kimi k1.5 (arXiv 2501.12599) derives the gradient (r - rbar) grad log pi - (tau'/2) grad (log pi/pi_old)^2
    from its squared-loss objective: pg=logp, mask_threshold=null, tau = tau'/2, with pi_old as the
    reference. verl's `dro` loss (core_algos.py compute_policy_loss_dro) is -(A log pi - beta/2 (log r)^2)
    against verl's old_log_prob (mu in bypass mode): pg=logp, mask_threshold=null, tau = beta/2.
    Deviation: prime-rl's adv_tau (a scale on A, default 1) is not an argument.
    Conventions: log r clamped to +-20 before exp() in the policy term (clamp rate reported; a clamped
    token's policy term has zero gradient); the penalty uses the unclamped log r. Aggregation token-mean
    (prime-rl normalises the summed loss by the token count). No entropy bonus.
    Diagnostics: mask_frac, log_ratio_sq_mean (the penalty's mean (log r)^2).
    """
    m = batch.mask
    adv = batch.advantages
    log_r = batch.logp - batch.behav_logp
    log_r_c, clamp_frac = clamp_log(log_r)
    if args.mask_threshold is None:
        keep = torch.ones_like(batch.logp)
    else:
        p = torch.exp(batch.logp.detach().clamp(max=0.0))
        q = torch.exp(batch.behav_logp.clamp(max=0.0))
        keep = ((p - q).abs() <= args.mask_threshold).to(batch.logp.dtype)
    policy = torch.exp(log_r_c) if args.pg == "ratio" else batch.logp
    loss = -keep * adv * policy + args.tau * log_r * log_r
    return loss, {"mask_frac": masked_mean(1.0 - keep, m).item(),
                  "log_ratio_sq_mean": masked_mean((log_r * log_r).detach(), m).item(),
                  "ratio_clamp_frac": clamp_frac}
