"""The verdict of every claim of PREREGISTRATION.md, computed from a grid's committed tables.

    python docs/reproduction/paper-cpu-v2/verdicts.py docs/reproduction/paper-cpu-v2 \
        [--probe docs/probe/probe.parquet] [--format md|csv] [--contrasts FILE.csv]

Reads runs.parquet + summary.parquet of `offbench grid preset=paper-cpu-v2` and applies the registered
rules as written there (paired-by-seed contrasts of late_mean, percentile-bootstrap 95% intervals,
margin delta = 0.05, per learning rate, a claim's overall verdict only where the rates it ran at agree;
Amendment 2 runs most arms at lr_high only).
Written before any cell of the grid ran; tests/test_verdicts.py checks it on synthetic tables.
--contrasts writes every contrast row in the schema `offbench plot` draws as its contrast figure
(plots.contrast_figure; it picks up <grid>/contrasts.csv): output only, the rules are unchanged.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass

import numpy as np
import pandas as pd

from offpolicy_bench.stats import contrast

DELTA = 0.05
ENDPOINT = "eval_accuracy_late_mean"
DEFAULT = "default"  # a knob a cell did not set (its method's default)
KNOBS = ("method.length_norm", "method.c1_neg", "method.c2_neg", "method.c1_pos", "method.c2_pos", "method.eps_low",
         "method.eps_high", "task.digits", "task.level")

# arms: column -> value; knobs left out must be at their default
LONG = {"task": "math_cot", "task.digits": 8}
SHORT = {"task": "math_cot", "task.digits": 2}
CODE = {"task": "code", "task.level": 6}


def arm(method, n, model="dense", setting=LONG, **knobs):
    return {"method": method, "staleness": n, "model": model, **setting, **knobs}


# Amendment 2 (PREREGISTRATION.md) cut these contrasts' arms from the grid, and C7 (code) altogether:
# they are shown as "cut" and leave no claim undecided; a cut claim's verdict is "not run"
CUT = {"moe: vespo N=16 - on_policy N=1", "vespo - gspo, N=16", "vespo - gspo_rescaled, N=16", "vespo - sapo, N=16"}
CUT_CLAIMS = {"C7"}

RESCALED = object()
C6_METHODS = ("naive_is", "token_clip", "gspo", "sapo", "vespo", "topr")  # gspo with a band other than the paper's (the pilot's rescaled band)


@dataclass
class Row:
    claim: str
    lr: float
    what: str
    diff: float
    lo: float
    hi: float
    mde: float
    n: int
    verdict: str


def load(grid_dir: str) -> pd.DataFrame:
    runs = pd.read_parquet(f"{grid_dir}/runs.parquet")
    summ = pd.read_parquet(f"{grid_dir}/summary.parquet")
    df = runs.merge(summ, on="run_id")
    df = df[df.status == "finished"].copy()
    if "model.name" in df and "model" not in df:
        df["model"] = df["model.name"]
    for k in KNOBS:
        df[k] = df[k].astype(object).where(df[k].notna(), DEFAULT) if k in df else DEFAULT
    # the grid records a swept knob's resolved value in every cell (token_clip's eps_low 0.2, vespo's
    # c1_neg 3.0): a value equal to the method's own default is that method's default
    by_method = {m: method_defaults(m) for m in df.method.unique()}
    for i, method in zip(df.index, df.method):
        defaults = by_method[method]
        for k in KNOBS:
            if k.startswith("method.") and df.at[i, k] != DEFAULT and defaults.get(k[7:]) is not None:
                if _same(df.at[i, k], defaults[k[7:]]):
                    df.at[i, k] = DEFAULT
    return df


def method_defaults(name: str) -> dict:
    import dataclasses

    from offpolicy_bench import get_method

    try:
        return dataclasses.asdict(get_method(name).args())
    except Exception:  # noqa: BLE001 - an unknown method has no defaults to compare with
        return {}


def _same(a, b) -> bool:
    try:
        return abs(float(a) - float(b)) < 1e-12
    except (TypeError, ValueError):
        return str(a) == str(b)


def select(df: pd.DataFrame, spec: dict, lr) -> pd.DataFrame:
    sel = df["optim.lr"].astype(float).round(12) == round(float(lr), 12)
    for k, v in spec.items():
        if v is RESCALED:
            sel &= df[k] != DEFAULT
        else:
            sel &= (df[k] == v) | (df[k].astype(str) == str(v))
    for k in KNOBS:  # every knob the arm does not name is at its default
        if k not in spec:
            sel &= df[k] == DEFAULT
    return df[sel]


def values(df, spec, lr):
    s = select(df, spec, lr)
    return s[ENDPOINT].to_numpy(float), s["seed"].to_list()


def pair(df, a, b, lr):
    va, sa = values(df, a, lr)
    vb, sb = values(df, b, lr)
    if len(va) < 2 or len(vb) < 2:
        return None
    common = sorted(set(sa) & set(sb))
    ia = [sa.index(s) for s in common]
    ib = [sb.index(s) for s in common]
    return va[ia], vb[ib], common


def better(c) -> str:
    if c.lo > 0:
        return "reproduced"
    if c.hi < 0 or (c.lo > -DELTA and c.hi < DELTA):
        return "refuted"
    return "undecided"


def no_worse(c) -> str:
    if c.lo > -DELTA:
        return "reproduced"
    if c.hi < -DELTA:
        return "refuted"
    return "undecided"


def worse(c) -> str:  # "A degrades more than B": A - B below 0
    if c.hi < 0:
        return "reproduced"
    if c.lo > 0 or (c.lo > -DELTA and c.hi < DELTA):
        return "refuted"
    return "undecided"


def combine(verdicts: list[str]) -> str:
    if not verdicts or "missing" in verdicts:
        return "undecided (cells missing)"
    if "refuted" in verdicts:
        return "refuted"
    if all(v == "reproduced" for v in verdicts):
        return "reproduced"
    return "undecided"


def _contrast_row(claim, lr, what, paired, rule):
    """paired: (values of A, values of B, seeds) from `pair`, or None when an arm has < 2 runs."""
    if paired is None:
        return Row(claim, lr, what, np.nan, np.nan, np.nan, np.nan, 0, "missing")
    va, vb, seeds = paired
    c = contrast(va, vb, seeds, seeds, paired=True)
    return Row(claim, lr, what, c.diff, c.lo, c.hi, c.mde, len(seeds), rule(c))


def claim_rows(df: pd.DataFrame, lr) -> list[Row]:
    rows = []
    for model in ("dense", "moe"):
        for n in (16, 64):
            rows.append(_contrast_row("C1", lr, f"{model}: vespo N={n} - on_policy N=1",
                                      pair(df, arm("vespo", n, model), arm("on_policy", 1, model), lr), no_worse))
    for n in (16, 64):
        for other, spec in (("token_clip", arm("token_clip", n)), ("gspo", arm("gspo", n)),
                            ("gspo_rescaled", arm("gspo", n, **{"method.eps_low": RESCALED, "method.eps_high": RESCALED})), ("sapo", arm("sapo", n))):
            rows.append(_contrast_row("C2", lr, f"vespo - {other}, N={n}", pair(df, arm("vespo", n), spec, lr), no_worse))
    # C3: (vespo - token_clip) at long minus the same at short, per seed
    lo_ = pair(df, arm("vespo", 64), arm("token_clip", 64), lr)
    sh_ = pair(df, arm("vespo", 64, setting=SHORT), arm("token_clip", 64, setting=SHORT), lr)
    inter = None
    if lo_ is not None and sh_ is not None:
        common = sorted(set(lo_[2]) & set(sh_[2]))
        dl = {s: a - b for a, b, s in zip(lo_[0], lo_[1], lo_[2])}
        ds = {s: a - b for a, b, s in zip(sh_[0], sh_[1], sh_[2])}
        inter = (np.array([dl[s] for s in common]), np.array([ds[s] for s in common]), common)
    rows.append(_contrast_row("C3", lr, "(vespo - token_clip) long - (same) short, N=64", inter, better))
    for label, knobs in (("lin", {"method.length_norm": "lin"}), ("sqrt", {"method.length_norm": "sqrt"})):
        rows.append(_contrast_row("C4", lr, f"vespo - vespo {label}, N=64",
                                  pair(df, arm("vespo", 64), arm("vespo", 64, **knobs), lr), better))
    for label, knobs in (("both (2,3)", {"method.c1_neg": 2, "method.c2_neg": 3}),
                         ("both (3,2)", {"method.c1_pos": 3, "method.c2_pos": 2})):
        rows.append(_contrast_row("C5", lr, f"vespo - symmetric {label}, N=64",
                                  pair(df, arm("vespo", 64), arm("vespo", 64, **knobs), lr), better))
    for other in C6_METHODS[1:]:
        rows.append(_contrast_row("C6", lr, f"naive_is - {other} at N=64 (drop vs on_policy N=1: the reference cancels)",
                                  pair(df, arm("naive_is", 64), arm(other, 64), lr), worse))
    for label, setting in (("code", CODE), ("math_cot long", LONG)):
        rows.append(_contrast_row("C7", lr, f"{label}: vespo - token_clip, N=64",
                                  pair(df, arm("vespo", 64, setting=setting), arm("token_clip", 64, setting=setting), lr),
                                  no_worse))
    return rows


def c1_collapses(df: pd.DataFrame) -> dict[str, int]:
    out = {}
    for model in ("dense", "moe"):
        s = df[(df.method == "vespo") & (df.staleness == 64) & (df.model == model)]
        for k in KNOBS:
            if k not in LONG:
                s = s[s[k] == DEFAULT]
        s = s[(s.task == "math_cot") & (s["task.digits"].astype(str) == "8")]
        out[model] = int(s.collapsed.astype(bool).sum())
    return out


def c6_variance(probe: pd.DataFrame | None) -> str:
    """naive_is has the largest relative_variance at the largest gap, at every probed length, among C6's
    methods (naive_is, token_clip, gspo, sapo, vespo, topr; a probe may hold others)."""
    if probe is None:
        return "missing"
    probe = probe[probe.method.isin(C6_METHODS)]
    if set(probe.method) != set(C6_METHODS):
        return "missing"
    gap = probe.version_gap.max()
    p = probe[probe.version_gap == gap]
    ok = []
    by = next(c for c in ("knob.task.digits", "task.digits", "response_len") if c in p)
    for _, g in p.groupby(by):
        top = g.sort_values("relative_variance", ascending=False).method.iloc[0]
        ok.append(top == "naive_is")
    return "reproduced" if ok and all(ok) else "refuted"


def c3_mechanism(probe: pd.DataFrame | None) -> str:
    """The registered mechanism check of C3 (reported beside its verdict, not part of it): at the largest
    gap, naive_is's relative_variance over vespo's, and token_clip's relative_bias, at each probed length."""
    if probe is None:
        return "no probe given"
    by = next(c for c in ("knob.task.digits", "task.digits", "response_len") if c in probe)
    p = probe[probe.version_gap == probe.version_gap.max()].set_index(["method", by])
    out = []
    for length in sorted(probe[by].unique()):
        try:
            ratio = p.loc[("naive_is", length), "relative_variance"] / p.loc[("vespo", length), "relative_variance"]
            bias = p.loc[("token_clip", length), "relative_bias"]
        except KeyError:
            return "probe lacks naive_is, vespo or token_clip"
        out.append(f"{by}={length}: var(naive_is)/var(vespo) {ratio:.2f}, bias(token_clip) {bias:.2f}")
    return "; ".join(out)


