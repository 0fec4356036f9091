from dataclasses import dataclass
from typing import Optional

import torch

from offpolicy_bench.losses import clamp_log, masked_mean
from offpolicy_bench.method import check_arg, register_method


@dataclass(frozen=True)
class DPPOTVArgs:
    delta_low: float = 0.15
    """trust region for A <= 0: a token whose probability fell by more than delta_low (pi - mu < -delta_low)
    loses its gradient (0.15: the DPPO-Binary-TV setting of verl's examples/dppo_trainer script)"""
    delta_high: float = 0.15
    """trust region for A > 0: a token whose probability rose by more than delta_high (pi - mu > delta_high)
    loses its gradient"""
    is_cap: Optional[float] = 10.0
    """cap C of the detached IS weight min(pi/mu, C) (the paper's released code: 10; verl's port defaults to
    20, its example script to 1e4); null = no truncation"""
    kl_coef: float = 0.0
    """coefficient of an added (log pi/mu)^2 penalty on every response token; 0 = none, as the paper
    (prime-rl's default loss is this method with delta 0.2, is_cap=null and kl_coef=1e-3)"""

    def __post_init__(self):
        check_arg("dppo_tv", "delta_low", self.delta_low, 0.0, 1.0, low_open=True)
        check_arg("dppo_tv", "delta_high", self.delta_high, 0.0, 1.0, low_open=True)
        check_arg("dppo_tv", "is_cap", self.is_cap, 1.0, None, none_ok=True)
        check_arg("dppo_tv", "kl_coef", self.kl_coef, 0.0, None)


def probs(logp, behav_logp):
    """Token probabilities of pi (detached) and mu, log-probs capped at 0 first: a probability is at most 1,
    whatever a caller passes (e.g. padding garbage), so the divergences below stay finite."""
    return torch.exp(logp.detach().clamp(max=0.0)), torch.exp(behav_logp.clamp(max=0.0))


def dppo_loss(batch, args, invalid_pos, invalid_neg, divergence):
    """The loss shared by DPPO-Binary-TV and -KL, given the two sign-conditioned invalid masks [B, T] and the
    per-token divergence (for the diagnostics).

    keep_t = not invalid_pos_t if A_t > 0 else not invalid_neg_t   (A = 0 takes the A <= 0 mask, as verl)
    w_t    = min(pi_t / mu_t, is_cap), detached
    L_t    = -keep_t * w_t * A_t * log pi_t + kl_coef * (log pi_t - log mu_t)^2
    """
    m = batch.mask
    adv = batch.advantages
    log_r = batch.logp - batch.behav_logp
    log_r_c, clamp_frac = clamp_log(log_r.detach())
    r = torch.exp(log_r_c)
    w = r if args.is_cap is None else r.clamp(max=args.is_cap)
    pos = adv > 0
    keep = torch.where(pos, ~invalid_pos, ~invalid_neg).to(batch.logp.dtype)
    loss = -keep * w * adv * batch.logp
    if args.kl_coef:
        loss = loss + args.kl_coef * log_r * log_r
    dropped = (1.0 - keep) * m
    metrics = {
        "mask_frac": masked_mean(1.0 - keep, m).item(),
        "mask_frac_pos": (dropped * pos).sum().item() / m.sum().clamp_min(1.0).item(),
        "mask_frac_neg": (dropped * ~pos).sum().item() / m.sum().clamp_min(1.0).item(),
        "divergence_mean": masked_mean(divergence, m).item(),
        "ratio_clamp_frac": clamp_frac,
    }
    if args.is_cap is not None:
        metrics["is_trunc_frac"] = masked_mean((r > args.is_cap).to(r.dtype) * keep, m).item()
    return loss, metrics


@register_method("dppo_tv", args=DPPOTVArgs, default_agg="token-mean", ratio="behaviour", level="token",
                 equation="DPPO-Binary-TV, arXiv 2602.04879 (verl dppo_tv)", color="#3182bd")
def dppo_tv(batch, args):
    """DPPO-Binary-TV: a trust region on the change of each sampled token's probability, not on its ratio.

    p_t = pi_theta(y_t), q_t = mu(y_t) (the behaviour policy that sampled; the paper anchors the trust region
    to it, not to a recomputed pi_old). The binary TV divergence of the sampled token is |p_t - q_t|, and
    the mask is sign-conditioned: for A > 0 a token is dropped when p_t - q_t > delta_high (it already rose
    too far), for A <= 0 when p_t - q_t < -delta_low (it already fell too far); moves the other way are
    never masked. Kept tokens get a REINFORCE gradient weighted by the truncated, detached IS weight:
        L_t = -keep_t * sg(min(p_t / q_t, C)) * A_t * log pi_t   [+ kl_coef (log p_t/q_t)^2]
    Unlike PPO's ratio clip, a rare token (q small) may move a lot in ratio while staying in the region,
    and a frequent one cannot move more than delta in probability.
    Sources: arXiv 2602.04879 (Qi et al., "Rethinking the Trust Region in LLM RL"); their code
    (sail-sg/Stable-RL, verl/trainer/ppo/core_algos.py, loss_mode dppo_binary_tv) and verl's
    compute_policy_loss_dppo_tv (there against verl's old_log_prob, i.e. mu in bypass mode; here always
    mu); prime-rl's default loss (src/prime_rl/trainer/rl/loss.py) is this mask with delta 0.2, the
    undetached ratio (same gradient as C = inf) and a 1e-3 (log r)^2 term (kl_coef).
    Defaults: delta 0.15 both sides (verl examples/dppo_trainer), C = 10 (Stable-RL's default).
    Conventions: log(pi/mu) clamped to +-20 before exp() (clamp rate reported); probabilities from
    log-probs capped at 0. Aggregation token-mean (prime-rl normalises by the token count; verl's example
    uses seq-mean-token-sum-norm: `method.agg=seq-mean-token-sum-norm`). No entropy bonus.
    Diagnostics: mask_frac (masked share of response tokens; _pos / _neg by advantage sign), mean |p - q|,
    is_trunc_frac (kept tokens whose weight hit C).
    """
    p, q = probs(batch.logp, batch.behav_logp)
    diff = p - q
    return dppo_loss(batch, args, invalid_pos=diff > args.delta_high, invalid_neg=diff < -args.delta_low,
                     divergence=diff.abs())
