"""Math answer extraction and equivalence (table-driven), the local-file loaders, math-verify workers."""

import importlib.util
import json
import os
import random

import pytest

from offpolicy_bench.grading import (MathVerifier, extract_flexible, extract_strict, grade_math, last_boxed,
                                     last_number, quick_equal)

needs_math_verify = pytest.mark.skipif(importlib.util.find_spec("math_verify") is None,
                                       reason="needs math-verify (pip install '.[math]')")

# (completion, gold, answer format, strict correct, flexible correct)
CASES = [
    # fractions and LaTeX
    (r"so $x = \boxed{\frac{1}{2}}$", r"\frac{1}{2}", "boxed", True, True),
    (r"\boxed{\dfrac{1}{2}}", r"\frac{1}{2}", "boxed", True, True),
    (r"\boxed{1/2}", r"\frac{1}{2}", "boxed", True, True),
    (r"\boxed{0.5}", r"\frac12", "boxed", True, True),
    (r"\boxed{\frac{2}{4}}", r"\frac{1}{2}", "boxed", True, True),
    (r"\boxed{\frac{1}{3}}", r"\frac{1}{2}", "boxed", False, False),
    (r"\boxed{\sqrt{2}}", r"2^{1/2}", "boxed", True, True),
    (r"\boxed{\frac{\sqrt{3}}{2}}", r"\frac{\sqrt3}{2}", "boxed", True, True),
    (r"\boxed{x^2+1}", r"1+x^2", "boxed", True, True),
    # nested braces inside the box
    (r"\boxed{\frac{a+\frac{1}{2}}{b}}", r"\frac{a+\frac{1}{2}}{b}", "boxed", True, True),
    # units and text
    (r"\boxed{10 \text{ cm}}", "10", "boxed", True, True),
    (r"\boxed{90^\circ}", "90", "boxed", True, True),
    # trailing text after the answer
    ("The answer is 42.", "42", "boxed", False, True),
    ("#### 42\nHope this helps!", "42", "gsm8k", True, True),
    ("#### 42.", "42", "gsm8k", True, True),
    ("She has 7 apples, then buys 5 more, so 12 apples in total.", "12", "gsm8k", False, True),
    # several boxed answers: the last one counts (strict and flexible alike)
    (r"first \boxed{3}, no wait: \boxed{4}", "4", "boxed", True, True),
    (r"first \boxed{4}, no wait: \boxed{3}", "4", "boxed", False, False),
    # negative numbers
    (r"\boxed{-3}", "-3", "boxed", True, True),
    (r"\boxed{3}", "-3", "boxed", False, False),
    ("#### -17", "-17", "gsm8k", True, True),
    ("the temperature falls to -5 degrees", "-5", "number", True, True),
    # thousands separators
    ("#### 1,234", "1234", "gsm8k", True, True),
    (r"\boxed{1{,}234}", "1234", "boxed", True, True),
    ("It costs $1,234,567 in total", "1234567", "number", True, True),
    ("#### 1,234", "1243", "gsm8k", False, False),
    # nothing extractable in the strict format
    ("I think it is 5", "5", "boxed", False, True),
    ("no idea", "5", "boxed", False, False),
    # exact integers: the shared extraction agrees with exact matching
    (r"\boxed{82}", "82", "boxed", True, True),
    (r"\boxed{28}", "82", "boxed", False, False),
]


def _decided_without_sympy(completion, gold, fmt):
    """True when every answer extracted from the completion is compared to the gold without sympy."""
    answers = {extract_strict(completion, fmt), extract_flexible(completion)} - {None}
    return all(quick_equal(a, gold) is not None for a in answers)


@pytest.mark.parametrize("completion,gold,fmt,strict,flexible", [
    c if _decided_without_sympy(*c[:3]) else pytest.param(*c, marks=needs_math_verify) for c in CASES])
def test_extraction_and_equivalence_table(completion, gold, fmt, strict, flexible):
    assert grade_math([completion], [gold], fmt) == [(strict, flexible)]


