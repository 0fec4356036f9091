from dataclasses import dataclass

import torch

from offpolicy_bench.losses import clamp_log, masked_mean
from offpolicy_bench.method import WeightCurve, check_arg, register_method


@dataclass(frozen=True)
class ASPOArgs:
    eps_low: float = 0.2
    """A < 0: tokens with r < 1 - eps_low lose their gradient (PPO's floor) (Archer2.0 scripts: 0.2)"""
    eps_high: float = 0.2
    """A >= 0: tokens with r > 1 + eps_high lose their gradient (PPO's cap) (Archer2.0 scripts: 0.2)"""
    dual_clip_c: float = 3.0
    """soft dual clip: a weight that would exceed c is held at c and the token keeps that gradient
    (Archer2.0 scripts: clip_ratio_c 3.0)"""

    def __post_init__(self):
        check_arg("aspo", "eps_low", self.eps_low, 0.0, 1.0, high_open=True)
        check_arg("aspo", "eps_high", self.eps_high, 0.0, None)
        check_arg("aspo", "dual_clip_c", self.dual_clip_c, 1.0, None, low_open=True)


def aspo_weight(r, positive, eps_low, eps_high, c):
    """ASPO's gradient weight on A * grad log pi at token ratios r (a tensor):
    A >= 0: 0 above 1 + eps_high, 1/r down to r = 1/c, c below;  A < 0: 0 below 1 - eps_low, r up to c, c above."""
    if positive:
        return torch.where(r > 1.0 + eps_high, torch.zeros_like(r), 1.0 / r.clamp(min=1.0 / c))
    return torch.where(r < 1.0 - eps_low, torch.zeros_like(r), r.clamp(max=c))


CURVE = WeightCurve(
    weight=lambda a, w, pos: aspo_weight(torch.as_tensor(w, dtype=torch.float64), pos, a.eps_low, a.eps_high,
                                         a.dual_clip_c).numpy(),
    label=lambda a, pos: (f"ASPO: 1/r, zero above 1+{a.eps_high:g}" if pos
                          else f"ASPO: r, zero below 1-{a.eps_low:g}, capped at {a.dual_clip_c:g}"),
    knots=lambda a, pos: [1 + a.eps_high, 1 / a.dual_clip_c] if pos else [1 - a.eps_low, a.dual_clip_c],
    style=("-.", 1.6))


@register_method("aspo", args=ASPOArgs, default_agg="token-mean", ratio="old", level="token",
                 equation="ASPO, arXiv 2510.06062 (flipped positive ratios, soft dual clip)", color="#66a61e",
                 curve=CURVE)
def aspo(batch, args):
    """ASPO: PPO's token weights with the ratio flipped for positive-advantage tokens, and a soft dual clip.

    r_t = pi_theta / pi_old per token (vs pi_old). In PPO the gradient on A grad log pi is r_t inside the
    clip band, so an already-likely positive token (r > 1) is pushed hardest. ASPO weights positive tokens
    by 1/r_t instead (the less the token has grown, the larger its update) and keeps r_t for negative ones:
        A >= 0:  w_t = 0 if r_t > 1 + eps_high;  c if r_t < 1/c;  else 1 / r_t
        A <  0:  w_t = 0 if r_t < 1 - eps_low;   c if r_t > c;    else r_t
        L_t = -sg(w_t) * A_t * log pi_t
    The zeros are PPO's clip on the side the advantage pushes; the c branches are the soft dual clip: the
    weight is held at c and the token keeps a gradient (a hard dual clip would zero it).
    Sources: arXiv 2510.06062 (ASPO); released code wizard-III/Archer2.0 verl/trainer/ppo/core_algos.py
    compute_policy_loss_archer and scripts/train/run_archer2.0_*.sh (clip 0.2 / 0.2, clip_ratio_c 3).
    Deviations: Archer2.0 also widens the clip band to 0.4 for high-entropy tokens (Archer's entropy rule,
    not ASPO's; the batch has no entropies); its loss value mixes surrogate forms (-A/r for positive
    tokens), ours is the REINFORCE form above with the same gradient. A = 0 takes the A >= 0 branch (as
    Archer2.0; no gradient either way). Conventions: log r clamped to +-20 before exp() (clamp rate
    reported). Aggregation token-mean. Diagnostics: clip_frac (weight 0), dual_clip_frac (weight held at
    c), pos_weight_mean (mean w over A > 0 tokens).
    """
    m = batch.mask
    adv = batch.advantages
    log_r, clamp_frac = clamp_log((batch.logp - batch.old_logp).detach())
    r = torch.exp(log_r)
    pos = adv >= 0
    c = args.dual_clip_c
    w = torch.where(pos, aspo_weight(r, True, args.eps_low, args.eps_high, c),
                    aspo_weight(r, False, args.eps_low, args.eps_high, c))
    loss = -w * adv * batch.logp
    clipped = torch.where(pos, r > 1.0 + args.eps_high, r < 1.0 - args.eps_low)
    dual = torch.where(pos, r < 1.0 / c, r > c)
    pos_m = m * pos
    return loss, {"clip_frac": masked_mean(clipped.to(r.dtype), m).item(),
                  "dual_clip_frac": masked_mean(dual.to(r.dtype), m).item(),
                  "pos_weight_mean": ((w * pos_m).sum() / pos_m.sum().clamp_min(1.0)).item(),
                  "ratio_clamp_frac": clamp_frac}
