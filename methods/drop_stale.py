from dataclasses import dataclass

from offpolicy_bench.method import register_method


@dataclass(frozen=True)
class DropStaleArgs:
    max_gap: int = 0
    """largest version gap trained on: a mini-batch sampled more than this many optimizer steps ago is
    dropped (no optimizer step); 0 = only the fresh mini-batch of each rollout batch"""


@register_method("drop_stale", args=DropStaleArgs, default_agg="token-mean", ratio="none", level="token",
                 equation="control: bounded staleness (AReaL max_head_offpolicyness, SkyRL/TRL max_staleness)",
                 color="#7f7f7f")
def drop_stale(batch, args):
    """Control: the plain policy gradient on data at most `max_gap` versions old; staler data is discarded.

    L_t = -A * log pi_theta(y_t) if version_gap <= max_gap, else nothing (the optimizer does not step).
    The baseline every asynchronous system has: bound the staleness instead of correcting it. It pays
    in data (with staleness N and max_gap=0 it trains on 1 mini-batch of every N), not in bias. Compare
    a correction against it and against `on_policy` at the same N (uncorrected use of stale data).
    """
    if batch.version_gap > args.max_gap:
        return batch.logp * 0.0, {"dropped": 1.0, "step_skipped": 1.0}
    return -batch.advantages * batch.logp, {"dropped": 0.0}