def verdicts(df: pd.DataFrame, probe: pd.DataFrame | None = None) -> tuple[list[Row], pd.DataFrame]:
    lrs = sorted(df["optim.lr"].astype(float).unique())
    rows = [r for lr in lrs for r in claim_rows(df, lr)]
    coll = c1_collapses(df)
    var = c6_variance(probe)
    table = []
    for r in rows:
        if r.verdict == "missing" and (r.what in CUT or r.claim in CUT_CLAIMS):
            r.verdict = "cut"
    for claim in ("C1", "C2", "C3", "C4", "C5", "C6", "C7"):
        if claim in CUT_CLAIMS:
            table.append({"claim": claim, "verdict": "not run (cut by Amendment 2)",
                          **{f"lr={lr:g}": "not run" for lr in lrs}})
            continue
        mine = [r for r in rows if r.claim == claim and r.verdict != "cut"]
        # a contrast whose arms ran at no rate leaves the claim undecided; one that ran at some rates
        # only (Amendment 2: most arms run at lr_high only) is judged where it ran
        nowhere = {r.what for r in mine} - {r.what for r in mine if r.verdict != "missing"}
        per_lr = {}
        for lr in lrs:
            v = [r.verdict for r in mine if r.lr == lr and r.verdict != "missing"]
            if not v:
                per_lr[lr] = "not run"
                continue
            v += ["missing"] * len(nowhere)
            if claim == "C1":
                v = v + ["refuted" if max(coll.values()) >= 3 else ("reproduced" if max(coll.values()) <= 1
                                                                      else "undecided")]
            if claim == "C6":
                v = v + [var]
            per_lr[lr] = combine(v)
        ran = set(per_lr.values()) - {"not run"}
        overall = (ran.pop() if len(ran) == 1 else "undecided (the rates disagree)" if ran
                   else "undecided (cells missing)")
        table.append({"claim": claim, "verdict": overall, **{f"lr={lr:g}": v for lr, v in per_lr.items()}})
    return rows, pd.DataFrame(table)


