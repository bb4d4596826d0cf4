"""Front ends: a model (ONNX, torch.export, or a torch module with ``decode_step``) -> IR.

    import_graph(source) -> shape_inference -> fuse -> classify      (compiler.pipeline.prepare)

The ordered graph-to-graph passes between the import and the lowering are
:data:`compiler.pipeline.GRAPH_PASSES` (:func:`compiler.pipeline.run_passes`).

torch and onnx are imported lazily, inside the functions that need them.
"""

from __future__ import annotations

import os
from typing import Any

from compiler.frontends.common import UnsupportedOpError
from compiler.ir import Graph
from pimsim.errors import ModelFileError, UserError

__all__ = [
    "UnsupportedOpError",
    "decode_step_program",
    "import_exported",
    "import_graph",
    "import_onnx",
    "import_torch_module",
]


def import_onnx(model_or_path: Any, **kw: Any) -> Graph:
    from compiler.frontends.onnx_frontend import import_onnx as f

    return f(model_or_path, **kw)


def import_exported(ep: Any) -> Graph:
    from compiler.frontends.torch_frontend import import_exported as f

    return f(ep)


def import_torch_module(module: Any, example_inputs: tuple, dynamic_shapes: Any = None) -> Graph:
    from compiler.frontends.torch_frontend import import_torch_module as f

    return f(module, example_inputs, dynamic_shapes)


def import_graph(source: Any) -> Graph:
    """Import ``source`` into the IR without running any pass.

    ``source``: a path to an ``.onnx`` file, an ``onnx.ModelProto``, a
    ``torch.export.ExportedProgram`` of a decode step, a torch ``nn.Module`` whose class has
    ``decode_step(token[1,1], pos, past_k, past_v)`` (exported here with
    :func:`decode_step_program`; ``meta``-device modules give a shape-only graph), or an IR
    :class:`Graph` (returned as it is)."""
    if isinstance(source, Graph):
        return source
    if isinstance(source, (str, os.PathLike)):
        return _import_onnx_file(os.fspath(source))
    mod = type(source).__module__
    if mod.startswith("onnx"):
        return import_onnx(source)
    import torch

    if isinstance(source, torch.export.ExportedProgram):
        return import_exported(source)
    if isinstance(source, torch.nn.Module) and callable(getattr(source, "decode_step", None)):
        if mod.startswith("workloads."):  # our own modules: a failure is a pimsim bug
            return import_exported(decode_step_program(source))
        try:
            ep = decode_step_program(source)
        except UserError:
            raise
        except Exception as e:  # noqa: BLE001 - the user's decode_step: any failure
            raise UserError(
                f"torch.export of {type(source).__name__}.decode_step failed "
                f"({type(e).__name__}: {' '.join(str(e).split())[:300]})",
                "make decode_step(token, pos, past_k, past_v) traceable by torch.export") from None
        return import_exported(ep)
    raise TypeError(
        f"import_graph: cannot import a {type(source).__name__}; pass an ONNX path or ModelProto, "
        f"a torch.export.ExportedProgram, or a torch module with a decode_step method"
    )


def _import_onnx_file(path: str) -> Graph:
    """An ONNX file given by the user: anything that stops it from being read is a
    :class:`~pimsim.errors.ModelFileError` naming the file."""
    if not os.path.isfile(path):
        raise ModelFileError(f"ONNX file {path!r} not found", "check the path")
    try:
        import onnx

        proto = onnx.load(path, load_external_data=False)
    except Exception as e:  # noqa: BLE001 - a truncated or corrupt file
        raise ModelFileError(
            f"ONNX file {path!r} cannot be read as a model ({type(e).__name__}: "
            f"{' '.join(str(e).split())[:300]})",
            "give a complete .onnx decode step (workloads.models.export.export_decode_onnx)") from None
    if proto.ir_version == 0 or not proto.graph.node:
        # protobuf parses many byte strings (a text file, say) as an empty ModelProto
        raise ModelFileError(f"ONNX file {path!r} holds no ONNX model (IR version "
                             f"{proto.ir_version}, {len(proto.graph.node)} graph nodes)",
                             "give a complete .onnx decode step "
                             "(workloads.models.export.export_decode_onnx)")
    try:
        return import_onnx(proto, base_dir=os.path.dirname(os.path.abspath(path)), owned=True)
    except UserError:
        raise
    except Exception as e:  # noqa: BLE001 - a truncated or corrupt file, a foreign graph
        raise ModelFileError(
            f"ONNX file {path!r} cannot be read as a model ({type(e).__name__}: "
            f"{' '.join(str(e).split())[:300]})",
            "give a complete .onnx decode step (workloads.models.export.export_decode_onnx)") from None


