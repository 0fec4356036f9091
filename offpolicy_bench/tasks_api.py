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

from .registry import OffbenchError, Registry


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
        """One completion's grade. A task overrides `grade` or `grade_batch` (or both); this default
        grades a batch of one."""
        if type(self).grade_batch is Task.grade_batch:
            raise NotImplementedError(f"task {self.name!r} must override grade or grade_batch")
        return self.grade_batch([example], [completion])[0]

    def grade_batch(self, examples: list[Example], completions: list[str]) -> list[Grade]:
        """Grade many completions at once (same results as `grade` one by one). Tasks whose grader
        has a start-up cost (a sandbox, worker processes) override it to run them in parallel."""
        return [self.grade(e, c) for e, c in zip(examples, completions)]


class FixedSetTask(Task):
    """A task over a fixed list of problems (a file, a package's data): `_hold_out` sets aside `size` of
    them by a seeded draw (all of them when size is the whole list); training draws from the rest."""

    def _hold_out(self, exs: list[Example], size: int, seed: int) -> None:
        order = list(range(len(exs)))
        if size < len(exs):
            random.Random(seed).shuffle(order)
        held = set(order[:size])
        self._eval = [e for i, e in enumerate(exs) if i in held]
        self._train = [e for i, e in enumerate(exs) if i not in held]
        self.size = {"train": len(self._train), "eval": len(self._eval)}

    def train_examples(self, n, rng):
        if not self._train:
            raise OffbenchError(f"{self.name}: every problem is held out; set task.eval_size below "
                                f"{len(self._eval)} to train on the rest")
        return [rng.choice(self._train) for _ in range(n)]

    def eval_examples(self):
        return list(self._eval)


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


def task_args(cfg) -> Any:
    """The typed arguments of the task a run config names (`task.*` keys, without `name`)."""
    from omegaconf import OmegaConf

    return get_task(cfg.task.name).args(**{k: v for k, v in OmegaConf.to_container(cfg.task).items() if k != "name"})


def build_task(cfg) -> Task:
    """The task a run config names, built from its typed arguments: the one construction every
    caller (trainer, grid, grading, benchmarks) uses."""
    return get_task(cfg.task.name)(task_args(cfg))
