"""OPSM: off-policy sequence masking (`correction=opsm`).

Formula (our words). Per sequence i with response tokens t = 1..|y_i|,
    D_i = (1/|y_i|) sum_t [log mu(y_t) - log pi(y_t)]
(the plain log-ratio, "k1", estimate of KL(mu || pi) on the sampled tokens; it can be negative). Every
token of sequence i gets weight 0 when A_i < 0 and D_i > delta, and weight 1 otherwise: negative
samples the current policy has drifted away from no longer push it. A sequence with A_i >= 0 is
always kept, and so is one with D_i <= delta. The zeroed tokens stay in the aggregation denominators
(the paper multiplies the per-token term by the mask; TRL and slime multiply the per-token loss).

Which ratio. DeepSeek-V3.2 compares the inference engine's sampling probabilities with the policy
being trained; TRL uses the sampling log-probs against the current policy's (detached), slime its old
log-probs against the current ones. The default `ratio=current` is log pi_theta (detached) - log mu, so
D_i sees both the staleness and the engine gap; `ratio=engine` uses pi_old instead of pi_theta.

Defaults: delta = 1e-4 (slime's `--opsm-delta` default). TRL has no default (its docs suggest e.g.
0.5 for `off_policy_mask_threshold`) and DeepSeek-V3.2 gives none. benchmarks/RESULTS.md measures a
per-token KL(mu||pi) of 0.02 (all mini-batches) to 0.05 (the stalest) at staleness N=16 with the default
run settings (the expectation of D_i): 0.5 would rarely bite there, 1e-4 sits far below it.

Sources: DeepSeek-AI, "DeepSeek-V3.2", arXiv 2512.02556, the off-policy sequence masking M_{i,t} (Eq. 9
as TRL cites it); TRL trl/trainer/grpo_trainer.py `get_off_policy_mask` (`off_policy_mask_threshold`);
slime slime/utils/ppo_utils.py `compute_opsm_mask`.
"""

from dataclasses import dataclass

import torch

from offpolicy_bench.correction import RATIOS, CorrectionOutput, correction_log_ratio, register_correction
from offpolicy_bench.losses import masked_sum
from offpolicy_bench.registry import OffbenchError


@dataclass(frozen=True)
class OpsmArgs:
    delta: float = 1e-4
    """drop a negative-advantage sequence whose mean per-token log(mu/pi) exceeds this (>= 0)"""
    ratio: str = "current"
    """current: pi = pi_theta (the paper's, the staleness moves it); engine: pi = pi_old"""

    def check(self):
        if not self.delta >= 0:
            raise OffbenchError(f"correction.delta={self.delta}: OPSM's threshold must be >= 0 (default 1e-4)")
        if self.ratio not in RATIOS:
            raise OffbenchError(f"correction.ratio={self.ratio!r}: choose {' or '.join(RATIOS)}")


@register_correction("opsm", args=OpsmArgs)
def opsm(batch, args):
    """OPSM: zero the sequences with A < 0 whose mean per-token log(mu/pi) (a KL estimate) exceeds delta."""
    args.check()
    lens = batch.mask.sum(-1)
    kl = -masked_sum(correction_log_ratio(batch, args.ratio), batch.mask, -1) / lens.clamp_min(1.0)
    drop = (batch.seq_adv < 0) & (kl > args.delta) & (lens > 0)
    w = (~drop).to(batch.mask.dtype)[:, None].expand_as(batch.mask)
    real = (lens > 0).sum().clamp_min(1)
    return CorrectionOutput(weights=w, metrics={"dropped_seq_frac": (drop.sum() / real).item(),
                                                "seq_kl_mean": (kl.sum() / real).item()})
