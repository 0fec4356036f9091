from dataclasses import dataclass

import torch

from offpolicy_bench.losses import clamp_log, masked_mean
from offpolicy_bench.method import check_arg, register_method


@dataclass(frozen=True)
class ClipCovArgs:
    clip_ratio: float = 2e-4
    """share of the mini-batch's response tokens whose gradient is cut (at least one token) (paper and
    verl clip_cov_ratio 2e-4)"""
    cov_lb: float = 1.0
    """only tokens with covariance above cov_lb are candidates (paper and verl clip_cov_lb 1.0)"""
    cov_ub: float = 5.0
    """... and below cov_ub (paper and verl clip_cov_ub 5.0)"""
    eps_low: float = 1.0
    """PPO ratio floor 1 - eps_low (the paper's Clip-Cov scripts set clip_ratio_low=1: no floor)"""
    eps_high: float = 1.0
    """PPO ratio cap 1 + eps_high (the paper's Clip-Cov scripts set clip_ratio_high=1: cap 2)"""

    def __post_init__(self):
        check_arg("clip_cov", "clip_ratio", self.clip_ratio, 0.0, 1.0, low_open=True)
        check_arg("clip_cov", "cov_ub", self.cov_ub, self.cov_lb, None, low_open=True)
        check_arg("clip_cov", "eps_low", self.eps_low, 0.0, 1.0)
        check_arg("clip_cov", "eps_high", self.eps_high, 0.0, None)


def token_covariance(adv, logp, mask):
    """cov_t = (A_t - mean A) * (log pi_t - mean log pi), means over the mini-batch's response tokens; detached.
    The per-token term of the covariance between log-probability and advantage that drives the entropy
    change under policy gradient (arXiv 2505.22617)."""
    logp = logp.detach()
    return (adv - masked_mean(adv, mask)) * (logp - masked_mean(logp, mask))


@register_method("clip_cov", args=ClipCovArgs, default_agg="token-mean", ratio="old", level="token",
                 equation="Clip-Cov, arXiv 2505.22617 (verl clip_cov)", color="#756bb1")
def clip_cov(batch, args):
    """Clip-Cov: PPO that also cuts the gradient of a few randomly chosen high-covariance tokens.

    r_t = pi_theta / pi_old per token (vs pi_old, as verl's old_log_prob).
    PPO: L_t = max(-A r_t, -A clip(r_t, 1 - eps_low, 1 + eps_high)).
    Candidates: response tokens not already clipped by PPO whose covariance term
    cov_t = (A_t - mean A)(log pi_t - mean log pi) lies strictly inside (cov_lb, cov_ub); n = max(1,
    floor(clip_ratio * response tokens)) of them, drawn uniformly at random (torch's global generator,
    seeded by the run), get L_t = 0 (no gradient). Fewer candidates than n: all of them.
    The covariance of log-prob and advantage is what drives entropy down under policy gradient; cutting
    its largest positive terms keeps entropy from collapsing (arXiv 2505.22617, Clip-Cov).
    Sources: arXiv 2505.22617; PRIME-RL/Entropy-Mechanism-of-RL verl/trainer/ppo/core_algos.py
    (compute_policy_loss_clip_cov) and recipe/dapo/*_clip_cov.sh; verl core_algos.py
    compute_policy_loss_clip_cov (same rule). Defaults from those scripts: clip_ratio 2e-4, bounds (1, 5),
    PPO clip 1 +- 1. No dual clip (the paper's loss has none, though its scripts pass clip_ratio_c).
    Conventions: log r clamped to +-20 before exp() (clamp rate reported). Aggregation token-mean.
    Diagnostics: cov_clip_frac (share of response tokens cut by the covariance rule), clip_frac (by PPO),
    cov_candidate_frac.
    """
    m = batch.mask
    adv = batch.advantages
    log_r, clamp_frac = clamp_log(batch.logp - batch.old_logp)
    ratio = torch.exp(log_r)
    loss1 = -adv * ratio
    loss2 = -adv * ratio.clamp(1.0 - args.eps_low, 1.0 + args.eps_high)
    ppo_clipped = (loss2 > loss1) & (m > 0)
    cov = token_covariance(adv, batch.logp, m)
    candidate = (m > 0) & ~ppo_clipped & (cov > args.cov_lb) & (cov < args.cov_ub)
    n_cut = max(int(args.clip_ratio * m.sum().item()), 1)
    idx = torch.nonzero(candidate)
    if len(idx) > n_cut:
        idx = idx[torch.randperm(len(idx))[:n_cut].to(idx.device)]
    keep = torch.ones_like(batch.logp)
    keep[idx[:, 0], idx[:, 1]] = 0.0
    loss = torch.maximum(loss1, loss2) * keep
    return loss, {"cov_clip_frac": masked_mean(1.0 - keep, m).item(),
                  "clip_frac": masked_mean(ppo_clipped.to(ratio.dtype), m).item(),
                  "cov_candidate_frac": masked_mean(candidate.to(ratio.dtype), m).item(),
                  "ratio_clamp_frac": clamp_frac}
