"""The task contract: prompts with references, train / eval splits, and a grader.

A task is a class registered with `register_task`; it is built from its typed args and yields
`Example`s. `grade(example, completion)` returns a `Grade`: a reward in [0, 1] and a `correct`
flag (plus strict / flexible correctness where answer extraction can be lenient). Each task has
a `version`, stamped into results, bumped whenever grading or data generation changes.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Any, ClassVar

from .registry import Registry


@dataclass(frozen=True)
class Example:
    prompt: str
    answer: str  # the reference answer (what the grader compares against)
    solution: str  # the reference completion used for the supervised warm start
    meta: dict = field(default_factory=dict, compare=False, hash=False)


@dataclass(frozen=True)
class Grade:
    reward: float  # in [0, 1]
    correct: bool  # the headline metric (strict extraction)
    flexible: bool  # correct under lenient extraction; reported apart


class Task:
    """Base class. Subclasses set `name`, `version`, `kind`, `args` and implement the three methods."""

    name: ClassVar[str]
    version: ClassVar[str]
    kind: ClassVar[str]  # "math" | "code"
    args: ClassVar[type]
    source: ClassVar[str] = "built-in"
    grader: ClassVar[str] = "exact"  # how completions are graded: exact | math-verify | sandbox

    def __init__(self, args: Any):
        self.cfg = args

    def train_examples(self, n: int, rng: random.Random) -> list[Example]:
        """n training prompts drawn with `rng`; never an eval prompt."""
        raise NotImplementedError

    def eval_examples(self) -> list[Example]:
        """The fixed held-out split."""
        raise NotImplementedError

    def warmstart_examples(self, n: int, rng: random.Random) -> list[Example]:
        """Examples for the supervised warm start (their `solution` is the target). Default: train
        examples; a task may add a documented bad habit so that RL has something to unlearn."""
        return self.train_examples(n, rng)

    @classmethod
    def default_max_new_tokens(cls, args: Any) -> int:
        """The response cap `rollout.max_new_tokens=null` resolves to for these task arguments."""
        return 8

    @classmethod
    def default_warmstart_steps(cls, args: Any) -> int:
        """The supervised warm-start length `warmstart.steps=null` resolves to for these arguments."""
        return 1200

    def warmstart_entropy(self, example: Example) -> float | None:
        """Entropy (nats) of the warm-start target distribution for this example's prompt: the
        lowest cross-entropy any model can reach on it (from its documented habit). With it, the
        warm start is checked to have converged to that floor; None (the default) = unknown."""
        return None

    def grade(self, example: Example, completion: str) -> Grade:
        raise NotImplementedError

    def grade_batch(self, examples: list[Example], completions: list[str]) -> list[Grade]:
        """Grade many completions at once (same results as `grade` one by one). Tasks whose grader
        has a start-up cost (a sandbox, worker processes) override it to run them in parallel."""
        return [self.grade(e, c) for e, c in zip(examples, completions)]


class GeneratedTask(Task):
    """A task whose problems come from a seeded generator (`problem(rng) -> Example`): a fixed
    held-out split of `eval_size` distinct problems drawn with `eval_seed`, and training draws
    that never repeat a held-out prompt. Subclasses call `_init_split()` in `__init__`."""

    def problem(self, rng: random.Random) -> Example:
        raise NotImplementedError

    def _init_split(self) -> None:
        self._eval = self._draw(self.cfg.eval_size, random.Random(self.cfg.eval_seed), exclude=set(), unique=True)
        self._eval_prompts = {e.prompt for e in self._eval}

    def _draw(self, n: int, rng: random.Random, exclude: set[str], unique: bool = False) -> list[Example]:
        out, seen = [], set()
        while len(out) < n:
            ex = self.problem(rng)
            if ex.prompt in exclude or (unique and ex.prompt in seen):
                continue
            seen.add(ex.prompt)
            out.append(ex)
        return out

    def train_examples(self, n, rng):
        return self._draw(n, rng, exclude=self._eval_prompts)

    def eval_examples(self):
        return list(self._eval)


def binary_entropy(p: float) -> float:
    """H(p) in nats: the entropy of one habit-or-not choice made with probability p."""
    return 0.0 if p in (0.0, 1.0) else -(p * math.log(p) + (1 - p) * math.log(1 - p))


TASKS: Registry[type] = Registry("task")


def register_task(cls: type) -> type:
    """Class decorator: register a Task subclass under its `name`."""
    cls.origin = f"{cls.__module__}.{cls.__qualname__}"
    TASKS.add(cls.name, cls, cls.origin)
    return cls


def get_task(name: str) -> type:
    from . import plugins

    plugins.load_builtin()
    return TASKS.get(name)
