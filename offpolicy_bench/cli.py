"""`offbench` command line.

  run          train one run from key=value config overrides
  grid         run the product of list-valued overrides (parallel, resumable), with tidy tables
  grade        grade a file of completions against a task's held-out split: per-sample results, pass@k
  report       Table-2-shaped summary of a grid
  plot         every paper-style figure of a grid
  probe        each method's gradient bias and variance against the on-policy gradient, by version gap
  export-tb    TensorBoard event files from an existing run or grid folder
  methods      list the registered methods (loss functions) and their defaults
  tasks        list the registered tasks and their arguments
  corrections  list the rollout-correction modifiers and their arguments
  advantages   list the advantage estimators and their arguments
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys

from .registry import OffbenchError

RUN_HELP = """Train one run. Arguments are key=value overrides of the config, e.g.

  offbench run method=vespo task=math staleness=16
  offbench run model=moe optim.lr=1e-4 method.c1_pos=3 train.steps=64

`method=NAME` / `task=NAME` / `correction=NAME` / `advantage=NAME` pick a registry entry and bring its
arguments (method.<arg>, task.<arg>, correction.<arg>, advantage.<arg>; each entry's are listed below);
`model=dense|moe|PATH`.
Unknown keys and wrong types are errors. The resolved config is printed, and saved with the
results as config.yaml.

keys (default, meaning):
"""


def _run(args) -> int:
    from omegaconf import OmegaConf

    from .config import build_config
    from .trainer import train

    cfg = build_config(args.overrides)
    print(OmegaConf.to_yaml(cfg), end="", flush=True)
    result = train(cfg, log=lambda msg: print(msg, flush=True))
    print(f"results: {result['dir']}")
    return 0


def _grid(args) -> int:
    from .grid import run_grid

    overrides = list(args.overrides) + (["dry_run=true"] if args.dry_run else [])
    run_grid(overrides, log=lambda m: print(m, flush=True))
    return 0


def _grade(args) -> int:
    from .config import parse_overrides
    from .grading import grade_file, parse_k

    opts = dict(parse_overrides([a for a in args.overrides if not a.startswith("task.")]))
    unknown = set(opts) - {"task", "completions", "out", "k"}
    if unknown or "task" not in opts or "completions" not in opts:
        raise OffbenchError("usage: offbench grade task=NAME completions=FILE.jsonl [out=FILE] [k=1,10] [task.<arg>=...]"
                            + (f"; unknown: {', '.join(sorted(unknown))}" if unknown else ""))
    ks = parse_k(opts.get("k", "1"))
    result = grade_file(opts["task"], [a for a in args.overrides if a.startswith("task.")], opts["completions"],
                        opts.get("out"), ks)
    print(json.dumps(result))
    return 0


def _report(args) -> int:
    from .report import table

    print(table(args.grid_dir, metric=args.metric, fmt=args.format, endpoint=args.endpoint, contrasts=args.contrast))
    return 0


def _plot(args) -> int:
    from .plots import plot_all

    for path in plot_all(args.grid_dir, args.out, args.endpoint):
        print(path)
    return 0


def _probe(args) -> int:
    from .probe import run_probe

    table = run_probe(list(args.overrides), log=lambda m: print(m, flush=True))
    cols = ["method", "version_gap", "response_len", "cosine_to_onpolicy", "relative_bias", "bias_noise_floor",
            "relative_variance", "variance_vs_reference", "relative_mse", "ess"]
    knobs = [c for c in table.columns if c.startswith("knob.")]
    print(table[knobs + cols].to_string(index=False, float_format=lambda x: f"{x:.3g}"))
    return 0


def _export_tb(args) -> int:
    from .trackers import export_tensorboard

    export_tensorboard(args.results_dir)
    return 0


def _methods(args) -> int:
    from .method import METHODS
    from .plugins import load_builtin

    load_builtin()
    print(method_table(METHODS))
    return 0


def method_table(methods) -> str:
    rows = ["| method | ratio vs | level | default agg | defaults | source |", "|---|---|---|---|---|---|"]
    for name, m in methods.items():
        defaults = ", ".join(f"{f.name}={f.default}" for f in dataclasses.fields(m.args)) or "-"
        ratio = {"behaviour": "mu (behaviour)", "old": "pi_old", "none": "-"}[m.ratio]
        rows.append(f"| `{name}` | {ratio} | {m.level} | {m.default_agg} | {defaults} | {m.equation} |")
    return "\n".join(rows)


def task_table(tasks) -> str:
    rows = ["| task | kind | version | grader | source | arguments |", "|---|---|---|---|---|---|"]
    for name, cls in tasks.items():
        defaults = ", ".join(f"{f.name}={json.dumps(f.default) if isinstance(f.default, str) else f.default}"
                             for f in dataclasses.fields(cls.args)) or "-"
        defaults = defaults.replace("|", "\\|")
        rows.append(f"| `{name}` | {cls.kind} | {cls.version} | {getattr(cls, 'grader', '-')} | {cls.source} | "
                    f"{defaults} |")
    return "\n".join(rows)


def correction_table(corrections) -> str:
    rows = ["| correction | what it does | defaults |", "|---|---|---|"]
    for name, c in corrections.items():
        defaults = ", ".join(f"{f.name}={f.default}" for f in dataclasses.fields(c.args)) or "-"
        what = (c.doc.splitlines()[0] if c.doc else "").replace("|", "\\|")
        rows.append(f"| `{name}` | {what} | {defaults} |")
    return "\n".join(rows)


def _corrections(args) -> int:
    from .correction import CORRECTIONS
    from .plugins import load_builtin

    load_builtin()
    print(correction_table(CORRECTIONS))
    return 0


def advantage_table(advantages) -> str:
    rows = ["| advantage | what it does | defaults | source |", "|---|---|---|---|"]
    for name, a in advantages.items():
        defaults = ", ".join(f"{f.name}={json.dumps(f.default) if isinstance(f.default, str) else f.default}"
                             for f in dataclasses.fields(a.args)) or "-"
        what = (a.doc.splitlines()[0] if a.doc else "").replace("|", "\\|")
        rows.append(f"| `{name}` | {what} | {defaults} | {a.source} |")
    return "\n".join(rows)


def _advantages(args) -> int:
    from .advantages import ADVANTAGES
    from .plugins import load_builtin

    load_builtin()
    print(advantage_table(ADVANTAGES))
    return 0


def _tasks(args) -> int:
    from .plugins import load_builtin
    from .tasks_api import TASKS

    load_builtin()
    print(task_table(TASKS))
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand (`offbench run --help` is answered by `main`)."""
    parser = argparse.ArgumentParser(prog="offbench", description="Benchmark off-policy corrections for LLM RL.")
    sub = parser.add_subparsers(dest="cmd", required=True)
    p_run = sub.add_parser("run", help="train one run (offbench run --help lists every key)")
    p_run.add_argument("overrides", nargs="*", help="key=value config overrides")
    p_run.set_defaults(fn=_run)
    p_grid = sub.add_parser("grid", help="run the product of list-valued overrides, e.g. staleness=[1,4,16] seed=[0,1,2]",
                            description="Every list value [a,b] is swept; name= names the grid folder; jobs= parallel "
                                        "runs (default: one per core, threads x jobs <= cores); executor=local|ray "
                                        "(ray_address= for a cluster). Re-running skips finished cells.")
    p_grid.add_argument("overrides", nargs="*", help="key=value or key=[v1,v2,...]")
    p_grid.add_argument("--dry-run", action="store_true", help="list the cells and exit")
    p_grid.set_defaults(fn=_grid)
    p_grade = sub.add_parser("grade", help="grade a completions file: per-sample results (jsonl) and pass@k",
                             description="offbench grade task=NAME completions=FILE.jsonl [out=FILE] [k=1,10] "
                                         "[task.<arg>=...]; see offpolicy_bench/grading.py for the file format")
    p_grade.add_argument("overrides", nargs="*")
    p_grade.set_defaults(fn=_grade)
    p_rep = sub.add_parser("report", help="Table-2-shaped summary of a grid (methods x staleness, mean and 95%% CI)")
    p_rep.add_argument("grid_dir")
    p_rep.add_argument("--format", default="md", choices=["md", "csv", "latex"])
    p_rep.add_argument("--endpoint", default="late_mean", choices=["late_mean", "final", "best"],
                       help="per-run eval accuracy to tabulate: mean over the second half of training "
                            "(default), at the last step, or the best")
    p_rep.add_argument("--metric", default=None, help="a summary.parquet column instead of --endpoint")
    p_rep.add_argument("--contrast", action="append", default=[], metavar="A-B",
                       help="also print method A minus method B per cell, with a bootstrap 95%% CI and the "
                            "minimum detectable effect (repeatable, or comma-separated: vespo-token_clip,gspo-sapo)")
    p_rep.set_defaults(fn=_report)
    p_plot = sub.add_parser("plot", help="write every paper-style figure of a grid (PNG and PDF)")
    p_plot.add_argument("grid_dir")
    p_plot.add_argument("--out", default=None, help="output folder (default: <grid_dir>/figures)")
    p_plot.add_argument("--endpoint", default="late_mean", choices=["late_mean", "final", "best"],
                        help="per-run eval accuracy the accuracy-vs-N figure shows (as offbench report's "
                             "--endpoint; default late_mean, the mean over the second half of training)")
    p_plot.set_defaults(fn=_plot)
    p_probe = sub.add_parser(
        "probe", help="gradient bias and variance of each method against the on-policy gradient, by version gap",
        description="offbench probe method=[vespo,token_clip] version_gap=[0,1,4,16,63] out=DIR [batches=64] "
                    "[ref_batches=64] [run keys, lists swept: task=math_cot task.digits=[2,8] model=moe]. "
                    "For each gap k: mu = the warm start, pi = k on-policy optimizer steps later; each method's "
                    "gradient on `batches` mini-batches from mu against the on-policy gradient of pi from "
                    "`ref_batches` fresh ones. Writes DIR/probe.parquet and DIR/probe.png; see offpolicy_bench/probe.py.")
    p_probe.add_argument("overrides", nargs="*", help="key=value or key=[v1,v2,...]")
    p_probe.set_defaults(fn=_probe)
    p_tb = sub.add_parser("export-tb", help="write TensorBoard event files from a run or grid folder's metrics.parquet",
                          description="Writes <run>/tensorboard/ for a run folder, or for every cell of a grid "
                                      "folder, tagged as log.trackers=[tensorboard] would have; then: "
                                      "tensorboard --logdir <folder>")
    p_tb.add_argument("results_dir", help="results/<run> or results/<grid>")
    p_tb.set_defaults(fn=_export_tb)
    sub.add_parser("methods", help="list the registered correction methods").set_defaults(fn=_methods)
    sub.add_parser("tasks", help="list the registered tasks").set_defaults(fn=_tasks)
    sub.add_parser("corrections", help="list the rollout-correction modifiers").set_defaults(fn=_corrections)
    sub.add_parser("advantages", help="list the advantage estimators").set_defaults(fn=_advantages)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) >= 2 and argv[0] == "run" and argv[1] in ("-h", "--help"):
        from .config import help_text

        print("usage: offbench run [key=value ...]\n\n" + RUN_HELP + help_text())
        return 0
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except OffbenchError as e:
        print(f"offbench: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\noffbench: interrupted; the run folder is kept and marked 'interrupted'", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
