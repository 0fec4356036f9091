from dataclasses import dataclass

import torch

from offpolicy_bench.losses import clamp_log, masked_mean
from offpolicy_bench.method import check_arg, register_method
from offpolicy_bench.methods.clip_cov import token_covariance


@dataclass(frozen=True)
class KLCovArgs:
    kl_ratio: float = 2e-3
    """share of the mini-batch's response tokens (the highest covariance ones, at least one) that get the
    |log r| penalty (the paper's 7B script: k = 0.2%; its 32B script and verl's default: 2e-4)"""
    kl_coef: float = 1.0
    """weight of the penalty kl_coef * |log pi/pi_old| (the paper's scripts: ppo_kl_coef 1)"""

    def __post_init__(self):
        check_arg("kl_cov", "kl_ratio", self.kl_ratio, 0.0, 1.0, low_open=True)
        check_arg("kl_cov", "kl_coef", self.kl_coef, 0.0, None)


@register_method("kl_cov", args=KLCovArgs, default_agg="token-mean", ratio="old", level="token",
                 equation="KL-Cov, arXiv 2505.22617 (verl kl_cov)", color="#bcbddc")
def kl_cov(batch, args):
    """KL-Cov: the unclipped ratio surrogate, with a |log r| penalty on the highest-covariance tokens.

    r_t = pi_theta / pi_old per token (vs pi_old). cov_t = (A_t - mean A)(log pi_t - mean log pi) over
    the mini-batch's response tokens (detached). The k = max(1, floor(kl_ratio * response tokens)) tokens
    with the largest cov_t get a penalty; every token keeps the plain surrogate (no ratio clip):
        L_t = -A_t r_t + kl_coef * |log r_t| * [t among the top k]
    The penalty holds the tokens that drive entropy down (high advantage on already likely tokens) near
    pi_old instead of cutting their gradient as Clip-Cov does.
    Sources: arXiv 2505.22617 (KL-Cov); PRIME-RL/Entropy-Mechanism-of-RL verl/trainer/ppo/core_algos.py
    (compute_policy_loss_kl_cov, k given in percent: k_percent 0.2 for 7B, 0.02 for 32B) and verl's
    compute_policy_loss_kl_cov (kl_cov_ratio as a fraction, default 2e-4). Default kl_ratio 2e-3: the
    paper's small-model setting. kl_coef 1 from the paper's scripts (verl's yaml default is 0.1).
    Conventions: log r clamped to +-20 before exp() in the surrogate (clamp rate reported); the penalty
    uses the unclamped |log r| (its gradient kl_coef * sign(log r), 0 at r = 1). Ties in cov_t are broken
    by torch.topk. Aggregation token-mean. Diagnostics: kl_cov_frac (share of response tokens penalised),
    abs_log_ratio_mean.
    """
    m = batch.mask
    adv = batch.advantages
    log_r = batch.logp - batch.old_logp
    log_r_c, clamp_frac = clamp_log(log_r)
    loss = -adv * torch.exp(log_r_c)
    cov = token_covariance(adv, batch.logp, m)
    valid = torch.nonzero(m.reshape(-1) > 0).squeeze(1)
    k = max(int(len(valid) * args.kl_ratio), 1)
    top = valid[torch.topk(cov.reshape(-1)[valid], min(k, len(valid))).indices]
    penalised = torch.zeros(m.numel(), dtype=loss.dtype, device=loss.device)
    penalised[top] = 1.0
    penalised = penalised.view_as(m)
    loss = loss + args.kl_coef * log_r.abs() * penalised
    return loss, {"kl_cov_frac": masked_mean(penalised, m).item(),
                  "abs_log_ratio_mean": masked_mean(log_r.detach().abs(), m).item(),
                  "ratio_clamp_frac": clamp_frac}
