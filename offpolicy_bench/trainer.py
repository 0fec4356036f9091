"""THE training loop. Setup -> train -> cleanup; `train` at the bottom reads top to bottom, its
phases (sample_rollout_batch, pi_old_logprobs, first_minibatch_pi_old, update, step_metrics) are the
named functions above it.

One rollout batch = N mini-batches (N = staleness). All of it is sampled by the current policy mu,
then the mini-batches are updated one after another, so mini-batch i is trained when the policy is
i versions newer than the one that sampled it (the VESPO paper's staleness). One optimizer step per
mini-batch; a "gradient step" is one mini-batch, as on the paper's plots.

No method or advantage-estimator name appears in this file: both plug in through their registries,
and every off-policy diagnostic is computed here, identically for all of them.
"""

from __future__ import annotations

import random
import time

import torch
from omegaconf import DictConfig

from .advantages import get_advantage
from .config import config_hash
from .losses import PolicyBatch, masked_mean, offpolicy_diagnostics
from .method import get_method
from .models import load_model
from .offpolicy import WeightRing, engine_gap
from .results import RunWriter, record_from_config
from .stats import endpoints
from .rollout import sample, sequence_logprobs
from .rollout.engines import make_engine
from .routing import RoutingReplay
from .tasks_api import build_task


EVAL_SEED = 2**31 - 1  # one fixed sampling seed for every evaluation: common random numbers across runs


