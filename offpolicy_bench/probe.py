"""`offbench probe`: each method's gradient estimator against the on-policy gradient, by version gap
and response length. Final accuracy mixes learning rate, collapse luck and ceilings; the probe
measures the estimator itself (the VESPO paper's claim is about its bias and variance).

For one setting (task, model, lengths ...):
1. The warm-started policy is the behaviour policy mu = theta_0. A reference trajectory trains it
   on-policy (staleness 1, plain policy gradient with the run's advantages, the run's optimizer and
   learning rate) and keeps the weights theta_k of every requested version gap k: the policy k
   optimizer steps newer than mu, as the stalest mini-batch of staleness N = k + 1 sees it.
2. M mini-batches (`batches`, of the run's mini-batch size) are sampled from mu once and graded; log mu is recomputed by the trainer's forward, as `offbench run` does.
3. For each gap k and each method: the method's gradient on each mu mini-batch with pi = theta_k
   (pi_old = mu: the rollout started at mu's version), every parameter, flattened. Advantages: the
   run's estimator (`advantage=`, GRPO by default) within each mini-batch.
4. The reference at gap k: the on-policy policy gradient of theta_k, -A log pi aggregated as the
   method aggregates, on R fresh mini-batches sampled from theta_k (`ref_batches`); its own
   standard error is reported (`reference_rel_se`).

Per method x gap (x response length), written to `<out>/probe.parquet`:
- cosine_to_onpolicy: cosine of the mean gradient with the reference mean.
- relative_bias: |mean - reference| / |reference|, with the sampling noise of both means removed
  (E|gbar - rbar|^2 = |bias|^2 + tr(Cov g)/M + tr(Cov r)/R); relative_bias_raw keeps it in and
  bias_noise_floor is the part removed (a bias below it is not resolved).
- relative_variance: tr(Cov g) / |mean g|^2 of one mini-batch's gradient (the issue's definition;
  it grows without bound when a method shrinks its mean gradient) and variance_vs_reference =
  tr(Cov g) / |reference|^2 (the same noise on the common scale); relative_mse = relative_bias^2 +
  variance_vs_reference, one mini-batch gradient's expected squared error against the reference.
- ess: normalised effective sample size of the sequence weights W = pi/mu, mean over mini-batches;
  log_w_abs_mean: mean |log W|; w2_mean: naive IS's second moment E[W^2] (with W capped at e^20,
  the cap rate in w_clamp_frac).
- every numeric diagnostic the method logs, averaged over mini-batches, prefixed m_ (e.g. VESPO's
  m_pos_Z, m_pos_EQ_W, m_pos_E_phi2, m_pos_E_W2 for Theorem 3.1's terms).
A method that skips a mini-batch (step_skipped) contributes a zero gradient there: that is its
estimator. Response length is the measured mean over the mu mini-batches (`response_len`).
Every row also records git_commit (the code that ran) and machine (JSON: CPU model, torch's CPU
kernel dispatch, cores, threads; results.machine), since the figures differ between CPUs.
"""

from __future__ import annotations

import copy
import itertools
import json
import math
import os
import random
import time

import torch

from .registry import OffbenchError

PROBE_KEYS = ("version_gap", "batches", "ref_batches", "out")
DEFAULT_GAPS = (0, 1, 4, 16, 63)


def parse_probe_args(overrides: list[str]) -> tuple[dict, list[str], list[tuple[str, list[str]]], list[str]]:
    """(probe options, fixed run overrides, swept run keys [(key, values)], methods), validated
    before any work."""
    from .config import parse_overrides
    from .grid import _split_list

    opts = {"version_gap": list(DEFAULT_GAPS), "batches": 64, "ref_batches": 64, "out": None}
    fixed, swept, methods = [], [], None
    for key, value in parse_overrides(overrides):
        items = _split_list(value)
        if key == "version_gap":
            vals = items if items is not None else [value]
            try:
                gaps = sorted({int(v) for v in vals})
            except ValueError:
                raise OffbenchError(f"version_gap={value}: integers >= 0, e.g. version_gap=[0,1,4,16,63]") from None
            if gaps[0] < 0 or gaps[-1] > 1024:
                raise OffbenchError(f"version_gap={value}: each gap must be in [0, 1024]")
            opts["version_gap"] = gaps
        elif key in ("batches", "ref_batches"):
            try:
                n = int(value)
            except ValueError:
                n = -1
            if not 2 <= n <= 100_000:
                raise OffbenchError(f"{key}={value}: an integer >= 2 (mini-batches per estimate)")
            opts[key] = n
        elif key == "out":
            opts["out"] = value
        elif key == "method":
            methods = items if items is not None else [value]
        elif key in ("staleness", "lag", "train.steps"):
            raise OffbenchError(f"{key}= does not apply to probe: the policy gap is version_gap=[...]")
        elif key == "plugins":  # a list, not a sweep
            fixed.append(f"{key}={value}")
        elif items is not None:
            swept.append((key, items))
        else:
            fixed.append(f"{key}={value}")
    if not methods:
        raise OffbenchError("probe needs method=NAME or method=[a,b,...] (see `offbench methods`)")
    if opts["out"] is None:
        raise OffbenchError("probe needs out=DIR (where probe.parquet and the figure go)")
    return opts, fixed, swept, methods


