"""onnxruntime reference of an ONNX decode step: the file itself, greedy, with its own KV cache.

``pimsim validate FILE.onnx`` compares the simulator with this run instead of PyTorch: the
reference is exactly the graph that was compiled, executed by onnxruntime, step by step from an
empty cache, each step's returned past key/values fed back as the next step's inputs.

Two input layouts are recognised from the graph's inputs:

* the pimsim decode step (``workloads.models.export.export_decode_onnx``, the torch.onnx door
  ``workloads.models.hf_decode.export_onnx``): ``token [1, 1]``, ``position [1]``,
  ``past_k / past_v [n_layer, n_kv_head, past_len, d_head]``; outputs logits, new K, new V;
* the Hugging Face / optimum layout: ``input_ids [batch, seq]``, optional
  ``attention_mask [batch, past + seq]`` and ``position_ids [batch, seq]``, and
  ``past_key_values.N.key / .value [batch, n_kv_head, past_len, d_head]``; outputs ``logits``
  and ``present.N.key / .value``.

onnxruntime is imported only here (``pip install onnxruntime``, in the dev extra).
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from pimsim.errors import UserError

_NP_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16,
             "tensor(double)": np.float64, "tensor(int64)": np.int64, "tensor(int32)": np.int32}
_HF_PAST = re.compile(r"^past_key_values\.(\d+)\.(key|value)$")


@dataclass
class _Layout:
    """How one step's feeds are made and its outputs read."""
    kind: str  # "pimsim" or "hf"
    kv_inputs: list[str]  # past inputs, in the order their outputs come back
    kv_shape: tuple[int, int, int]  # (lead, n_kv_head, d_head): lead is n_layer or batch
    kv_dtype: Any
    kv_outputs: list[str]  # outputs that become the next step's past, same order as kv_inputs


def _ort() -> Any:
    try:
        import onnxruntime as ort
    except ImportError:
        raise UserError("validating an ONNX file needs onnxruntime, which is not installed",
                        "pip install onnxruntime (or the dev extra), or give --reference "
                        "FILE.npz") from None
    return ort


def ort_device(which: str) -> str:
    """``--reference auto|cpu|cuda`` for onnxruntime: auto is cuda where this onnxruntime has
    the CUDA execution provider, else cpu. Checked before compiling."""
    has_cuda = "CUDAExecutionProvider" in _ort().get_available_providers()
    if which == "auto":
        return "cuda" if has_cuda else "cpu"
    if which == "cuda" and not has_cuda:
        raise UserError("--reference cuda: this onnxruntime has no CUDA execution provider",
                        "use --reference auto or cpu, or install onnxruntime-gpu")
    return which


def _session(path: str, device: str) -> Any:
    ort = _ort()
    providers = ["CUDAExecutionProvider"] if ort_device(device) == "cuda" else []
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    try:
        return ort.InferenceSession(path, opts, providers=providers + ["CPUExecutionProvider"])
    except Exception as e:  # noqa: BLE001 - an invalid graph, an op onnxruntime lacks
        raise UserError(f"onnxruntime cannot load {path!r} ({type(e).__name__}: "
                        f"{' '.join(str(e).split())[:200]})",
                        "give an ONNX file onnxruntime runs, or --reference FILE.npz") from None


def _static(dims: list, what: str, path: str) -> tuple[int, ...]:
    if not all(isinstance(d, int) for d in dims):
        raise UserError(f"{path!r}: the {what} has no static size ({dims})",
                        "export with static head counts and head size, or give --reference "
                        "FILE.npz")
    return tuple(dims)


