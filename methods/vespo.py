from dataclasses import dataclass

import torch

from offpolicy_bench.kernels import bound_terms, kernel_diagnostics, kernel_K, kernel_peak, log_gamma_kernel
from offpolicy_bench.losses import clamp_log, seq_log_ratio
from offpolicy_bench.method import WeightCurve, register_method
from offpolicy_bench.registry import OffbenchError

LENGTH_NORMS = ("none", "lin", "sqrt")


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
    length_norm: str = "none"
    """ablation: none (the paper's method) | lin (log W / T) | sqrt (log W / sqrt(T)), T = response length"""

    def __post_init__(self):
        if self.length_norm not in LENGTH_NORMS:
            raise OffbenchError(f"vespo: length_norm={self.length_norm!r} is not one of {', '.join(LENGTH_NORMS)}")


def _phi(args, w, positive):
    import numpy as np

    c1, c2 = (args.c1_pos, args.c2_pos) if positive else (args.c1_neg, args.c2_neg)
    with np.errstate(divide="ignore"):
        log_w = torch.tensor(np.log(w), dtype=torch.float64)
    return torch.exp(log_gamma_kernel(log_w, c1, c2)).numpy()  # the same log-space function the loss uses


def _cs(args, positive):
    return (args.c1_pos, args.c2_pos) if positive else (args.c1_neg, args.c2_neg)


def _peak_mark(args, positive):
    w, phi = kernel_peak(*_cs(args, positive))
    return w, phi, f"phi peak at W = c1/c2 = {w:.2f}\nphi_max = {phi:.2f}"


CURVE = WeightCurve(weight=_phi, label=lambda a, pos: "VESPO phi(W), (c1,c2)=({:g},{:g})".format(*_cs(a, pos)),
                    knots=lambda a, pos: [kernel_peak(*_cs(a, pos))[0]], mark=_peak_mark, style=("-", 2.2))

@register_method("vespo", args=VespoArgs, default_agg="token-mean", ratio="behaviour", level="sequence",
                 equation="VESPO paper Eq. 20", color="#d62728", curve=CURVE)
def vespo(batch, args):
    """VESPO: sequence weight W = pi_theta(y|x)/mu(y|x) reshaped by the gamma kernel.

    phi(W) = W^c1 exp(c2 (1 - W)), computed in log space as c1 log W + c2 (1 - W), detached;
    L_t = -sg(phi(W)) * A * log pi_theta(y_t). (c1, c2) = (2, 3) if A >= 0 else (3, 2).
    W is the true product over tokens (no length normalisation), against mu (the behaviour
    policy; the released recipe uses its recomputed pi_old, equal to mu when engine and trainer
    agree). log W is clamped to [-20, 20] as in the released code (phi < 1e-16 there either way);
    the clamp rate is reported. Aggregation token-mean, as in the released code.

    Ablations the paper runs (arXiv 2602.10693: length normalisation, symmetric kernels), as settings of
    this one method:
    - length_norm=lin: log W -> log W / T; length_norm=sqrt: log W -> log W / sqrt(T), with T the
      sequence's response length, applied before the kernel (and before the +-20 clamp). The
      paper reports the length-normalised variants collapse.
    - symmetric kernels: both signs (2, 3) is `method.c1_neg=2 method.c2_neg=3`; both signs
      (3, 2) is `method.c1_pos=3 method.c2_pos=2`.
    Theorem 3.1 diagnostics, per advantage group of the mini-batch (pos_: A >= 0, neg_: A < 0,
    only when the group is non-empty): Z = E[phi], EQ_W = E[phi W]/Z, E_phi2 = E[phi^2], bound =
    Z K C with C = EQ_W and K = sup phi(w)/w (kernels.kernel_K), E_W2 = naive IS's E[W^2] on the same
    sequences and phi2_over_W2 = E_phi2/E_W2 (the kernel's second moment against naive IS's).
    They are sample estimates over the group's sequences, with W the kernel's input (the
    normalised W under length_norm).
    """
    log_w = seq_log_ratio(batch.logp.detach(), batch.behav_logp, batch.mask)
    if args.length_norm == "lin":
        log_w = log_w / batch.seq_lens.clamp_min(1.0)
    elif args.length_norm == "sqrt":
        log_w = log_w / batch.seq_lens.clamp_min(1.0).sqrt()
    log_w, clamp_frac = clamp_log(log_w)
    pos = batch.seq_adv >= 0
    c1 = torch.full_like(log_w, args.c1_neg).masked_fill(pos, args.c1_pos)  # in log_w's dtype, not float32
    c2 = torch.full_like(log_w, args.c2_neg).masked_fill(pos, args.c2_pos)
    log_phi = log_gamma_kernel(log_w, c1, c2)
    phi = torch.exp(log_phi).detach()
    loss = -phi[:, None] * batch.advantages * batch.logp
    metrics = {**kernel_diagnostics(phi, log_w), "kernel_log_w_clamp_frac": clamp_frac}
    for prefix, group, (k1, k2) in (("pos_", pos, (args.c1_pos, args.c2_pos)),
                                    ("neg_", ~pos, (args.c1_neg, args.c2_neg))):
        if group.any():
            terms = bound_terms(phi[group], log_w[group], kernel_K(k1, k2))
            metrics.update({prefix + k: v for k, v in terms.items()})
    return loss, metrics
