"""Advantage estimators (`advantage=`): a registry like the methods' and the corrections', each entry a
pure function of the rollout batch's rewards and its group layout (plus the response lengths, for an
estimator that weights by tokens). The trainer asks the registry and never names an estimator; the
one used is recorded with every run (the `advantage` knob column), so reports never pool two.

    adv = get_advantage("rloo")(rewards, group_size, lengths=lengths)        # [B] -> [B]

Rewards come ordered group by group (G = rollout.group_size responses per prompt, one scalar reward
each). The sequence advantage is broadcast to every response token by `PolicyBatch`. None of these
adds a KL penalty to the reward: the harness has no reference policy (the VESPO setting).

The built-ins (formulas and sources in docs/METHODS.md, "Advantage estimators"):
  grpo          (R_i - mean_g R) / (std_g R + eps)                       the default, GRPO / verl `grpo`
  dr_grpo       R_i - mean_g R                                          Dr. GRPO, arXiv 2503.20783 Sec. 3.1
  rloo          R_i - mean_{j in g, j != i} R_j = G/(G-1) (R_i - mean_g R)   RLOO, arXiv 2402.14740
  reinforce_pp  a_i = R_i - mean_g R, then (a_i - mean_batch a) / sqrt(var_batch a + eps)
                                                                        REINFORCE++-baseline, arXiv 2501.03262
Dr. GRPO's other change, a constant length normaliser in the loss, is an aggregation mode, not an
advantage: `method.agg=seq-mean-token-sum-norm`. The two ablate apart (as TRL's `scale_rewards` and
`loss_type="dr_grpo"`, or verl's `norm_adv_by_std_in_grpo` and `loss_agg_mode`, keep them apart).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch
from torch import Tensor

from .losses import grpo_advantages
from .registry import OffbenchError, Registry, typed_args


@dataclass
class AdvantageEstimator:
    name: str
    fn: Callable[[Tensor, int, Tensor, Any], Tensor]
    args: type
    origin: str
    source: str  # paper / framework the formula is taken from (one line, for tables)
    min_group_size: int = 2
    doc: str = ""

    def make_args(self, cfg: Any = None) -> Any:
        return typed_args("advantage", self.name, self.args, cfg)

    def check_group_size(self, group_size: int) -> None:
        if group_size < self.min_group_size:
            raise OffbenchError(f"advantage={self.name} needs rollout.group_size >= {self.min_group_size} (its "
                                f"baseline comes from the other responses to the same prompt), got {group_size}")

    def __call__(self, rewards: Tensor, group_size: int, lengths: Optional[Tensor] = None, cfg: Any = None) -> Tensor:
        """Advantages [B] of rewards [B] (ordered group by group); `lengths` [B] = response tokens."""
        if rewards.dim() != 1 or rewards.numel() % group_size:
            raise OffbenchError(f"{rewards.numel()} rewards do not split into groups of {group_size}")
        self.check_group_size(group_size)
        if lengths is None:
            lengths = torch.ones_like(rewards)
        return self.fn(rewards, group_size, lengths.to(rewards.dtype), self.make_args(cfg))


ADVANTAGES: Registry[AdvantageEstimator] = Registry("advantage estimator")


def register_advantage(name: str, *, args: type, source: str, min_group_size: int = 2):
    """Decorator: register `fn(rewards [B], group_size, lengths [B], args) -> advantages [B]` under `name`."""

    def deco(fn):
        origin = f"{fn.__module__}.{fn.__qualname__}"
        ADVANTAGES.add(name, AdvantageEstimator(name, fn, args, origin, source, min_group_size,
                                                (fn.__doc__ or "").strip()), origin)
        return fn

    return deco


def get_advantage(name: str) -> AdvantageEstimator:
    from . import plugins

    plugins.load_builtin()
    return ADVANTAGES.get(name)


# ----------------------------------------------------------------------------- built-ins
@dataclass(frozen=True)
class GrpoArgs:
    eps: float = 1e-6
    """added to the group std before dividing (verl's epsilon)"""

    def check(self):
        if not self.eps > 0:
            raise OffbenchError(f"advantage.eps={self.eps}: must be > 0 (default 1e-6)")


@register_advantage("grpo", args=GrpoArgs, source="GRPO group baseline (DeepSeekMath arXiv 2402.03300 Sec. 4.1.2; "
                                                  "verl core_algos.py compute_grpo_outcome_advantage)")
def grpo(rewards, group_size, lengths, args):
    """GRPO: (R_i - mean_g R) / (std_g R + eps), std unbiased over the G responses to one prompt (the default)."""
    return grpo_advantages(rewards, group_size, eps=args.eps, std_norm=True)


@dataclass(frozen=True)
class NoArgs:
    """This estimator has no arguments."""


@register_advantage("dr_grpo", args=NoArgs, source="Dr. GRPO arXiv 2503.20783 Sec. 3.1 (verl "
                                                   "norm_adv_by_std_in_grpo=False, TRL scale_rewards=False)")
def dr_grpo(rewards, group_size, lengths, args):
    """Dr. GRPO: R_i - mean_g R, no std scaling (its constant normaliser is method.agg=seq-mean-token-sum-norm)."""
    r = rewards.view(-1, group_size)
    return (r - r.mean(-1, keepdim=True)).reshape(-1)


@register_advantage("rloo", args=NoArgs, source="RLOO leave-one-out baseline (arXiv 2402.14740; verl core_algos.py "
                                                "compute_rloo_outcome_advantage)")
def rloo(rewards, group_size, lengths, args):
    """RLOO: R_i - mean of the other G-1 rewards of its group = G/(G-1) (R_i - mean_g R)."""
    r = rewards.view(-1, group_size)
    others = (r.sum(-1, keepdim=True) - r) / (group_size - 1)
    return (r - others).reshape(-1)


@dataclass(frozen=True)
class ReinforcePpArgs:
    level: str = "token"
    """batch statistics over tokens (each response weighted by its length, as verl's masked_whiten and
    OpenRLHF) or over sequences (each response once)"""
    eps: float = 1e-8
    """added to the batch variance under the square root (verl masked_whiten)"""

    def check(self):
        if self.level not in ("token", "sequence"):
            raise OffbenchError(f"advantage.level={self.level!r}: choose token or sequence")
        if not self.eps > 0:
            raise OffbenchError(f"advantage.eps={self.eps}: must be > 0 (default 1e-8)")


@register_advantage("reinforce_pp", args=ReinforcePpArgs,
                    source="REINFORCE++-baseline arXiv 2501.03262 (verl core_algos.py "
                           "compute_reinforce_plus_plus_baseline_outcome_advantage)")
def reinforce_pp(rewards, group_size, lengths, args):
    """REINFORCE++ with baseline: subtract the group mean, then normalise by the rollout batch's mean and std."""
    r = rewards.view(-1, group_size)
    a = (r - r.mean(-1, keepdim=True)).reshape(-1)
    w = lengths if args.level == "token" else torch.ones_like(a)
    n = w.sum()
    if not n > 0:  # no response token anywhere: fall back to one weight per response
        w, n = torch.ones_like(a), torch.tensor(float(a.numel()), dtype=a.dtype)
    mean = (w * a).sum() / n
    var = (w * (a - mean) ** 2).sum() / n
    if n > 1:
        var = var * n / (n - 1)  # Bessel over the count (tokens or responses), as verl's masked_var
    return (a - mean) * torch.rsqrt(var + args.eps)


__all__ = ["ADVANTAGES", "AdvantageEstimator", "get_advantage", "register_advantage"]
