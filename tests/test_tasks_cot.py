"""The long-response arithmetic task: its chain, its habit, its entropy floor, its grader."""

import collections
import math
import random

import pytest

from offpolicy_bench.config import build_config
from offpolicy_bench.registry import OffbenchError
from offpolicy_bench.tasks_api import get_task


def make(**kw):
    cls = get_task("math_cot")
    return cls(cls.args(**kw))


def test_chain_is_column_addition_and_ends_in_the_sum():
    t = make(digits=4, habit=0.0)
    rng = random.Random(0)
    for ex in t.train_examples(200, rng):
        a, b = ex.meta["a"], ex.meta["b"]
        assert ex.prompt == f"{a}+{b}=" and ex.answer == str(a + b)
        steps, answer = ex.solution.rsplit(" =", 1)
        assert answer == str(a + b)
        cols = steps.split(" ")
        assert len(cols) == 4
        carry = 0
        for col, x, y in zip(cols, str(a)[::-1], str(b)[::-1]):  # least significant column first
            assert col == f"{x}+{y}{'+1' if carry else ''}={int(x) + int(y) + carry}"
            carry = (int(x) + int(y) + carry) // 10
        assert t.grade(ex, ex.solution).correct


def test_habit_drops_carries_consistently_and_the_answer_is_wrong():
    t = make(digits=4, habit=1.0)
    exs = t.warmstart_examples(300, random.Random(1))
    wrong = 0
    for ex in exs:
        steps, written = ex.solution.rsplit(" =", 1)
        assert all(col.count("+") == 1 for col in steps.split(" "))  # every due carry is forgotten
        sums = [int(c.split("=")[1]) for c in steps.split(" ")]
        expect = ("1" if sums[-1] >= 10 else "") + "".join(str(v % 10) for v in sums[::-1])
        assert written == expect  # the answer the written chain implies
        # a carry is due somewhere iff a column below the top one overflows (habit=1: no carry is ever added)
        had_carry = any(int(x) + int(y) >= 10 for x, y in list(zip(str(ex.meta["a"]), str(ex.meta["b"])))[1:])
        assert t.grade(ex, ex.solution).correct == (not had_carry)
        wrong += had_carry
    assert wrong > 100


def test_entropy_floor_matches_a_monte_carlo_estimate():
    """The per-prompt entropy by the forward recursion equals the plug-in entropy of sampled chains."""
    from offpolicy_bench.tasks.math.cot import column_trace

    t = make(digits=5, habit=0.3)
    exs = [e for e in t.train_examples(200, random.Random(2)) if t.warmstart_entropy(e) > 0.5][:3]
    assert exs
    rng = random.Random(3)
    for ex in exs:
        n = 40000
        counts = collections.Counter(column_trace(ex.meta["a"], ex.meta["b"], 5, drop=lambda: rng.random() < 0.3)[0]
                                     for _ in range(n))
        plug_in = -sum(c / n * math.log(c / n) for c in counts.values())
        assert t.warmstart_entropy(ex) == pytest.approx(plug_in, abs=0.01)
    assert make(digits=5, habit=0.0).warmstart_entropy(exs[0]) == 0.0


def test_grader_strict_and_flexible():
    t = make(digits=2)
    ex = t.train_examples(1, random.Random(0))[0]
    assert t.grade(ex, f"anything ={ex.answer}").correct
    assert not t.grade(ex, f"={int(ex.answer) + 1}").correct
    assert not t.grade(ex, "").correct
    g = t.grade(ex, f"= {ex.answer} ")
    assert g.correct and g.reward == 1.0


@pytest.mark.parametrize("kw,fragment", [({"digits": 0}, "task.digits must be in [1, 16]"),
                                         ({"digits": 17}, "task.digits must be in [1, 16]"),
                                         ({"habit": 1.5}, "task.habit must be in [0, 1]"),
                                         ({"digits": 1, "eval_size": 26}, "task.eval_size must be in [1, 25]")])
def test_bad_arguments_are_one_line_errors(kw, fragment):
    with pytest.raises(OffbenchError) as e:
        make(**kw)
    assert fragment in str(e.value) and "\n" not in str(e.value)


def test_response_cap_follows_the_length_knob():
    for d in (1, 4, 16):
        cfg = build_config(["task=math_cot", f"task.digits={d}"])
        from offpolicy_bench.tasks.math.cot import column_trace

        nines = 10 ** d - 1  # the longest chain: every column carries
        trace, answer = column_trace(nines, nines, d)
        longest = len(f"{trace} ={answer}") + 1  # + EOS
        assert longest <= cfg.rollout.max_new_tokens <= longest + 4
    assert build_config(["task=math"]).rollout.max_new_tokens == 8
    assert build_config(["task=math_cot", "rollout.max_new_tokens=12"]).rollout.max_new_tokens == 12
