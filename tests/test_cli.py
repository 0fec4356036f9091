"""The CLI end to end: real tiny runs, the run folder, every user error, Ctrl-C."""

import argparse
import json
import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest

from conftest import TINY, offbench
from offpolicy_bench.cli import build_parser, main


def read_run(d):
    return json.load(open(os.path.join(d, "run.json")))


def test_tiny_run_writes_a_complete_run_folder(tmp_path):
    r = offbench("run", "method=vespo", "staleness=2", *TINY, f"log.out_dir={tmp_path}", "name=t1")
    assert r.returncode == 0, r.stderr
    d = tmp_path / "t1"
    assert f"results: {d}" in r.stdout
    assert "staleness: 2" in r.stdout  # the resolved config is printed
    assert sorted(os.listdir(d)) == ["config.yaml", "metrics.parquet", "run.json", "summary.json"]
    run = read_run(d)
    assert run["status"] == "finished" and run["agg"] == "token-mean" and run["task_version"] == "arith-2"
    assert run["versions"]["torch"]
    df = pd.read_parquet(d / "metrics.parquet")
    assert list(df.columns) == ["step", "split", "metric", "value"]
    train = df[df.split == "train"]
    assert sorted(train.step.unique()) == [1, 2, 3, 4]
    for metric in ("reward", "accuracy", "response_len", "entropy", "kl_mu_pi", "log_w_q50", "grad_norm", "loss",
                   "phi_mean", "version_gap", "ess_w"):
        assert len(train[train.metric == metric]) == 4, metric
    # staleness 2: the second mini-batch of each rollout batch is one version old
    gaps = train[train.metric == "version_gap"].sort_values("step").value.tolist()
    assert gaps == [0.0, 1.0, 0.0, 1.0]
    assert sorted(df[df.split == "eval"].step.unique()) == [0, 2, 4]
    # the headline: start -> mean of the evaluations after the midpoint (here only step 4's: step 2 is
    # the midpoint itself), then the last and the best, as logged
    acc = df[(df.split == "eval") & (df.metric == "accuracy")].set_index("step").value
    head = [ln for ln in r.stdout.splitlines() if ln.startswith("finished: eval accuracy")]
    assert head == [f"finished: eval accuracy {acc[0]:.3f} -> {acc[4]:.3f} mean over the second half of training "
                    f"(last {acc[4]:.3f}, best {acc.max():.3f}) after 4 gradient steps; results in {d}"], r.stdout
    lines = open(d / "summary.json").read().splitlines()
    assert len(lines) == 1 and json.loads(lines[0])["steps_done"] == 4
    from omegaconf import OmegaConf

    saved = OmegaConf.load(d / "config.yaml")
    assert saved.staleness == 2 and saved.method.agg == "token-mean" and saved.train.batch_prompts == 4


@pytest.mark.parametrize("method", ["on_policy", "token_clip"])
def test_other_methods_and_moe_train(tmp_path, method):
    r = offbench("run", f"method={method}", "model=moe", *TINY, f"log.out_dir={tmp_path}", "name=m")
    assert r.returncode == 0, r.stderr
    assert read_run(tmp_path / "m")["status"] == "finished"


def test_real_checkpoint_by_path(tmp_path):
    from offpolicy_bench.config import build_config
    from offpolicy_bench.models import build_model, char_tokenizer

    cfg = build_config(TINY)
    tok = char_tokenizer()
    build_model(cfg.model, len(tok), tok.pad_token_id, tok.eos_token_id, 0).save_pretrained(tmp_path / "ckpt")
    tok.save_pretrained(tmp_path / "ckpt")
    r = offbench("run", f"model={tmp_path / 'ckpt'}", *TINY, "warmstart.steps=0", f"log.out_dir={tmp_path}", "name=p")
    assert r.returncode == 0, r.stderr
    assert read_run(tmp_path / "p")["model"] == str(tmp_path / "ckpt")


