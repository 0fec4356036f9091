"""Grading throughput: sandboxed programs per second (synthetic code task) and math-verify answers
per second. Prints one JSON object.

    python benchmarks/grading_speed.py [--programs 400] [--answers 200]

Code, each completion in its own confined process in every mode:
  fresh_process   a new launcher + zygote (fresh interpreters) per program, one at a time
  pool_one_by_one one warm zygote, one program per round trip (what `task.grade` does per call)
  pool_batch      one warm zygote, the whole batch at once, `workers` children in parallel
                  (what `task.grade_batch` does for a rollout batch)
Math: answers that need sympy (not decided by the exact / rational fast path), math-verify in
1 and 2 worker processes.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import time


def code_jobs(n: int):
    from offpolicy_bench.sandbox import Job, Limits
    from offpolicy_bench.tasks_api import get_task

    cls = get_task("code")
    task = cls(cls.args(level=2))
    exs = task.train_examples(n, random.Random(0))
    comps = [e.answer if i % 2 else e.answer.replace("(", "").replace(")", "") for i, e in enumerate(exs)]
    lim = Limits(timeout_s=1.0, memory_mb=256)
    jobs = [Job(program=e.prompt + c + "\n", mode="calls", entry_point=e.meta["fn"], inputs=task._inputs(e),
                limits=lim) for e, c in zip(exs, comps)]
    return task, exs, comps, jobs


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--programs", type=int, default=400)
    ap.add_argument("--fresh", type=int, default=30, help="programs for the slow fresh-process mode")
    ap.add_argument("--answers", type=int, default=200)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    a = ap.parse_args()
    from offpolicy_bench.sandbox import SandboxPool, run_one

    out = {"machine": f"{platform.machine()}, {os.cpu_count()} CPUs, load avg {os.getloadavg()[0]:.1f}",
           "python": platform.python_version()}
    task, exs, comps, jobs = code_jobs(a.programs)

    t = time.perf_counter()
    for j in jobs[:a.fresh]:
        run_one(j)
    out["code_fresh_process_per_s"] = round(a.fresh / (time.perf_counter() - t), 1)

    with SandboxPool(workers=1) as pool:
        pool.run(jobs[:2])  # start the zygote
        out["isolation"] = pool.isolation
        t = time.perf_counter()
        for j in jobs:
            pool.run([j])
        out["code_pool_one_by_one_per_s"] = round(len(jobs) / (time.perf_counter() - t), 1)
    with SandboxPool(workers=a.workers) as pool:
        pool.run(jobs[:2])
        t = time.perf_counter()
        res = pool.run(jobs)
        out[f"code_pool_batch_{a.workers}_workers_per_s"] = round(len(jobs) / (time.perf_counter() - t), 1)
        assert all(r.status == "ran" for r in res)
    # the task's grade_batch on a fresh task instance (no cache), 1000-completion rollout batch
    from offpolicy_bench.tasks_api import get_task

    cls = get_task("code")
    fresh = cls(cls.args(level=2, workers=a.workers))
    big = fresh.train_examples(1000, random.Random(1))
    bc = [e.answer if i % 2 else e.answer.replace("(", "").replace(")", "") for i, e in enumerate(big)]
    fresh.grade_batch(big[:2], bc[:2])
    t = time.perf_counter()
    fresh.grade_batch(big, bc)
    out["code_task_grade_batch_1000_s"] = round(time.perf_counter() - t, 2)

    from offpolicy_bench.grading import MathVerifier

    forms = [("x^2+{a}x", "x({a}+x)"), ("\\frac{{{a}}}{{2}}x", "{a}x/2"), ("\\sqrt{{{a}}}", "{a}^{{1/2}}"),
             ("({a}+x)^2", "x^2+{b}x+{c}")]
    pairs = []
    for i in range(a.answers):
        p, g = forms[i % len(forms)]
        k = i + 2
        pairs.append((p.format(a=k, b=2 * k, c=k * k), g.format(a=k, b=2 * k, c=k * k)))
    for w in (1, 2):
        v = MathVerifier(workers=w, timeout_s=5.0)
        v.equal_many(pairs[:w * 2])  # start the workers (sympy import)
        t = time.perf_counter()
        res = v.equal_many(pairs)
        out[f"math_verify_{w}_workers_per_s"] = round(len(pairs) / (time.perf_counter() - t), 1)
        v.close()
    out["math_verify_true_frac"] = round(sum(res) / len(res), 3)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
