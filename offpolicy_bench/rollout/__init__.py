"""Rollout engines: sample G responses per prompt and record the behaviour log-probs."""

from .hf import Rollout, encode_pairs, sample, sequence_logprobs

__all__ = ["Rollout", "encode_pairs", "sample", "sequence_logprobs"]
