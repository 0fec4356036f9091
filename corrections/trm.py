"""TRM: trust region masking by the largest token divergence (`correction=trm`).

Formula (our words). Per token, with l_t = log r_t clamped to [-20, 20], a sample estimate of the
token's divergence between the sampling policy and the trained one:
    k2_t = (l_t)^2 / 2              (estimator=k2)
    k3_t = exp(l_t) - 1 - l_t       (estimator=k3; its mean over mu-samples is KL(mu || pi))
A whole sequence is masked when max_t k_t > delta (kept when <= delta). Masked sequences leave the
aggregation denominators, as verl's rejection sampling narrows the response mask. With every ratio 1
all k_t are 0 and nothing is masked. Unlike a per-token clip, one bad token removes its sequence:
the paper's bounds depend on the maximum token divergence over the sequence.

Which ratio. The paper bounds the error between the rollout policy and the policy being optimised;
verl computes the statistic from its rollout-correction log-ratio, pi_old / pi_rollout in decoupled
mode and pi_theta / pi_rollout in bypass mode. The default `ratio=current` is pi_theta / mu (pi_theta
detached, the policy as this mini-batch's update starts), so stale sequences are masked too;
`ratio=engine` is pi_old / mu (verl decoupled; inert in pure staleness runs).

Defaults: delta = 2.5 (verl's documented `rollout_rs: seq_max_k2` example, `rollout_rs_threshold:
2.5`, docs/algo/rollout_corr.md), estimator = k2, ratio = current.

Sources: Li, Liu, Xu, Tong, Li, Wang, "Trust Region Masking for Long-Horizon LLM Reinforcement
Learning", arXiv 2512.23075 (TRM: mask a sequence whose maximum token-level KL exceeds the trust
region); verl verl/trainer/ppo/rollout_corr_helper.py `compute_rollout_rejection_mask`, options
`seq_max_k2` / `seq_max_k3` of `rollout_rs`.
"""

from dataclasses import dataclass

import torch

from offpolicy_bench.correction import RATIOS, CorrectionOutput, correction_log_ratio, register_correction
from offpolicy_bench.losses import LOG_RATIO_CLAMP
from offpolicy_bench.registry import OffbenchError

ESTIMATORS = ("k2", "k3")


@dataclass(frozen=True)
class TrmArgs:
    delta: float = 2.5
    """mask a sequence whose largest token divergence exceeds this (> 0)"""
    estimator: str = "k2"
    """token divergence: k2 = (log r)^2 / 2, or k3 = r - 1 - log r"""
    ratio: str = "current"
    """current: r = pi_theta/mu (the staleness moves it); engine: r = pi_old/mu"""

    def check(self):
        if not self.delta > 0:
            raise OffbenchError(f"correction.delta={self.delta}: TRM's trust region must be > 0 (default 2.5)")
        if self.estimator not in ESTIMATORS:
            raise OffbenchError(f"correction.estimator={self.estimator!r}: choose k2 or k3")
        if self.ratio not in RATIOS:
            raise OffbenchError(f"correction.ratio={self.ratio!r}: choose {' or '.join(RATIOS)}")


def token_divergence(lr: torch.Tensor, estimator: str) -> torch.Tensor:
    """k2 or k3 of a log-ratio, clamped to +-20 first (as verl) so k3's exp stays finite."""
    lr = lr.clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
    return 0.5 * lr * lr if estimator == "k2" else torch.expm1(lr) - lr


@register_correction("trm", args=TrmArgs)
def trm(batch, args):
    """TRM: mask a whole sequence when its largest token KL (k2 or k3 estimate) exceeds delta."""
    args.check()
    k = token_divergence(correction_log_ratio(batch, args.ratio), args.estimator)
    k_max = torch.where(batch.mask > 0, k, torch.zeros_like(k)).amax(-1)  # k >= 0, so padding's 0 never wins
    keep_seq = k_max <= args.delta
    real = batch.mask.sum(-1) > 0
    n = real.sum().clamp_min(1)
    return CorrectionOutput(keep=keep_seq[:, None].to(batch.mask.dtype).expand_as(batch.mask),
                            metrics={"dropped_seq_frac": ((~keep_seq & real).sum() / n).item(),
                                     "k_max_mean": (k_max * real).sum().item() / n.item()})
