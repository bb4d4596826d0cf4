"""A Llama of about 1 B parameters with random weights, as a ``module:attribute`` MODEL.

The shape is TinyLlama-1.1B's public configuration (``TinyLlama/TinyLlama-1.1B-Chat-v1.0``,
``config.json``): hidden 2048, 22 layers, 32 query heads and 4 KV heads (grouped-query
attention, 8 query heads per KV head, head dim 64), SwiGLU intermediate 5632, vocab 32000,
RMSNorm eps 1e-5, RoPE theta 10000, untied LM head; 1,100,048,384 parameters. Only the shape is
TinyLlama's: the weights are random (Hugging Face's own initialisation, std 0.02, from
``torch.manual_seed(seed)``) and rounded to bf16, so the PIM's bf16 weights are the model's own.
Nothing is downloaded.

    PYTHONPATH=. pimsim compile examples.llama_1b:build --hw pim-gpt
    PYTHONPATH=. pimsim validate examples.llama_1b:build --hw pim-gpt --tokens 64 --reference cuda

``build_2l`` is the same shape with 2 layers (for a quick check on a small machine) and
``build_tiny`` a small model of the same family and head layout.

A random untied head gives nearly Gaussian logits over 32000 tokens, so about one greedy step
in six is a near-tie (top-2 gap below a bf16 step of the logits the PIM reads out), which any
bf16 datapath may flip. ``build_counting`` is the same shape and initialisation, then taught to
count (next token = token + 1 mod vocab; AdamW on generated sequences, seeded, on CUDA where
present, as ``workloads.models.train`` does for the tiny preset): decisive predictions, so greedy
tokens can be compared one for one over a long generation. Its weights are rounded to bf16 after the
training.

    PYTHONPATH=. pimsim validate examples.llama_1b:build_counting --hw pim-gpt --tokens 64 \
        --reference cuda

``transformers`` and torch are imported only when a model is built.
"""

from __future__ import annotations

from typing import Any

# TinyLlama-1.1B's public config.json (the fields that fix the shape and the maths)
TINYLLAMA_1B: dict[str, Any] = dict(
    hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32,
    num_key_value_heads=4, vocab_size=32000, max_position_embeddings=2048, rms_norm_eps=1e-5,
    rope_theta=10000.0, tie_word_embeddings=False, hidden_act="silu", initializer_range=0.02,
    attention_bias=False, mlp_bias=False)

N_PARAMS = 1_100_048_384  # of TINYLLAMA_1B (tests/test_llama_1b.py counts it on meta tensors)


def config(**overrides: Any) -> Any:
    """The ``transformers.LlamaConfig`` of TinyLlama-1.1B's shape, with ``overrides``."""
    import transformers as T

    return T.LlamaConfig(**{**TINYLLAMA_1B, **overrides})


def n_params(cfg: Any) -> int:
    """Parameters of the Llama of ``cfg``, counted on the ``meta`` device (nothing allocated)."""
    import torch
    import transformers as T

    with torch.device("meta"):
        model = T.LlamaForCausalLM(cfg)
    return sum(p.numel() for p in model.parameters())


def random_llama(cfg: Any, seed: int = 0) -> Any:
    """A ``LlamaForCausalLM`` of ``cfg`` with seeded random weights rounded to bf16 (kept in
    fp32), in eval mode."""
    import torch
    import transformers as T

    torch.manual_seed(seed)
    model = T.LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.to(torch.bfloat16).float())
    return model


def counting_llama(cfg: Any, seed: int = 0, steps: int = 300, seq: int = 64, batch: int = 16,
                   lr: float = 3e-4, device: str | None = None) -> Any:
    """A ``LlamaForCausalLM`` of ``cfg`` (seeded initialisation) trained ``steps`` AdamW steps to
    predict token + 1 (mod vocab) on sequences from seeded random starts, on ``device`` (CUDA
    where present), deterministic algorithms; returned on the CPU in eval mode, weights rounded
    to bf16 (kept in fp32)."""
    import os

    import torch
    import torch.nn.functional as F
    import transformers as T

    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # deterministic cuBLAS
    dev = device or ("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(seed)
    model = T.LlamaForCausalLM(cfg).to(dev).train()
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    warm = max(1, steps // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: min(1.0, (k + 1) / warm))
    was = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        for _ in range(steps):
            starts = torch.randint(0, cfg.vocab_size, (batch, 1), generator=gen)
            idx = ((starts + torch.arange(seq + 1)) % cfg.vocab_size).to(dev)
            logits = model(input_ids=idx[:, :-1]).logits
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(),
                                   idx[:, 1:].reshape(-1))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    finally:
        torch.use_deterministic_algorithms(was)
    del opt
    model = model.to("cpu").eval().requires_grad_(False)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.to(torch.bfloat16).float())
    model.counting_loss = float(loss.detach())  # the last step's loss, for the record
    return model


def build(seed: int = 0) -> Any:
    """TinyLlama-1.1B's shape, random weights (about 4.4 GB in fp32 while built)."""
    return random_llama(config(), seed)


def build_2l(seed: int = 0) -> Any:
    """The same shape with 2 layers (219 M parameters, most of them embedding and head)."""
    return random_llama(config(num_hidden_layers=2), seed)


def build_tiny(seed: int = 0) -> Any:
    """A small Llama with the same head layout (32 query heads, 4 KV heads; head dim 16), 2 layers."""
    return random_llama(config(hidden_size=512, intermediate_size=1408, num_hidden_layers=2,
                               vocab_size=1024, max_position_embeddings=256), seed)


_TRAINED: dict[int, Any] = {}  # build_counting's models by seed (one training per process)


def build_counting(seed: int = 0) -> Any:
    """TinyLlama-1.1B's shape taught to count (a few minutes on an H200; far longer on a CPU):
    600 AdamW steps of 32 sequences of 64 tokens."""
    if seed not in _TRAINED:
        _TRAINED[seed] = counting_llama(config(), seed, steps=600, seq=64, batch=32, lr=1e-3)
    return _TRAINED[seed]


def build_tiny_counting(seed: int = 0) -> Any:
    """``build_tiny``'s shape taught to count (seconds on a CPU)."""
    return counting_llama(config(hidden_size=512, intermediate_size=1408, num_hidden_layers=2,
                                 vocab_size=1024, max_position_embeddings=256), seed,
                          steps=150, seq=32, batch=8, lr=2e-3)


_BUILT: Any = None  # a model built by examples/llama_1b_validate.py, validated as ``_built``


def _built() -> Any:
    """The model examples/llama_1b_validate.py built (validate it more than once, build once)."""
    if _BUILT is None:
        raise RuntimeError("nothing built: run examples/llama_1b_validate.py")
    return _BUILT