def _layout(sess: Any, path: str) -> _Layout:
    ins = sess.get_inputs()
    outs = [o.name for o in sess.get_outputs()]
    names = [i.name for i in ins]
    if "input_ids" in names:
        past = sorted((i for i in ins if _HF_PAST.match(i.name)),
                      key=lambda i: (int(_HF_PAST.match(i.name)[1]), i.name.endswith("value")))
        if not past:
            raise UserError(f"{path!r} takes input_ids but no past_key_values.N.key/value",
                            "export with past key/values (task text-generation-with-past)")
        b, h, _, d = past[0].shape
        shape = _static([1, h, d], "past key/value head count or size", path)
        presents = [n.replace("past_key_values", "present") for n in (i.name for i in past)]
        missing = [p for p in presents if p not in outs]
        if missing or "logits" not in outs:
            raise UserError(f"{path!r} lacks the outputs {(missing + ['logits'])[:3]}",
                            "export with optimum's text-generation-with-past task")
        return _Layout("hf", [i.name for i in past], shape, _NP_TYPES[past[0].type], presents)
    if len(ins) == 4 and len(ins[2].shape) == 4 and len(outs) == 3:
        n_layer, h, _, d = ins[2].shape
        shape = _static([n_layer, h, d], "past_k layer count, head count or size", path)
        return _Layout("pimsim", [ins[2].name, ins[3].name], shape, _NP_TYPES[ins[2].type],
                       outs[1:])
    raise UserError(f"{path!r}: inputs {names} are neither a pimsim decode step (token, "
                    f"position, past_k, past_v) nor input_ids + past_key_values.N.key/value",
                    "export the decode step with workloads.models.export or optimum, or give "
                    "--reference FILE.npz")


def _feeds(sess: Any, lay: _Layout, tok: int, pos: int, past: list[np.ndarray]) -> dict:
    ins = sess.get_inputs()
    feeds = dict(zip(lay.kv_inputs, past))
    if lay.kind == "pimsim":
        feeds[ins[0].name] = np.array([[tok]], _NP_TYPES.get(ins[0].type, np.int64))
        feeds[ins[1].name] = np.array([pos], _NP_TYPES.get(ins[1].type, np.int64))
        return feeds
    types = {i.name: _NP_TYPES.get(i.type, np.int64) for i in ins}
    feeds["input_ids"] = np.array([[tok]], types["input_ids"])
    if "attention_mask" in types:
        feeds["attention_mask"] = np.ones((1, pos + 1), types["attention_mask"])
    if "position_ids" in types:
        feeds["position_ids"] = np.array([[pos]], types["position_ids"])
    unknown = sorted(set(types) - set(feeds))
    if unknown:
        raise UserError(f"onnxruntime reference: inputs {unknown} are not known",
                        "give --reference FILE.npz made with the file's own runtime")
    return feeds


def run_onnx_reference(path: str, prompt: list[int], n_tokens: int, *,
                       device: str = "cpu", model_name: str | None = None) -> Any:
    """Greedy decode of the ONNX file ``path`` in onnxruntime (batch 1, from an empty cache):
    a :class:`~workloads.reference.ReferenceRun` with the logits of every step."""
    from workloads.reference.pytorch import ReferenceRun, greedy_decode

    sess = _session(path, device)
    lay = _layout(sess, path)
    lead, h, d = lay.kv_shape
    past = [np.zeros((lead, h, 0, d), lay.kv_dtype) for _ in lay.kv_inputs]
    want = ["logits" if lay.kind == "hf" else sess.get_outputs()[0].name] + lay.kv_outputs
    state = {"past": past}

    def step(tok: int, pos: int) -> np.ndarray:
        lg, *state["past"] = sess.run(want, _feeds(sess, lay, tok, pos, state["past"]))
        return np.asarray(lg, np.float32).reshape(-1, np.shape(lg)[-1])[-1]

    t0 = time.perf_counter()
    toks, logits_all = greedy_decode(step, prompt, n_tokens)
    info = {"onnxruntime": _ort().__version__, "providers": sess.get_providers(),
            "layout": lay.kind, "seconds": round(time.perf_counter() - t0, 3)}
    return ReferenceRun(model_name or path, ort_device(device),
                        list(prompt), toks, np.stack(logits_all), info)