# ---- exporting a module's decode step ------------------------------------------------------

_N_LAYER = ("n_layer", "num_hidden_layers", "num_layers", "n_layers")
_N_HEAD = ("n_head", "num_attention_heads", "num_heads", "n_heads")
_D_HEAD = ("d_head", "head_dim")
_D_HEAD_V = ("d_head_v",)  # values of another width than the keys (multi-head latent attention)
_D_MODEL = ("d_model", "n_embd", "hidden_size")
_N_CTX = ("n_ctx", "n_positions", "max_position_embeddings")


def _first(obj: Any, names: tuple[str, ...]) -> int | None:
    for n in names:
        v = getattr(obj, n, None)
        if isinstance(v, int) and not isinstance(v, bool):
            return v
    return None


def _decode_dims(module: Any) -> tuple[int, int, int, int | None, int]:
    """(n_layer, n_head, d_head, n_ctx, d_head_v) from a config-like attribute of the module
    (``d_head_v``, the values' width, is ``d_head`` unless the config says otherwise)."""
    for attr in ("cfg", "config", "args", "params"):
        c = getattr(module, attr, None)
        if c is None:
            continue
        n_layer, n_head = _first(c, _N_LAYER), _first(c, _N_HEAD)
        d_head = _first(c, _D_HEAD)
        d_model = _first(c, _D_MODEL)
        if d_head is None and d_model is not None and n_head:
            d_head = d_model // n_head
        if n_layer and n_head and d_head:
            return n_layer, n_head, d_head, _first(c, _N_CTX), _first(c, _D_HEAD_V) or d_head
    raise UserError(
        f"{type(module).__name__}: cannot find the KV-cache shape (a cfg/config attribute with "
        f"n_layer, n_head and d_head or d_model); export the decode step yourself and pass the "
        f"ExportedProgram"
    )


def decode_step_program(module: Any, past_len: int = 2) -> Any:
    """``torch.export`` ``module.decode_step(token, position, past_k, past_v)``.

    Example inputs are built from the module's own config (``n_layer``, ``n_head``, ``d_head``)
    on the device and dtype of its parameters, so a ``meta`` module exports without weights. The
    cache length is a dynamic dimension ``past_len`` when the config gives ``n_ctx`` (torch.export
    specialises sizes 0 and 1, hence ``past_len >= 2``).
    """
    import torch

    n_layer, n_head, d_head, n_ctx, d_head_v = _decode_dims(module)
    p = next(iter(module.parameters()), None)
    device = p.device if p is not None else torch.device("cpu")
    dtype = p.dtype if p is not None and p.is_floating_point() else torch.float32

    class DecodeStep(torch.nn.Module):
        def __init__(self, model: Any) -> None:
            super().__init__()
            self.model = model

        def forward(self, token: Any, position: Any, past_k: Any, past_v: Any) -> Any:
            return self.model.decode_step(token, position, past_k, past_v)

    kv = (n_layer, n_head, past_len, d_head)
    kv_v = (n_layer, n_head, past_len, d_head_v)
    args = (torch.zeros((1, 1), dtype=torch.long, device=device),
            torch.full((1,), past_len, dtype=torch.long, device=device),
            torch.zeros(kv, dtype=dtype, device=device),
            torch.zeros(kv_v, dtype=dtype, device=device))
    dynamic = None
    if n_ctx is not None and n_ctx - 1 > past_len >= 2:
        dim = torch.export.Dim("past_len", min=2, max=n_ctx - 1)
        dynamic = {"token": None, "position": None, "past_k": {2: dim}, "past_v": {2: dim}}
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            return torch.export.export(DecodeStep(module), args, dynamic_shapes=dynamic)
    finally:
        module.train(was_training)