def run_probe(overrides: list[str], log=print):
    """Run the probe over every swept setting; write and return the table (a DataFrame)."""
    import pandas as pd

    from .config import build_config
    from .results import atomic_write_parquet, loaded_commit, machine

    opts, fixed, swept, methods = parse_probe_args(overrides)
    settings = [fixed + [f"{k}={v}" for (k, _), v in zip(swept, combo)]
                for combo in itertools.product(*[vals for _, vals in swept])]
    # validate every config (and every method's arguments) before any work
    cfgs = [[build_config(s + [f"method={m}", "staleness=1", "log.progress=false"]) for m in methods] for s in settings]
    from .method import get_method

    for per_method in cfgs:
        for c in per_method:
            get_method(c.method.name).make_args(c.method)
    os.makedirs(opts["out"], exist_ok=True)
    frames = []
    for s, per_method in zip(settings, cfgs):
        knobs = {k: v for k, v in (x.split("=", 1) for x in s[len(fixed):])}
        t0 = time.time()
        log(f"probe setting {knobs or '(defaults)'}: {len(methods)} methods x gaps {opts['version_gap']}, "
            f"{opts['batches']} mini-batches, reference {opts['ref_batches']}")
        rows = probe_setting(per_method, opts["version_gap"], opts["batches"], opts["ref_batches"], log=log)
        stamp = {"git_commit": loaded_commit(), "machine": json.dumps(machine(), sort_keys=True)}  # what the figures hold on
        for r in rows:
            r.update({f"knob.{k}": v for k, v in knobs.items()}, **stamp)
        frames.append(pd.DataFrame(rows))
        log(f"  setting done in {time.time() - t0:.0f} s")
        table = pd.concat(frames, ignore_index=True)
        atomic_write_parquet(table, os.path.join(opts["out"], "probe.parquet"))  # a crash keeps finished settings
    table = pd.concat(frames, ignore_index=True)
    try:
        from .plots import probe_figure

        probe_figure(table, opts["out"])
    except ImportError:  # matplotlib is a dependency; a broken install should not lose the table
        log("probe: no figure (matplotlib unavailable)")
    return table


class _Moments:
    """Running sum of flattened gradient vectors and of their squared norms (float64)."""

    def __init__(self):
        self.n, self.sum, self.sq = 0, None, 0.0

    def add(self, g: torch.Tensor) -> None:
        g = g.double()
        self.sum = g.clone() if self.sum is None else self.sum.add_(g)
        self.sq += float(g.dot(g))
        self.n += 1

    @property
    def mean(self) -> torch.Tensor:
        return self.sum / self.n

    @property
    def trace_cov(self) -> float:
        """Unbiased trace of the covariance of one gradient."""
        m = self.mean
        return max(0.0, (self.sq - self.n * float(m.dot(m))) / (self.n - 1))


