"""Registry behaviour and the three ways to add a method without forking."""

import os
import textwrap

import pytest

from conftest import TINY, offbench
from offpolicy_bench import OffbenchError
from offpolicy_bench.registry import Registry


class Item:
    def __init__(self, origin):
        self.origin = origin


def test_duplicate_name_from_another_origin_is_an_error():
    reg = Registry("method")
    reg.add("a", Item("m1.f"), "m1.f")
    reg.add("a", Item("m1.f"), "m1.f")  # same origin (a module reloaded in a notebook): fine
    with pytest.raises(OffbenchError, match="method 'a' is already registered .*m1.f"):
        reg.add("a", Item("m2.g"), "m2.g")


def test_unknown_name_suggests_and_lists():
    reg = Registry("task")
    for n in ("math", "code"):
        reg.add(n, Item(n), n)
    with pytest.raises(OffbenchError, match=r"unknown task 'mth'\. Did you mean 'math'\? Registered: code, math"):
        reg.get("mth")
    with pytest.raises(OffbenchError, match=r"unknown task 'zzz'\. Registered: code, math"):
        reg.get("zzz")


PLUGIN = textwrap.dedent('''
    from dataclasses import dataclass
    from offpolicy_bench.method import register_method

    @dataclass(frozen=True)
    class HalfArgs:
        scale: float = 0.5
        """gradient scale"""

    @register_method("half_pg", args=HalfArgs, default_agg="seq-mean-token-mean", ratio="none", level="token",
                     equation="test plugin")
    def half_pg(batch, args):
        """Half the plain policy gradient."""
        return -args.scale * batch.advantages * batch.logp, {"scale": args.scale}
''')


def test_plugin_module_named_in_config_trains(tmp_path):
    (tmp_path / "my_plugin_pkg").mkdir()
    (tmp_path / "my_plugin_pkg" / "__init__.py").write_text("")
    (tmp_path / "my_plugin_pkg" / "half.py").write_text(PLUGIN)
    env_path = os.environ.get("PYTHONPATH", "")
    os.environ["PYTHONPATH"] = f"{tmp_path}{os.pathsep}{env_path}"
    try:
        r = offbench("run", "plugins=[my_plugin_pkg.half]", "method=half_pg", "method.scale=0.25", *TINY,
                     f"log.out_dir={tmp_path}", "name=pl")
    finally:
        os.environ["PYTHONPATH"] = env_path
    assert r.returncode == 0, r.stderr
    assert "agg: seq-mean-token-mean" in r.stdout and "scale: 0.25" in r.stdout
    import pandas as pd

    df = pd.read_parquet(tmp_path / "pl" / "metrics.parquet")
    assert set(df[df.metric == "scale"].value) == {0.25}


def test_plugin_file_path_in_config_trains(tmp_path):
    (tmp_path / "my_loss.py").write_text(PLUGIN)
    r = offbench("run", f"plugins=[{tmp_path / 'my_loss.py'}]", "method=half_pg", "method.scale=0.25", *TINY,
                 f"log.out_dir={tmp_path}", "name=pf")
    assert r.returncode == 0, r.stderr
    import pandas as pd

    df = pd.read_parquet(tmp_path / "pf" / "metrics.parquet")
    assert set(df[df.metric == "scale"].value) == {0.25}


def test_relative_plugin_path_and_a_missing_file(tmp_path, monkeypatch):
    from offpolicy_bench.config import build_config

    name = f"file_pg_{os.getpid()}"  # registered in this process: a name no other test uses
    (tmp_path / "my_loss.py").write_text(PLUGIN.replace('"half_pg"', f'"{name}"'))
    monkeypatch.chdir(tmp_path)
    for _ in range(2):  # a second build_config imports the file once only (no "already registered")
        cfg = build_config(["plugins=[./my_loss.py]", f"method={name}", "method.scale=0.75"])
        assert cfg.method.name == name and cfg.method.scale == 0.75 and cfg.method.agg == "seq-mean-token-mean"
    with pytest.raises(OffbenchError, match=r"plugin file './nope.py' does not exist"):
        build_config(["plugins=[./nope.py]"])
    r = offbench("run", "plugins=[./nope.py]", *TINY, cwd=tmp_path)
    assert r.returncode == 2 and "plugin file './nope.py' does not exist" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_entry_point_plugin_is_loaded_without_config(tmp_path):
    pkg = tmp_path / "ep_plugin_pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "half.py").write_text(PLUGIN)
    dist = tmp_path / "ep_plugin_pkg-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: ep-plugin-pkg\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[offpolicy_bench.methods]\nhalf = ep_plugin_pkg.half\n")
    env_path = os.environ.get("PYTHONPATH", "")
    os.environ["PYTHONPATH"] = f"{tmp_path}{os.pathsep}{env_path}"
    try:
        r = offbench("methods")
    finally:
        os.environ["PYTHONPATH"] = env_path
    assert r.returncode == 0, r.stderr
    assert "| `half_pg` | - | token | seq-mean-token-mean | scale=0.5 | test plugin |" in r.stdout
