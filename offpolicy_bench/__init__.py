"""offpolicy-bench: benchmark and ablate off-policy corrections for RL of LLMs.

Public API for notebooks and other frameworks:
    from offpolicy_bench import get_method, PolicyBatch
    out = get_method("vespo")(batch, {"c1_pos": 3.0})   # out.loss, out.metrics, out.agg
"""

from .advantages import get_advantage, register_advantage
from .losses import AGG_MODES, PolicyBatch, aggregate
from .method import MethodOutput, get_method, register_method
from .registry import OffbenchError
from .tasks_api import Example, Grade, Task, get_task, register_task

__version__ = "0.1.0"
__all__ = ["AGG_MODES", "PolicyBatch", "aggregate", "MethodOutput", "get_method", "register_method",
           "get_advantage", "register_advantage",
           "OffbenchError", "Example", "Grade", "Task", "get_task", "register_task", "__version__"]