def estimator_stats(g: _Moments, ref_mean: torch.Tensor, ref_trace_cov: float = 0.0, ref_n: int | None = None) -> dict:
    """Bias and variance of a gradient estimator (moments g over mini-batches) against a reference
    mean (estimated from ref_n mini-batches with that trace of covariance, or exact: ref_n None).
    Noise-corrected bias: E|gbar - rbar|^2 = |bias|^2 + tr(Cov g)/M + tr(Cov r)/R."""
    gm, rm = g.mean, ref_mean.double()
    rn2, gn2 = float(rm.dot(rm)), float(gm.dot(gm))
    diff2 = float((gm - rm).dot(gm - rm))
    noise2 = g.trace_cov / g.n + (ref_trace_cov / ref_n if ref_n else 0.0)
    nan = float("nan")
    return {
        "cosine_to_onpolicy": float(gm.dot(rm)) / math.sqrt(gn2 * rn2) if gn2 > 0 and rn2 > 0 else nan,
        "relative_bias": math.sqrt(max(0.0, diff2 - noise2) / rn2) if rn2 > 0 else nan,
        "relative_bias_raw": math.sqrt(diff2 / rn2) if rn2 > 0 else nan,
        "bias_noise_floor": math.sqrt(noise2 / rn2) if rn2 > 0 else nan,
        "relative_variance": g.trace_cov / gn2 if gn2 > 0 else nan,
        "variance_vs_reference": g.trace_cov / rn2 if rn2 > 0 else nan,
        # one mini-batch's expected squared error against the reference: bias^2 + variance
        "relative_mse": (max(0.0, diff2 - noise2) + g.trace_cov) / rn2 if rn2 > 0 else nan,
        "grad_norm_ratio": math.sqrt(gn2 / rn2) if rn2 > 0 else nan,
        "reference_rel_se": math.sqrt(ref_trace_cov / ref_n / rn2) if ref_n and rn2 > 0 else 0.0,
    }


def _flat_grad(loss, params) -> torch.Tensor:
    grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
    return torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1) for g, p in zip(grads, params)])


def _draw_batches(model, tok, task, cfg, n, rng, gen, device):
    """n graded mini-batches sampled by `model`, with the run's advantage estimator (per mini-batch) and
    log-probs recomputed by the trainer's forward (no grad)."""
    from .advantages import get_advantage
    from .rollout import sample, sequence_logprobs
    from .trainer import grade_with_advantages

    advantage = get_advantage(cfg.advantage.name)
    out = []
    model.eval()
    for _ in range(n):
        exs = task.train_examples(cfg.train.minibatch_prompts, rng)
        ro = sample(model, tok, [e.prompt for e in exs], cfg.rollout.group_size, cfg.rollout.temperature,
                    cfg.rollout.max_new_tokens, generator=gen).to(device)
        _, _, adv = grade_with_advantages(cfg, task, exs, ro, advantage, device)
        with torch.no_grad():
            ro.behav_logp = sequence_logprobs(model, ro, cfg.rollout.temperature)[0]
        out.append((ro, adv))
    return out


def _pg_loss(logp, adv, mask, agg):
    """The plain policy-gradient loss -A log pi, aggregated (its gradient is the on-policy estimator)."""
    from .losses import aggregate

    a = adv[:, None].expand_as(logp) if adv.dim() == 1 else adv
    return aggregate(-a * logp, mask, agg)


def _trajectory(model, tok, task, cfg, gaps, rng, gen, device, log):
    """Weights theta_k for each k in gaps: k on-policy steps (staleness 1, plain policy gradient,
    the run's advantages, token-mean, the run's AdamW and gradient clip) from the warm start."""
    from .rollout import sequence_logprobs
    from .trainer import clip_and_step, make_optimizer

    snaps = {0: copy.deepcopy(model.state_dict())}
    opt = make_optimizer(cfg, model)
    for step in range(1, max(gaps) + 1):
        (ro, adv), = _draw_batches(model, tok, task, cfg, 1, rng, gen, device)
        model.train()
        logp, _ = sequence_logprobs(model, ro, cfg.rollout.temperature)
        loss = _pg_loss(logp, adv, ro.response_mask, "token-mean")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        clip_and_step(cfg, model, opt)
        if step in gaps:
            snaps[step] = copy.deepcopy(model.state_dict())
    model.load_state_dict(snaps[0])
    return snaps


def _seq_weight_stats(log_w: torch.Tensor) -> dict[str, float]:
    from .losses import LOG_RATIO_CLAMP

    lw = log_w.double()
    clamped = lw.clamp(max=LOG_RATIO_CLAMP)
    w = torch.exp(clamped)
    # normalised ESS in log space: (sum w)^2 / (n sum w^2)
    ess = math.exp(2 * torch.logsumexp(lw, 0).item() - math.log(lw.numel()) - torch.logsumexp(2 * lw, 0).item())
    return {"ess": ess, "log_w_abs_mean": lw.abs().mean().item(), "w2_mean": (w * w).mean().item(),
            "w_clamp_frac": (lw > LOG_RATIO_CLAMP).double().mean().item()}


