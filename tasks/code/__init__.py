"""Code tasks: a built-in synthetic function task, HumanEval, MBPP / LiveCodeBench-style jsonl.

Every completion runs in offpolicy_bench.sandbox, one completion per confined process (forked from a
warm zygote). The helpers below are shared by the code tasks: the shared sandbox pool, a grade
cache, and the lenient ("flexible") extraction of code from a completion.
"""

from __future__ import annotations

import ast
import re
from collections import OrderedDict

from offpolicy_bench.sandbox import Job, Limits, Result, shared_pool

STOP_SEQUENCES = ("\ndef ", "\nclass ", "\nif __name__", "\nprint(", "\n#", "\nassert ")


def run_jobs(jobs: list[Job], workers: int = 0) -> list[Result]:
    """Run sandbox jobs on the process-wide pool (workers=0: one per CPU)."""
    return shared_pool(workers or None).run(jobs)


def fenced_code(text: str) -> str | None:
    """The last ```python fenced block of a completion, if any."""
    blocks = re.findall(r"```(?:python|py)?[ \t]*\n(.*?)```", text, re.S)
    return blocks[-1] if blocks else None


def truncate_at_stops(text: str, stops=STOP_SEQUENCES) -> str:
    """Cut a function-body completion at the first stop sequence (the Codex paper's convention)."""
    cut = len(text)
    for s in stops:
        i = text.find(s)
        if i != -1:
            cut = min(cut, i)
    return text[:cut]


def decode_str(encoded: str) -> str | None:
    """The text of a sandbox-encoded str output (`s'...'`), or None."""
    if not encoded.startswith("s"):
        return None
    try:
        v = ast.literal_eval(encoded[1:])
    except (ValueError, SyntaxError):
        return None
    return v if isinstance(v, str) else None


def same_stdout(got: str, want: str) -> bool:
    """Outputs equal up to trailing whitespace on each line and trailing blank lines."""
    def norm(s):
        return "\n".join(line.rstrip() for line in s.strip("\n").split("\n")).rstrip()
    return norm(got) == norm(want)


class GradeCache:
    """LRU of (key -> Grade) for deterministic graders (the same completion of the same prompt)."""

    def __init__(self, size: int = 200_000):
        self.size, self._d = size, OrderedDict()

    def get(self, key):
        v = self._d.get(key)
        if v is not None:
            self._d.move_to_end(key)
        return v

    def put(self, key, value):
        self._d[key] = value
        if len(self._d) > self.size:
            self._d.popitem(last=False)


__all__ = ["Job", "Limits", "Result", "run_jobs", "fenced_code", "truncate_at_stops", "decode_str", "same_stdout",
           "GradeCache", "STOP_SEQUENCES"]
