"""Math datasets from a local path: jsonl / json / parquet files or a folder saved with `datasets`.

`task=math_file task.path=... task.prompt_key=... task.answer_key=...` is the general loader;
`gsm8k`, `math500`, `aime` and `dapo` are the same task with the column names, prompt template and
answer format of those datasets as defaults. Nothing is downloaded: point `task.path` at a file you
have. Grading: strict and flexible extraction (offpolicy_bench.grading), equivalence by exact or
rational match, else math-verify in worker processes with a timeout. Reward follows `reward_on`.
"""

from __future__ import annotations

import gzip
import json
import os
import random
from dataclasses import dataclass

from offpolicy_bench.grading import after_hashes, grade_math, last_boxed
from offpolicy_bench.registry import OffbenchError
from offpolicy_bench.tasks_api import Example, Grade, Task, register_task

BOXED_TEMPLATE = "{prompt}\nPlease reason step by step, and put your final answer within \\boxed{{}}."


@dataclass(frozen=True)
class MathFileArgs:
    path: str = ""
    """a .jsonl / .jsonl.gz / .json / .parquet file, or a folder written by datasets' save_to_disk"""
    split: str = "train"
    """split to read from a saved DatasetDict folder (ignored for single files)"""
    prompt_key: str = "problem"
    """column of the problem text; dotted paths reach into nested columns (prompt.0.content)"""
    answer_key: str = "answer"
    """column of the reference answer (for gsm8k-style columns the text after #### is used)"""
    solution_key: str = ""
    """optional column with a worked solution, the warm-start target; empty = the boxed answer"""
    eval_path: str = ""
    """a separate held-out file or folder; empty = hold out eval_size rows of `path`"""
    eval_split: str = "test"
    """split of eval_path when it is a saved DatasetDict folder"""
    eval_size: int = 256
    """held-out problems (taken from `path` when eval_path is empty; all of eval_path if 0)"""
    eval_seed: int = 12345
    """seed of the held-out draw"""
    prompt_template: str = "{prompt}"
    """python format string around the problem text"""
    answer_format: str = "boxed"
    """strict extraction: boxed (last \\boxed{}) | gsm8k (after the last ####) | number (last number)"""
    reward_on: str = "strict"
    """reward 1 when the strict (or flexible) extraction is equivalent to the reference"""
    verify_workers: int = 1
    """math-verify worker processes"""
    verify_timeout_s: float = 5.0
    """per-answer math-verify timeout; an overrunning worker is killed and the answer graded wrong"""
    limit: int = 0
    """keep only the first `limit` rows of each file (0 = all)"""


def _get(row: dict, key: str):
    cur = row
    for part in key.split("."):
        if isinstance(cur, (list, tuple)) and part.lstrip("-").isdigit():
            cur = cur[int(part)]
        elif isinstance(cur, dict) and part in cur:
            cur = cur[part]
        else:
            raise KeyError(key)
    if hasattr(cur, "tolist"):  # numpy values from parquet
        cur = cur.tolist()
    return cur


def load_rows(path: str, split: str = "train", limit: int = 0) -> list[dict]:
    """Rows (dicts) of a local jsonl / json / parquet file or saved `datasets` folder."""
    if not path:
        raise OffbenchError("task.path is required: a local .jsonl, .json or .parquet file, or a folder saved "
                            "with datasets' save_to_disk")
    if not os.path.exists(path):
        raise OffbenchError(f"task.path={path!r} does not exist")
    if os.path.isdir(path):
        try:
            import datasets
        except ImportError:
            raise OffbenchError("reading a saved datasets folder needs `pip install datasets`") from None
        ds = datasets.load_from_disk(path)
        if isinstance(ds, datasets.DatasetDict):
            if split not in ds:
                raise OffbenchError(f"{path}: no split {split!r}; splits: {', '.join(ds)}")
            ds = ds[split]
        rows = ds.to_list() if not limit else ds.select(range(min(limit, len(ds)))).to_list()
    elif path.endswith(".parquet"):
        import pandas as pd

        rows = pd.read_parquet(path).to_dict("records")
    elif path.endswith((".jsonl", ".jsonl.gz")):
        opener = gzip.open if path.endswith(".gz") else open
        with opener(path, "rt") as f:
            rows = [json.loads(line) for line in f if line.strip()]
    elif path.endswith(".json"):
        data = json.load(open(path))
        rows = data.get("data", data.get(split)) if isinstance(data, dict) else data
        if not isinstance(rows, list):
            raise OffbenchError(f"{path}: expected a list of rows (or {{'data': [...]}})")
    else:
        raise OffbenchError(f"task.path={path!r}: use .jsonl, .jsonl.gz, .json, .parquet or a saved datasets folder")
    return rows[:limit] if limit else rows


