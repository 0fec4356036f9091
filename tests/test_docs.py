"""README, .ci/run and the registries stay in sync."""

import os
import re

from offpolicy_bench.docs import README, render

ROOT = os.path.dirname(README)


def test_readme_tables_match_registries():
    text = open(README).read()
    assert render(text) == text, "README tables are stale: run `python -m offpolicy_bench.docs`"


def test_readme_has_two_setup_commands_and_ci_runs_them():
    text = open(README).read()
    blocks = re.findall(r"```bash\n(.*?)\n```", text.split("## What a run does")[0], re.S)
    assert len(blocks) == 2, blocks
    install_run, test_cmd = blocks
    ci = open(os.path.join(ROOT, ".ci", "run")).read()
    # CI: the README's install step (without the main job) and the README's test command
    install = install_run.split(" && offbench run")[0]
    for part in install.split(" && "):
        assert part.replace(". .venv/bin/activate", ". .venv/bin/activate") in ci, part
    assert test_cmd.split(" && ")[-1] in ci.splitlines()
    assert "offbench run method=vespo task=math_cot staleness=16" in install_run


def test_template_method_is_not_registered():
    from offpolicy_bench.method import METHODS
    from offpolicy_bench.plugins import load_builtin

    load_builtin()
    assert "my_method" not in METHODS
