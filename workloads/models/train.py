"""A tiny model with trained weights: the ``tiny`` preset taught to count (next = token + 1).

Random-weight models have nearly flat next-token distributions, so greedy decoding flips on
near-ties under any bf16 noise; a model trained on a simple deterministic task has decisive
predictions, which makes token-for-token validation meaningful. Training is short (seconds on a
CPU), deterministic, and needs no data download.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from workloads.models.gpt import GPT, get_config

_CACHE: dict[tuple, GPT] = {}


def counting_model(name: str = "tiny", *, seed: int = 0, steps: int = 1000, seq: int = 32) -> GPT:
    """``name``'s architecture trained for ``steps`` Adam steps to predict token + 1 (mod vocab)."""
    key = (name, seed, steps, seq)
    if key in _CACHE:
        return _CACHE[key]
    cfg = get_config(name)
    model = GPT.from_seed(cfg, seed=seed).train().requires_grad_(True)
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # bit-for-bit repeatable
    try:
        for _ in range(steps):
            start = torch.randint(0, cfg.vocab, (1,), generator=gen)
            idx = (start + torch.arange(seq + 1)) % cfg.vocab
            logits, _, _ = model(idx[None, :-1])
            loss = F.cross_entropy(logits[0], idx[1:])
            opt.zero_grad()
            loss.backward()
            opt.step()
    finally:
        torch.set_num_threads(threads)
    model = model.requires_grad_(False).eval()
    _CACHE[key] = model
    return model
