from dataclasses import dataclass

import torch

from offpolicy_bench.kernels import kernel_diagnostics, log_gamma_kernel
from offpolicy_bench.losses import clamp_log, seq_log_ratio
from offpolicy_bench.method import register_method


@dataclass(frozen=True)
class VespoArgs:
    c1_pos: float = 2.0
    """kernel power c1 for A >= 0"""
    c2_pos: float = 3.0
    """kernel decay c2 for A >= 0"""
    c1_neg: float = 3.0
    """kernel power c1 for A < 0"""
    c2_neg: float = 2.0
    """kernel decay c2 for A < 0"""


@register_method("vespo", args=VespoArgs, default_agg="token-mean", ratio="behaviour", level="sequence",
                 equation="VESPO paper Eq. 20")
def vespo(batch, args):
    """VESPO: sequence weight W = pi_theta(y|x)/mu(y|x) reshaped by the gamma kernel.

    phi(W) = W^c1 exp(c2 (1 - W)), computed in log space as c1 log W + c2 (1 - W), detached;
    L_t = -sg(phi(W)) * A * log pi_theta(y_t). (c1, c2) = (2, 3) if A >= 0 else (3, 2).
    W is the true product over tokens (no length normalisation), against mu (the behaviour
    policy; the released recipe uses its recomputed pi_old, equal to mu when engine and trainer
    agree). log W is clamped to [-20, 20] as in the released code (phi < 1e-16 there either way);
    the clamp rate is reported. Aggregation token-mean, as in the released code.
    """
    log_w, clamp_frac = clamp_log(seq_log_ratio(batch.logp.detach(), batch.behav_logp, batch.mask))
    pos = batch.seq_adv >= 0
    c1 = torch.where(pos, args.c1_pos, args.c1_neg).to(log_w.dtype)
    c2 = torch.where(pos, args.c2_pos, args.c2_neg).to(log_w.dtype)
    log_phi = log_gamma_kernel(log_w, c1, c2)
    phi = torch.exp(log_phi).detach()
    loss = -phi[:, None] * batch.advantages * batch.logp
    return loss, {**kernel_diagnostics(phi, log_w), "log_w_clamp_frac": clamp_frac}
