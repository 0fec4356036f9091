"""Rollout-correction modifiers: wrap any method to correct the engine/trainer gap pi_old vs mu.

A correction sees the mini-batch and returns per-token weights (multiplying the method's loss
matrix, detached) and/or a mask that drops tokens or whole sequences (they leave the aggregation
denominators too, as in verl's rejection sampling). Most read the engine ratio pi_old / mu (verl's
"rollout correction", decoupled mode): in pure staleness runs pi_old = mu and such a correction is
inert apart from numerics, by design. Those whose source compares the behaviour policy with the policy
being trained (M2PO, OPSM, TRM) take `ratio=current`, pi_theta / mu with pi_theta detached, which the
staleness moves; `correction_log_ratio` is the one place both are computed.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch
from torch import Tensor

from .losses import PolicyBatch
from .registry import OffbenchError, Registry, typed_args


@dataclass
class CorrectionOutput:
    weights: Optional[Tensor] = None  # [B, T] detached multiplier of the loss matrix
    keep: Optional[Tensor] = None  # [B, T] 1 = keep, 0 = drop (applied to the mask)
    metrics: dict[str, float] | None = None


@dataclass
class Correction:
    name: str
    fn: Callable[[PolicyBatch, Any], CorrectionOutput]
    args: type
    origin: str
    doc: str = ""

    def make_args(self, cfg: Any = None) -> Any:
        return typed_args("correction", self.name, self.args, cfg)


CORRECTIONS: Registry[Correction] = Registry("correction")

RATIOS = ("engine", "current")


def correction_log_ratio(batch: PolicyBatch, ratio: str = "engine") -> Tensor:
    """The per-token log-ratio a correction reads, [B, T], zero on padding, detached:

    engine:  log pi_old - log mu. The engine/trainer gap (plus lag); verl's decoupled-mode rollout
             ratio. Zero in pure staleness runs and in bypass mode, where pi_old = mu.
    current: log pi_theta - log mu, pi_theta being the policy as this mini-batch's update starts (its
             log-probs detached). The trainer takes one optimizer step per mini-batch, so this is
             also AReaL's proximal policy over the behaviour policy and verl's bypass-mode ratio; it
             carries the staleness (mini-batch i is i versions old) as well as the engine gap.
    """
    if ratio == "engine":
        lr = batch.old_logp - batch.behav_logp
    elif ratio == "current":
        lr = batch.logp.detach() - batch.behav_logp
    else:
        raise OffbenchError(f"correction.ratio={ratio!r}: choose {' or '.join(RATIOS)}")
    return torch.where(batch.mask > 0, lr, torch.zeros_like(lr))


def register_correction(name: str, *, args: type):
    def deco(fn):
        origin = f"{fn.__module__}.{fn.__qualname__}"
        CORRECTIONS.add(name, Correction(name, fn, args, origin, (fn.__doc__ or "").strip()), origin)
        return fn

    return deco


def get_correction(name: str) -> Correction:
    from . import plugins

    plugins.load_builtin()
    return CORRECTIONS.get(name)


def apply_correction(batch: PolicyBatch, correction: Correction | None, cfg: Any = None
                     ) -> tuple[PolicyBatch, Optional[Tensor], dict[str, float]]:
    """(batch with the mask narrowed, loss weights or None, metrics)."""
    if correction is None:
        return batch, None, {}
    out = correction.fn(batch, correction.make_args(cfg))
    metrics = {f"corr_{k}": v for k, v in (out.metrics or {}).items()}
    if out.keep is not None:
        keep = out.keep.to(batch.mask.dtype) * batch.mask
        metrics["corr_kept_token_frac"] = (keep.sum() / batch.mask.sum().clamp_min(1.0)).item()
        batch = dataclasses.replace(batch, mask=keep)
    weights = out.weights.detach() if out.weights is not None else None
    return batch, weights, metrics
