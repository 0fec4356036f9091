"""Built-in synthetic code task for a tiny character-level model: complete a one-line function.

    # add 3, then mul 4          <- the description (levels 1-3) or worked examples (level 4)
    def g(n):
        return                   <- the prompt ends here; the reference completion is `(n+3)*4`

Level 5 asks for a body of three lines with a running variable (40 characters, every line after the
first indented by the model itself):

    # sub 2, then mul 5, then mod 7
    def h(v):
        w = v - 2                <- the prompt ends after the first line's indentation
        w = w * 5
        return w % 7

The completion is executed in the sandbox (one process per completion) and called on hidden inputs;
reward 1 iff every output equals the reference's (same type and value). Any equivalent expression
passes (`4*(n+3)`, `n*4+12`): the grader runs code, it does not compare text. Deterministic by seed,
with a held-out split never used for training or the warm start; at level 5 the split is by function
(the steps and their constants), so no training prompt is a held-out function reworded with other names.
"""

from __future__ import annotations

import dataclasses
import math
import random
from dataclasses import dataclass

from offpolicy_bench.registry import OffbenchError
from offpolicy_bench.sandbox import Job, Limits, encode
from offpolicy_bench.tasks_api import Example, GeneratedTask, Grade, binary_entropy, register_task

from . import GradeCache, run_jobs, truncate_at_stops

OPS = {"add": "+", "sub": "-", "mul": "*", "div": "//", "mod": "%"}
FUNCS, ARGS1, ARGS2 = "fgh", "xnv", (("x", "y"), ("a", "b"), ("n", "m"))
RUNNING = {"x": "y", "n": "m", "v": "w", "a": "b"}  # level 5: argument -> running variable
LEVEL5_OPS = (("add", range(1, 10)), ("sub", range(1, 10)), ("mul", range(2, 10)))  # steps 1 .. n-1
LEVEL5_LAST = (("mod", range(2, 10)), ("add", range(1, 10)))  # the returned step
LEVEL5_STEPS = 3
# level 6: task.lines steps with two-digit constants; each line may carry one of three habits
LEVEL6_OPS = (("add", range(10, 50)), ("sub", range(10, 50)), ("mul", range(2, 10)))
LEVEL6_LAST = (("mod", range(10, 50)), ("add", range(10, 50)), ("sub", range(10, 50)))
HABIT_KINDS = ("arg", "swap", "op")  # argument for the running variable, digits transposed, + for - (and back)
HIDDEN_1 = [-7, -2, 0, 1, 3, 6, 11, 25]
HIDDEN_2 = [(-3, 2), (0, 5), (1, 1), (4, -2), (7, 3), (10, 6), (25, 9)]

LEVEL_DOC = {1: "one operation: add/sub/mul/div/mod a constant (x//4)",
             2: "add/sub a constant, then mul/div/mod by another: needs parentheses ((x+3)*4)",
             3: "two arguments: add/sub/mul the second, then add/mul/mod a constant ((x+y)%5)",
             4: "linear function from three worked examples f(0), f(1), f(2) (3*x+2)",
             5: "three steps written as three lines with a running variable (y = x + 3 / y = y * 4 / return y % 7)",
             6: "task.lines steps with two-digit constants (y = x + 37 / y = y * 4 / ... / return y % 23), "
                "three kinds of habit at every line"}