@torch.no_grad()
def evaluate(model, tok, task, cfg: DictConfig) -> dict[str, float]:
    """Held-out accuracy (strict and flexible) and mean response length.

    `log.eval_samples` = k > 0: k responses per held-out problem sampled at the training temperature
    with a fixed seed; accuracy is their mean, the policy's expected pass@1. It moves smoothly with
    the policy's probabilities, where greedy accuracy jumps wherever two answers are nearly tied (a
    policy that mixes a habit with the right answer 50/50 is on a knife edge under greedy decoding).
    k = 0: greedy decoding only. `log.eval_greedy` adds greedy accuracy as `accuracy_greedy`."""
    exs = task.eval_examples()
    prompts = [e.prompt for e in exs]
    k = cfg.log.eval_samples

    def scores(ro, per_prompt):
        grades = task.grade_batch([exs[i // per_prompt] for i in range(len(ro.texts))], ro.texts)
        return {"accuracy": sum(g.correct for g in grades) / len(grades),
                "accuracy_flexible": sum(g.flexible for g in grades) / len(grades),
                "response_len": ro.response_mask.sum(-1).mean().item()}

    greedy = None
    if cfg.log.eval_greedy or k == 0:
        greedy = scores(sample(model, tok, prompts, 1, 1.0, cfg.rollout.max_new_tokens, greedy=True), 1)
        if k == 0:
            return greedy
    gen = torch.Generator().manual_seed(EVAL_SEED)
    ro = sample(model, tok, prompts, k, cfg.rollout.temperature, cfg.rollout.max_new_tokens, generator=gen)
    out = scores(ro, k)
    return out if greedy is None else {"accuracy_greedy": greedy["accuracy"], **out}


def sample_rollout_batch(cfg, task, model, tok, engine, ring, step, prompt_rng, gen, device, advantage, replay):
    """Phases 1-2: the whole rollout batch, sampled by the behaviour policy mu (the current policy, or
    the one `lag` optimizer steps back, in the engine's dtype; log mu, and for routing replay r3 the
    MoE experts, recorded at sampling time), graded, with the configured estimator's advantages over
    the whole rollout batch (rows grouped G per prompt). Returns (mu_version, rollout, grades,
    rewards, advantages)."""
    mu_version = step
    if not engine.shares_trainer:
        mu_version, weights = ring.take(step)
        engine.load(weights)
    model.eval()
    g = cfg.rollout.group_size
    exs = task.train_examples(cfg.train.batch_prompts, prompt_rng)
    ro = engine.sample(tok, [e.prompt for e in exs], g, cfg.rollout.temperature, cfg.rollout.max_new_tokens,
                       generator=gen, **replay.engine_kwargs)
    ro = ro.to(device)  # an engine may return its rollout elsewhere (vLLM: CPU tensors)
    grades, rewards, adv = grade_with_advantages(cfg, task, exs, ro, advantage, device)
    return mu_version, ro, grades, rewards, adv


def grade_with_advantages(cfg, task, exs, ro, advantage, device):
    """Grades, rewards [B] and the configured estimator's advantages [B] of a rollout whose rows are
    grouped rollout.group_size per example of `exs`."""
    g = cfg.rollout.group_size
    grades = task.grade_batch([exs[i // g] for i in range(len(ro.texts))], ro.texts)
    rewards = torch.tensor([gr.reward for gr in grades], device=device)
    adv = advantage(rewards, g, lengths=ro.response_mask.sum(-1), cfg=cfg.advantage)
    return grades, rewards, adv


def make_optimizer(cfg, model):
    """The RL optimizer: AdamW with the run's optim.* settings."""
    return torch.optim.AdamW(model.parameters(), lr=cfg.optim.lr, betas=(cfg.optim.beta1, cfg.optim.beta2),
                             weight_decay=cfg.optim.weight_decay)


def clip_and_step(cfg, model, opt):
    """Clip the gradient norm to optim.grad_clip (0 = no clipping), step; returns the norm before clipping."""
    clip = cfg.optim.grad_clip if cfg.optim.grad_clip > 0 else float("inf")
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
    opt.step()
    return grad_norm


def pi_old_logprobs(model, mbs, temperature, bypass, replay):
    """Phase 3: log pi_old of every mini-batch, pi_old = the trainer's policy before any update of this
    rollout batch. Mini-batches 1.. get one no-grad pass now (MoE routing replayed or recorded as
    rollout.routing_replay says); mini-batch 0's slot stays None, filled by `first_minibatch_pi_old`
    from its own training forward. Bypass mode (own engine): pi_old = mu."""
    if bypass:
        return [mb.behav_logp for mb in mbs]
    with torch.no_grad():
        return [None] + [sequence_logprobs(model, mb, temperature, routing=replay.pi_old_tap(model, mb))[0]
                         for mb in mbs[1:]]


def first_minibatch_pi_old(logp, mbs, old_logps, shares_trainer) -> dict[str, float]:
    """The mini-batch-0 invariant. Mini-batch 0 is trained before any update, so its pi_old IS its own
    training forward (detached): no extra pass. Once all pi_old are known, |log mu - log pi_old| (engine
    numerics, plus lag) is measured; and an engine that shares the trainer's module has no engine gap by
    construction, so its mu is overwritten with these same trainer passes (the sampler's numbers differ
    by float summation order only, which is what engine_gap_* logs). Mutates old_logps[0] and, for a
    shared engine, every mini-batch's behav_logp; returns the engine-gap metrics."""
    old_logps[0] = logp.detach()
    gap = engine_gap(mbs, old_logps)
    if shares_trainer:
        for mb, old in zip(mbs, old_logps):
            mb.behav_logp = old
    return gap


def update(cfg, method, batch, model, opt, step):
    """Phase 4: one gradient step of the method on one mini-batch. Returns (method output, grad norm).
    A method that drops the mini-batch (metric step_skipped) gets no optimizer step: AdamW would still
    move the weights on a zero gradient."""
    out = method(batch, cfg.method, agg=cfg.method.agg, agg_norm_len=cfg.method.agg_norm_len,
                 correction=cfg.correction.name, correction_cfg=cfg.correction)
    if not torch.isfinite(out.loss):
        raise FloatingPointError(f"non-finite loss {out.loss.item()} at gradient step {step + 1}")
    opt.zero_grad(set_to_none=True)
    if out.metrics.get("step_skipped", 0.0) > 0:
        return out, torch.zeros(())
    out.loss.backward()
    return out, clip_and_step(cfg, model, opt)


def step_metrics(batch, out, mb, rewards, adv, grades, ent, grad_norm, *, version_gap, t_update, t_rollout):
    """Phase 5: the metrics every method logs alike, then the method's own diagnostics."""
    return {"reward": rewards.mean().item(), "accuracy": sum(x.correct for x in grades) / len(grades),
            "accuracy_flexible": sum(x.flexible for x in grades) / len(grades),
            "response_len": mb.response_mask.sum(-1).mean().item(),
            "truncated_frac": mb.truncated.float().mean().item(),
            "zero_adv_frac": (adv == 0).float().mean().item(),
            "entropy": masked_mean(ent, mb.response_mask).item(), "loss": out.loss.item(),
            "grad_norm": grad_norm.item(), "version_gap": float(version_gap),
            "time_update_s": t_update, "time_step_s": t_update + t_rollout,
            **offpolicy_diagnostics(batch), **out.metrics}


def train(cfg: DictConfig, log=print) -> dict:
    # ------------------------------------------------------------------ setup
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    task = build_task(cfg)
    model, tok, model_info = load_model(cfg, task, log)
    model.to(cfg.device)
    device = next(model.parameters()).device
    engine = make_engine(cfg.rollout.engine, model, tok, cfg)
    replay = RoutingReplay(cfg.rollout.routing_replay, model)  # MoE routing: which pass records, which replays
    ring = WeightRing(cfg.lag, cfg.staleness, enabled=not engine.shares_trainer)
    ring.maybe_store(0, model)
    method = get_method(cfg.method.name)
    method.make_args(cfg.method)  # validates the method's arguments before any work
    advantage = get_advantage(cfg.advantage.name)
    opt = make_optimizer(cfg, model)
    run_id = config_hash(cfg)
    identity = record_from_config(cfg)  # the run record's core, knobs and aggregation mode
    writer = RunWriter(cfg, run_id, {**identity, "task_version": task.version, **model_info})
    random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    prompt_rng = random.Random(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    n, g, temp = cfg.staleness, cfg.rollout.group_size, cfg.rollout.temperature
    mb_rows = cfg.train.minibatch_prompts * g
    total = cfg.train.steps
    log(f"run {cfg.name} ({run_id}): {cfg.method.name} (agg {cfg.method.agg}, advantage {cfg.advantage.name}) "
        f"on {cfg.task.name} "
        f"[{task.version}], model {cfg.model.name}, staleness N={n}, lag {cfg.lag}, rollout {cfg.rollout.engine}/"
        f"{cfg.rollout.dtype}, {cfg.correction_mode}, {total} gradient steps -> {writer.dir}")

    ev = evaluate(model, tok, task, cfg)
    writer.log(0, "eval", ev)
    first_eval, last_eval, best_eval = ev["accuracy"], ev["accuracy"], ev["accuracy"]
    evals = [(0, ev["accuracy"])]  # (step, accuracy): the headline's late mean (stats.endpoints)
    writer.flush()
    bar = _progress(cfg, total)
    step, status, t_start, last = 0, "finished", time.time(), {}
    stop = _GracefulStop()  # Ctrl-C: stop after the current step (a second Ctrl-C: at once)

    # ------------------------------------------------------------------ train
    error = None
    try:
        for _ in range(total // n):
            t_rollout = time.perf_counter()
            mu_version, ro, grades, rewards, adv = sample_rollout_batch(cfg, task, model, tok, engine, ring, step,
                                                                        prompt_rng, gen, device, advantage, replay)
            mbs = [ro.rows(slice(i * mb_rows, (i + 1) * mb_rows)) for i in range(n)]
            bypass = cfg.correction_mode == "bypass" and not engine.shares_trainer
            old_logps = pi_old_logprobs(model, mbs, temp, bypass, replay)
            gap = {} if engine.shares_trainer else replay.routing_diff(getattr(engine, "model", None), model, mbs[0])
            t_rollout = time.perf_counter() - t_rollout  # sampling, grading, pi_old: shared by the N steps
            # update on each mini-batch in turn: mini-batch i is i policy versions stale
            model.train()
            for i, mb in enumerate(mbs):
                t_update = time.perf_counter()
                rows = slice(i * mb_rows, (i + 1) * mb_rows)
                tap = replay.update_tap(i, mb)
                logp, ent = sequence_logprobs(model, mb, temp, with_entropy=True, routing=tap)
                if i == 0 and not bypass:
                    gap.update(first_minibatch_pi_old(logp, mbs, old_logps, engine.shares_trainer))
                batch = PolicyBatch(logp=logp, old_logp=old_logps[i], behav_logp=mb.behav_logp,
                                    advantages=adv[rows], mask=mb.response_mask, version_gap=step - mu_version)
                out, grad_norm = update(cfg, method, batch, model, opt, step)
                step += 1
                t_update = time.perf_counter() - t_update
                last = step_metrics(batch, out, mb, rewards[rows], adv[rows], grades[rows], ent, grad_norm,
                                    version_gap=step - 1 - mu_version, t_update=t_update, t_rollout=t_rollout / n)
                last.update({**gap, **replay.step_metrics(tap)})
                writer.log(step, "train", last)
                ring.maybe_store(step, model)
                if step % cfg.log.eval_every == 0 or step == total:
                    ev = evaluate(model, tok, task, cfg)
                    writer.log(step, "eval", ev)
                    last_eval, best_eval = ev["accuracy"], max(best_eval, ev["accuracy"])
                    evals.append((step, ev["accuracy"]))
                    writer.flush()
                    model.train()
                bar.update(1)
                bar.set_postfix(reward=f"{last['reward']:.2f}", eval_acc=f"{last_eval:.3f}",
                                kl=f"{last['kl_mu_pi']:.1e}", logW=f"{last['abs_log_w_mean']:.2f}")
                stop.check()  # a safe point: this step is applied and logged
    except KeyboardInterrupt:
        status = "interrupted"
        raise
    except Exception as e:
        status, error = "failed", f"{type(e).__name__}: {e}"
        raise
    # ------------------------------------------------------------------ cleanup
    finally:
        stop.restore()
        bar.close()
        summary = {**identity, "steps_done": step, "eval_accuracy_start": first_eval,
                   "eval_accuracy_final": last_eval, "eval_accuracy_best": best_eval,
                   "final_kl_mu_pi": last.get("kl_mu_pi"), "final_abs_log_w": last.get("abs_log_w_mean"),
                   "train_time_s": round(time.time() - t_start, 1)}
        writer.finish(status, summary, error=error)
        log(headline(status, evals, total, step, writer.dir))
    return {**summary, "status": status, "dir": writer.dir}


def headline(status: str, evals: list, total: int, steps_done: int, where) -> str:
    """The run's last line. Its headline number is the late mean (stats.endpoints: every eval point
    after the run's midpoint): one eval point moves by several points between evaluations, and which
    way the last one falls depends on float summation order (the CPU), so the late mean is what the
    report and the grids use; the last and the best point follow it. evals: [(step, accuracy), ...]."""
    e = endpoints([s for s, _ in evals], [a for _, a in evals], total)
    return (f"{status}: eval accuracy {evals[0][1]:.3f} -> {e.late_mean:.3f} mean over the second half of training "
            f"(last {e.final:.3f}, best {e.best:.3f}) after {steps_done} gradient steps; results in {where}")


class _GracefulStop:
    """The first SIGINT only asks the loop to stop at the next step boundary, so an interrupt never
    lands inside a file write or between an optimizer step and its metrics; a second one raises
    KeyboardInterrupt at once. Only installed in the main thread."""

    def __init__(self):
        import signal
        import threading

        self.requested, self.previous = False, None
        if threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(signal.SIGINT, self._handler)

    def _handler(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        import sys

        print("\ninterrupt: stopping after this step (Ctrl-C again to stop now)", file=sys.stderr, flush=True)

    def check(self) -> None:
        if self.requested:
            raise KeyboardInterrupt

    def restore(self) -> None:
        import signal

        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)
            self.previous = None


def _progress(cfg: DictConfig, total: int):
    from tqdm import tqdm

    return tqdm(total=total, disable=not cfg.log.progress, desc="steps", dynamic_ncols=True, leave=False,
                mininterval=1.0)
