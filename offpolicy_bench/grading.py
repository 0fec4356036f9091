"""Shared grading: math answer extraction and equivalence, pass@k, and grading a file of completions.

Math answers, two extractions reported apart:
* strict: the answer in the format the task asks for: the LAST `\\boxed{...}` (nested braces
  handled; `\\fbox{}` too) for `boxed`, the text after the LAST `####` for `gsm8k`, the last number
  for `number`. Several boxed answers: the last one counts (a model that corrects itself is graded
  on its final word; hedging with two boxes is graded on the second).
* flexible: boxed, else `####`, else "the answer is X", else the last number in the text
  (thousands separators and a trailing period dropped).
Equivalence: exact string match after light normalisation, else exact rational comparison of plain
numbers, else math-verify (sympy) run in worker processes with a per-answer timeout (a worker
that overruns is killed and the answer graded wrong).
"""

from __future__ import annotations

import json
import math
import multiprocessing as mp
import os
import re
import time
from fractions import Fraction
from typing import Iterable

# ------------------------------------------------------------------ extraction

_NUM = re.compile(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?|-?\d+(?:\.\d+)?(?:/\d+)?|-?\.\d+")


def last_boxed(text: str) -> str | None:
    """Content of the last `\\boxed{...}` / `\\fbox{...}` (nested braces), or of `\\boxed 5`."""
    best = None
    for m in re.finditer(r"\\(?:boxed|fbox)\s*(\{|\s)", text):
        i = m.end()
        if m.group(1) == "{":
            depth, j = 1, i
            while j < len(text) and depth:
                depth += {"{": 1, "}": -1}.get(text[j], 0)
                j += 1
            if depth == 0:
                best = text[i:j - 1]
        else:
            tok = re.match(r"[^\s$]+", text[i:])
            if tok:
                best = tok.group(0)
    return best.strip() if best is not None else None


def after_hashes(text: str) -> str | None:
    """GSM8K style: what follows the last `####` on its line."""
    if "####" not in text:
        return None
    ans = text.rsplit("####", 1)[1].strip().split("\n")[0].strip()
    return ans.rstrip(".") or None


def last_number(text: str) -> str | None:
    """The last number in the text: sign, thousands separators, decimals, a/b fractions."""
    nums = _NUM.findall(text)
    if not nums:
        return None
    return nums[-1].replace(",", "").rstrip(".")


def extract_strict(text: str, fmt: str = "boxed") -> str | None:
    if fmt == "boxed":
        return last_boxed(text)
    if fmt == "gsm8k":
        return after_hashes(text)
    if fmt == "number":
        return last_number(text)
    raise ValueError(f"answer format {fmt!r}: choose boxed, gsm8k or number")


def extract_flexible(text: str) -> str | None:
    for f in (last_boxed, after_hashes):
        ans = f(text)
        if ans:
            return ans
    m = list(re.finditer(r"answer is[:\s]*\$?([^\n$]+?)\$?\s*(?:\.\s|\.?$|\n)", text, re.I))
    if m:
        return m[-1].group(1).strip()
    return last_number(text)


def normalize(ans: str) -> str:
    s = ans.strip().strip("$").strip()
    s = re.sub(r"\\[,!;: ]|\\(?:left|right)|\s+", "", s)
    s = re.sub(r"\\text\{\s*\}", "", s)
    s = s.replace("dfrac", "frac").replace("tfrac", "frac").replace("{,}", ",")
    return s.rstrip(".")


def _as_number(s: str) -> Fraction | None:
    s = normalize(s).replace(",", "")
    m = re.fullmatch(r"(-?)\\frac\{(\d+)\}\{(\d+)\}", s)
    try:
        if m:
            return (-1 if m.group(1) else 1) * Fraction(int(m.group(2)), int(m.group(3)))
        if re.fullmatch(r"-?\d+(\.\d+)?(/\d+)?|-?\.\d+", s):
            return Fraction(s)
    except (ValueError, ZeroDivisionError):
        return None
    return None


def quick_equal(pred: str, gold: str) -> bool | None:
    """True / False when decidable without sympy, None when math-verify must decide."""
    if normalize(pred) == normalize(gold):
        return True
    a, b = _as_number(pred), _as_number(gold)
    if a is not None and b is not None:
        return a == b
    return None


# ------------------------------------------------------------------ math-verify in worker processes


def _mv_worker(conn, timeout_s):
    """Worker main thread: math-verify with its own signal.alarm timeout (it needs the main thread)."""
    import logging

    logging.disable(logging.WARNING)
    from math_verify import parse, verify

    t = max(1, int(math.ceil(timeout_s)))
    conn.send("ready")  # imports done: deadlines count from here
    while True:
        try:
            msg = conn.recv()
        except EOFError:
            return
        if msg is None:
            return
        pred, gold = msg
        try:
            g = parse("\\boxed{" + gold + "}", parsing_timeout=t)
            p = parse("\\boxed{" + pred + "}", parsing_timeout=t)
            ok = bool(g) and bool(p) and bool(verify(g, p, timeout_seconds=t))
        except BaseException:
            ok = False
        conn.send(ok)


class MathVerifier:
    """`equal_many([(pred, gold), ...]) -> [bool]`; math-verify calls run in `workers` spawned
    processes; each answer gets `timeout_s` (math-verify's own alarm) and a hard deadline of
    2 x timeout_s + 1 s after which its worker is killed and replaced."""

    def __init__(self, workers: int = 1, timeout_s: float = 5.0):
        self.n, self.timeout_s = max(1, workers), timeout_s
        self._ctx = mp.get_context("spawn")
        self._workers: list = []

    def _spawn(self):
        a, b = self._ctx.Pipe()
        p = self._ctx.Process(target=_mv_worker, args=(b, self.timeout_s), daemon=True)
        p.start()
        b.close()
        if not a.poll(300) or a.recv() != "ready":  # importing sympy can take seconds on a busy machine
            p.kill()
            raise RuntimeError("math-verify worker failed to start (is math-verify installed?)")
        return [p, a]

    def close(self):
        for p, conn in self._workers:
            try:
                conn.send(None)
            except OSError:
                pass
            p.join(timeout=2)
            if p.is_alive():
                p.kill()
        self._workers = []

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

    def equal_many(self, pairs: list[tuple[str, str]]) -> list[bool]:
        out: list[bool | None] = [quick_equal(p, g) for p, g in pairs]
        todo = [i for i, v in enumerate(out) if v is None]
        if not todo:
            return [bool(v) for v in out]
        while len(self._workers) < min(self.n, len(todo)):
            self._workers.append(self._spawn())
        idle = list(range(len(self._workers)))
        busy: dict[int, tuple[int, float]] = {}  # worker -> (pair index, deadline)
        from multiprocessing.connection import wait

        while todo or busy:
            while todo and idle:
                w = idle.pop()
                i = todo.pop()
                if not self._workers[w][0].is_alive():  # died since last use: replace it
                    self._workers[w] = self._spawn()
                try:
                    self._workers[w][1].send(pairs[i])
                except OSError:
                    self._workers[w][0].kill()
                    self._workers[w] = self._spawn()
                    self._workers[w][1].send(pairs[i])
                busy[w] = (i, time.monotonic() + 2 * self.timeout_s + 1)
            timeout = max(0.0, min(d for _, d in busy.values()) - time.monotonic())
            ready = wait([self._workers[w][1] for w in busy], timeout=timeout)
            for w in list(busy):
                i, deadline = busy[w]
                conn = self._workers[w][1]
                if conn in ready:
                    try:
                        out[i] = bool(conn.recv())
                    except EOFError:
                        out[i] = False
                        self._workers[w][0].kill()
                        self._workers[w] = self._spawn()
                elif time.monotonic() >= deadline:
                    out[i] = False
                    self._workers[w][0].kill()
                    self._workers[w] = self._spawn()
                else:
                    continue
                del busy[w]
                idle.append(w)
        return [bool(v) for v in out]


_verifiers: dict[tuple, MathVerifier] = {}


def math_verifier(workers: int = 1, timeout_s: float = 5.0) -> MathVerifier:
    key = (workers, timeout_s)
    if key not in _verifiers:
        _verifiers[key] = MathVerifier(workers, timeout_s)
    return _verifiers[key]


def grade_math(completions: list[str], golds: list[str], fmt: str = "boxed", workers: int = 1,
               timeout_s: float = 5.0) -> list[tuple[bool, bool]]:
    """(strict, flexible) correctness for each completion against its gold answer."""
    strict_pred = [extract_strict(c, fmt) for c in completions]
    flex_pred = [extract_flexible(c) for c in completions]
    pairs, where = [], []
    for i, (s, f, g) in enumerate(zip(strict_pred, flex_pred, golds)):
        if s is not None:
            pairs.append((s, g))
            where.append((i, "s"))
        if f is not None and f != s:
            pairs.append((f, g))
            where.append((i, "f"))
    res = math_verifier(workers, timeout_s).equal_many(pairs) if pairs else []
    strict = [False] * len(completions)
    flex = [False] * len(completions)
    for (i, kind), ok in zip(where, res):
        if kind == "s":
            strict[i] = ok
            flex[i] = flex[i] or ok
        else:
            flex[i] = flex[i] or ok
    return list(zip(strict, flex))


# ------------------------------------------------------------------ pass@k


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k of Chen et al. (2021): 1 - C(n-c, k) / C(n, k), n samples of which c pass."""
    if k > n:
        raise ValueError(f"pass@{k} needs at least {k} samples, got {n}")
    if n - c < k:
        return 1.0
    prod = 1.0
    for i in range(n - c + 1, n + 1):
        prod *= 1.0 - k / i
    return 1.0 - prod


def pass_at_k_table(correct_per_problem: Iterable[list[bool]], k_list: Iterable[int] = (1,)) -> dict[str, float]:
    """Mean pass@k over problems; a k larger than a problem's sample count is skipped for all."""
    groups = [list(g) for g in correct_per_problem]
    out = {}
    for k in k_list:
        if groups and all(len(g) >= k for g in groups):
            out[f"pass@{k}"] = sum(pass_at_k(len(g), sum(g), k) for g in groups) / len(groups)
    return out


# ------------------------------------------------------------------ a file of completions


def parse_k(value: str) -> list[int]:
    """`k=1,10` (or `[1,10]`) as a list of sample counts for pass@k."""
    from .registry import OffbenchError

    try:
        ks = [int(x) for x in value.strip().strip("[]").split(",") if x.strip()]
    except ValueError:
        raise OffbenchError(f"k={value!r}: give whole numbers >= 1 for pass@k, e.g. k=1,10") from None
    _check_ks(ks)
    return ks


def _check_ks(ks) -> None:
    from .registry import OffbenchError

    if not ks or any(not isinstance(k, int) or k < 1 for k in ks):
        raise OffbenchError(f"k={','.join(map(str, ks))}: each k must be a whole number >= 1 (pass@k over k "
                            f"samples per problem), e.g. k=1,10")


def _check_paths(completions_path: str, out_path: str | None) -> None:
    from .registry import OffbenchError

    if not os.path.isfile(completions_path):
        raise OffbenchError(f"completions={completions_path!r} is not a file: give the jsonl of completions")
    if not os.access(completions_path, os.R_OK):
        raise OffbenchError(f"completions={completions_path!r} is not readable")
    if out_path is None:
        return
    folder = os.path.dirname(os.path.abspath(out_path))
    if os.path.isdir(out_path):
        raise OffbenchError(f"out={out_path!r} is a folder: give a file name, e.g. out={out_path.rstrip('/')}/graded.jsonl")
    if not os.path.isdir(folder) or not os.access(folder, os.W_OK):
        raise OffbenchError(f"out={out_path!r}: folder {folder} does not exist or is not writable")
    if os.path.realpath(out_path) == os.path.realpath(completions_path):
        raise OffbenchError(f"out={out_path!r} would overwrite the completions: write the results elsewhere")


def _read_rows(path: str) -> list[dict]:
    from .registry import OffbenchError

    rows = []
    with open(path) as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError as e:
                raise OffbenchError(f"{path}:{n}: not JSON ({e}); one JSON object per line") from None
            if not isinstance(row, dict):
                raise OffbenchError(f"{path}:{n}: a {type(row).__name__}, not a JSON object")
            rows.append(row)
    return rows


def grade_file(task_name: str, task_overrides: list[str], completions_path: str, out_path: str | None,
               k_list: Iterable[int] = (1,)) -> dict:
    """Grade a jsonl of completions against a task's held-out split.

    Each input row: {"completion": str} plus one of "index" (position in the task's eval split),
    "task_id" (an example's meta task_id) or "prompt" (its exact prompt text). Several rows per
    example give pass@k. Writes one row per completion (with reward, correct, flexible) to
    `out_path` (jsonl) and returns {"pass@k": ..., "accuracy_flexible": ..., counts, task, version}.
    `task_overrides`: `key=value` of the task's arguments (with or without the `task.` prefix)."""
    from .config import build_config
    from .registry import OffbenchError
    from .tasks_api import build_task

    k_list = list(k_list)
    _check_ks(k_list)
    _check_paths(completions_path, out_path)
    overrides = [f"task={task_name}"] + [o if o.startswith("task.") else f"task.{o}" for o in task_overrides]
    cfg = build_config(overrides)
    task = build_task(cfg)
    exs = task.eval_examples()
    by_prompt = {e.prompt: i for i, e in enumerate(exs)}
    by_id = {e.meta.get("task_id"): i for i, e in enumerate(exs) if e.meta.get("task_id") is not None}
    rows = _read_rows(completions_path)
    idx = []
    for n, r in enumerate(rows):
        if not isinstance(r.get("completion"), str):
            raise OffbenchError(f"{completions_path}:{n + 1}: no 'completion' text field")
        if "index" in r:
            try:
                i = int(r["index"])
            except (TypeError, ValueError):
                raise OffbenchError(f"{completions_path}:{n + 1}: index {r['index']!r} is not a whole number") from None
            if not 0 <= i < len(exs):
                raise OffbenchError(f"{completions_path}:{n + 1}: index {i} outside the eval split (0..{len(exs) - 1})")
        elif "task_id" in r and r["task_id"] in by_id:
            i = by_id[r["task_id"]]
        elif "prompt" in r and r["prompt"] in by_prompt:
            i = by_prompt[r["prompt"]]
        else:
            raise OffbenchError(f"{completions_path}:{n + 1}: give 'index', a known 'task_id' or an eval 'prompt'")
        idx.append(i)
    grades = task.grade_batch([exs[i] for i in idx], [r["completion"] for r in rows])
    per: dict[int, list[bool]] = {}
    for i, g in zip(idx, grades):
        per.setdefault(i, []).append(g.correct)
    if out_path:
        tmp = out_path + ".tmp"
        with open(tmp, "w") as f:
            for r, i, g in zip(rows, idx, grades):
                f.write(json.dumps({**r, "index": i, "reward": g.reward, "correct": g.correct,
                                    "flexible": g.flexible}) + "\n")
        os.replace(tmp, out_path)
    result = {"task": task_name, "task_version": task.version, "n_problems": len(per), "n_samples": len(rows),
              **pass_at_k_table(per.values(), k_list),
              "accuracy": sum(g.correct for g in grades) / max(1, len(grades)),
              "accuracy_flexible": sum(g.flexible for g in grades) / max(1, len(grades))}
    return result
