"""MoE routing replay, `rollout.routing_replay=none|r2|r3`: record the experts every MoE layer picks for
every token of a forward pass, and force the same experts in a later pass over the same tokens.

A Qwen3-MoE layer sends each token to the top-k experts of softmax(router logits). A tiny numerical
difference (a bf16 engine, another kernel, weights one step newer) can flip a near-tie, and the token
then runs through another expert: its log-prob jumps, not by rounding but by a whole expert's output.
Replay removes that source of off-policyness by making a pass use recorded experts.

- `r3`, Rollout Routing Replay (Ma et al., arXiv 2510.11370, section "Rollout Routing Replay"): the
  rollout engine records the experts of every token it feeds at sampling time (each distinct prompt's
  prefill, then every decode step); the trainer's pi_old pass and every update pass replay them, so
  pi_old and pi_theta are computed through the experts that produced mu.
- `r2`, Vanilla Routing Replay (the routing replay of GSPO, arXiv 2507.18071, section "Benefit of GSPO
  for MoE Training"; named R2 beside R3 in arXiv 2512.01374, Sec. 3.2): the trainer's own no-grad
  pi_old pass of each mini-batch records its routing, and that mini-batch's update pass replays it, so
  pi_theta / pi_old compares the same experts. Mini-batch 0 is trained before any update: its training
  forward is its pi_old pass (`trainer.first_minibatch_pi_old`), so there is nothing to replay. The
  engine's routing is untouched: r2 does not narrow the engine-vs-trainer gap, only the routing drift
  within a rollout batch.

What is replayed is the discrete selection only. The router logits s are still computed by the current
router, and the replayed set E gets the weights the model itself would give a top-k set:
    g_i = softmax(s)_i / sum_{j in E} softmax(s)_j   for i in E, 0 otherwise
(`norm_topk_prob=True`, our built-in models; without it, the softmax(s)_i unnormalised, as the model
does). That is R3's softmax of the training logits under the inference routing mask (arXiv 2510.11370)
and verl's replay (`verl/utils/megatron/router_replay_patch.py`, mode `replay_forward`: the live
scores gathered at the target indices). Gradients reach the router weights through the g_i.

Layout: a routing table [B, T, L, k] (int64) aligned with `Rollout.input_ids` (row, position), L MoE
layers, k experts per token, -1 where nothing was recorded; `Rollout.rows` slices it with the rest.
Which positions hold experts:
- prompt tokens are in every forward (the response attends to them), so they are recorded and replayed
  too: the engine's prefill of each distinct prompt (copied to its G rows), the trainer's shared-prefix
  pass likewise;
- a response token is recorded when it is fed back in: every one but the last of its row (the last is
  sampled, never fed, and no log-prob depends on its routing);
- left padding is masked out of attention, so its routing changes nothing; it is not recorded, and any
  position holding -1 is routed by the model itself.
"""

from __future__ import annotations

from contextlib import contextmanager, nullcontext

import torch
from torch import Tensor

from .registry import OffbenchError

MODES = ("none", "r2", "r3")


def routers(model) -> list:
    """The top-k routers of a Qwen3-MoE model, in layer order ([] for any other model)."""
    from transformers.models.qwen3_moe.modeling_qwen3_moe import Qwen3MoeTopKRouter

    return [m for m in model.modules() if isinstance(m, Qwen3MoeTopKRouter)]


class RouterTap:
    """Records the experts of a model's forward passes into a routing table, or replays a table.

    mode "record": every pass fills the table at the (row, position) cells it computes.
    mode "replay": every pass routes the cells holding experts (>= 0) through them, the others by the
    model itself; it counts `overridden` / `replayed` (token, layer) pairs, where overridden means the
    router's own top-k set, at that layer on the replayed inputs, is another set than the replayed one.
    Hooks live only inside `at(...)`, so an idle tap costs nothing and the model is never left patched.
    """

    def __init__(self, mode: str, table: Tensor):
        if mode not in ("record", "replay"):
            raise ValueError(f"RouterTap mode {mode!r}: record or replay")
        self.mode, self.table = mode, table
        self.overridden, self.replayed = 0, 0

    @classmethod
    def recorder(cls, model, rows: int, length: int) -> "RouterTap":
        """A tap recording into a fresh table of `rows` x `length` positions, all -1."""
        cfg = model.config
        n_layers = len(routers(model))
        table = torch.full((rows, length, n_layers, cfg.num_experts_per_tok), -1, dtype=torch.long,
                           device=next(model.parameters()).device)
        return cls("record", table)

    @contextmanager
    def at(self, model, rows: Tensor, cols: slice, copies: Tensor | None = None):
        """The next forward pass(es) of `model` compute the tokens [len(rows), cols] whose forward row j
        is table row rows[j]. `copies` (record only): for every table row, the forward row whose routing
        it gets (rows sharing one prompt's pass)."""
        hooks = [r.register_forward_hook(self._hook(layer, rows, cols, copies))
                 for layer, r in enumerate(routers(model))]
        try:
            yield self
        finally:
            for h in hooks:
                h.remove()

    def _hook(self, layer: int, rows: Tensor, cols: slice, copies: Tensor | None):
        def hook(module, args, output):
            logits, scores, idx = output
            b = len(rows)
            if self.mode == "record":
                got = idx.detach().view(b, -1, idx.shape[-1])
                if copies is not None:
                    self.table[:, cols, layer] = got[copies]
                else:
                    self.table[rows, cols, layer] = got
                return None
            forced = self.table[rows, cols, layer].reshape(-1, idx.shape[-1])
            valid = (forced >= 0).all(-1)
            if not valid.any():
                return None
            use = torch.where(valid[:, None], forced, idx)
            probs = torch.softmax(logits, dim=-1, dtype=torch.float)
            weights = probs.gather(-1, use)
            if module.norm_topk_prob:
                weights = weights / weights.sum(dim=-1, keepdim=True)
            with torch.no_grad():
                differ = (use.sort(-1).values != idx.sort(-1).values).any(-1) & valid
                self.overridden += int(differ.sum())
                self.replayed += int(valid.sum())
            return logits, weights.to(logits.dtype), use

        return hook


