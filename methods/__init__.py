"""Correction methods, one file each; every module registers itself with `register_method`.

Installed as `offpolicy_bench.methods`. Modules whose name starts with `_` (like `_template.py`)
are not loaded.
"""
