"""Models: tiny Qwen3-style dense / MoE causal LMs built locally, a character tokenizer, the
supervised warm start (cached on disk by config hash), and real checkpoints loaded by path."""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import shutil
import string
import tempfile

import torch
from omegaconf import DictConfig, OmegaConf

from .registry import OffbenchError

BUILTIN_MODELS = ("dense", "moe")
WARMSTART_VERSION = "ws-2"  # bump when the warm-start procedure changes
_FIT_SEED = 20261130  # the fixed sample the warm start's fit is measured on


def cache_root() -> str:
    return os.environ.get("OFFBENCH_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "offpolicy_bench"))


def char_tokenizer():
    """Character-level tokenizer (printable ASCII, <pad>=0, <eos>=1, <unk>=2) as a normal HF
    tokenizer: `save_pretrained` / `AutoTokenizer.from_pretrained` work offline."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<eos>": 1, "<unk>": 2}
    for c in string.printable:
        if c not in "\r\x0b\x0c":
            vocab[c] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tok.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>",
                                   padding_side="left")


def build_model(mcfg: DictConfig, vocab_size: int, pad_id: int, eos_id: int, seed: int):
    """A freshly initialised tiny Qwen3 (dense) or Qwen3-MoE model from a transformers config."""
    from transformers import AutoModelForCausalLM, Qwen3Config, Qwen3MoeConfig

    if mcfg.hidden_size % mcfg.num_heads or mcfg.num_heads % mcfg.num_kv_heads:
        raise OffbenchError(f"model.hidden_size ({mcfg.hidden_size}) must be divisible by model.num_heads "
                            f"({mcfg.num_heads}), and num_heads by model.num_kv_heads ({mcfg.num_kv_heads})")
    common = dict(vocab_size=vocab_size, hidden_size=mcfg.hidden_size, num_hidden_layers=mcfg.num_layers,
                  num_attention_heads=mcfg.num_heads, num_key_value_heads=mcfg.num_kv_heads,
                  head_dim=mcfg.hidden_size // mcfg.num_heads, max_position_embeddings=512,
                  tie_word_embeddings=True, pad_token_id=pad_id, eos_token_id=eos_id, bos_token_id=None)
    if mcfg.name == "dense":
        config = Qwen3Config(intermediate_size=mcfg.intermediate_size, **common)
    else:
        if not 0 < mcfg.experts_per_token <= mcfg.num_experts:
            raise OffbenchError(f"model.experts_per_token={mcfg.experts_per_token} must be in "
                                f"[1, model.num_experts={mcfg.num_experts}]")
        config = Qwen3MoeConfig(intermediate_size=mcfg.intermediate_size, num_experts=mcfg.num_experts,
                                num_experts_per_tok=mcfg.experts_per_token,
                                moe_intermediate_size=mcfg.moe_intermediate_size, norm_topk_prob=True,
                                decoder_sparse_step=1, mlp_only_layers=[], **common)
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(config, dtype=torch.float32, attn_implementation="sdpa")


def load_pretrained(path: str):
    """A real checkpoint (model + tokenizer) from a local Hugging Face model directory."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    if not os.path.isdir(path):
        raise OffbenchError(f"model={path!r}: not a built-in model ({', '.join(BUILTIN_MODELS)}) "
                            f"and not a readable directory")
    try:
        tok = AutoTokenizer.from_pretrained(path, padding_side="left")
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    except (OSError, ValueError) as e:
        raise OffbenchError(f"model={path!r} could not be loaded as a Hugging Face model dir: "
                            f"{str(e).splitlines()[0]}") from None
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    if tok.eos_token_id is None:
        raise OffbenchError(f"model={path!r}: its tokenizer has no EOS token; RL needs one to end responses")
    return model, tok


def _warmstart_key(cfg: DictConfig, task) -> str:
    d = {"v": WARMSTART_VERSION, "task_version": task.version, "model": OmegaConf.to_container(cfg.model), "task": OmegaConf.to_container(cfg.task),
         "warmstart": {k: v for k, v in OmegaConf.to_container(cfg.warmstart).items() if k != "cache"},
         "torch": torch.__version__.split("+")[0]}
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


def supervised_warmstart(model, tok, task, wcfg: DictConfig, log=print) -> dict:
    """Teacher-forced cross-entropy on the reference completions (prompt tokens not scored),
    AdamW with linear warm-up and cosine decay. Returns final stats."""
    from .rollout.hf import encode_pairs

    rng = random.Random(wcfg.seed)
    torch.manual_seed(wcfg.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=wcfg.lr, weight_decay=0.01)
    warm = max(1, wcfg.steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(s, wcfg.steps) / wcfg.steps)))
    model.train()
    loss_v = float("nan")
    for step in range(wcfg.steps):
        exs = task.warmstart_examples(wcfg.batch_size, rng)
        ids, attn, labels = encode_pairs(tok, [e.prompt for e in exs], [e.solution for e in exs])
        pos = (attn.cumsum(-1) - 1).clamp_min(0)
        logits = model(input_ids=ids, attention_mask=attn, position_ids=pos).logits[:, :-1].float()
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1),
                                                 ignore_index=-100)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        loss_v = loss.item()
        if (step + 1) % max(1, wcfg.steps // 4) == 0:
            log(f"  warm start {step + 1}/{wcfg.steps}: loss {loss_v:.3f}")
    model.eval()
    return {"warmstart_final_loss": loss_v, **warmstart_fit(model, tok, task, wcfg)}


@torch.no_grad()
def warmstart_fit(model, tok, task, wcfg: DictConfig, n: int = 1024) -> dict:
    """How close the warm start came to the best possible fit: its teacher-forced loss (nats per
    target token) on `n` warm-start examples drawn with a fixed seed, against the task's floor, the
    entropy of its warm-start targets (`Task.warmstart_entropy`; None when the task does not know it).
    A warm start whose excess loss exceeds `warmstart.max_excess` is an error: a baseline that did not
    converge depends on the machine (its loss drop comes at another step under other float kernels)."""
    from .rollout.hf import encode_pairs

    exs = task.warmstart_examples(n, random.Random(_FIT_SEED))
    total, tokens = 0.0, 0
    was_training = model.training
    model.eval()
    dev = next(model.parameters()).device
    for i in range(0, n, 256):
        chunk = exs[i:i + 256]
        ids, attn, labels = encode_pairs(tok, [e.prompt for e in chunk], [e.solution for e in chunk])
        ids, attn, labels = ids.to(dev), attn.to(dev), labels.to(dev)
        pos = (attn.cumsum(-1) - 1).clamp_min(0)
        logits = model(input_ids=ids, attention_mask=attn, position_ids=pos).logits[:, :-1].float()
        tgt = labels[:, 1:]
        total += torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), tgt.reshape(-1),
                                                   ignore_index=-100, reduction="sum").item()
        tokens += int((tgt != -100).sum())
    model.train(was_training)
    loss = total / tokens
    ents = [task.warmstart_entropy(e) for e in exs]
    floor = None if any(e is None for e in ents) else sum(ents) / tokens
    out = {"warmstart_fit_loss": round(loss, 5), "warmstart_loss_floor": None if floor is None else round(floor, 5),
           "warmstart_excess_loss": None if floor is None else round(loss - floor, 5)}
    if floor is not None and wcfg.max_excess is not None and loss - floor > wcfg.max_excess:
        raise OffbenchError(
            f"warm start did not converge: loss {loss:.3f} nats/token against the task's floor {floor:.3f} "
            f"(excess {loss - floor:.3f} > warmstart.max_excess={wcfg.max_excess}); raise warmstart.steps "
            f"(now {wcfg.steps}), or set warmstart.max_excess=null to accept a machine-dependent start")
    return out