@dataclass(frozen=True)
class CodeArgs:
    level: int = 2
    """difficulty: 1 one op (x//4), 2 two ops needing parentheses ((x+3)*4), 3 two arguments ((x+y)%5),
    4 a linear function inferred from three examples (3*x+2), 5 a three-line body with a running
    variable (40-token responses; held out by function, not by prompt), 6 a body of task.lines lines
    with two-digit constants and three kinds of habit (about 14 tokens a line)"""
    lines: int = 5
    """level 6 only: lines of the body (3..8; about 14 tokens each)"""
    eval_size: int = 256
    """held-out problems (never seen in training or warm start)"""
    eval_seed: int = 12345
    """seed of the held-out split"""
    habit: float | None = None
    """(default 0.5, at level 6 0.15 per line) fraction of warm-start targets written with a plausible bug: level 1 swaps the operands
    (3-x for x-3), levels 2-3 drop the parentheses (x+3*4 for (x+3)*4), level 4 swaps slope and
    intercept, level 5 uses the argument instead of the running variable (y = x * 4 for y = y * 4)
    independently at each line after the first; at level 6 each line independently gets, with this
    probability, one of the habits that change its outputs, drawn uniformly: the argument for the
    running variable, the constant's digits transposed (y = y + 73 for y + 37), or + and - swapped. The warm-started policy then mixes a right and a
    wrong way to write the function, as base models do, and RL has a habit to unlearn (at level 5, at
    several tokens of the response). A habit is kept only where it changes the outputs on the hidden
    inputs. Hidden tests always check the true function."""
    timeout_s: float = 1.0
    """wall-clock limit per completion (the whole process group is killed then)"""
    memory_mb: int = 256
    """address-space limit per completion"""
    workers: int = 0
    """sandbox processes running at once (0 = one per CPU)"""


