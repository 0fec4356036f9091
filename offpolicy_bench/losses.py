"""Shared pieces every method uses: the batch, log-ratios, aggregation, advantages, diagnostics.

All ratios live in log space. A clamp is applied only where an exponential would overflow, and
every clamp reports how often it bit (`*_clamp_frac`), so no value is changed silently.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .registry import OffbenchError

AGG_MODES = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm")
LOG_RATIO_CLAMP = 20.0  # |log ratio| bound before exp(), as verl does; hit-rate is reported


@dataclass
class PolicyBatch:
    """Per-token tensors [B, T] of one mini-batch; `mask` is 1 on response tokens, 0 on padding.

    logp:       log pi_theta(y_t | ...), current policy, carries the gradient
    old_logp:   log pi_old, the policy at the start of the rollout batch (no grad)
    behav_logp: log mu, the policy that sampled (recorded at sampling time; no grad)
    advantages: [B] or [B, T]; a [B] sequence advantage is broadcast to every token
    version_gap: how many optimizer steps the policy has moved since mu sampled this mini-batch
    """

    logp: Tensor
    old_logp: Tensor
    behav_logp: Tensor
    advantages: Tensor
    mask: Tensor
    version_gap: int = 0

    def __post_init__(self):
        if self.logp.dim() != 2:
            raise OffbenchError(f"PolicyBatch.logp must be [B, T], got shape {tuple(self.logp.shape)}")
        shape = self.logp.shape
        if self.advantages.dim() == 1:
            self.advantages = self.advantages[:, None].expand(shape)
        for name in ("old_logp", "behav_logp", "advantages", "mask"):
            t = getattr(self, name)
            if t.shape != shape:
                raise OffbenchError(f"PolicyBatch.{name} has shape {tuple(t.shape)}, logp has {tuple(shape)}")
        self.mask = self.mask.to(self.logp.dtype)
        self.old_logp = self.old_logp.detach()
        self.behav_logp = self.behav_logp.detach()
        self.advantages = self.advantages.detach()

    @property
    def seq_lens(self) -> Tensor:
        return self.mask.sum(-1)

    @property
    def seq_adv(self) -> Tensor:
        """Sequence advantage [B]: the advantage of the first response token."""
        first = self.mask.argmax(-1)
        return self.advantages.gather(1, first[:, None]).squeeze(1)


# ----------------------------------------------------------------------------- masked reductions
def masked_sum(x: Tensor, mask: Tensor, dim=None) -> Tensor:
    return (x * mask).sum() if dim is None else (x * mask).sum(dim)


def masked_mean(x: Tensor, mask: Tensor, dim=None) -> Tensor:
    return masked_sum(x, mask, dim) / mask.sum(dim).clamp_min(1.0) if dim is not None else masked_sum(
        x, mask
    ) / mask.sum().clamp_min(1.0)


def aggregate(loss_mat: Tensor, mask: Tensor, mode: str, norm_len: float | None = None) -> Tensor:
    """Reduce a per-token loss matrix [B, T] to a scalar.

    token-mean:              sum_{i,t} L m / sum_{i,t} m
    seq-mean-token-mean:     mean_i ( sum_t L m / sum_t m )
    seq-mean-token-sum:      mean_i sum_t L m
    seq-mean-token-sum-norm: sum_{i,t} L m / (B * norm_len)   (Dr.GRPO's constant normaliser;
                             norm_len defaults to T, the padded response length)
    """
    mask = mask.to(loss_mat.dtype)
    if mode == "token-mean":
        return masked_sum(loss_mat, mask) / mask.sum().clamp_min(1.0)
    if mode == "seq-mean-token-mean":
        return (masked_sum(loss_mat, mask, -1) / mask.sum(-1).clamp_min(1.0)).mean()
    if mode == "seq-mean-token-sum":
        return masked_sum(loss_mat, mask, -1).mean()
    if mode == "seq-mean-token-sum-norm":
        denom = float(norm_len if norm_len is not None else loss_mat.shape[-1])
        return masked_sum(loss_mat, mask) / (loss_mat.shape[0] * denom)
    raise OffbenchError(f"unknown aggregation mode {mode!r}; choose one of {', '.join(AGG_MODES)}")


# ----------------------------------------------------------------------------- log ratios
def seq_log_ratio(logp: Tensor, ref_logp: Tensor, mask: Tensor) -> Tensor:
    """log W = sum_t (logp_t - ref_logp_t) over response tokens, per sequence [B]. Not clamped."""
    return masked_sum(logp - ref_logp, mask, -1)


def clamp_log(x: Tensor, bound: float = LOG_RATIO_CLAMP) -> tuple[Tensor, float]:
    """Clamp a log-ratio to [-bound, bound] before exponentiating; also return the clamp rate."""
    hit = (x.abs() > bound).float().mean().item() if x.numel() else 0.0
    return x.clamp(-bound, bound), hit


# ----------------------------------------------------------------------------- advantages
def grpo_advantages(rewards: Tensor, group_size: int, eps: float = 1e-6, std_norm: bool = True) -> Tensor:
    """GRPO group baseline: A_i = (R_i - mean_g R) / (std_g R + eps); std over the group (unbiased,
    as torch.std). `std_norm=False` is Dr.GRPO (mean only). rewards [B] ordered group by group."""
    if rewards.numel() % group_size:
        raise OffbenchError(f"{rewards.numel()} rewards do not split into groups of {group_size}")
    r = rewards.view(-1, group_size)
    adv = r - r.mean(-1, keepdim=True)
    if std_norm:
        adv = adv / (r.std(-1, keepdim=True) + eps)
    return adv.reshape(-1)


# ----------------------------------------------------------------------------- diagnostics
_QUANTILES = (0.05, 0.5, 0.95)


def quantile_metrics(prefix: str, x: Tensor) -> dict[str, float]:
    x = x.detach().float().flatten()
    if x.numel() == 0:
        return {}
    qs = torch.quantile(x, torch.tensor(_QUANTILES, dtype=x.dtype, device=x.device))
    out = {f"{prefix}_q{int(q * 100):02d}": v.item() for q, v in zip(_QUANTILES, qs)}
    out[f"{prefix}_min"] = x.min().item()
    out[f"{prefix}_max"] = x.max().item()
    return out


def ess(weights: Tensor) -> float:
    """Normalised effective sample size (sum w)^2 / (n sum w^2), in (0, 1]; 1 = uniform weights."""
    w = weights.detach().double().flatten()
    if w.numel() == 0 or (w * w).sum() == 0:
        return float("nan")
    return ((w.sum() ** 2) / (w.numel() * (w * w).sum())).item()


def offpolicy_diagnostics(batch: PolicyBatch) -> dict[str, float]:
    """How off-policy the mini-batch is, for every method alike (the trainer logs these).

    kl_mu_pi:   k3 estimate of KL(mu || pi_theta) per token, (r - 1) - log r with r = pi/mu
    log_w:      sequence log W = sum_t log(pi/mu), quantiles
    ess_w:      normalised ESS of W (log W clamped to +-20 for the exponential; rate reported)
    """
    m = batch.mask
    with torch.no_grad():
        lr_mu = (batch.logp - batch.behav_logp).detach()
        lr_old = (batch.logp - batch.old_logp).detach()
        lr_mu_c, _ = clamp_log(lr_mu)
        k3 = torch.expm1(lr_mu_c) - lr_mu_c
        log_w = seq_log_ratio(batch.logp.detach(), batch.behav_logp, m)
        log_w_c, w_clamp = clamp_log(log_w)
        out = {
            "kl_mu_pi": masked_mean(k3, m).item(),
            "abs_log_rho_mu": masked_mean(lr_mu.abs(), m).item(),
            "abs_log_rho_old": masked_mean(lr_old.abs(), m).item(),
            "rho_outside_0.8_1.25": masked_mean(((lr_mu < -0.2231) | (lr_mu > 0.2231)).float(), m).item(),
            "abs_log_w_mean": log_w.abs().mean().item(),
            "ess_w": ess(torch.exp(log_w_c)),
            "log_w_clamp_frac": w_clamp,
        }
        out.update(quantile_metrics("log_w", log_w))
    return out
