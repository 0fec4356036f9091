"""Mixed into vLLM's worker (LLM(worker_extension_cls=...)): in-place weight updates.

vLLM's `reload_weights` loads HF-named tensors layer by layer into the running model, without a
checkpoint or a restart. The payload crosses vLLM's process boundary as raw bytes (tensors and
numpy arrays do not pickle through its shared-memory broadcast).
"""

import torch


class WeightSyncExt:
    def push_weights(self, payload):  # [(name, fp32 bytes, shape)]
        weights = [(n, torch.frombuffer(bytearray(b), dtype=torch.float32).reshape(s)) for n, b, s in payload]
        self.reload_weights(weights_iterator=iter(weights))
        return len(weights)
