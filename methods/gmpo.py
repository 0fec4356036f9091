from dataclasses import dataclass

import torch

from offpolicy_bench.losses import clamp_log, masked_mean
from offpolicy_bench.method import register_method


@dataclass(frozen=True)
class GMPOArgs:
    eps_low: float = 0.4
    """log-ratio floor -eps_low (for A < 0); GMPO paper's range (e^-0.4, e^0.4)"""
    eps_high: float = 0.4
    """log-ratio cap eps_high (for A > 0); GMPO paper's range (e^-0.4, e^0.4)"""


@register_method("gmpo", args=GMPOArgs, default_agg="seq-mean-token-mean", ratio="old", level="sequence",
                 equation="GMPO, arXiv 2507.20673 (geometric-mean clipped objective)", color="#17becf")
def gmpo(batch, args):
    """GMPO: PPO-style clipping of the geometric mean of the token ratios.

    x_t = log rho_t = logp_t - old_logp_t (vs pi_old, not mu), differentiated through.
    g_t = sgn(A) min(sgn(A) x_t, sgn(A) clip(x_t, -eps_low, eps_high))
        (A > 0: min(x, clip(x)), only the top is clipped; A < 0: max(x, clip(x)), only the bottom)
    L_seq = -A exp((1/T) sum_t g_t), T = the sequence's response length.
    L_seq is written on every token of its sequence, so the default seq-mean-token-mean gives
    mean_i L_seq_i, the GMPO objective; token-mean would weight sequences by length.
    Defaults eps_low = eps_high = 0.4: the GMPO paper's clip range (e^-0.4, e^0.4).
    Conventions: A is the sequence advantage (batch.seq_adv); A = 0 gives sgn 0, g = 0, L = 0.
    The exponent is clamped to +-20 for the value only (exponent - sg(exponent) + sg(clamp)),
    so the gradient stays finite and nonzero; clamp rate reported. clip_frac is the share of
    response tokens whose log ratio is clipped (zero gradient). No KL, no entropy bonus.
    Sources: arXiv 2507.20673 (GMPO, Zhao et al.); verl core_algos.py compute_policy_loss_geo_mean
    (loss_mode geo_mean).
    """
    m = batch.mask
    adv = batch.seq_adv
    sgn = torch.sign(adv)[:, None]
    x = batch.logp - batch.old_logp
    xc = x.clamp(-args.eps_low, args.eps_high)
    g = sgn * torch.minimum(sgn * x, sgn * xc)
    expo = masked_mean(g, m, -1)
    expo_c, clamp_frac = clamp_log(expo.detach())
    l_seq = -adv * torch.exp(expo - expo.detach() + expo_c)
    loss = l_seq[:, None].expand_as(batch.logp)
    clipped = (sgn * xc < sgn * x).detach()
    return loss, {"clip_frac": masked_mean(clipped.float(), m).item(),
                  "geo_ratio_mean": torch.exp(expo_c).mean().item(), "exponent_clamp_frac": clamp_frac}
