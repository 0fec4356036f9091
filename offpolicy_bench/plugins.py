"""Where methods and tasks come from: the built-in folders, entry points, and `plugins=[...]`
(dotted module names or paths to .py files).

Importing a method or task module only registers it; nothing else happens at import time.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import pkgutil
import re
import sys
from importlib.metadata import entry_points

from .registry import OffbenchError

_loaded = False


def _import_package_modules(pkg_name: str) -> None:
    pkg = importlib.import_module(pkg_name)
    for info in pkgutil.walk_packages(pkg.__path__, prefix=pkg_name + "."):
        if not info.name.rsplit(".", 1)[-1].startswith("_"):
            importlib.import_module(info.name)


def load_builtin() -> None:
    """Register the shipped methods, corrections, advantage estimators and tasks, then those of installed
    entry points (once)."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    importlib.import_module("offpolicy_bench.advantages")  # the built-in advantage estimators
    _import_package_modules("offpolicy_bench.methods")
    _import_package_modules("offpolicy_bench.corrections")
    _import_package_modules("offpolicy_bench.tasks")
    for group in ("offpolicy_bench.methods", "offpolicy_bench.tasks"):
        for ep in entry_points(group=group):
            ep.load()


def _is_path(plugin: str) -> bool:
    return plugin.endswith(".py") or "/" in plugin or os.sep in plugin


def _import_file(path: str) -> None:
    """Import a .py file under a module name unique to its absolute path (imported once)."""
    full = os.path.realpath(os.path.expanduser(path))
    if not os.path.isfile(full):
        raise OffbenchError(f"plugin file {path!r} does not exist (plugins= takes a dotted module name or a path "
                            f"to a .py file, e.g. plugins=[./my_loss.py])")
    stem = re.sub(r"\W", "_", os.path.splitext(os.path.basename(full))[0])
    name = f"offbench_plugin_{stem}_{hashlib.sha256(full.encode()).hexdigest()[:10]}"
    if name in sys.modules:
        return
    spec = importlib.util.spec_from_file_location(name, full)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # before running it: dataclasses and inspect look the module up
    try:
        spec.loader.exec_module(module)
    except BaseException as e:
        del sys.modules[name]
        if isinstance(e, ImportError):
            raise OffbenchError(f"plugin file {path!r} could not be imported: {e}") from None
        raise


def load_plugins(plugins) -> None:
    """Import the user plugins named in config so they register: dotted module names
    (`plugins=[my_pkg.my_loss]`) or paths to .py files (`plugins=[./my_loss.py]`)."""
    load_builtin()
    for plugin in plugins or []:
        if _is_path(plugin):
            _import_file(plugin)
            continue
        try:
            importlib.import_module(plugin)
        except ImportError as e:
            raise OffbenchError(f"plugin module {plugin!r} could not be imported: {e}") from None
