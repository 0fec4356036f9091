"""M2PO: second-moment masking (`correction=m2po`).

Formula (our words). On the mini-batch's response tokens take m_t = (log r_t)^2. Sort the tokens by
m_t, largest first, and mask the smallest number k of them such that the mean of m over the tokens
left is below tau. With every ratio 1 nothing is masked; if even the single smallest m_t is >= tau,
every token is masked (the loss is then 0 and finite). Masked tokens leave the aggregation
denominators, as AReaL narrows its loss mask.

Which ratio. The paper writes r = pi_theta / pi_behav, the policy being trained over the one that
sampled. AReaL computes the mask once per update from its proximal log-probs (the trainer's policy,
recomputed right before the update) against the behaviour log-probs. This trainer takes one optimizer
step per mini-batch, so pi_theta at this mini-batch's forward IS that proximal policy: the default
`ratio=current` uses log pi_theta (detached) - log mu, and so masks the tokens that staleness has moved
most. `ratio=engine` uses log pi_old - log mu instead (inert in pure staleness runs, like token_tis).

Defaults: tau = 0.04 (AReaL's `actor.m2_threshold` in examples/math/gsm8k_m2po.yaml; the paper's
tau_M2), ratio = current.

Sources: Zheng, Zhao, Chen, "Prosperity before Collapse: How Far Can Off-Policy RL Reach with Stale
Data on LLMs?", arXiv 2510.01161 (M2PO, the second-moment constraint on log importance ratios);
AReaL areal/trainer/ppo/actor.py `_apply_m2po_masking` / `_get_m2po_loss_mask` (`m2_threshold`).
Deviation from AReaL: when no suffix mean falls below tau, AReaL keeps one token (to avoid an empty
mask); we mask all, which is the rule as stated and leaves a zero, finite loss.
"""

from dataclasses import dataclass

import torch

from offpolicy_bench.correction import RATIOS, CorrectionOutput, correction_log_ratio, register_correction
from offpolicy_bench.registry import OffbenchError


@dataclass(frozen=True)
class M2poArgs:
    tau: float = 0.04
    """threshold on the mean of (log r)^2 over the tokens kept (> 0)"""
    ratio: str = "current"
    """current: r = pi_theta/mu (the paper's, the staleness moves it); engine: r = pi_old/mu"""

    def check(self):
        if not self.tau > 0:
            raise OffbenchError(f"correction.tau={self.tau}: M2PO's threshold must be > 0 (default 0.04)")
        if self.ratio not in RATIOS:
            raise OffbenchError(f"correction.ratio={self.ratio!r}: choose {' or '.join(RATIOS)}")


def m2po_keep(m2: torch.Tensor, mask: torch.Tensor, tau: float) -> torch.Tensor:
    """[B, T] 1/0 keep mask: drop the largest m2 tokens until the mean over the rest is < tau."""
    real = mask > 0
    vals = m2[real].double()
    n = vals.numel()
    keep_flat = torch.ones(n, dtype=torch.bool, device=m2.device)
    if n:
        order = torch.sort(vals, descending=True, stable=True).indices
        s = vals[order]
        rest_mean = s.flip(0).cumsum(0).flip(0) / torch.arange(n, 0, -1, dtype=s.dtype, device=s.device)
        below = torch.nonzero(rest_mean < tau)
        k = int(below[0]) if below.numel() else n  # tokens to drop: the k largest
        keep_flat[order[:k]] = False
    keep = torch.zeros_like(mask, dtype=torch.bool)
    keep[real] = keep_flat
    return keep.to(mask.dtype)


@register_correction("m2po", args=M2poArgs)
def m2po(batch, args):
    """M2PO: mask the tokens with the largest (log r)^2 until the batch's mean (log r)^2 < tau."""
    args.check()
    m2 = correction_log_ratio(batch, args.ratio) ** 2
    keep = m2po_keep(m2, batch.mask, args.tau)
    n = batch.mask.sum().clamp_min(1.0)
    kept = (keep * batch.mask).sum()
    return CorrectionOutput(keep=keep, metrics={
        "m2_before": ((m2 * batch.mask).sum() / n).item(),
        "m2_after": ((m2 * keep * batch.mask).sum() / kept.clamp_min(1.0)).item(),
        "masked_frac": (1.0 - kept / n).item() if batch.mask.sum() > 0 else 0.0})
