"""Where methods and tasks come from: the built-in folders, entry points, and `plugins=[...]`.

Importing a method or task module only registers it; nothing else happens at import time.
"""

from __future__ import annotations

import importlib
import pkgutil
from importlib.metadata import entry_points

from .registry import OffbenchError

_loaded = False


def _import_package_modules(pkg_name: str) -> None:
    pkg = importlib.import_module(pkg_name)
    for info in pkgutil.walk_packages(pkg.__path__, prefix=pkg_name + "."):
        if not info.name.rsplit(".", 1)[-1].startswith("_"):
            importlib.import_module(info.name)


def load_builtin() -> None:
    """Register the shipped methods and tasks, then those of installed entry points (once)."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    _import_package_modules("offpolicy_bench.methods")
    _import_package_modules("offpolicy_bench.tasks")
    for group in ("offpolicy_bench.methods", "offpolicy_bench.tasks"):
        for ep in entry_points(group=group):
            ep.load()


def load_plugins(modules) -> None:
    """Import user modules named in config (`plugins=[my_pkg.my_loss]`) so they register."""
    load_builtin()
    for mod in modules or []:
        try:
            importlib.import_module(mod)
        except ImportError as e:
            raise OffbenchError(f"plugin module {mod!r} could not be imported: {e}") from None
