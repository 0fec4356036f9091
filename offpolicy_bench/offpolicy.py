"""The sources of off-policyness besides mini-batch staleness.

Staleness N is the trainer's loop itself (a rollout batch split into N mini-batches). Here:
- lag k: the rollout batch starting at optimizer step v is sampled by the policy of step v - k
  (clamped at 0: early on the real lag is smaller, and the logged version gap says so). Exact:
  the weights of exactly that step are kept (`WeightRing`) and loaded into the engine in place.
- mismatch: the engine samples in another dtype (rollout.dtype) or with another engine.
- correction_mode (verl's terms): decoupled keeps mu, pi_old and pi_theta apart (pi_old is the
  trainer's forward at the start of the rollout batch); bypass uses mu as pi_old.
"""

from __future__ import annotations

import torch

CORRECTION_MODES = ("decoupled", "bypass")


class WeightRing:
    """Weight snapshots of exactly the optimizer steps a future rollout will need.

    A rollout starts at steps v = 0, N, 2N, ...; with lag k it needs the weights of step v - k.
    So step s is kept iff (s + k) % N == 0 (plus step 0, for the clamped start); at most
    ceil(k / N) + 1 snapshots are alive at a time.
    """

    def __init__(self, lag: int, staleness: int, enabled: bool = True):
        self.lag, self.n, self.enabled = lag, staleness, enabled
        self.snaps: dict[int, dict[str, torch.Tensor]] = {}

    def maybe_store(self, step: int, model) -> None:
        if self.enabled and (step == 0 or (step + self.lag) % self.n == 0):
            self.snaps[step] = {k: p.detach().clone() for k, p in model.named_parameters()}

    def version_for(self, step: int) -> int:
        """The policy version that samples the rollout batch starting at `step`."""
        return max(0, step - self.lag)

    def take(self, step: int) -> tuple[int, dict[str, torch.Tensor]]:
        """(version, its weights) for the rollout starting at `step`; drops older snapshots."""
        v = self.version_for(step)
        state = self.snaps[v]
        for old in [s for s in self.snaps if s < v]:
            del self.snaps[old]
        return v, state


def engine_gap(mbs, old_logps) -> dict[str, float]:
    """Mean and max |log mu - log pi_old| over response tokens of a rollout batch: how far the
    engine's recorded log-probs are from the trainer's at the same weights (numerics, dtype,
    engine) plus, with lag, the policy change. Summation order alone gives ~1e-6 in fp32."""
    diffs = torch.cat([((mb.behav_logp - o).abs())[mb.response_mask > 0] for mb, o in zip(mbs, old_logps)])
    if not diffs.numel():
        return {}
    return {"engine_gap_mean_abs": diffs.mean().item(), "engine_gap_max_abs": diffs.max().item()}


@torch.no_grad()
def moe_routing_diff(engine_model, trainer_model, ro) -> float | None:
    """Fraction of (token, MoE layer) pairs whose top-k expert set differs between the engine's
    model and the trainer's on the same sequences (attended positions). None for dense models."""
    k = getattr(trainer_model.config, "num_experts_per_tok", None)
    if not k or engine_model is None:
        return None
    from .rollout.hf import _positions

    kw = dict(input_ids=ro.input_ids, attention_mask=ro.attention_mask, position_ids=_positions(ro.attention_mask),
              output_router_logits=True, use_cache=False)
    a = engine_model(**kw).router_logits
    b = trainer_model(**kw).router_logits
    keep = ro.attention_mask.reshape(-1).bool()
    differ, total = 0, 0
    for la, lb in zip(a, b):
        ta = torch.topk(la.float()[keep], k, -1).indices.sort(-1).values
        tb = torch.topk(lb.float()[keep], k, -1).indices.sort(-1).values
        differ += (ta != tb).any(-1).sum().item()
        total += ta.shape[0]
    return differ / max(total, 1)