def tapped(tap: RouterTap | None, model, rows: Tensor, cols: slice, copies: Tensor | None = None):
    """`tap.at(...)`, or nothing when there is no tap (routing_replay=none never installs a hook)."""
    return nullcontext() if tap is None else tap.at(model, rows, cols, copies)


def set_diff_frac(a: Tensor, b: Tensor) -> float | None:
    """Fraction of (token, layer) pairs, among those where both tables hold experts, whose expert sets
    differ. a, b: routing tables of the same shape [..., k]."""
    both = (a >= 0).all(-1) & (b >= 0).all(-1)
    if not both.any():
        return None
    differ = (a.sort(-1).values != b.sort(-1).values).any(-1)
    return differ[both].float().mean().item()


class RoutingReplay:
    """What each pass of the trainer does with MoE routing under `rollout.routing_replay`; the trainer
    asks it for a tap per pass and never names a mode. `none`: no tap, no hook, numbers unchanged."""

    def __init__(self, mode: str, model):
        if mode not in MODES:
            raise OffbenchError(f"rollout.routing_replay={mode!r}: choose one of {', '.join(MODES)}")
        if mode != "none" and not routers(model):
            raise OffbenchError(f"rollout.routing_replay={mode} needs a Qwen3-MoE model (model=moe); this model "
                                f"has no MoE router: set rollout.routing_replay=none")
        self.mode = mode

    @property
    def engine_kwargs(self) -> dict:
        """Extra arguments of `engine.sample`: r3 has the engine record its routing."""
        return {"record_routing": True} if self.mode == "r3" else {}

    def pi_old_tap(self, model, mb) -> RouterTap | None:
        """The no-grad pi_old pass of mini-batch mb (1..): r3 replays the engine's routing; r2 records
        the trainer's own into mb.routing, for mb's update pass to replay."""
        if self.mode == "r3":
            return RouterTap("replay", mb.routing)
        if self.mode == "r2":
            tap = RouterTap.recorder(model, *mb.input_ids.shape)
            mb.routing = tap.table
            return tap
        return None

    def update_tap(self, i: int, mb) -> RouterTap | None:
        """The training forward of mini-batch i: r3 replays the engine's routing, r2 the pi_old pass's
        (mini-batch 0's training forward is its own pi_old pass: nothing to replay)."""
        if self.mode == "r3" or (self.mode == "r2" and i > 0):
            return RouterTap("replay", mb.routing)
        return None

    @staticmethod
    def step_metrics(tap: RouterTap | None) -> dict[str, float]:
        """moe_replay_override_frac: share of the replayed (token, layer) pairs of this update pass whose
        router, left alone, would have picked another expert set (on the replayed inputs)."""
        if tap is None or not tap.replayed:
            return {}
        return {"moe_replay_override_frac": tap.overridden / tap.replayed}

    @torch.no_grad()
    def routing_diff(self, engine_model, trainer_model, mb) -> dict[str, float]:
        """Engine-vs-trainer routing on mini-batch mb at pi_old (an engine with its own model only).
        moe_routing_diff_frac: the routing the trainer's pi_old pass uses against the engine's; none keeps
        its definition (`offpolicy.moe_routing_diff`: both models' full forwards, every attended token);
        r2 leaves the pi_old pass alone, so the same number; r3: the engine's sampling-time record against
        the trainer's replayed pass, over the recorded (token, layer) pairs (0 when replay works).
        moe_routing_diff_natural_frac (r2, r3): the none definition, what the trainer would have had."""
        from .offpolicy import moe_routing_diff

        natural = moe_routing_diff(engine_model, trainer_model, mb)
        if natural is None:
            return {}
        if self.mode == "none":
            return {"moe_routing_diff_frac": natural}
        out = {"moe_routing_diff_frac": natural, "moe_routing_diff_natural_frac": natural}
        if self.mode == "r3":
            replayed = set_diff_frac(mb.routing, replayed_routing(trainer_model, mb))
            out["moe_routing_diff_frac"] = natural if replayed is None else replayed  # None: nothing recorded
        return out


def replayed_routing(model, ro) -> Tensor:
    """The experts `model` actually runs on every position of `ro` when it replays ro.routing: one full
    forward under replay, its routers' outputs recorded. Recorded positions hold the replayed experts
    (if replay works); the others, the model's own choice."""
    from .rollout.hf import _positions

    replay = RouterTap("replay", ro.routing)
    record = RouterTap.recorder(model, *ro.input_ids.shape)
    rows = torch.arange(ro.input_ids.shape[0], device=ro.input_ids.device)
    # hooks run in registration order: replay rewrites the router output, then record reads it
    with replay.at(model, rows, slice(None)), record.at(model, rows, slice(None)):
        model(input_ids=ro.input_ids, attention_mask=ro.attention_mask, position_ids=_positions(ro.attention_mask),
              use_cache=False)
    return record.table
