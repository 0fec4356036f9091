from dataclasses import dataclass

import torch

from offpolicy_bench.losses import clamp_log, masked_mean
from offpolicy_bench.method import WeightCurve, register_method


@dataclass(frozen=True)
class SAPOArgs:
    tau_pos: float = 1.0
    """gate temperature for tokens with A > 0 (SAPO paper 1.0)"""
    tau_neg: float = 1.05
    """gate temperature for tokens with A <= 0 (SAPO paper 1.05; sharper, so A<0 is damped faster)"""


def _gate(args, w, positive):
    import numpy as np

    s = 1.0 / (1.0 + np.exp(-(args.tau_pos if positive else args.tau_neg) * (w - 1.0)))
    return 4.0 * w * s * (1.0 - s)


CURVE = WeightCurve(weight=_gate, label=lambda a, pos: f"SAPO gate 4 r s(1-s), tau={a.tau_pos if pos else a.tau_neg:g}",
                    style=("--", 1.8))

@register_method("sapo", args=SAPOArgs, default_agg="token-mean", ratio="old", level="token",
                 equation="SAPO, arXiv 2511.20347 (soft gate)", color="#ff7f0e", curve=CURVE)
def sapo(batch, args):
    """SAPO: a smooth sigmoid gate on the token ratio instead of a hard clip.

    r_t = pi_theta / pi_old per token (vs pi_old, not mu), differentiated through.
    f(r) = (4/tau) sigmoid(tau (r - 1));   L_t = -f(r_t) * A_t
    gradient: -A_t * 4 r_t s_t (1 - s_t) grad log pi, s_t = sigmoid(tau (r_t - 1)); the
    coefficient is 1 at r = 1 (so on-policy SAPO is the plain policy gradient) and decays
    smoothly for r far from 1. tau = tau_pos if A_t > 0 else tau_neg (A = 0 takes tau_neg, as verl's
    compute_policy_loss_sapo and TRL's loss_type="sapo"; it contributes no gradient either way). The sign
    is per token. Sources: arXiv 2511.20347 (SAPO, Gao et al.); verl core_algos.py
    compute_policy_loss_sapo; TRL trl/trainer/grpo_trainer.py.
    Conventions: log r_t clamped to +-20 before exp() (there the true coefficient is < 1e-8;
    clamped tokens get zero gradient), clamp rate reported. Aggregation token-mean (as the
    GRPO/VESPO baselines). Value note: f(1) = 2/tau, so the loss value has a constant offset
    vs -r A; only the gradient matters. No KL, no entropy bonus.
    """
    log_r, clamp_frac = clamp_log(batch.logp - batch.old_logp)
    r = torch.exp(log_r)
    adv = batch.advantages
    tau = torch.full_like(r, args.tau_neg).masked_fill(adv > 0, args.tau_pos)  # in r's dtype, not float32
    s = torch.sigmoid(tau * (r - 1.0))
    loss = -(4.0 / tau) * s * adv
    m = batch.mask
    with torch.no_grad():
        coef = 4.0 * r * s * (1.0 - s)
    return loss, {"gate_coef_mean": masked_mean(coef, m).item(), "ratio_clamp_frac": clamp_frac}
