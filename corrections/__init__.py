"""Rollout corrections (`correction=`): modifiers that wrap any method, each registering itself with
`register_correction`; installed as `offpolicy_bench.corrections`.

Three things in this harness carry the word "correction"; they are kept apart by name and place:
- methods (`method=`, `methods/`): the loss, i.e. the off-policy correction of the policy gradient
  (VESPO's kernel, token clipping, ...);
- rollout corrections (`correction=`, here): a per-token weight or mask that any method's loss is
  multiplied by, from the engine ratio pi_old / mu (verl's "rollout correction": TIS, masked IS, ...);
- `correction_mode=decoupled|bypass`: which policy plays pi_old (verl's names), no loss of its own.
"""
