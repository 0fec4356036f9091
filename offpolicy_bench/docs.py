"""Docs from code: the README's method, task, correction and advantage tables are generated from the
registries.

    python -m offpolicy_bench.docs          # rewrite README.md's tables in place
tests/test_docs.py fails when README.md and the registries drift apart.
"""

from __future__ import annotations

import os
import re
import sys

README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")


def render(text: str) -> str:
    from .advantages import ADVANTAGES
    from .cli import advantage_table, correction_table, method_table, task_table
    from .correction import CORRECTIONS
    from .method import METHODS
    from .plugins import load_builtin
    from .tasks_api import TASKS

    load_builtin()
    for key, table in (("methods-table", method_table(METHODS)), ("tasks-table", task_table(TASKS)),
                       ("corrections-table", correction_table(CORRECTIONS)),
                       ("advantages-table", advantage_table(ADVANTAGES))):
        pattern = re.compile(rf"(<!-- {key}:start -->\n).*?(<!-- {key}:end -->)", re.S)
        if not pattern.search(text):
            raise SystemExit(f"README has no <!-- {key}:start/end --> markers")
        text = pattern.sub(lambda m: m.group(1) + table + "\n" + m.group(2), text)
    return text


def main() -> int:
    text = open(README).read()
    new = render(text)
    if new != text:
        open(README, "w").write(new)
        print("README.md tables updated")
    return 0


if __name__ == "__main__":
    sys.exit(main())