@register_task
class SyntheticCode(GeneratedTask):
    """Complete `def f(x):\\n    return ` with an expression; hidden unit tests run in the sandbox."""

    name = "code"
    version = "code-1"
    kind = "code"
    args = CodeArgs
    grader = "sandbox"

    def __init__(self, args: CodeArgs):
        if args.habit is None:
            args = dataclasses.replace(args, habit=LEVEL6_HABIT if args.level == 6 else 0.5)
        super().__init__(args)
        if args.level not in LEVEL_DOC:
            raise OffbenchError(f"task.level={args.level} unknown; levels: {sorted(LEVEL_DOC)}")
        if not 0.0 <= args.habit <= 1.0:
            raise OffbenchError(f"task.habit must be in [0, 1], got {args.habit}")
        if args.level == 6 and not 3 <= args.lines <= 8:
            raise OffbenchError(f"task.lines must be in [3, 8], got {args.lines}")
        space = self._space()
        if not 0 < args.eval_size <= space // 4:
            raise OffbenchError(f"task.eval_size must be in [1, {space // 4}] at level {args.level} "
                                f"({space} distinct {'functions' if args.level >= 5 else 'problems'}), "
                                f"got {args.eval_size}")
        self._init_split()
        self._cache = GradeCache()
        self._limits = Limits(timeout_s=args.timeout_s, memory_mb=args.memory_mb)

    @classmethod
    def default_max_new_tokens(cls, args: CodeArgs) -> int:
        # level 5: every reference body is 40 characters (one-digit constants, one-letter names), + EOS
        if args.level == 6:  # the longest line is `w = w - 49` plus its newline and indentation
            return 15 * args.lines + 2
        return 44 if args.level == 5 else 8

    @classmethod
    def default_warmstart_steps(cls, args: CodeArgs) -> int:
        return {5: LEVEL5_WARMSTART_STEPS, 6: LEVEL6_WARMSTART_STEPS}.get(args.level, 1200)

    def _space(self) -> int:
        """Distinct problems (level 5: distinct functions, the unit of its held-out split)."""
        if self.cfg.level == 5:
            mid = sum(len(r) for _, r in LEVEL5_OPS) ** (LEVEL5_STEPS - 1)
            return mid * sum(len(r) for _, r in LEVEL5_LAST)
        if self.cfg.level == 6:
            return sum(len(r) for _, r in LEVEL6_OPS) ** (self.cfg.lines - 1) * sum(len(r) for _, r in LEVEL6_LAST)
        return {1: 3 * 3 * 5 * 49, 2: 3 * 3 * 2 * 9 * 3 * 8, 3: 3 * 3 * 3 * 3 * 8, 4: 3 * 3 * 8 * 9}[self.cfg.level]

    # -------------------------------------------------------------- split
    def _key(self, ex: Example):
        """What the held-out split keeps apart: the prompt, or at level 5 the function (its steps)."""
        return ex.meta["steps"] if self.cfg.level >= 5 else ex.prompt

    def _init_split(self) -> None:
        super()._init_split()
        self._eval_keys = {self._key(e) for e in self._eval}

    def _draw(self, n, rng, exclude, unique=False):
        """GeneratedTask._draw by `_key` (`exclude` holds keys)."""
        out, seen = [], set()
        while len(out) < n:
            ex = self.problem(rng)
            k = self._key(ex)
            if k in exclude or (unique and k in seen):
                continue
            seen.add(k)
            out.append(ex)
        return out

    def train_examples(self, n, rng):
        return self._draw(n, rng, exclude=self._eval_keys)

    # -------------------------------------------------------------- problems
    def _problem(self, rng: random.Random) -> tuple[Example, str]:
        """An example and its habit expression (a plausible wrong completion)."""
        lv, fn = self.cfg.level, rng.choice(FUNCS)
        if lv >= 5:
            return self._lines_problem(rng, fn), ""
        if lv == 3:
            v, w = rng.choice(ARGS2)
            params = f"{v}, {w}"
        else:
            v = rng.choice(ARGS1)
            params = v
        if lv == 1:
            word = rng.choice(list(OPS))
            c = rng.randint(1, 49)
            desc, ref, habit = f"{word} {c}", f"{v}{OPS[word]}{c}", f"{c}{OPS[word]}{v}"
        elif lv == 2:
            w1, w2 = rng.choice(["add", "sub"]), rng.choice(["mul", "div", "mod"])
            a, b = rng.randint(1, 9), rng.randint(2, 9)
            desc = f"{w1} {a}, then {w2} {b}"
            ref, habit = f"({v}{OPS[w1]}{a}){OPS[w2]}{b}", f"{v}{OPS[w1]}{a}{OPS[w2]}{b}"
        elif lv == 3:
            w1, w2 = rng.choice(["add", "sub", "mul"]), rng.choice(["add", "mul", "mod"])
            b = rng.randint(2, 9)
            desc = f"{w1} {w}, then {w2} {b}"
            ref, habit = f"({v}{OPS[w1]}{w}){OPS[w2]}{b}", f"{v}{OPS[w1]}{w}{OPS[w2]}{b}"
        else:
            a, b = rng.randint(2, 9), rng.randint(1, 9)
            while a == b:
                b = rng.randint(1, 9)
            desc = ", ".join(f"{fn}({i})={a * i + b}" for i in range(3))
            ref, habit = f"{a}*{v}+{b}", f"{b}*{v}+{a}"
        prompt = f"# {desc}\ndef {fn}({params}):\n    return "
        return Example(prompt=prompt, answer=ref, solution=ref, meta={"params": params, "fn": fn, "habit": habit}), habit

    def _lines_problem(self, rng: random.Random, fn: str) -> Example:
        v = rng.choice(sorted(RUNNING))
        six = self.cfg.level == 6
        n, ops, last = (self.cfg.lines, LEVEL6_OPS, LEVEL6_LAST) if six else (LEVEL5_STEPS, LEVEL5_OPS, LEVEL5_LAST)
        steps = []
        for i in range(n):
            word, consts = rng.choice(ops if i < n - 1 else last)
            steps.append((word, rng.choice(consts)))
        steps = tuple(steps)
        desc = ", then ".join(f"{w} {c}" for w, c in steps)
        prompt = f"# {desc}\ndef {fn}({v}):\n    "
        # a line's habit is kept only where it changes the function on the hidden inputs
        ref = [apply_steps(steps, x) for x in HIDDEN_1]

        def changes(i, kind):
            return habit_applies(steps[i], i, kind) and [apply_steps(steps, x, {i: kind}) for x in HIDDEN_1] != ref
        if six:  # per line, the habit kinds that apply and change the outputs
            habitable = tuple(tuple(k for k in HABIT_KINDS if changes(i, k)) for i in range(n))
        else:
            habitable = tuple(i for i in range(1, n) if changes(i, "arg"))
        body = lines_body(steps, v)
        return Example(prompt=prompt, answer=body, solution=body,
                       meta={"params": v, "fn": fn, "steps": steps, "habitable": habitable})

    def lines_target(self, ex: Example, rng: random.Random) -> str:
        """A level-5/6 warm-start target. Level 5: at each habit-able line, independently with probability
        task.habit, the argument replaces the running variable. Level 6: each line with at least one
        habit that changes its outputs gets, with probability task.habit, one of them drawn uniformly."""
        if self.cfg.level == 6:
            habit = {}
            for i, kinds in enumerate(ex.meta["habitable"]):
                if kinds and rng.random() < self.cfg.habit:
                    habit[i] = rng.choice(kinds)
        else:
            habit = {i for i in ex.meta["habitable"] if rng.random() < self.cfg.habit}
        return lines_body(ex.meta["steps"], ex.meta["params"], habit)

    def problem(self, rng: random.Random) -> Example:
        return self._problem(rng)[0]

    def warmstart_examples(self, n, rng):
        if self.cfg.level >= 5:
            out = []
            for ex in self.train_examples(n, rng):
                target = self.lines_target(ex, rng)
                out.append(ex if target == ex.solution else Example(ex.prompt, ex.answer, target, ex.meta))
            return out
        out = []
        while len(out) < n:
            ex, habit = self._problem(rng)
            if ex.prompt in self._eval_prompts:
                continue
            if rng.random() < self.cfg.habit and not self._passes_reference(ex, habit):
                ex = Example(ex.prompt, ex.answer, habit, ex.meta)
            out.append(ex)
        return out

    def warmstart_entropy(self, ex: Example) -> float:
        """Entropy (nats) of this prompt's warm-start target: H(habit) where the habit expression is
        really wrong on the hidden inputs (then it replaces the reference with probability habit), else 0.
        Level 5: H(habit) per habit-able line (independent choices; distinct lines, distinct texts).
        Level 6: per line with k >= 1 habit kinds, H(habit) + habit * ln k (k + 1 distinct texts)."""
        if self.cfg.level == 6:
            h = self.cfg.habit
            return sum(binary_entropy(h) + h * math.log(len(k)) for k in ex.meta["habitable"] if k)
        if self.cfg.level == 5:
            return len(ex.meta["habitable"]) * binary_entropy(self.cfg.habit)
        return 0.0 if self._passes_reference(ex, ex.meta["habit"]) else binary_entropy(self.cfg.habit)

    # -------------------------------------------------------------- grading
    def _inputs(self, ex: Example) -> list[list]:
        return [list(p) for p in HIDDEN_2] if "," in ex.meta["params"] else [[x] for x in HIDDEN_1]

    def _expected(self, ex: Example) -> list[str]:
        if self.cfg.level >= 5:
            return [encode(apply_steps(ex.meta["steps"], x)) for x in HIDDEN_1]
        f = eval(f"lambda {ex.meta['params']}: {ex.answer}", {"__builtins__": {}})  # our own expression
        out = []
        for args in self._inputs(ex):
            try:
                out.append(encode(f(*args)))
            except ZeroDivisionError:
                out.append("EZeroDivisionError")
        return out

    def _passes_reference(self, ex: Example, expr: str) -> bool:
        """Trusted check (our own generated expression, never a completion) used to keep only habits
        that are actually wrong on the hidden inputs."""
        alt = Example(ex.prompt, expr, expr, ex.meta)
        return self._expected(alt) == self._expected(ex)

    def grade_batch(self, examples, completions):
        """One sandboxed process per distinct (prompt, completion); strict = the completion as written,
        flexible = only its first line (the expression), at level 5 the body cut at the first stop
        sequence (a new def, class, comment...)."""
        keys = []
        todo: dict[tuple, Job] = {}
        for ex, c in zip(examples, completions):
            for variant in (c, truncate_at_stops(c) if self.cfg.level >= 5 else c.split("\n", 1)[0]):
                key = (ex.prompt, variant)
                keys.append(key)
                if self._cache.get(key) is None and key not in todo:
                    todo[key] = Job(program=ex.prompt + variant + "\n", mode="calls", entry_point=ex.meta["fn"],
                                    inputs=self._inputs(ex), limits=self._limits)
        if todo:
            by_prompt = {ex.prompt: ex for ex in examples}
            results = run_jobs(list(todo.values()), self.cfg.workers)
            for key, r in zip(todo, results):
                ok = r.status == "ran" and r.outputs == self._expected(by_prompt[key[0]])
                self._cache.put(key, ok)
        out = []
        for i in range(len(examples)):
            strict, flex = self._cache.get(keys[2 * i]), self._cache.get(keys[2 * i + 1])
            out.append(Grade(reward=float(strict), correct=strict, flexible=strict or flex))
        return out


