"""Rollout-correction modifiers: wrap any method to correct the engine/trainer gap pi_old vs mu.

A correction sees the mini-batch and returns per-token weights (multiplying the method's loss
matrix, detached) and/or a mask that drops tokens or whole sequences (they leave the aggregation
denominators too, as in verl's rejection sampling). Its ratio is pi_old / mu (verl's "rollout
correction", decoupled mode); in pure staleness runs pi_old = mu and a correction is inert apart
from numerics, by design.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, Optional

from torch import Tensor

from .losses import PolicyBatch
from .registry import OffbenchError, Registry


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
        import dataclasses

        values = {} if cfg is None else dict(cfg)
        values.pop("name", None)
        names = {f.name for f in dataclasses.fields(self.args)}
        unknown = set(values) - names
        if unknown:
            raise OffbenchError(f"correction {self.name!r} has no argument(s) {sorted(unknown)}; "
                                f"its arguments: {', '.join(sorted(names)) or 'none'}")
        return self.args(**values)


CORRECTIONS: Registry[Correction] = Registry("correction")


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