def test_extractors():
    assert last_boxed(r"\boxed{a{b}c} and \boxed{\frac{1}{2}}") == r"\frac{1}{2}"
    assert last_boxed(r"\boxed 5 dollars") == "5"
    assert last_boxed(r"\boxed{unclosed") is None
    assert last_number("1,234 apples and 3.5 pears.") == "3.5"
    assert last_number("no digits") is None
    assert extract_strict("#### 7", "gsm8k") == "7" and extract_strict("x", "gsm8k") is None
    assert extract_flexible("The answer is $\\frac{1}{2}$.") == "\\frac{1}{2}"
    assert quick_equal("1,000", "1000") is True and quick_equal("2", "3") is False
    assert quick_equal("x+1", "1+x") is None  # needs sympy


@needs_math_verify
def test_math_verify_runs_in_killable_workers():
    v = MathVerifier(workers=2, timeout_s=2.0)
    try:
        assert v.equal_many([("x+1", "1+x"), ("x+2", "1+x"), (r"\frac{1}{2}", "0.5")]) == [True, False, True]
        # a worker that dies is replaced, its answer graded wrong
        v._workers[0][0].kill()
        v._workers[0][0].join()
        assert v.equal_many([("x+1", "1+x"), ("y+1", "1+y")]).count(True) >= 1
        assert v.equal_many([("x+1", "1+x"), ("y+1", "1+y")]) == [True, True]
    finally:
        v.close()


@needs_math_verify
def test_math_verify_hard_timeout_kills_the_worker(monkeypatch):
    import offpolicy_bench.grading as g

    v = MathVerifier(workers=1, timeout_s=0.2)
    try:
        v.equal_many([("x+1", "1+x")])  # warm the worker
        worker = v._workers[0][0]
        os.kill(worker.pid, 19)  # SIGSTOP: the worker hangs, as on a pathological expression
        assert v.equal_many([("y+1", "1+y")]) == [False]
        worker.join(timeout=10)  # killed at the hard deadline, not merely set aside
        assert not worker.is_alive() and worker.exitcode is not None
        assert v._workers[0][0] is not worker and v._workers[0][0].is_alive()  # and replaced
        assert v.equal_many([("y+1", "1+y")]) == [True]
    finally:
        v.close()
    assert g.math_verifier(1, 5.0) is g.math_verifier(1, 5.0)


# ------------------------------------------------------------------ loaders

ROWS = [{"problem": f"What is {i} + {i}?", "answer": str(2 * i), "solution": f"{i}+{i}=\\boxed{{{2 * i}}}",
         "id": f"p{i}"} for i in range(40)]


def _task(name, **kw):
    from offpolicy_bench.tasks_api import get_task

    cls = get_task(name)
    return cls(cls.args(**kw))


def _write_jsonl(path, rows):
    with open(path, "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")


def test_math_file_loads_jsonl_parquet_and_saved_datasets(tmp_path):
    pd = pytest.importorskip("pandas")
    datasets = pytest.importorskip("datasets")
    _write_jsonl(tmp_path / "p.jsonl", ROWS)
    pd.DataFrame(ROWS).to_parquet(tmp_path / "p.parquet")
    datasets.DatasetDict({"train": datasets.Dataset.from_list(ROWS[:30]),
                          "test": datasets.Dataset.from_list(ROWS[30:])}).save_to_disk(str(tmp_path / "dd"))
    datasets.Dataset.from_list(ROWS).save_to_disk(str(tmp_path / "ds"))
    prompts = None
    for path in ("p.jsonl", "p.parquet", "ds"):
        t = _task("math_file", path=str(tmp_path / path), eval_size=8, solution_key="solution")
        ev = t.eval_examples()
        assert len(ev) == 8 and t.size == {"train": 32, "eval": 8}
        assert prompts is None or [e.prompt for e in ev] == prompts  # same held-out rows whatever the format
        prompts = [e.prompt for e in ev]
        train = t.train_examples(100, random.Random(0))
        assert not {e.prompt for e in train} & set(prompts)
        assert ev[0].meta["task_id"].startswith("p")
    t = _task("math_file", path=str(tmp_path / "dd"), split="train", eval_path=str(tmp_path / "dd"),
              eval_split="test", eval_size=0)
    assert len(t.eval_examples()) == 10 and t.size["train"] == 30
    g = t.grade_batch(t.eval_examples()[:3], [f"\\boxed{{{e.answer}}}" for e in t.eval_examples()[:3]])
    assert all(x.correct and x.reward == 1.0 for x in g)


