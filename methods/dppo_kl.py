from dataclasses import dataclass
from typing import Optional

import torch

from offpolicy_bench.method import check_arg, register_method
from offpolicy_bench.methods.dppo_tv import dppo_loss, probs

BINARY_EPS = 1e-8  # added to 1 - p and 1 - q inside the log, as verl's dppo_kl (keeps p = 1 finite)


@dataclass(frozen=True)
class DPPOKLArgs:
    delta_low: float = 0.05
    """trust region for A <= 0: a token whose probability fell (pi < mu) with binary KL(mu || pi) > delta_low
    loses its gradient (0.05: the DPPO-Binary-KL setting of verl's examples/dppo_trainer script)"""
    delta_high: float = 0.05
    """trust region for A > 0: a token whose probability rose (pi > mu) with binary KL > delta_high loses
    its gradient"""
    is_cap: Optional[float] = 10.0
    """cap C of the detached IS weight min(pi/mu, C) (the paper's released code: 10; verl's port defaults to
    20); null = no truncation"""
    kl_coef: float = 0.0
    """coefficient of an added (log pi/mu)^2 penalty on every response token; 0 = none, as the paper"""

    def __post_init__(self):
        check_arg("dppo_kl", "delta_low", self.delta_low, 0.0, None, low_open=True)
        check_arg("dppo_kl", "delta_high", self.delta_high, 0.0, None, low_open=True)
        check_arg("dppo_kl", "is_cap", self.is_cap, 1.0, None, none_ok=True)
        check_arg("dppo_kl", "kl_coef", self.kl_coef, 0.0, None)


def binary_kl(logp, behav_logp):
    """KL(mu || pi) between the two Bernoulli distributions 'the sampled token' vs 'any other token':
    q log(q/p) + (1-q) log((1-q+eps)/(1-p+eps)), p = pi(y_t), q = mu(y_t), log-probs capped at 0.
    Also returns p and q."""
    lp, lq = logp.detach().clamp(max=0.0), behav_logp.clamp(max=0.0)
    p, q = probs(logp, behav_logp)
    one_minus_p, one_minus_q = -torch.expm1(lp), -torch.expm1(lq)
    kl = q * (lq - lp) + one_minus_q * (torch.log(one_minus_q + BINARY_EPS) - torch.log(one_minus_p + BINARY_EPS))
    return kl, p, q


@register_method("dppo_kl", args=DPPOKLArgs, default_agg="token-mean", ratio="behaviour", level="token",
                 equation="DPPO-Binary-KL, arXiv 2602.04879 (verl dppo_kl)", color="#9ecae1")
def dppo_kl(batch, args):
    """DPPO-Binary-KL: DPPO's sign-conditioned trust-region mask with the binary KL instead of |pi - mu|.

    p_t = pi_theta(y_t), q_t = mu(y_t) (the behaviour policy). The sampled token's distribution is reduced
    to two outcomes, y_t or not, and its divergence is
        KL_t = q_t log(q_t / p_t) + (1 - q_t) log((1 - q_t) / (1 - p_t)).
    For A > 0 a token is dropped when KL_t > delta_high and p_t > q_t; for A <= 0 when KL_t > delta_low and
    p_t < q_t (only a move in the direction the advantage pushes can leave the region). Kept tokens:
        L_t = -keep_t * sg(min(p_t / q_t, C)) * A_t * log pi_t   [+ kl_coef (log p_t/q_t)^2]
    Sources: arXiv 2602.04879; sail-sg/Stable-RL verl/trainer/ppo/core_algos.py (loss_mode
    dppo_binary_kl, against the rollout log-probs) and verl's compute_policy_loss_dppo_kl (against verl's
    old_log_prob). Defaults: delta 0.05 both sides (verl examples/dppo_trainer), C = 10 (Stable-RL).
    Conventions: eps = 1e-8 inside the (1 - .) logs as verl, so p = 1 stays finite; log-probs capped at 0;
    log(pi/mu) clamped to +-20 before exp() (clamp rate reported). Aggregation token-mean. Diagnostics as
    dppo_tv, with divergence_mean the mean binary KL.
    """
    kl, p, q = binary_kl(batch.logp, batch.behav_logp)
    return dppo_loss(batch, args, invalid_pos=(kl > args.delta_high) & (p > q),
                     invalid_neg=(kl > args.delta_low) & (p < q), divergence=kl)
