from dataclasses import dataclass
from typing import Optional

import torch

from offpolicy_bench.losses import clamp_log, masked_mean
from offpolicy_bench.method import check_arg, register_method


@dataclass(frozen=True)
class BAPOArgs:
    target_pos_share: float = 0.5
    """rho_0: the share of the policy-gradient contribution that positive-advantage tokens should reach (0.5)"""
    low_start: float = 0.6
    """a-: starting lower ratio bound c_low (an explicit bound, not 1 - eps) (paper: range [0.6, 0.9])"""
    low_max: float = 0.9
    """b-: the largest value c_low may be raised to"""
    low_step: float = 0.05
    """step by which c_low is raised (the released recipe's run script: 0.05); 0 keeps it fixed"""
    high_start: float = 1.2
    """a+: starting upper ratio bound c_high (paper: range [1.2, 3.0])"""
    high_max: float = 3.0
    """b+: the largest value c_high may be raised to"""
    high_step: float = 0.1
    """step by which c_high is raised (the released recipe's run script: 0.1); 0 keeps it fixed"""
    dual_clip_c: Optional[float] = 3.0
    """dual clip for A < 0: loss capped at -c*A (the released recipe: verl's clip_ratio_c 3.0); null disables it"""

    def __post_init__(self):
        check_arg("bapo", "target_pos_share", self.target_pos_share, 0.0, 1.0)
        check_arg("bapo", "low_start", self.low_start, 0.0, 1.0)
        check_arg("bapo", "low_max", self.low_max, self.low_start, 1.0)
        check_arg("bapo", "low_step", self.low_step, 0.0, None)
        check_arg("bapo", "high_start", self.high_start, 1.0, None)
        check_arg("bapo", "high_max", self.high_max, self.high_start, None)
        check_arg("bapo", "high_step", self.high_step, 0.0, None)
        check_arg("bapo", "dual_clip_c", self.dual_clip_c, 1.0, None, low_open=True, none_ok=True)


def positive_share(ratio, adv, mask, c_low, c_high, dual_clip_c):
    """Share of the gradient carried by A > 0 tokens under bounds [c_low, c_high]: sum of r |A| over the
    tokens that keep a gradient (A > 0: r <= c_high; A < 0: c_low <= r, and r <= c under the dual clip),
    positive ones over all. 1.0 when no token carries any."""
    pos = (adv > 0) & (ratio <= c_high)
    neg = (adv < 0) & (ratio >= c_low)
    if dual_clip_c is not None:
        neg = neg & (ratio <= dual_clip_c)
    contrib = ratio * adv.abs() * mask
    p, n = (contrib * pos).sum().item(), (contrib * neg).sum().item()
    return 1.0 if p + n == 0 else p / (p + n)


@register_method("bapo", args=BAPOArgs, default_agg="token-mean", ratio="old", level="token",
                 equation="BAPO, arXiv 2510.18927 (adaptive clip bounds)", color="#e7298a")
def bapo(batch, args):
    """BAPO: PPO whose clip bounds are re-chosen on every mini-batch to balance positive and negative tokens.

    r_t = pi_theta / pi_old per token (vs pi_old). Start from [c_low, c_high] = [low_start, high_start];
    rho = sum_{A>0, r<=c_high} r|A| / (that + sum_{A<0, r>=c_low} r|A|) is the share of the gradient the
    positive tokens carry. While rho < target_pos_share, raise c_low by low_step up to low_max (more
    low-ratio negative tokens lose their gradient), then c_high by high_step up to high_max (more
    high-ratio positive tokens keep theirs). Then the PPO loss with those explicit bounds:
        L_t = max(-A r_t, -A clip(r_t, c_low, c_high)),  for A < 0 also min(L_t, -c A) (dual clip).
    Sources: arXiv 2510.18927 (BAPO, Xi et al.); released recipe WooooDyy/BAPO recipe/bapo/policy_loss.py
    (search order: lower bound first, then upper) and run_bapo_example.sh (steps 0.05 / 0.1); defaults
    rho_0 = 0.5, [0.6, 0.9], [1.2, 3.0] as the README gives for the paper.
    Source disagreement, our choice: the paper defines rho as the positive tokens' share of the
    contribution and says raising c_low filters low-probability negative tokens; the released recipe
    instead compares positive/negative (not the share) with its target, and counts clipped tokens at
    their bound's value, so raising c_low there adds negative contribution. We count only tokens that keep
    a gradient (as above), so every step can only raise rho, as the paper describes.
    The bounds are per mini-batch (the method sees one). Conventions: log r clamped to +-20 before exp()
    (clamp rate reported). Aggregation token-mean. Diagnostics: clip_low, clip_high (chosen bounds),
    pos_share (final rho), pos_share_start, clip_frac, dual_clip_frac.
    """
    m = batch.mask
    adv = batch.advantages
    log_r, clamp_frac = clamp_log(batch.logp - batch.old_logp)
    ratio = torch.exp(log_r)
    r = ratio.detach()
    c_low, c_high = args.low_start, args.high_start
    rho = rho0 = positive_share(r, adv, m, c_low, c_high, args.dual_clip_c)
    while rho < args.target_pos_share and c_low < args.low_max and args.low_step > 0:
        c_low = min(c_low + args.low_step, args.low_max)
        rho = positive_share(r, adv, m, c_low, c_high, args.dual_clip_c)
    while rho < args.target_pos_share and c_high < args.high_max and args.high_step > 0:
        c_high = min(c_high + args.high_step, args.high_max)
        rho = positive_share(r, adv, m, c_low, c_high, args.dual_clip_c)
    loss1 = -adv * ratio
    loss2 = -adv * ratio.clamp(c_low, c_high)
    loss = torch.maximum(loss1, loss2)
    metrics = {"clip_low": c_low, "clip_high": c_high, "pos_share": rho, "pos_share_start": rho0,
               "clip_frac": masked_mean((loss2 > loss1).to(r.dtype), m).item(), "ratio_clamp_frac": clamp_frac}
    if args.dual_clip_c is not None:
        loss3 = -adv * args.dual_clip_c
        metrics["dual_clip_frac"] = masked_mean(((adv < 0) & (loss > loss3)).to(r.dtype), m).item()
        loss = torch.where(adv < 0, torch.minimum(loss, loss3), loss)
    return loss, metrics
