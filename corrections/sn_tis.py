"""Self-normalised truncated IS weights (`correction=sn_tis`).

Formula (our words). First the truncated IS weights of token_tis / seq_tis, from the engine ratio:
    level=token:     w_t = min(pi_old(y_t)/mu(y_t), cap)
    level=sequence:  w_i = min(prod_t pi_old(y_t)/mu(y_t), cap), on every token of sequence i
then divide them by their mean over the mini-batch, so the weights average exactly 1:
    level=token:     w_t / (sum of w over all response tokens / number of response tokens)
    level=sequence:  w_i / (mean of w_i over the sequences that have a response token)
The truncation comes first and the normalisation second (verl's order), so a normalised weight can
exceed cap. If the mean is ~0 (<= 1e-8, e.g. no response token) the weights are left as they are.
Log-ratios are clamped to +-20 before exp (rate reported). With every ratio 1 the weights are all 1.

Why its own correction rather than a flag on token_tis / seq_tis: adding a key to an existing entry
would change the config (and so the run id) of every finished token_tis / seq_tis run.

Which ratio: the engine ratio pi_old / mu, as token_tis / seq_tis and verl's decoupled mode; inert in
pure staleness runs and in bypass mode (pi_old = mu).

Defaults: cap = 2.0 (verl's `rollout_is_threshold` default), level = token.

Sources: verl verl/trainer/ppo/rollout_corr_helper.py `compute_rollout_correction_weights` with
`rollout_is_batch_normalize=True`; docs/algo/rollout_corr_math.md section 3.4 "Batch Normalization".
"""

from dataclasses import dataclass

import torch

from offpolicy_bench.correction import CorrectionOutput, correction_log_ratio, register_correction
from offpolicy_bench.losses import clamp_log, masked_mean, masked_sum
from offpolicy_bench.registry import OffbenchError


@dataclass(frozen=True)
class SnTisArgs:
    cap: float = 2.0
    """truncation C before normalising: w = min(ratio, C) (> 0)"""
    level: str = "token"
    """token (per-token ratio, mean over tokens) or sequence (product over the sequence, mean over sequences)"""

    def check(self):
        if not self.cap > 0:
            raise OffbenchError(f"correction.cap={self.cap}: the truncation must be > 0 (default 2.0)")
        if self.level not in ("token", "sequence"):
            raise OffbenchError(f"correction.level={self.level!r}: use token or sequence")


@register_correction("sn_tis", args=SnTisArgs)
def sn_tis(batch, args):
    """Self-normalised truncated IS: w = min(pi_old/mu, C) divided by its batch mean, so the mean is 1."""
    args.check()
    lr = correction_log_ratio(batch, "engine")
    m = batch.mask
    if args.level == "token":
        lr_c, hit = clamp_log(lr)
        ratio = torch.exp(lr_c)
        w = ratio.clamp(max=args.cap) * m
        mean = w.sum() / m.sum().clamp_min(1.0)
        truncated = masked_mean((ratio > args.cap).to(m.dtype), m)
    else:
        lr_c, hit = clamp_log(masked_sum(lr, m, -1))
        real = (m.sum(-1) > 0).to(m.dtype)
        ratio = torch.exp(lr_c)
        seq_w = ratio.clamp(max=args.cap)
        mean = (seq_w * real).sum() / real.sum().clamp_min(1.0)
        truncated = ((ratio > args.cap).to(m.dtype) * real).sum() / real.sum().clamp_min(1.0)
        w = seq_w[:, None] * m
    factor = mean if mean > 1e-8 else torch.ones_like(mean)
    return CorrectionOutput(weights=w / factor, metrics={"norm_factor": factor.item(), "truncated_frac": truncated.item(),
                                                         "clamp_frac": hit})
