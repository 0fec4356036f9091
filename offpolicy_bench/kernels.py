"""The gamma kernel of VESPO and its variance-bound diagnostics (paper Theorem 3.1, App. C).

phi(W) = W^c1 exp(c2 (1 - W)); phi(1) = 1; peak at W = c1/c2 with phi_max = (c1/c2)^c1 exp(c2 - c1).
K = sup_{w>0} phi(w)/w: for c1 > 1, ((c1-1)/c2)^(c1-1) exp(c2-c1+1) at w* = (c1-1)/c2; c1 = 1: e^c2;
c1 < 1: infinite. Bound: E_mu[phi^2] <= Z K C with Z = E_mu[phi], C >= E_Q[W] = E_mu[phi W] / Z.
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
    """Sample estimates of Z, E_Q[W], E[phi^2] and the bound Z K C with C = E_Q[W]."""
    phi = phi.double()
    w = torch.exp(log_w.double().clamp(max=700.0))
    z = phi.mean()
    eq_w = (phi * w).mean() / z if z > 0 else torch.tensor(float("nan"), device=w.device)
    second = (phi * phi).mean()
    bound = z * K * eq_w
    return {"Z": z.item(), "EQ_W": eq_w.item(), "E_phi2": second.item(), "bound": bound.item(),
            "bound_tightness": (second / bound).item() if bound > 0 else float("nan")}


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
