from dataclasses import dataclass

from offpolicy_bench.method import check_arg, register_method
from offpolicy_bench.methods.gspo import gspo


@dataclass(frozen=True)
class LUSPOArgs:
    eps_low: float = 2e-3
    """lower clip: sequence ratio floored at 1 - eps_low (LUSPO paper Sec. 5.1, as TRL's docs: 2e-3)"""
    eps_high: float = 2.5e-3
    """upper clip: sequence ratio capped at 1 + eps_high (LUSPO paper Sec. 5.1, as TRL's docs: 2.5e-3)"""

    def __post_init__(self):
        check_arg("luspo", "eps_low", self.eps_low, 0.0, 1.0)
        check_arg("luspo", "eps_high", self.eps_high, 0.0, None)


@register_method("luspo", args=LUSPOArgs, default_agg="seq-mean-token-sum", ratio="old", level="sequence",
                 equation="LUSPO, arXiv 2602.05261 (GSPO x length; TRL loss_type=luspo)", color="#98df8a")
def luspo(batch, args):
    """LUSPO: GSPO with each sequence's loss multiplied by its length, removing GSPO's bias against long answers.

    s_i = exp((1/T_i) sum_t log(pi_theta/pi_old)) (vs pi_old), L_i = max(-A_i s_i, -A_i clip(s_i, 1 - eps_low,
    1 + eps_high)) exactly as `gspo` (token form, clip decided per sequence), and the objective is
    mean_i T_i L_i: every sequence's tokens count fully instead of being averaged, so the gradient is
    -(1/B) sum_i A_i s_i sum_t grad log pi_t on unclipped sequences. That scaling IS an aggregation: the
    loss matrix is gspo's and the default aggregation seq-mean-token-sum gives mean_i sum_t L_i = mean_i
    T_i L_i. So luspo == gspo with method.agg=seq-mean-token-sum and LUSPO's clip range; registered
    under its own name so grids and tables show it (overriding method.agg turns it back into GSPO).
    Sources: arXiv 2602.05261 (LUSPO); TRL trl/trainer/grpo_trainer.py (loss_type "luspo": per-sequence
    loss times mask.sum(1), averaged over sequences) and docs/source/paper_index.md (epsilon 2e-3,
    epsilon_high 2.5e-3 from the paper's Sec. 5.1). Conventions as gspo (sg(log s) clamped to +-20 before
    exp(), clamp rate reported). No KL, no entropy bonus. Diagnostics: gspo's clip_frac, seq_ratio_mean.
    """
    return gspo(batch, args)
