"""Every registered method trains through the CLI and moves every parameter of a real model."""

import json

import pytest
import torch

from conftest import TINY
from offpolicy_bench import PolicyBatch, get_method
from offpolicy_bench.cli import main
from offpolicy_bench.config import build_config
from offpolicy_bench.losses import grpo_advantages
from offpolicy_bench.method import METHODS
from offpolicy_bench.models import build_model, char_tokenizer
from offpolicy_bench.plugins import load_builtin
from offpolicy_bench.rollout import sample, sequence_logprobs

load_builtin()


@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_method_runs_through_the_cli(tmp_path, name, capsys):
    assert main(["run", f"method={name}", "staleness=2", *TINY, f"log.out_dir={tmp_path}", "name=r"]) == 0
    s = json.loads(open(tmp_path / "r" / "summary.json").read())
    assert s["status"] == "finished" and s["method"] == name and s["steps_done"] == 4


@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_method_moves_every_parameter(name):
    cfg = build_config(TINY)
    tok = char_tokenizer()
    model = build_model(cfg.model, len(tok), tok.pad_token_id, tok.eos_token_id, seed=0)
    ro = sample(model, tok, ["12+30=", "7+9=", "40+41=", "3+3="], 4, 1.0, 6, generator=torch.Generator().manual_seed(0))
    rewards = torch.tensor([float(i % 3 == 0) for i in range(16)])  # mixed signs within each group
    adv = grpo_advantages(rewards, 4)
    logp, _ = sequence_logprobs(model, ro, 1.0)
    with torch.no_grad():  # a slightly different old / behaviour policy, so clipped methods see r != 1
        old = logp + 0.05 * torch.randn(logp.shape, generator=torch.Generator().manual_seed(1)) * ro.response_mask
    out = get_method(name)(PolicyBatch(logp=logp, old_logp=old, behav_logp=old, advantages=adv, mask=ro.response_mask))
    out.loss.backward()
    dead = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not dead, f"{name}: no gradient reaches {dead}"
