"""`evaluate` metric modules, loadable offline by path:

    evaluate.load("<repo>/offpolicy_bench/metrics/math_accuracy")     # or .../math_accuracy.py
    evaluate.load("<repo>/offpolicy_bench/metrics/pass_at_k")

They call the same graders as the tasks (offpolicy_bench.grading, offpolicy_bench.sandbox), so the
numbers match `offbench grade` exactly. `path(name)` gives a module's folder.
"""

import os


def path(name: str) -> str:
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), name)