@pytest.mark.parametrize("args, message", [
    (["method=nope"], "unknown method 'nope'"),
    (["task=nope"], "unknown task 'nope'"),
    (["model=/no/such/dir"], "not a built-in model (dense, moe) and not a readable directory"),
    (["staleness=16", "train.batch_prompts=20"], "not divisible by staleness=16"),
    (["optim.lrr=1"], "Did you mean optim.lr?"),
    (["rollout.group_size=0"], "rollout.group_size must be positive"),
])
def test_user_errors_are_one_line(tmp_path, args, message):
    r = offbench("run", *TINY, *args, f"log.out_dir={tmp_path}")
    assert r.returncode == 2
    assert message in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_unwritable_output_dir(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    r = offbench("run", *TINY, f"log.out_dir={blocker}/sub")
    assert r.returncode == 2 and "is not writable" in r.stderr and "log.out_dir=" in r.stderr
    assert "Traceback" not in r.stderr


def test_unreadable_model_dir(tmp_path):
    (tmp_path / "empty").mkdir()
    r = offbench("run", f"model={tmp_path / 'empty'}", *TINY, f"log.out_dir={tmp_path}")
    assert r.returncode == 2 and "could not be loaded as a Hugging Face model dir" in r.stderr


def test_same_name_other_config_is_refused(tmp_path):
    assert offbench("run", *TINY, f"log.out_dir={tmp_path}", "name=x").returncode == 0
    r = offbench("run", *TINY, "seed=1", f"log.out_dir={tmp_path}", "name=x")
    assert r.returncode == 2 and "holds another run" in r.stderr
    assert offbench("run", *TINY, f"log.out_dir={tmp_path}", "name=x").returncode == 0  # same config: rerun


def test_ctrl_c_leaves_a_valid_unfinished_run(tmp_path):
    exe = os.path.join(os.path.dirname(sys.executable), "offbench")
    args = [a for a in TINY if not a.startswith("train.steps")] + ["train.steps=4000"]
    p = subprocess.Popen([exe, "run", *args, f"log.out_dir={tmp_path}", "name=c"], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    d = tmp_path / "c"
    deadline = time.time() + 120
    while time.time() < deadline:  # wait until training has logged some steps
        if (d / "metrics.parquet").exists() and pd.read_parquet(d / "metrics.parquet").step.max() >= 2:
            break
        time.sleep(0.2)
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err
    run = read_run(d)
    assert run["status"] == "interrupted"
    df = pd.read_parquet(d / "metrics.parquet")
    summary = json.loads(open(d / "summary.json").read())
    assert summary["status"] == "interrupted" and 2 <= summary["steps_done"] < 4000
    assert df[df.split == "train"].step.max() == summary["steps_done"]


def test_headline_is_the_late_mean_then_last_and_best():
    from offpolicy_bench.trainer import headline

    evals = [(0, 0.40), (64, 0.70), (128, 0.80), (192, 0.90), (256, 0.45)]
    # steps 192 and 256 are after the midpoint (128): late mean 0.675; the last point is a dip
    assert headline("finished", evals, 256, 256, "d") == (
        "finished: eval accuracy 0.400 -> 0.675 mean over the second half of training (last 0.450, best 0.900) "
        "after 256 gradient steps; results in d")
    # stopped early: the late half is judged against the planned length, the last point always in it
    assert headline("interrupted", evals[:2], 256, 70, "d").startswith(
        "interrupted: eval accuracy 0.400 -> 0.700 mean over the second half of training (last 0.700, best 0.700)")


def test_trainer_names_no_method():
    import offpolicy_bench.trainer as trainer
    from offpolicy_bench.method import METHODS
    from offpolicy_bench.plugins import load_builtin

    load_builtin()
    src = open(trainer.__file__).read()
    for name in METHODS:
        assert f'"{name}"' not in src and f"'{name}'" not in src and f" {name}(" not in src, name


def test_methods_and_tasks_commands():
    r = offbench("methods")
    assert r.returncode == 0 and "| `vespo` | mu (behaviour) | sequence | token-mean |" in r.stdout
    r = offbench("tasks")
    assert r.returncode == 0 and "| `math` | math |" in r.stdout
    r = offbench("run", "--help")
    assert r.returncode == 0 and "staleness=4" in r.stdout and "method.c1_pos=2.0" in r.stdout


def test_grade_command_writes_per_sample_results_and_pass_at_k(tmp_path):
    from offpolicy_bench.tasks_api import get_task

    task = get_task("math")(get_task("math").args())
    exs = task.eval_examples()[:2]
    rows = [{"index": 0, "completion": exs[0].answer}, {"index": 0, "completion": "nope"},
            {"index": 1, "completion": "-1"}, {"index": 1, "completion": "-2"}]
    (tmp_path / "c.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    r = offbench("grade", "task=math", f"completions={tmp_path / 'c.jsonl'}", f"out={tmp_path / 'o.jsonl'}", "k=1,2")
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout.strip().splitlines()[-1])
    per = [json.loads(x) for x in open(tmp_path / "o.jsonl")]
    assert [p["correct"] for p in per][:2] == [True, False]
    expect2 = (1.0 + float(exs[1].answer in ("-1", "-2"))) / 2
    assert res["pass@2"] == pytest.approx(expect2)
    r = offbench("grade", "task=math")
    assert r.returncode == 2 and "usage: offbench grade" in r.stderr


def subcommands():
    (action,) = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    return sorted(action.choices)


def test_program_help_runs():
    r = offbench("--help")
    assert r.returncode == 0, r.stderr
    assert "usage: offbench" in r.stdout and "Traceback" not in r.stderr
    for cmd in subcommands():  # every subcommand is listed with its one-line help
        assert cmd in r.stdout, cmd


@pytest.mark.parametrize("cmd", subcommands())
def test_every_subcommand_help_runs(cmd, capsys):
    try:
        code = main([cmd, "--help"])
    except SystemExit as e:  # argparse exits after printing the help
        code = e.code
    out = capsys.readouterr().out
    assert code == 0
    assert out.startswith(f"usage: offbench {cmd}"), out[:200]


@pytest.mark.parametrize("bad, message", [
    ("jobs=x", "jobs='x' is not a whole number"),
    ("jobs=0", "jobs=0 must be >= 1"),
    ("executor=lcoal", "executor='lcoal': choose local or ray"),
    ("ray_address=auto", "ray_address= is for executor=ray"),
    ("dry_run=maybe", "use dry_run=true or dry_run=false"),
])
def test_bad_grid_options_are_one_line_errors(tmp_path, bad, message):
    r = offbench("grid", "seed=[0,1]", *TINY, f"log.out_dir={tmp_path}", "name=g", bad)
    assert r.returncode == 2, r.stdout + r.stderr
    assert r.stderr.startswith("offbench: error: ") and message in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "g").exists()  # refused before any work


@pytest.mark.parametrize("bad, message", [
    ("k=x", "k='x': give whole numbers >= 1"),
    ("k=0", "k=0: each k must be a whole number >= 1"),
    ("k=1,-2", "each k must be a whole number >= 1"),
    ("completions={tmp}/missing.jsonl", "is not a file"),
    ("completions={tmp}/bad.jsonl", "bad.jsonl:2: not JSON"),
    ("out={tmp}", "is a folder"),
    ("out={tmp}/no/such/folder/o.jsonl", "does not exist or is not writable"),
    ("out={tmp}/c.jsonl", "would overwrite the completions"),
    ("task.levle=2", "unknown config key 'task.levle'"),
])
def test_bad_grade_options_are_one_line_errors(tmp_path, bad, message):
    (tmp_path / "c.jsonl").write_text(json.dumps({"index": 0, "completion": "1"}) + "\n")
    (tmp_path / "bad.jsonl").write_text(json.dumps({"index": 0, "completion": "1"}) + "\nnot json\n")
    args = {"task": "math", "completions": f"{tmp_path}/c.jsonl"}
    key, value = bad.format(tmp=tmp_path).split("=", 1)
    args[key] = value
    r = offbench("grade", *(f"{k}={v}" for k, v in args.items()))
    assert r.returncode == 2, r.stdout + r.stderr
    assert r.stderr.startswith("offbench: error: ") and message in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
