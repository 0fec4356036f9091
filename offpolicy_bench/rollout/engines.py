"""Rollout engines behind one small interface, registered by name (`rollout.engine=hf`).

An engine samples with its own view of the weights. When it can share the trainer's module
(no lag, same dtype) it does; otherwise it keeps a private copy, loaded in place from a weight
snapshot (`load`) and cast to the rollout dtype. Either way it returns log mu recorded at
sampling time, from the distribution it sampled (softmax(logits / T), fp32 log-softmax).
"""

from __future__ import annotations

import copy

import torch

from ..registry import OffbenchError, Registry
from .hf import Rollout, sample

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
ENGINES: Registry[type] = Registry("rollout engine")


def register_engine(cls):
    cls.origin = f"{cls.__module__}.{cls.__qualname__}"
    ENGINES.add(cls.name, cls, cls.origin)
    return cls


@register_engine
class HFEngine:
    """Transformers forward passes with a KV cache, on the trainer's device."""

    name = "hf"

    def __init__(self, trainer_model, tok, cfg, private: bool):
        dtype = cfg.rollout.dtype
        if dtype not in DTYPES:
            raise OffbenchError(f"rollout.dtype={dtype!r}: choose one of {', '.join(DTYPES)}")
        self.shares_trainer = not private
        self.model = trainer_model if not private else copy.deepcopy(trainer_model).to(DTYPES[dtype]).eval()

    @torch.no_grad()
    def load(self, state: dict[str, torch.Tensor]) -> None:
        """Copy a weight snapshot into the engine's model in place (cast to its dtype)."""
        if self.shares_trainer:
            raise RuntimeError("an engine sharing the trainer's module takes no snapshots")
        for name, p in self.model.named_parameters():
            p.copy_(state[name])

    def sample(self, tok, prompts, group_size, temperature, max_new_tokens, generator=None,
               record_routing=False) -> Rollout:
        """`record_routing` (MoE): also return the experts routed at sampling time (Rollout.routing)."""
        was_training = self.model.training
        self.model.eval()
        try:
            return sample(self.model, tok, prompts, group_size, temperature, max_new_tokens, generator=generator,
                          record_routing=record_routing)
        finally:
            self.model.train(was_training)


def _load_engines() -> None:
    from . import vllm_engine  # noqa: F401  (registers "vllm"; imports vllm only when used)


def make_engine(name: str, trainer_model, tok, cfg):
    """An engine that shares the trainer's module unless lag or dtype require a private copy."""
    _load_engines()
    cls = ENGINES.get(name)
    return cls(trainer_model, tok, cfg, private=cfg.lag > 0 or cfg.rollout.dtype != "float32")