# ------------------------------------------------------------------ level 5: a body of several lines

# the default model reaches the floor of the three-line targets in 1200 steps of 64 (fit loss 0.0336
# against the floor 0.0302 nats/token, excess 0.003; the training loss levels at ~600 steps)
LEVEL5_WARMSTART_STEPS = 1200
# Not a headroom level: on-policy RL (staleness 1, 256 steps, defaults) takes held-out accuracy from
# 0.36 to 0.95 by step 48 and ends at 0.98 (best 0.99). Each line is copied from the comment, so once
# the habit is unlearned nothing is left that the model cannot do; level 6 has more lines and habits.


def _habits(habit) -> dict:
    """{line: kind}; a plain set of lines means the level-5 habit ("arg") at each."""
    return habit if isinstance(habit, dict) else {i: "arg" for i in habit}


def habit_applies(step: tuple, i: int, kind: str) -> bool:
    """Whether a habit can be written at all on this line (before asking if it changes the outputs)."""
    word, c = step
    if kind == "arg":
        return i > 0
    if kind == "swap":
        return c >= 10 and c % 10 != 0 and c // 10 != c % 10
    return word in ("add", "sub")


def _written(step: tuple, kind: str | None) -> tuple:
    """The (operation, constant) a line is written with under a habit kind."""
    word, c = step
    if kind == "swap":
        return word, int(str(c)[::-1])
    if kind == "op":
        return {"add": "sub", "sub": "add"}[word], c
    return word, c


