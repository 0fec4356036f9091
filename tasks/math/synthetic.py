"""Built-in synthetic arithmetic: deterministic per seed, with a held-out split and exact grading."""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

from offpolicy_bench.registry import OffbenchError
from offpolicy_bench.tasks_api import Example, Grade, GeneratedTask, binary_entropy, register_task

# level -> (number of operands, operand ranges, operators)
LEVELS = {
    1: ((2, (0, 9), "+")),
    2: ((2, (0, 99), "+")),
    3: ((2, (0, 99), "+-")),
    4: ((3, (0, 99), "+-")),
    5: ((2, (0, 99), "*")),
}
_INT = re.compile(r"-?\d+")


@dataclass(frozen=True)
class ArithmeticArgs:
    level: int = 2
    """difficulty: 1 a+b (digits), 2 a+b (<100), 3 a+-b (<100), 4 a+-b+-c (<100), 5 a*b (<100)"""
    eval_size: int = 512
    """held-out problems (never seen in training or warm start)"""
    eval_seed: int = 12345
    """seed of the held-out split"""
    habit: float = 0.5
    """fraction of warm-start targets written with a bad habit (answer digits reversed, 82 -> 28):
    the warm-started policy then mixes a right and a wrong way of answering, as base models do,
    and RL has a habit to unlearn. Grading and eval answers are always the true answer."""


@register_task
class Arithmetic(GeneratedTask):
    """Prompt `37+45=`, reference completion `82`; reward 1 iff the completion is exactly the answer."""

    name = "math"
    version = "arith-2"
    kind = "math"
    args = ArithmeticArgs

    def __init__(self, args: ArithmeticArgs):
        super().__init__(args)
        if args.level not in LEVELS:
            raise OffbenchError(f"task.level={args.level} unknown; levels: {sorted(LEVELS)}")
        if not 0.0 <= args.habit <= 1.0:
            raise OffbenchError(f"task.habit must be in [0, 1], got {args.habit}")
        if args.eval_size <= 0:
            raise OffbenchError(f"task.eval_size must be positive, got {args.eval_size}")
        n_ops, (lo, hi), ops = LEVELS[args.level]
        space = (hi - lo + 1) ** n_ops * len(ops) ** (n_ops - 1)
        if args.eval_size > space // 4:
            raise OffbenchError(f"task.eval_size={args.eval_size} is too large for level {args.level} "
                                f"({space} distinct problems); use at most {space // 4}")
        self._init_split()

    @classmethod
    def default_warmstart_steps(cls, args: ArithmeticArgs) -> int:
        # the answer is written most significant digit first, so the carry must be known before the
        # first digit: the built-in dense model's loss drop comes late and at a CPU-dependent step.
        # At 1200 steps it stopped 0.1-0.35 nats/token above the floor (0.28 AMD, 0.53 Intel); at 4000
        # it ends within 0.01 of it (RESULTS.md)
        return 4000

    def problem(self, rng: random.Random) -> Example:
        n_ops, (lo, hi), ops = LEVELS[self.cfg.level]
        terms = [str(rng.randint(lo, hi))]
        for _ in range(n_ops - 1):
            terms += [rng.choice(ops), str(rng.randint(lo, hi))]
        expr = "".join(terms)
        answer = str(eval(expr, {"__builtins__": {}}))  # digits and + - * only, built above
        return Example(prompt=f"{expr}=", answer=answer, solution=answer)

    def warmstart_examples(self, n, rng):
        out = []
        for ex in self.train_examples(n, rng):
            if rng.random() < self.cfg.habit:
                sign, digits = ("-", ex.answer[1:]) if ex.answer.startswith("-") else ("", ex.answer)
                ex = Example(ex.prompt, ex.answer, sign + digits[::-1])
            out.append(ex)
        return out

    def warmstart_entropy(self, ex: Example) -> float:
        """Entropy (nats) of this prompt's warm-start target: H(habit) where the reversed answer differs
        from the answer (the habit is one binary choice), 0 where they coincide (7, 33, -8)."""
        digits = ex.answer.lstrip("-")
        return 0.0 if digits == digits[::-1] else binary_entropy(self.cfg.habit)

    def grade(self, example, completion):
        strict = completion.strip() == example.answer
        m = _INT.search(completion)
        flexible = bool(m) and m.group(0) == example.answer
        return Grade(reward=float(strict), correct=strict, flexible=flexible)