class MathFile(Task):
    """Problems and reference answers from a local file; graded by answer extraction + math-verify."""

    name = "math_file"
    version = "mathfile-1"
    kind = "math"
    args = MathFileArgs
    source = "local file"
    grader = "math-verify"

    def __init__(self, args: MathFileArgs):
        super().__init__(args)
        if args.answer_format not in ("boxed", "gsm8k", "number"):
            raise OffbenchError(f"task.answer_format={args.answer_format!r}: choose boxed, gsm8k or number")
        if args.reward_on not in ("strict", "flexible"):
            raise OffbenchError(f"task.reward_on={args.reward_on!r}: choose strict or flexible")
        rows = [self._example(r, n) for n, r in enumerate(load_rows(args.path, args.split, args.limit))]
        if args.eval_path:
            ev = [self._example(r, n) for n, r in enumerate(load_rows(args.eval_path, args.eval_split, args.limit))]
            if args.eval_size:
                ev = ev[:args.eval_size]
            held = {e.prompt for e in ev}
            self._train = [e for e in rows if e.prompt not in held]
            self._eval = ev
        else:
            if args.eval_size <= 0 or args.eval_size >= len(rows):
                raise OffbenchError(f"task.eval_size={args.eval_size} must be in [1, {len(rows) - 1}] for "
                                    f"{len(rows)} rows (or give task.eval_path)")
            order = list(range(len(rows)))
            random.Random(args.eval_seed).shuffle(order)
            self._eval = [rows[i] for i in sorted(order[:args.eval_size])]
            self._train = [rows[i] for i in sorted(order[args.eval_size:])]
        if not self._train:
            raise OffbenchError(f"{args.path}: no training rows left after holding out the eval split")
        self.size = {"train": len(self._train), "eval": len(self._eval)}

    def _example(self, row: dict, n: int) -> Example:
        a = self.cfg
        try:
            text, ans = _get(row, a.prompt_key), _get(row, a.answer_key)
        except (KeyError, IndexError):
            raise OffbenchError(f"{a.path}: row {n} has no {a.prompt_key!r} or {a.answer_key!r}; its keys: "
                                f"{', '.join(map(str, row))} (set task.prompt_key / task.answer_key)") from None
        ans = str(ans)
        gold = after_hashes(ans) if "####" in ans else (last_boxed(ans) if "\\boxed" in ans else ans.strip())
        solution = str(_get(row, a.solution_key)) if a.solution_key else None
        if solution is None:
            solution = f"#### {gold}" if a.answer_format == "gsm8k" else (
                f"\\boxed{{{gold}}}" if a.answer_format == "boxed" else gold)
        meta = {"row": n}
        for key in ("id", "task_id", "unique_id"):
            if key in row:
                meta["task_id"] = row[key]
                break
        return Example(prompt=a.prompt_template.format(prompt=text), answer=gold, solution=solution, meta=meta)

    def train_examples(self, n, rng):
        return [rng.choice(self._train) for _ in range(n)]

    def eval_examples(self):
        return list(self._eval)

    def grade_batch(self, examples, completions):
        a = self.cfg
        res = grade_math(list(completions), [e.answer for e in examples], a.answer_format, a.verify_workers,
                         a.verify_timeout_s)
        out = []
        for strict, flex in res:
            hit = strict if a.reward_on == "strict" else flex
            out.append(Grade(reward=float(hit), correct=strict, flexible=flex))
        return out


register_task(MathFile)


def _preset(name: str, doc: str, **defaults):
    """A registered subclass of MathFile whose args default to a known dataset's layout."""
    import dataclasses

    fields = [(f.name, f.type, dataclasses.field(default=defaults.get(f.name, f.default)))
              for f in dataclasses.fields(MathFileArgs)]
    args = dataclasses.make_dataclass(f"{name.capitalize()}Args", fields, frozen=True)
    args.__doc__ = MathFileArgs.__doc__
    cls = type(name.capitalize(), (MathFile,), {"name": name, "args": args, "__doc__": doc,
                                                "__module__": __name__, "__qualname__": name.capitalize()})
    return register_task(cls)


GSM8K = _preset("gsm8k", "GSM8K (openai/gsm8k main, local jsonl/parquet): question / answer with '#### n'.",
                prompt_key="question", answer_key="answer", answer_format="gsm8k",
                prompt_template="Question: {prompt}\nAnswer:", split="train", eval_split="test")
MATH500 = _preset("math500", "MATH-500 (HuggingFaceH4/MATH-500, local file): problem / answer, boxed.",
                  prompt_template=BOXED_TEMPLATE, solution_key="", split="test")
AIME = _preset("aime", "AIME problems (local file): problem / answer (an integer), boxed.",
               prompt_template=BOXED_TEMPLATE, split="train", eval_size=8)
DAPO = _preset("dapo", "DAPO-Math-17k (local parquet): chat prompt column, answer in reward_model.ground_truth.",
               prompt_key="prompt.0.content", answer_key="reward_model.ground_truth", split="train")
