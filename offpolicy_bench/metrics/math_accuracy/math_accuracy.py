"""Math accuracy with strict and flexible answer extraction (offpolicy-bench's grader).

predictions: model completions (str); references: gold answers (str).
Returns {"accuracy": strict, "accuracy_flexible": flexible} (fractions of predictions).
`answer_format`: boxed (the last \\boxed{} counts) | gsm8k (after the last ####) | number.
"""

import datasets
import evaluate

from offpolicy_bench.grading import grade_math

_DESCRIPTION = __doc__
_KWARGS = """
Args:
    predictions: list of completions.
    references: list of gold answers.
    answer_format: strict extraction format, "boxed" (default), "gsm8k" or "number".
    timeout_s: per-answer math-verify timeout (worker process killed beyond it).
Returns:
    accuracy, accuracy_flexible
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS)
class MathAccuracy(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION, citation="", inputs_description=_KWARGS,
            features=datasets.Features({"predictions": datasets.Value("string"),
                                        "references": datasets.Value("string")}))

    def _compute(self, predictions, references, answer_format="boxed", timeout_s=5.0):
        res = grade_math(list(predictions), list(references), answer_format, 1, timeout_s)
        n = max(1, len(res))
        return {"accuracy": sum(s for s, _ in res) / n, "accuracy_flexible": sum(f for _, f in res) / n}