def contrast_table(rows: list[Row]) -> pd.DataFrame:
    """The contrast rows as plots.contrast_figure reads them (fractions of accuracy, margin = DELTA)."""
    return pd.DataFrame([{"group": r.claim, "panel": f"lr={r.lr:g}", "label": r.what, "diff": r.diff, "lo": r.lo,
                          "hi": r.hi, "mde": r.mde, "n": r.n, "verdict": r.verdict, "margin": DELTA} for r in rows])


def starts(df: pd.DataFrame) -> str:
    """Whether the cells of each warm start began from one policy (Amendment 3: cells run on several
    machines are pooled; a converged warm start gives the same start everywhere, and this line shows
    it did): per model and length, the range of the start accuracy and of the warm start's fit excess."""
    cols = {"eval_accuracy_start", "warmstart_excess_loss"}
    if not cols <= set(df.columns):
        return "not recorded (" + ", ".join(sorted(cols - set(df.columns))) + " missing)"
    out = []
    def length(row):
        try:
            return f"{row.task}, {int(float(row['task.digits']))} digits"
        except (TypeError, ValueError):
            return str(row.task)

    for (model, where), g in df.groupby([df.model, df.apply(length, axis=1)], sort=True):
        a, e = g.eval_accuracy_start.astype(float), g.warmstart_excess_loss.astype(float)
        out.append(f"{model}, {where}: {len(g)} cells, start {a.min():.3f}-{a.max():.3f}, "
                   f"fit excess {e.min():.4f}-{e.max():.4f}")
    return "; ".join(out)


