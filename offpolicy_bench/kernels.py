"""The gamma kernel of VESPO and its variance-bound diagnostics (paper Theorem 3.1, App. C).

phi(W) = W^c1 exp(c2 (1 - W)); phi(1) = 1; peak at W = c1/c2 with phi_max = (c1/c2)^c1 exp(c2 - c1).
K = sup_{w>0} phi(w)/w: for c1 > 1, ((c1-1)/c2)^(c1-1) exp(c2-c1+1) at w* = (c1-1)/c2; c1 = 1: e^c2;
c1 < 1: infinite. Bound: E_mu[phi^2] <= Z K C with Z = E_mu[phi], C >= E_Q[W] = E_mu[phi W] / Z. Compared with naive IS
through E_mu[phi^2] / E_mu[W^2] (bound_terms).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .losses import ess


def log_gamma_kernel(log_w: Tensor, c1, c2) -> Tensor:
    """log phi(W) = c1 log W + c2 (1 - W), finite or -inf for any finite log W (never NaN)."""
    return c1 * log_w + c2 * (-torch.expm1(log_w))


def kernel_peak(c1: float, c2: float) -> tuple[float, float]:
    """(argmax W, phi_max)."""
    w = c1 / c2
    return w, w**c1 * math.exp(c2 - c1)


def kernel_K(c1: float, c2: float) -> float:
    if c1 > 1:
        return ((c1 - 1) / c2) ** (c1 - 1) * math.exp(c2 - c1 + 1)
    if c1 == 1:
        return math.exp(c2)
    return math.inf


def bound_terms(phi: Tensor, log_w: Tensor, K: float) -> dict[str, float]:
    """Sample estimates of Z, E_Q[W], E[phi^2], the bound Z K C with C = E_Q[W], and the comparison
    the paper's claim is about: naive IS's second moment E[W^2] on the same weights and the ratio
    E[phi^2] / E[W^2] (below 1: the kernel has the smaller second moment; it is at most K^2, so with
    K > 1, as for (c1, c2) = (2, 3), it exceeds 1 where the weights have shrunk, where phi(W) > W;
    for (3, 2) K = 1 and the value says how much smaller). E[phi^2] / bound is not reported: phi(w) <= K w holds
    pointwise, so that ratio is at most 1 by construction and tells nothing."""
    phi = phi.double()
    w = torch.exp(log_w.double().clamp(max=350.0))  # W^2 stays finite in float64
    z = phi.mean()
    eq_w = (phi * w).mean() / z if z > 0 else torch.tensor(float("nan"), device=w.device)
    second = (phi * phi).mean()
    bound = z * K * eq_w
    w2 = (w * w).mean()
    return {"Z": z.item(), "EQ_W": eq_w.item(), "E_phi2": second.item(), "bound": bound.item(),
            "E_W2": w2.item(), "phi2_over_W2": (second / w2).item() if w2 > 0 else float("nan")}


def kernel_diagnostics(phi: Tensor, log_w: Tensor) -> dict[str, float]:
    """phi statistics for any kernel method: mean (Z), max, ESS, fraction of phi < 1e-3."""
    phi = phi.detach()
    return {
        "phi_mean": phi.mean().item(),
        "phi_max": phi.max().item(),
        "phi_min": phi.min().item(),
        "phi_ess": ess(phi),
        "phi_small_frac": (phi < 1e-3).float().mean().item(),
    }
