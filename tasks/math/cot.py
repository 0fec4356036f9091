"""Built-in long-response arithmetic: column addition written out as a chain of thought.

    4837+2965=  ->  7+5=12 3+6+1=10 8+9+1=18 4+2+1=7 =7802

The response walks the columns from the least significant digit, writing each column's sum with
the carry it received (`+1`), then the answer after a final `=`. Its length grows with
`task.digits` (about 8 tokens per digit: ~11 tokens at 1 digit, ~35 at 4, ~131 at 16), so the
sequence log-ratio log W is a sum of many per-token log-ratios, as in the long responses of the
VESPO paper. Reward: 1 iff the answer after the last `=` is exactly the sum.

The warm-start habit strikes inside the chain, not at its first token: at every column that
receives a carry, with probability `task.habit` the warm-start target forgets it (`3+6=9` where
`3+6+1=10` was due) and carries on consistently from there, so the answer is wrong. The reward then
depends on every carry decision of the response, and RL has a habit to unlearn at many positions.
"""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass
from typing import Optional

from offpolicy_bench.registry import OffbenchError
from offpolicy_bench.tasks_api import Example, GeneratedTask, Grade, binary_entropy, register_task

MAX_DIGITS = 16


@dataclass(frozen=True)
class CotArgs:
    digits: int = 4
    """digits of each operand (1..16); the response is about 8 tokens per digit (4 -> ~35, 16 -> ~131)"""
    eval_size: Optional[int] = None
    """held-out problems (never seen in training or warm start); null = 256, or a quarter of all
    problems where there are fewer (25 at 1 digit)"""
    eval_seed: int = 12345
    """seed of the held-out split"""
    habit: float = 0.5
    """probability that a warm-start target forgets a due carry, independently at each column that
    receives one (the rest of the chain stays consistent with the dropped carry, the answer is wrong)"""


def column_trace(a: int, b: int, digits: int, drop=lambda: False) -> tuple[str, str]:
    """(trace, answer written) of a + b, least significant column first. `drop()` is asked at each
    column that receives a carry: True writes that column without it (the habit)."""
    da, db = str(a).zfill(digits)[::-1], str(b).zfill(digits)[::-1]
    steps, out, carry = [], [], 0
    for x, y in zip(da, db):
        if carry and drop():
            carry = 0
        s = int(x) + int(y) + carry
        steps.append(f"{x}+{y}{'+1' if carry else ''}={s}")
        out.append(str(s % 10))
        carry = s // 10
    if carry:
        out.append("1")
    answer = "".join(reversed(out)).lstrip("0") or "0"
    return " ".join(steps), answer


@register_task
class ChainOfThoughtSum(GeneratedTask):
    """Prompt `4837+2965=`, reference completion the column-by-column trace ending in `=7802`."""

    name = "math_cot"
    version = "cot-1"
    kind = "math"
    args = CotArgs

    def __init__(self, args: CotArgs):
        super().__init__(args)
        if not 1 <= args.digits <= MAX_DIGITS:
            raise OffbenchError(f"task.digits must be in [1, {MAX_DIGITS}], got {args.digits}")
        if not 0.0 <= args.habit <= 1.0:
            raise OffbenchError(f"task.habit must be in [0, 1], got {args.habit}")
        lo = 0 if args.digits == 1 else 10 ** (args.digits - 1)
        space = (10 ** args.digits - lo) ** 2
        if args.eval_size is None:
            self.cfg = args = dataclasses.replace(args, eval_size=min(256, space // 4))
        if not 0 < args.eval_size <= space // 4:
            raise OffbenchError(f"task.eval_size must be in [1, {space // 4}] at {args.digits} digits "
                                f"({space} distinct problems), got {args.eval_size}")
        self._lo = lo
        self._init_split()

    @classmethod
    def default_max_new_tokens(cls, args: CotArgs) -> int:
        # the longest chain: digits columns `9+9+1=19` (8) with spaces, ` =`, digits + 1 answer digits, EOS
        return 10 * args.digits + 4

    @classmethod
    def default_warmstart_steps(cls, args: CotArgs) -> int:
        # each column is a local rule: the built-in models reach the entropy floor (within 0.01) in
        # ~600 steps of 64 chains at 4 digits under every float-kernel dispatch tried (RESULTS.md).
        # Longer chains need longer: at 8 digits 800 steps (cosine decay) reached the floor on an
        # AVX-512 CPU but stopped at 0.28 nats/token (floor 0.035) on an AVX2-only one, while 2400
        # steps were within 0.01 of it by step 1200 on both dispatches there (RESULTS.md, 2026-12-01).
        # 300 steps per digit beyond 4 digits; above 8 digits not measured
        return 800 if args.digits <= 4 else 300 * args.digits

    def problem(self, rng: random.Random) -> Example:
        hi = 10 ** self.cfg.digits - 1
        a, b = rng.randint(self._lo, hi), rng.randint(self._lo, hi)
        trace, answer = column_trace(a, b, self.cfg.digits)
        return Example(prompt=f"{a}+{b}=", answer=answer, solution=f"{trace} ={answer}", meta={"a": a, "b": b})

    def warmstart_examples(self, n, rng):
        out = []
        for ex in self.train_examples(n, rng):
            trace, written = column_trace(ex.meta["a"], ex.meta["b"], self.cfg.digits,
                                          drop=lambda: rng.random() < self.cfg.habit)
            out.append(Example(ex.prompt, ex.answer, f"{trace} ={written}", ex.meta))
        return out

    def warmstart_entropy(self, ex: Example) -> float:
        """Entropy (nats) of this prompt's warm-start target: H(habit) at every column that receives
        a carry along the randomly written chain (expected count by a forward pass over the columns)."""
        da = str(ex.meta["a"]).zfill(self.cfg.digits)[::-1]
        db = str(ex.meta["b"]).zfill(self.cfg.digits)[::-1]
        p_carry, expected = 0.0, 0.0  # P(the written chain carries into this column)
        for x, y in zip(da, db):
            s = int(x) + int(y)
            expected += p_carry
            # carry in and kept (prob p_carry (1-h)): s+1 >= 10; otherwise (dropped or none): s >= 10
            p_carry = p_carry * (1 - self.cfg.habit) * (s + 1 >= 10) + (1 - p_carry * (1 - self.cfg.habit)) * (s >= 10)
        return expected * binary_entropy(self.cfg.habit)

    def grade(self, example, completion):
        text = completion.strip()
        strict = "=" in text and text.rsplit("=", 1)[1].strip() == example.answer
        tail = text.rsplit("=", 1)[-1]
        digits = "".join(c for c in tail if c.isdigit())
        flexible = strict or (digits != "" and digits.lstrip("0") == example.answer.lstrip("0"))
        return Grade(reward=float(strict), correct=strict, flexible=flexible)
