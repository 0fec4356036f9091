"""MBPP / LiveCodeBench-style problems from a local jsonl file (`task=code_file task.path=...`).

Three kinds of hidden tests, detected per row:
* assert strings (MBPP `test_list`): run after the program in the sandbox's `assert` mode, which
  exposes the program's top-level functions to the tests (return values must be plain values);
* stdin/stdout cases (LiveCodeBench `testtype: stdin`): the program runs once per input, its stdout
  is compared in the parent (trailing whitespace ignored);
* functional cases (LiveCodeBench `testtype: functional`, `metadata.func_name`): the function
  (or `Solution().<name>` when the starter code has a class Solution) is called on the JSON
  arguments, its results compared in the parent (tuples count as lists, as in JSON).
The expected outputs of stdin and functional cases never enter the sandbox. The completion is the
whole program; strict = as generated, flexible = its last ```python fenced block if any.
LiveCodeBench's compressed private tests (base64 + zlib [+ pickle]) are decoded with a pickle
reader that only accepts plain strings, lists and dicts.
"""

from __future__ import annotations

import base64
import io
import json
import pickle
import zlib
from dataclasses import dataclass

from offpolicy_bench.registry import OffbenchError
from offpolicy_bench.sandbox import Job, Limits, decode
from offpolicy_bench.tasks_api import Example, FixedSetTask, Grade, register_task

from . import decode_str, fenced_code, run_jobs, same_stdout


@dataclass(frozen=True)
class CodeFileArgs:
    path: str = ""
    """a .jsonl file, one problem a line (MBPP or LiveCodeBench layout)"""
    prompt_key: str = "text"
    """problem statement column (MBPP: text, LiveCodeBench: question_content)"""
    tests_key: str = "test_list"
    """hidden tests: a list of assert strings, or of {input, output, testtype} cases (JSON text allowed)"""
    extra_tests_key: str = ""
    """more hidden tests appended to tests_key (MBPP: challenge_test_list, LCB: private_test_cases)"""
    setup_key: str = "test_setup_code"
    """trusted code run before assert tests (MBPP), if the column exists"""
    solution_key: str = "code"
    """reference solution column (the warm-start target), if any"""
    starter_key: str = "starter_code"
    """starter code shown in the prompt (LiveCodeBench), if the column exists"""
    func_name_key: str = "metadata.func_name"
    """function name of functional cases (dotted path; LiveCodeBench keeps it in metadata JSON)"""
    show_tests: int = 1
    """assert tests shown in the prompt (MBPP shows its tests; the grader runs all of them)"""
    prompt_template: str = "{prompt}\n{tests}{starter}"
    """python format string: {prompt}, {tests} (shown tests, one a line), {starter} (starter code)"""
    eval_size: int = 0
    """held-out problems; 0 = all (the file is an eval set); the rest are training prompts"""
    eval_seed: int = 12345
    """seed of the held-out draw"""
    timeout_s: float = 10.0
    """wall-clock limit per completion"""
    memory_mb: int = 1024
    """address-space limit per completion"""
    workers: int = 0
    """sandbox processes running at once (0 = one per CPU)"""


class _PlainUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name}: only plain values are accepted")


def _cases(value) -> list:
    """Test cases from a column: a list, JSON text, or LiveCodeBench's base64+zlib(+pickle) blob."""
    if isinstance(value, list):
        return value
    if not isinstance(value, str) or not value.strip():
        return []
    text = value.strip()
    if text[0] in "[{":
        return json.loads(text)
    raw = zlib.decompress(base64.b64decode(text))
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        obj = _PlainUnpickler(io.BytesIO(raw)).load()
        return json.loads(obj) if isinstance(obj, (str, bytes)) else obj


def _get(row, key):
    cur = row
    for part in key.split("."):
        if isinstance(cur, str) and cur.strip().startswith("{"):
            cur = json.loads(cur)
        if isinstance(cur, dict) and part in cur:
            cur = cur[part]
        else:
            return None
    return cur


def _jsonish(v):
    if isinstance(v, (list, tuple)):
        return [_jsonish(x) for x in v]
    if isinstance(v, dict):
        return {str(k) if not isinstance(k, str) else k: _jsonish(x) for k, x in v.items()}
    return v