def load_model(cfg: DictConfig, task, log=print):
    """(model, tokenizer, info). Built-in models get the (cached) warm start; a path is loaded as is,
    then warm-started too if warmstart.steps > 0 (not cached: real checkpoints are large)."""
    name = cfg.model.name
    if name in BUILTIN_MODELS:
        tok = char_tokenizer()
        key = _warmstart_key(cfg, task)
        cache_dir = os.path.join(cache_root(), "warmstart", f"{name}-{key}")
        if cfg.warmstart.cache and os.path.isfile(os.path.join(cache_dir, "done.json")):
            model, _ = load_pretrained(cache_dir)
            info = json.load(open(os.path.join(cache_dir, "done.json")))
            log(f"warm start: loaded from cache {cache_dir}")
            return model, tok, {**info, "warmstart_cached": True}
        model = build_model(cfg.model, len(tok), tok.pad_token_id, tok.eos_token_id, cfg.warmstart.seed)
        n_params = sum(p.numel() for p in model.parameters())
        log(f"model: {name}, {n_params / 1e6:.2f}M parameters; warm start {cfg.warmstart.steps} steps")
        info = {"n_params": n_params, "warmstart_key": key}
        if cfg.warmstart.steps:
            info.update(supervised_warmstart(model, tok, task, cfg.warmstart, log))
        if cfg.warmstart.cache:
            _save_atomic(model, tok, cache_dir, info)
        return model, tok, {**info, "warmstart_cached": False}
    model, tok = load_pretrained(name)
    info = {"n_params": sum(p.numel() for p in model.parameters())}
    if cfg.warmstart.steps:
        info.update(supervised_warmstart(model, tok, task, cfg.warmstart, log))
    model.eval()
    return model, tok, info


def _save_atomic(model, tok, cache_dir: str, info: dict) -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    os.makedirs(os.path.dirname(cache_dir), exist_ok=True)
    tmp = tempfile.mkdtemp(dir=os.path.dirname(cache_dir), prefix=".tmp-")
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    with open(os.path.join(tmp, "done.json"), "w") as f:
        json.dump(info, f)
    if os.path.isdir(cache_dir):
        shutil.rmtree(cache_dir, ignore_errors=True)
    os.replace(tmp, cache_dir)
