"""pass@k of code completions, executed in offpolicy-bench's sandbox (unbiased estimator).

Like `code_eval`: predictions are lists of candidate programs (one list per problem), references
the test code of each problem (asserts run after the candidate). Each candidate runs in its own
confined process (see offpolicy_bench.sandbox); no opt-in variable is needed because nothing runs
unconfined. Returns ({"pass@k": ...}, per-candidate results).
"""

import datasets
import evaluate

from offpolicy_bench.grading import pass_at_k_table
from offpolicy_bench.sandbox import Job, Limits, shared_pool

_DESCRIPTION = __doc__
_KWARGS = """
Args:
    predictions: list of lists of candidate programs (str).
    references: list of test programs (str), one per problem.
    k: list of k values (default [1, 10, 100]; a k above the candidate count is skipped).
    timeout: seconds per candidate (default 3.0).
    entry_point: optional list of function names bound as `candidate` for the tests.
Returns:
    ({"pass@1": ..., ...}, {problem index: [(candidate index, passed, status), ...]})
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS)
class PassAtK(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION, citation="", inputs_description=_KWARGS,
            features=datasets.Features({"predictions": datasets.Sequence(datasets.Value("string")),
                                        "references": datasets.Value("string")}))

    def _compute(self, predictions, references, k=(1, 10, 100), timeout=3.0, entry_point=None, workers=None):
        limits = Limits(timeout_s=float(timeout))
        jobs, where = [], []
        for i, (cands, test) in enumerate(zip(predictions, references)):
            for j, prog in enumerate(cands):
                jobs.append(Job(program=prog, tests=test, entry_point=(entry_point[i] if entry_point else ""),
                                limits=limits))
                where.append((i, j))
        res = shared_pool(workers).run(jobs)
        per = {i: [] for i in range(len(predictions))}
        for (i, j), r in zip(where, res):
            per[i].append((j, r.passed, r.status))
        table = pass_at_k_table([[p for _, p, _ in per[i]] for i in per], k)
        return table, per
