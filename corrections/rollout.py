"""Rollout-correction modifiers (verl's "rollout correction"), composable with any method:
`offbench run method=token_clip correction=token_tis correction.cap=2`.

All use the engine ratio pi_old / mu per token, log-space, clamped to +-20 before exp (rate reported).
"""

from dataclasses import dataclass

import torch

from offpolicy_bench.correction import CorrectionOutput, register_correction
from offpolicy_bench.losses import clamp_log, masked_mean, masked_sum
from offpolicy_bench.registry import OffbenchError


@dataclass(frozen=True)
class NoneArgs:
    """No correction."""


@register_correction("none", args=NoneArgs)
def none(batch, args):
    """No rollout correction (the default)."""
    return CorrectionOutput()


def _engine_log_ratio(batch):
    return (batch.old_logp - batch.behav_logp) * batch.mask


def _seq_keep(batch, keep_seq):
    return keep_seq[:, None].to(batch.mask.dtype).expand_as(batch.mask)


@dataclass(frozen=True)
class TisArgs:
    cap: float = 2.0
    """truncation C: w = min(ratio, C)"""


@register_correction("token_tis", args=TisArgs)
def token_tis(batch, args):
    """Token-level truncated IS: w_t = min(pi_old/mu, C), C = 2 (verl default)."""
    lr, hit = clamp_log(_engine_log_ratio(batch))
    w = torch.exp(lr).clamp(max=args.cap)
    return CorrectionOutput(weights=w, metrics={"w_mean": masked_mean(w, batch.mask).item(),
                                                "truncated_frac": masked_mean((torch.exp(lr) > args.cap).float(),
                                                                              batch.mask).item(),
                                                "clamp_frac": hit})


@register_correction("seq_tis", args=TisArgs)
def seq_tis(batch, args):
    """Sequence-level truncated IS: w = min(prod_t pi_old/mu, C) on every token of the sequence."""
    lr, hit = clamp_log(masked_sum(_engine_log_ratio(batch), batch.mask, -1))
    w = torch.exp(lr).clamp(max=args.cap)
    return CorrectionOutput(weights=w[:, None].expand_as(batch.mask),
                            metrics={"w_mean": w.mean().item(), "truncated_frac": (torch.exp(lr) > args.cap).float().mean().item(),
                                     "clamp_frac": hit})


@dataclass(frozen=True)
class MaskedIsArgs:
    low: float = 0.5
    """drop when the ratio is below this"""
    high: float = 2.0
    """drop when the ratio is above this"""
    level: str = "sequence"
    """sequence (ratio = prod_t pi_old/mu, drops whole sequences) or token (per-token ratio)"""


@register_correction("masked_is", args=MaskedIsArgs)
def masked_is(batch, args):
    """Masked IS: drop samples whose engine ratio lies outside [low, high]; no reweighting."""
    if args.level not in ("sequence", "token"):
        raise OffbenchError(f"correction.level={args.level!r}: use sequence or token")
    lr = _engine_log_ratio(batch)
    if args.level == "sequence":
        s = masked_sum(lr, batch.mask, -1)
        keep = _seq_keep(batch, (s >= torch.log(torch.tensor(args.low))) & (s <= torch.log(torch.tensor(args.high))))
    else:
        keep = ((lr >= torch.log(torch.tensor(args.low))) & (lr <= torch.log(torch.tensor(args.high)))).to(batch.mask.dtype)
    return CorrectionOutput(keep=keep, metrics={"dropped_frac": 1.0 - masked_mean(keep, batch.mask).item()})


@dataclass(frozen=True)
class GeoArgs:
    low: float = 0.999
    """lower bound of the per-token geometric mean ratio"""
    high: float = 1.001
    """upper bound of the per-token geometric mean ratio"""


@register_correction("geo_reject", args=GeoArgs)
def geo_reject(batch, args):
    """Geometric rejection: drop a sequence if exp(mean_t log(pi_old/mu)) is outside [low, high]."""
    lr = _engine_log_ratio(batch)
    g = torch.exp(masked_sum(lr, batch.mask, -1) / batch.mask.sum(-1).clamp_min(1.0))
    keep = _seq_keep(batch, (g >= args.low) & (g <= args.high))
    return CorrectionOutput(keep=keep, metrics={"dropped_frac": 1.0 - masked_mean(keep, batch.mask).item()})


@dataclass(frozen=True)
class VetoArgs:
    threshold: float = 1e-4
    """drop a sequence if any token's pi_old/mu is below this"""


@register_correction("token_veto", args=VetoArgs)
def token_veto(batch, args):
    """Token veto: drop the whole sequence if any token ratio pi_old/mu < threshold."""
    lr = _engine_log_ratio(batch)
    bad = ((lr < torch.log(torch.tensor(args.threshold))) & (batch.mask > 0)).any(-1)
    keep = _seq_keep(batch, ~bad)
    return CorrectionOutput(keep=keep, metrics={"dropped_frac": 1.0 - masked_mean(keep, batch.mask).item()})
