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


def test_methods_doc_has_a_section_per_method_naming_its_arguments():
    import dataclasses

    from offpolicy_bench.method import METHODS
    from offpolicy_bench.plugins import load_builtin

    load_builtin()
    text = open(os.path.join(ROOT, "docs", "METHODS.md")).read()
    sections = {m.group(1): m.group(2) for m in re.finditer(r"^### `(\w+)`[^\n]*\n(.*?)(?=^##|\Z)", text, re.S | re.M)}
    assert set(METHODS) <= set(sections), sorted(set(METHODS) - set(sections))
    for name, method in METHODS.items():
        for f in dataclasses.fields(method.args):
            assert f.name in sections[name], (name, f.name)


def test_no_citation_of_files_outside_the_repository():
    for folder in ("methods", "offpolicy_bench", "corrections", "tests", "docs"):
        for dirpath, _, files in os.walk(os.path.join(ROOT, folder)):
            for fn in files:
                if fn.endswith((".py", ".md")) and fn != "test_docs.py":
                    assert "SCIENCE.md" not in open(os.path.join(dirpath, fn)).read(), os.path.join(dirpath, fn)
    assert "SCIENCE.md" not in open(README).read()


def test_probe_doc_tables_are_the_committed_probe_table():
    """docs/PROBE.md's tables are what docs/probe/tables.py prints from the committed docs/probe/probe.parquet
    (every number recomputable from committed files)."""
    import importlib.util

    import pandas as pd

    spec = importlib.util.spec_from_file_location("probe_tables", os.path.join(ROOT, "docs", "probe", "tables.py"))
    tables = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tables)
    printed = tables.tables(pd.read_parquet(os.path.join(ROOT, "docs", "probe", "probe.parquet")))
    doc = open(os.path.join(ROOT, "docs", "PROBE.md")).read()
    rows = [ln for ln in printed.splitlines() if ln.startswith(("|", "**"))]
    assert len(rows) > 60 and all(ln in doc for ln in rows), [ln for ln in rows if ln not in doc][:3]


def test_reproduction_v2_verdicts_are_what_verdicts_py_prints_from_the_committed_grid(tmp_path):
    """docs/REPRODUCTION.md's v2 verdict and contrast tables, and the committed contrasts.csv the contrast
    figure is drawn from, are what the registered analysis prints from the committed grid tables and probe
    (the command the document gives; every number recomputable from committed files)."""
    import subprocess
    import sys

    import pandas as pd

    v2 = os.path.join("docs", "reproduction", "paper-cpu-v2")
    out = subprocess.run([sys.executable, os.path.join(v2, "verdicts.py"), v2, "--probe", os.path.join("docs", "probe", "probe.parquet"),
                          "--contrasts", str(tmp_path / "contrasts.csv")], cwd=ROOT, capture_output=True, text=True,
                         check=True).stdout
    doc = open(os.path.join(ROOT, "docs", "REPRODUCTION.md")).read()
    rows = [ln for ln in out.splitlines() if ln.startswith(("|", "Starts", "Machines", "C1 coll", "C3 mech"))]
    assert len(rows) > 40 and all(ln in doc for ln in rows), [ln for ln in rows if ln not in doc][:3]
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "contrasts.csv"),
                                  pd.read_csv(os.path.join(ROOT, v2, "contrasts.csv")))