def machines(df: pd.DataFrame) -> str:
    """Which CPUs and kernel dispatches the pooled cells ran on (run.json `machine`; cells run before
    the harness recorded it count as "not recorded", and the grid's README names their machine)."""
    from offpolicy_bench.results import machine_name

    col = df["machine"] if "machine" in df else pd.Series([""] * len(df), index=df.index)
    counts = col.map(machine_name).value_counts()
    return "; ".join(f"{k}: {v} cells" for k, v in sorted(counts.items()))


def markdown(df: pd.DataFrame) -> str:
    lines = ["| " + " | ".join(map(str, df.columns)) + " |", "|" + "---|" * len(df.columns)]
    lines += ["| " + " | ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in row) + " |"
              for row in df.itertuples(index=False)]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("grid_dir")
    ap.add_argument("--probe", default=None)
    ap.add_argument("--format", choices=("md", "csv"), default="md")
    ap.add_argument("--contrasts", default=None, metavar="FILE.csv",
                    help="also write every contrast row there (what `offbench plot` draws from <grid>/contrasts.csv)")
    a = ap.parse_args(argv)
    df = load(a.grid_dir)
    probe = pd.read_parquet(a.probe) if a.probe else None
    rows, table = verdicts(df, probe)
    if a.contrasts:
        contrast_table(rows).to_csv(a.contrasts, index=False)
    detail = pd.DataFrame([r.__dict__ for r in rows])
    if a.format == "csv":
        print(table.to_csv(index=False))
        print(detail.to_csv(index=False))
        return 0
    print(markdown(table))
    print()
    for c in ("diff", "lo", "hi", "mde"):
        detail[c] = (100 * detail[c]).round(1)
    print(markdown(detail.rename(columns={"diff": "diff (points)", "lo": "95% lo", "hi": "95% hi", "mde": "MDE"})))
    print(f"\nStarts (Amendment 3): {starts(df)}")
    print(f"Machines: {machines(df)}")
    print(f"C1 collapses of vespo at N=64 (both rates): {c1_collapses(df)}; C6 probe part: {c6_variance(probe)}")
    print(f"C3 mechanism (probe, gap {probe.version_gap.max() if probe is not None else '-'}): {c3_mechanism(probe)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
