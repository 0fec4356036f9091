from dataclasses import dataclass

from offpolicy_bench.method import register_method


@dataclass(frozen=True)
class OnPolicyArgs:
    """No correction: the plain policy gradient."""


@register_method("on_policy", args=OnPolicyArgs, default_agg="token-mean", ratio="none", level="token",
                 equation="control: no correction (plain policy gradient, GPG)", color="#4d4d4d")
def on_policy(batch, args):
    """Plain policy gradient (GPG / REINFORCE with a group baseline), no off-policy correction.

    L_t = -A * log pi_theta(y_t)   gradient: -A grad log pi_theta(y_t)
    The reference point: it ignores mu and pi_old entirely, so with stale data it is biased.
    """
    return -batch.advantages * batch.logp, {}