# level 6 (5 lines, habit 0.15 per line), measured 2026-11-30 on one AMD EPYC (threads=1): 800 warm-start
# steps reach fit 0.0391 against the floor 0.0335 nats/token (excess 0.0055); on-policy RL (staleness 1,
# 256 steps, defaults) takes held-out accuracy from 0.455 to 0.947, still rising, 0.94 by step 176.
LEVEL6_WARMSTART_STEPS = 800
# per-line habit at level 6: with about 4.6 habit-able lines of 5, (1 - 0.15)^4.6 ~ 0.47 of targets are right
LEVEL6_HABIT = 0.15


def apply_steps(steps: tuple, x: int, habit=frozenset()) -> int:
    """The level-5/6 function on x (trusted: our own steps, never a completion). `habit`: lines
    (0-based, never the first) that read the argument instead of the running variable, or a dict
    {line: "arg" | "swap" | "op"} (level 6)."""
    habit = _habits(habit)
    y = x
    for i, step in enumerate(steps):
        kind = habit.get(i)
        src = x if kind == "arg" else y
        word, c = _written(step, kind)
        y = {"add": src + c, "sub": src - c, "mul": src * c, "mod": src % c}[word]
    return y


def lines_body(steps: tuple, v: str, habit=frozenset()) -> str:
    """The completion: one line per step on the running variable, the last one returned; the
    prompt holds the first line's indentation, the body the others'. `habit` as in apply_steps."""
    habit = _habits(habit)
    r = RUNNING[v]
    lines = []
    for i, step in enumerate(steps):
        kind = habit.get(i)
        src = v if i == 0 or kind == "arg" else r
        word, c = _written(step, kind)
        expr = f"{src} {OPS[word]} {c}"
        lines.append(f"return {expr}" if i == len(steps) - 1 else f"{r} = {expr}")
    return "\n    ".join(lines)