def test_presets_and_column_paths(tmp_path):
    gsm = [{"question": f"Q{i}?", "answer": f"work\n#### {1000 + i:,}"} for i in range(12)]
    _write_jsonl(tmp_path / "gsm.jsonl", gsm)
    t = _task("gsm8k", path=str(tmp_path / "gsm.jsonl"), eval_size=4)
    e = t.eval_examples()[0]
    assert e.prompt.startswith("Question: Q") and e.prompt.endswith("Answer:")
    ok, = t.grade_batch([e], [f"so #### {e.answer.replace(',', '')}"])
    assert ok.correct and ok.flexible
    flex, = t.grade_batch([e], [f"the total is {e.answer}"])
    assert not flex.correct and flex.flexible and flex.reward == 0.0
    dapo = [{"prompt": [{"role": "user", "content": f"Solve {i}"}], "reward_model": {"ground_truth": str(i)}}
            for i in range(10)]
    _write_jsonl(tmp_path / "dapo.jsonl", dapo)
    t = _task("dapo", path=str(tmp_path / "dapo.jsonl"), eval_size=2, reward_on="flexible")
    e = t.eval_examples()[0]
    assert e.prompt.startswith("Solve ")
    g, = t.grade_batch([e], [f"it is {e.answer}"])
    assert g.reward == 1.0 and not g.correct and g.flexible
    for name in ("math500", "aime"):
        _task(name, path=str(tmp_path / "dapo.jsonl"), prompt_key="prompt.0.content",
              answer_key="reward_model.ground_truth", eval_size=2)


def test_loader_errors_are_clear(tmp_path):
    from offpolicy_bench.registry import OffbenchError

    with pytest.raises(OffbenchError, match="task.path is required"):
        _task("math_file")
    with pytest.raises(OffbenchError, match="does not exist"):
        _task("math_file", path=str(tmp_path / "nope.jsonl"))
    _write_jsonl(tmp_path / "p.jsonl", ROWS)
    with pytest.raises(OffbenchError, match="prompt_key"):
        _task("math_file", path=str(tmp_path / "p.jsonl"), prompt_key="question")
    with pytest.raises(OffbenchError, match="eval_size"):
        _task("math_file", path=str(tmp_path / "p.jsonl"), eval_size=40)


def test_config_brings_the_loader_args():
    from offpolicy_bench.config import build_config

    cfg = build_config(["task=gsm8k", "task.path=/x.jsonl", "task.eval_size=5"])
    assert cfg.task.answer_format == "gsm8k" and cfg.task.prompt_key == "question" and cfg.task.eval_size == 5


@needs_math_verify
def test_evaluate_metric_matches_our_grader():
    evaluate = pytest.importorskip("evaluate")
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    preds = [c for c, *_ in CASES]
    refs = [g for _, g, *_ in CASES]
    ours = grade_math(preds, refs, "boxed")
    want = {"accuracy": sum(s for s, _ in ours) / len(ours), "accuracy_flexible": sum(f for _, f in ours) / len(ours)}
    folder = os.path.join(here, "offpolicy_bench", "metrics", "math_accuracy")
    for path in (folder, os.path.join(folder, "math_accuracy.py")):
        m = evaluate.load(path)
        got = m.compute(predictions=preds, references=refs)
        assert got == pytest.approx(want), path
