"""Export our methods to verl's policy-loss registry, so a method found here runs in a verl job.

    from offpolicy_bench.export_verl import register_with_verl
    register_with_verl({"vespo": {}, "token_clip": {"eps_high": 0.2}})   # before verl builds the actor
    # then: actor_rollout_ref.actor.policy_loss.loss_mode=ob_vespo

verl calls a policy loss as fn(old_log_prob, log_prob, advantages, response_mask, loss_agg_mode,
config, rollout_is_weights). We map it to a PolicyBatch with behav_logp = old_log_prob: verl's
old_log_prob is pi_old, which is mu in bypass mode or a synchronous run; a verl rollout
correction arrives as rollout_is_weights and multiplies our loss matrix, as verl's own losses do.
Aggregation uses verl's agg_loss with the job's loss_agg_mode and global batch info, so the scale
matches verl's distributed normalisation. Method arguments are fixed at export time.
Needs `pip install --no-deps verl` plus `pip install "offpolicy-bench[verl]"`.
"""

from __future__ import annotations

from typing import Any

from .losses import PolicyBatch
from .method import METHODS, get_method
from .registry import OffbenchError


def _loss_fn(name: str, overrides: dict[str, Any]):
    method = get_method(name)
    args = method.make_args(overrides)

    def policy_loss(old_log_prob, log_prob, advantages, response_mask, loss_agg_mode="token-mean", config=None,
                    rollout_is_weights=None):
        from verl.trainer.ppo.core_algos import agg_loss

        batch = PolicyBatch(logp=log_prob, old_logp=old_log_prob, behav_logp=old_log_prob, advantages=advantages,
                            mask=response_mask)
        loss_mat, metrics = method.fn(batch, args)
        if rollout_is_weights is not None:
            loss_mat = loss_mat * rollout_is_weights
        info = dict(getattr(config, "global_batch_info", None) or {}) if config is not None else {}
        loss = agg_loss(loss_mat=loss_mat, loss_mask=response_mask, loss_agg_mode=loss_agg_mode, **info)
        return loss, {f"actor/{name}/{k}": v for k, v in metrics.items()}

    policy_loss.__name__ = f"offbench_{name}"
    policy_loss.__doc__ = method.doc
    return policy_loss


def register_with_verl(methods: dict[str, dict] | list[str] | None = None, prefix: str = "ob_") -> list[str]:
    """Register methods (all by default) in verl's POLICY_LOSS_REGISTRY as `<prefix><name>`.
    Returns the registered verl loss_mode names."""
    try:
        from verl.trainer.ppo.core_algos import register_policy_loss
    except ImportError as e:
        raise OffbenchError(f"verl is not importable ({e}); install it with `pip install --no-deps verl` and "
                            f"`pip install \"offpolicy-bench[verl]\"`") from None
    from .plugins import load_builtin

    load_builtin()
    if methods is None:
        methods = {name: {} for name in METHODS}
    elif isinstance(methods, (list, tuple)):
        methods = {name: {} for name in methods}
    names = []
    for name, overrides in methods.items():
        register_policy_loss(prefix + name)(_loss_fn(name, dict(overrides)))
        names.append(prefix + name)
    return names
