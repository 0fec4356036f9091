"""The HF engine and trainer on a GPU: the same exactness checks as the CPU tests, on CUDA.

    python benchmarks/gpu_check.py            # needs a CUDA device
For the dense and MoE tiny models (random init, fp32): the sampler's recorded log mu against the
trainer's log pi of the same tokens (max abs difference), and the shared-prompt log-prob pass
against the plain padded forward in value and in every parameter's gradient (max abs difference).
Prints one JSON line per model.
"""

import sys

import torch

from common import emit


def main() -> int:
    if not torch.cuda.is_available():
        print("no CUDA device", file=sys.stderr)
        return 2
    from offpolicy_bench.config import build_config
    from offpolicy_bench.models import build_model, char_tokenizer
    from offpolicy_bench.rollout import sample, sequence_logprobs

    dev = torch.device("cuda")
    tok = char_tokenizer()
    prompts = ["3+4=", "91-17=", "5=", "2*3=", "# add 3, then mul 4\ndef f(x):\n    return "]
    for name in ("dense", "moe"):
        cfg = build_config([f"model={name}"])
        model = build_model(cfg.model, len(tok), tok.pad_token_id, tok.eos_token_id, seed=0).to(dev)
        model.eval()
        ro = sample(model, tok, prompts, 8, 1.0, 12, generator=torch.Generator(dev).manual_seed(0))
        with torch.no_grad():
            logp, _ = sequence_logprobs(model, ro, 1.0)
        behav_gap = (logp - ro.behav_logp).abs().max().item()
        model.train()
        out = {}
        for share in (True, False):
            model.zero_grad()
            lp, _ = sequence_logprobs(model, ro, 1.0, share_prefix=share)
            (lp * torch.linspace(-1, 1, lp.numel(), device=dev).view_as(lp)).sum().backward()
            out[share] = (lp.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
        val_gap = (out[True][0] - out[False][0]).abs().max().item()
        grad_gap = max((out[True][1][n] - out[False][1][n]).abs().max().item() for n in out[False][1])
        emit({"bench": "gpu_check", "device": torch.cuda.get_device_name(0), "model": name,
              "sequences": int(ro.input_ids.shape[0]), "behav_vs_trainer_max_abs": behav_gap,
              "shared_vs_plain_logp_max_abs": val_gap, "shared_vs_plain_grad_max_abs": grad_gap,
              "same_params_with_grad": out[True][1].keys() == out[False][1].keys()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
