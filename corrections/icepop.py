"""IcePop: double-sided token masking of the train/inference ratio (`correction=icepop`).

Formula (our words). Per token, k_t = pi_old(y_t) / mu(y_t): the trainer's probability over the rollout
engine's, both for the weights that sampled (in verl's terms pi_train(theta_old) / pi_infer(theta_old)).
The method's per-token loss is multiplied by
    w_t = k_t   if low <= k_t <= high,
    w_t = 0     otherwise,
a truncated-IS weight that is set to zero, not clipped, outside the band. The zeroed tokens stay in
the aggregation denominators (the method's 1/|y| is unchanged), as in the paper's objective and in
slime. With every ratio 1 the weights are all 1.

Which ratio: the engine ratio pi_old / mu (it is what IcePop calibrates: the training-inference
mismatch at fixed weights). With `lag=k` it also holds the k steps of lag; in bypass mode and in pure
staleness runs (pi_old = mu) the correction is inert.

Defaults: low = 0.5, high = 5 (the paper's alpha, beta).

Sources: Ling Team, "Every Step Evolves: Scaling Reinforcement Learning for Trillion-Scale Thinking
Model" (Ring-1T), arXiv 2510.18855, the IcePop objective with its masking function M(k; alpha, beta);
slime slime/backends/megatron_utils/loss.py `icepop_function` (bounds `--tis-clip-low`, `--tis-clip`).
"""

from dataclasses import dataclass

import torch

from offpolicy_bench.correction import CorrectionOutput, correction_log_ratio, register_correction
from offpolicy_bench.losses import clamp_log, masked_mean
from offpolicy_bench.registry import OffbenchError


@dataclass(frozen=True)
class IcePopArgs:
    low: float = 0.5
    """tokens whose ratio pi_old/mu is below this get weight 0 (0 < low <= 1)"""
    high: float = 5.0
    """tokens whose ratio pi_old/mu is above this get weight 0 (high >= 1)"""

    def check(self):
        if not (0 < self.low <= 1 <= self.high):
            raise OffbenchError(f"correction.low={self.low}, correction.high={self.high}: IcePop needs "
                                f"0 < low <= 1 <= high (defaults 0.5 and 5)")


@register_correction("icepop", args=IcePopArgs)
def icepop(batch, args):
    """IcePop: token weight pi_old/mu inside [low, high] and 0 outside it (Ring-1T, defaults [0.5, 5])."""
    args.check()
    lr = correction_log_ratio(batch, "engine")
    inside = (lr >= torch.log(torch.tensor(args.low, dtype=lr.dtype))) & \
             (lr <= torch.log(torch.tensor(args.high, dtype=lr.dtype)))
    lr_c, hit = clamp_log(lr)  # exp only of a bounded log-ratio; inside the band it is never clamped
    w = torch.where(inside, torch.exp(lr_c), torch.zeros_like(lr_c))
    return CorrectionOutput(weights=w, metrics={"w_mean": masked_mean(w, batch.mask).item(),
                                                "masked_frac": masked_mean((~inside).to(lr.dtype), batch.mask).item(),
                                                "clamp_frac": hit})