def probe_setting(cfgs, gaps, n_batches, n_ref, log=print) -> list[dict]:
    """The probe for one setting; `cfgs` = one resolved run config per method (same task, model,
    warm start, rollout, optimizer). Returns one row per method x gap."""
    from .losses import PolicyBatch, seq_log_ratio
    from .method import get_method
    from .models import load_model
    from .rollout import sequence_logprobs
    from .tasks_api import build_task

    cfg = cfgs[0]
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    task = build_task(cfg)
    model, tok, info = load_model(cfg, task, log=lambda m: log("  " + m))
    device = torch.device(cfg.device)
    model.to(device)
    random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    rng = random.Random(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    t0 = time.time()
    snaps = _trajectory(model, tok, task, cfg, gaps, rng, gen, device, log)
    log(f"  trajectory to gap {max(gaps)}: {time.time() - t0:.0f} s")
    t0 = time.time()
    mu_batches = _draw_batches(model, tok, task, cfg, n_batches, rng, gen, device)
    resp_len = sum(ro.response_mask.sum().item() for ro, _ in mu_batches) / sum(ro.response_mask.shape[0]
                                                                              for ro, _ in mu_batches)
    log(f"  {n_batches} mini-batches from mu (mean response {resp_len:.1f} tokens): {time.time() - t0:.0f} s")
    methods = [(c, get_method(c.method.name)) for c in cfgs]
    aggs = sorted({c.method.agg or m.default_agg for c, m in methods})
    params = [p for p in model.parameters() if p.requires_grad]
    rows = []
    for k in gaps:
        t0 = time.time()
        model.load_state_dict(snaps[k])
        # the reference: the on-policy gradient of theta_k, from fresh samples of theta_k
        ref = {a: _Moments() for a in aggs}
        for ro, adv in _draw_batches(model, tok, task, cfg, n_ref, rng, gen, device):
            model.train()
            logp, _ = sequence_logprobs(model, ro, cfg.rollout.temperature)
            for a in aggs:
                ref[a].add(_flat_grad(_pg_loss(logp, adv, ro.response_mask, a), params))
        est = [_Moments() for _ in methods]
        metric_sums = [dict() for _ in methods]
        wstats = []
        for ro, adv in mu_batches:
            model.train()
            logp, _ = sequence_logprobs(model, ro, cfg.rollout.temperature)
            wstats.append(_seq_weight_stats(seq_log_ratio(logp.detach(), ro.behav_logp, ro.response_mask)))
            for j, (c, method) in enumerate(methods):
                batch = PolicyBatch(logp=logp, old_logp=ro.behav_logp, behav_logp=ro.behav_logp, advantages=adv,
                                    mask=ro.response_mask, version_gap=k)
                out = method(batch, c.method, agg=c.method.agg, agg_norm_len=c.method.agg_norm_len,
                             correction=c.correction.name, correction_cfg=c.correction)
                if out.metrics.get("step_skipped", 0.0) > 0 or not out.loss.requires_grad:
                    est[j].add(torch.zeros(sum(p.numel() for p in params)))
                else:
                    est[j].add(_flat_grad(out.loss, params))
                for key, v in out.metrics.items():
                    if isinstance(v, (int, float)) and math.isfinite(v):
                        s, n = metric_sums[j].get(key, (0.0, 0))
                        metric_sums[j][key] = (s + v, n + 1)
        w = {key: sum(x[key] for x in wstats) / len(wstats) for key in wstats[0]}
        for j, (c, method) in enumerate(methods):
            agg = c.method.agg or method.default_agg
            r, g = ref[agg], est[j]
            rows.append({
                "method": c.method.name, "version_gap": k, "response_len": resp_len, "agg": agg,
                "correction": c.correction.name,
                **estimator_stats(g, r.mean, r.trace_cov, r.n),
                **w, "batches": g.n, "ref_batches": r.n, "task": cfg.task.name, "model": cfg.model.name,
                "warmstart_key": info.get("warmstart_key"), "seed": cfg.seed,
                **{f"m_{key}": s / n for key, (s, n) in sorted(metric_sums[j].items())},
            })
        log(f"  gap {k}: {time.time() - t0:.0f} s; " + ", ".join(
            f"{row['method']} cos {row['cosine_to_onpolicy']:.2f}" for row in rows[-len(methods):]))
    return rows
