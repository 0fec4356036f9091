"""Template for a new correction method: copy to methods/<name>.py (no leading underscore).

Files starting with `_` are not loaded, so this template registers nothing.
"""

from dataclasses import dataclass

from offpolicy_bench.losses import masked_mean  # shared helpers: seq_log_ratio, clamp_log, ...
from offpolicy_bench.method import check_arg, register_method


@dataclass(frozen=True)
class MyArgs:
    strength: float = 1.0
    """what this knob does, with the paper's default"""

    def __post_init__(self):  # a bad value is a one-line error naming the range
        check_arg("my_method", "strength", self.strength, 0.0, None)


# optional, for figures: color="#rrggbb" (else a stable colour from the name) and
# curve=WeightCurve(weight=..., label=...) to appear in the kernel figure (see methods/vespo.py)
@register_method("my_method", args=MyArgs, default_agg="token-mean", ratio="behaviour", level="token",
                 equation="Paper, Eq. N")
def my_method(batch, args):
    """One line: what the method is.

    The equation, which ratio it uses (batch.logp - batch.behav_logp is vs mu, the sampler;
    batch.logp - batch.old_logp is vs pi_old), every deviation from the paper, and its public sources
    (paper and equation, or the framework file it follows).
    """
    coef = args.strength  # a detached coefficient or a differentiable ratio
    loss = -coef * batch.advantages * batch.logp  # per-token loss matrix [B, T]
    return loss, {"my_stat": masked_mean(batch.logp.detach(), batch.mask).item()}