@register_task
class CodeFile(FixedSetTask):
    """Write a whole program for a statement; hidden assert / stdin / functional tests in the sandbox."""

    name = "code_file"
    version = "codefile-1"
    kind = "code"
    args = CodeFileArgs
    source = "local file"
    grader = "sandbox"

    def __init__(self, args: CodeFileArgs):
        super().__init__(args)
        if not args.path:
            raise OffbenchError("task.path is required: a local jsonl of problems (MBPP or LiveCodeBench layout)")
        try:
            rows = [json.loads(line) for line in open(args.path) if line.strip()]
        except OSError as e:
            raise OffbenchError(f"task.path={args.path!r}: {e.strerror}") from None
        exs = [self._example(r, n) for n, r in enumerate(rows)]
        n = len(exs)
        size = args.eval_size or n
        if not 0 < size <= n:
            raise OffbenchError(f"task.eval_size must be in [0, {n}], got {args.eval_size}")
        self._hold_out(exs, size, args.eval_seed)
        self._limits = Limits(timeout_s=args.timeout_s, memory_mb=args.memory_mb)

    def _example(self, row: dict, n: int) -> Example:
        a = self.cfg
        text = _get(row, a.prompt_key)
        if text is None:
            raise OffbenchError(f"{a.path}: row {n} has no {a.prompt_key!r} (keys: {', '.join(row)}); "
                                f"set task.prompt_key")
        cases = _cases(_get(row, a.tests_key))
        if a.extra_tests_key:
            cases = cases + _cases(_get(row, a.extra_tests_key))
        if not cases:
            raise OffbenchError(f"{a.path}: row {n} has no tests in {a.tests_key!r}")
        starter = _get(row, a.starter_key) or ""
        meta = {"task_id": row.get("task_id", row.get("question_id", n))}
        if all(isinstance(c, str) for c in cases):
            meta.update(kind="assert", tests=cases, setup=_get(row, a.setup_key) or "")
            shown = "\n".join(cases[:a.show_tests]) + "\n" if a.show_tests else ""
        else:
            kinds = {c.get("testtype", "stdin") for c in cases}
            if len(kinds) != 1 or not kinds <= {"stdin", "functional"}:
                raise OffbenchError(f"{a.path}: row {n}: test cases must all be stdin or all functional, got {kinds}")
            kind = kinds.pop()
            meta.update(kind=kind, inputs=[c["input"] for c in cases], outputs=[c["output"] for c in cases])
            if kind == "functional":
                fn = _get(row, a.func_name_key)
                if not fn:
                    raise OffbenchError(f"{a.path}: row {n}: functional tests need {a.func_name_key!r}")
                meta["entry_point"] = f"Solution.{fn}" if "class Solution" in starter else fn
            shown = ""
        prompt = a.prompt_template.format(prompt=text, tests=shown, starter=starter)
        solution = _get(row, a.solution_key) or ""
        return Example(prompt=prompt, answer=str(meta["task_id"]), solution=solution, meta=meta)

    def job(self, example: Example, program: str) -> Job:
        m = example.meta
        if m["kind"] == "assert":
            return Job(program=program, tests="\n".join(m["tests"]) + "\n", prelude=m["setup"], limits=self._limits)
        if m["kind"] == "stdin":
            return Job(program=program, mode="io", inputs=m["inputs"], limits=self._limits)
        args = [[json.loads(x) for x in inp.split("\n") if x.strip()] for inp in m["inputs"]]
        entry = m["entry_point"]
        if entry.startswith("Solution."):
            program += f"\n\ndef __offbench_entry(*a):\n    return Solution().{entry.split('.', 1)[1]}(*a)\n"
            entry = "__offbench_entry"
        return Job(program=program, mode="calls", entry_point=entry, inputs=args, limits=self._limits)

    def _passed(self, example: Example, r) -> bool:
        m = example.meta
        if m["kind"] == "assert":
            return r.passed
        if r.status != "ran" or r.outputs is None or len(r.outputs) != len(m["outputs"]):
            return False
        for got, want in zip(r.outputs, m["outputs"]):
            if m["kind"] == "stdin":
                text = decode_str(got)
                if text is None or not same_stdout(text, want):
                    return False
            else:
                try:
                    if got.startswith("E") or _jsonish(decode(got)) != _jsonish(json.loads(want)):
                        return False
                except ValueError:
                    return False
        return True

    def grade_batch(self, examples, completions):
        jobs, where = [], []
        for ex, c in zip(examples, completions):
            flex = fenced_code(c)
            jobs.append(self.job(ex, c))
            if flex is not None and flex != c:
                jobs.append(self.job(ex, flex))
            where.append((len(jobs) - (2 if flex is not None and flex != c else 1), flex is not None and flex != c))
        res = run_jobs(jobs, self.cfg.workers)
        out = []
        for ex, (i, has_flex) in zip(examples, where):
            strict = self._passed(ex, res[i])
            flex = strict or (has_flex and self._passed(ex, res[i + 1]))
            out.append(Grade(reward=float(strict), correct=strict, flexible=flex))
        return out
