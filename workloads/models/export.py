"""Export the GPT decode step (one token, batch 1, with a KV cache) for the compiler front ends.

Two forms of the same computation, ``GPT.decode_step``:

* ONNX (``export_decode_onnx``), through the TorchScript exporter (``dynamo=False``): the dynamo
  exporter needs ``onnxscript``, which this project does not depend on. Weights stay as
  initializers; ``past_len`` is a dynamic axis of past_k/past_v and ``past_len + 1`` of the
  presents.
* ``torch.export`` (``export_decode_torch``): an ``ExportedProgram``; ``past_len`` is dynamic
  when the example ``past_len`` is at least 2 (torch.export specialises sizes 0 and 1).

Graph signature, both forms:
    inputs   token    int64 [1, 1]
             position int64 [1]          (the new token's position, normally past_len)
             past_k   float [n_layer, n_head, past_len, d_head]
             past_v   float [n_layer, n_head, past_len, d_head]
    outputs  logits    float [1, vocab]
             present_k float [n_layer, n_head, past_len + 1, d_head]
             present_v float [n_layer, n_head, past_len + 1, d_head]
"""

from __future__ import annotations

import os
import warnings

import torch
from torch import nn

from workloads.models.gpt import GPT

INPUT_NAMES = ("token", "position", "past_k", "past_v")
OUTPUT_NAMES = ("logits", "present_k", "present_v")
ONNX_OPSET = 17  # the first opset with LayerNormalization
_PROTO_LIMIT_BYTES = 1_800_000_000  # protobuf files cap at 2 GiB; larger weights go to a .data file


class DecodeStep(nn.Module):
    """``GPT.decode_step`` as a module's ``forward``, for exporters."""

    def __init__(self, model: GPT) -> None:
        super().__init__()
        self.model = model

    def forward(self, token: torch.Tensor, position: torch.Tensor, past_k: torch.Tensor,
                past_v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.model.decode_step(token, position, past_k, past_v)


def example_decode_inputs(model: GPT, past_len: int, seed: int = 0
                          ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Deterministic example inputs (token, position, past_k, past_v) for ``past_len`` cached tokens."""
    cfg = model.cfg
    if not 0 <= past_len < cfg.n_ctx:
        raise ValueError(f"past_len {past_len} outside [0, {cfg.n_ctx})")
    gen = torch.Generator(device="cpu").manual_seed(seed)
    dtype = model.wte.weight.dtype
    token = torch.randint(0, cfg.vocab, (1, 1), generator=gen, dtype=torch.long)
    position = torch.tensor([past_len], dtype=torch.long)
    kv_shape = (cfg.n_layer, cfg.n_head, past_len, cfg.d_head)
    past_k = torch.randn(kv_shape, generator=gen).to(dtype)
    past_v = torch.randn(kv_shape, generator=gen).to(dtype)
    return token, position, past_k, past_v


def export_decode_onnx(model: GPT, path: str | os.PathLike[str], past_len: int,
                       opset: int = ONNX_OPSET) -> None:
    """Write the decode step to ``path`` as ONNX (weights as initializers, dynamic past_len)."""
    step = DecodeStep(model).eval()
    args = example_decode_inputs(model, past_len)
    dynamic_axes = {
        "past_k": {2: "past_len"},
        "past_v": {2: "past_len"},
        "present_k": {2: "present_len"},
        "present_v": {2: "present_len"},
    }
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", category=DeprecationWarning)  # the TorchScript exporter
        warnings.simplefilter("ignore", category=torch.jit.TracerWarning)
        torch.onnx.export(
            step,
            args,
            os.fspath(path),
            input_names=list(INPUT_NAMES),
            output_names=list(OUTPUT_NAMES),
            dynamic_axes=dynamic_axes,
            opset_version=opset,
            export_params=True,
            keep_initializers_as_inputs=False,
            do_constant_folding=True,
            dynamo=False,
        )
    _retie_lm_head(path, wte_name="model.wte.weight")


def _retie_lm_head(path: str | os.PathLike[str], wte_name: str) -> None:
    """Make the tied LM head read ``wte`` again instead of a folded, transposed copy.

    Constant folding turns ``MatMul(h, Transpose(wte))`` into ``MatMul(h, wte_T)`` with
    ``wte_T`` a second [d_model, vocab] initializer. Rewrite each such MatMul to
    ``Gemm(h, wte, transB=1)`` (the form every other Linear already has) and drop the copy, so
    every weight is stored once.
    """
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper

    proto = onnx.load(os.fspath(path))
    graph = proto.graph
    inits = {t.name: t for t in graph.initializer}
    if wte_name not in inits:
        return
    wte_vd = numpy_helper.to_array(inits[wte_name])
    for init in list(graph.initializer):
        if init.name == wte_name or tuple(init.dims) != wte_vd.shape[::-1]:
            continue
        if not np.array_equal(numpy_helper.to_array(init), wte_vd.T):
            continue
        users = [n for n in graph.node if init.name in n.input]
        if not all(n.op_type == "MatMul" and list(n.input).index(init.name) == 1 for n in users):
            continue
        for node in users:
            node.op_type = "Gemm"
            node.input[1] = wte_name
            node.attribute.append(helper.make_attribute("transB", 1))
        graph.initializer.remove(init)
    onnx.checker.check_model(proto)
    external = sum(t.ByteSize() for t in graph.initializer) > _PROTO_LIMIT_BYTES
    onnx.save(proto, os.fspath(path), save_as_external_data=external,
              location=os.path.basename(os.fspath(path)) + ".data" if external else None)


def export_decode_torch(model: GPT, past_len: int, dynamic: bool = True) -> torch.export.ExportedProgram:
    """``torch.export`` the decode step, traced with ``past_len`` cached tokens.

    With ``dynamic`` (and ``past_len >= 2``) the cache length is a symbolic dimension
    ``past_len`` in [2, n_ctx - 1]; otherwise the program is specialised to ``past_len``.
    """
    step = DecodeStep(model).eval()
    args = example_decode_inputs(model, past_len)
    dynamic_shapes = None
    if dynamic and past_len >= 2:
        past = torch.export.Dim("past_len", min=2, max=model.cfg.n_ctx - 1)
        dynamic_shapes = {"token": None, "position": None, "past_k": {2: past}, "past_v": {2: past}}
    return torch.export.export(step, args, dynamic_shapes=dynamic_shapes)
