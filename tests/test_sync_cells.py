"""docs/reproduction/sync_cells.py: a grid's finished, clean cells go to the committed folder with their
tables; running and dirty cells do not, and cells already there are kept."""

import importlib.util
import json
import os

import pandas as pd

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
spec = importlib.util.spec_from_file_location("sync_cells", os.path.join(ROOT, "docs/reproduction/sync_cells.py"))
S = importlib.util.module_from_spec(spec)
spec.loader.exec_module(S)


def _cell(root, rid, status, commit):
    d = root / "cells" / rid
    d.mkdir(parents=True)
    (d / "run.json").write_text(json.dumps({"run_id": rid, "status": status, "git_commit": commit, "method": "vespo",
                                            "seed": 0}))
    pd.DataFrame({"step": [0, 8, 16], "split": "eval", "metric": "accuracy", "value": [0.1, 0.5, 0.6]}).to_parquet(
        d / "metrics.parquet")


def test_only_finished_clean_cells_are_synced(tmp_path):
    src, dst = tmp_path / "results", tmp_path / "docs"
    _cell(src, "aaa", "finished", "abc123")
    _cell(src, "bbb", "finished", "abc123-dirty")
    _cell(src, "ccc", "running", "abc123")
    (src / "grid.json").write_text(json.dumps({"overrides": [], "swept": ["seed"]}))
    copied, skipped = S.sync(str(src), str(dst))
    assert copied == ["aaa"] and [s.split()[0] for s in skipped] == ["bbb", "ccc"]
    assert sorted(os.listdir(dst / "cells")) == ["aaa"]
    summ = pd.read_parquet(dst / "summary.parquet")
    assert summ.run_id.tolist() == ["aaa"] and abs(summ.eval_accuracy_late_mean.iloc[0] - 0.6) < 1e-9
    (dst / "cells" / "aaa" / "marker").write_text("kept")  # a second sync leaves committed cells alone
    assert S.sync(str(src), str(dst))[0] == []
    assert (dst / "cells" / "aaa" / "marker").exists()
