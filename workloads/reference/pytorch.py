"""PyTorch reference run of a GPT preset: greedy decoding with per-step logits.

Needs only torch and numpy (runs on a GPU machine without numba or the simulator):

    python -m workloads.reference gpt2-small --tokens 32 --device cuda -o ref_gpt2-small.npz

Same seed, same weights (rounded to bf16, computed in fp32) as the simulator's functional mode.
"""

from __future__ import annotations

import argparse
import io
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from pimsim.errors import UserError, read_bytes
from workloads.models.presets import get_config
from workloads.models.resolve import TRAINED, build_model


@dataclass
class ReferenceRun:
    model: str
    device: str
    prompt: list[int]
    tokens: list[int]  # generated greedily
    logits: np.ndarray  # [n_steps, vocab]: logits of every decode step (prompt steps included)
    info: dict

    def save(self, path: str) -> None:
        """Write the run as an ``.npz`` at ``path`` (``.npz`` appended where missing, as numpy
        does), atomically."""
        from pimsim.outputs import atomic_write

        path = str(path) if str(path).endswith(".npz") else f"{path}.npz"
        with atomic_write(path, "reference file", "wb") as f:
            self._savez(f)

    def _savez(self, f) -> None:
        np.savez_compressed(f, model=self.model, device=self.device,
                            prompt=np.array(self.prompt), tokens=np.array(self.tokens),
                            logits=self.logits.astype(np.float32),
                            info=np.array(repr(self.info)))

    @classmethod
    def load(cls, path: str) -> "ReferenceRun":
        return load_reference(path)


def load_reference(path: str) -> ReferenceRun:
    """A saved :class:`ReferenceRun`; a UserError naming the file if it is missing or not one."""
    data = read_bytes(path, "reference file")
    fix = "make it with python -m workloads.reference MODEL --tokens N -o FILE.npz"
    try:
        z = np.load(io.BytesIO(data), allow_pickle=False)
        if not hasattr(z, "files"):
            raise ValueError("not an .npz archive")
        missing = [k for k in ("model", "device", "prompt", "tokens", "logits", "info")
                   if k not in z.files]
        if missing:
            raise UserError(f"reference file {path!r} lacks {', '.join(missing)}", fix)
        logits = np.asarray(z["logits"], np.float32)
        run = ReferenceRun(str(z["model"]), str(z["device"]),
                           [int(t) for t in np.asarray(z["prompt"]).reshape(-1)],
                           [int(t) for t in np.asarray(z["tokens"]).reshape(-1)],
                           logits, {"file": path, "saved": str(z["info"])})
    except UserError:
        raise
    except Exception as e:  # noqa: BLE001 - a truncated zip, a wrong dtype, garbage bytes
        raise UserError(f"reference file {path!r} is not a reference run "
                        f"({type(e).__name__}: {' '.join(str(e).split())[:200]})", fix) from None
    if logits.ndim != 2 or not np.isfinite(logits).all():
        raise UserError(f"reference file {path!r} holds logits of shape {logits.shape} "
                        f"(or non-finite values)", fix)
    return run


def pick_device(which: str) -> str:
    import torch

    if which == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if which == "cuda" and not torch.cuda.is_available():
        raise UserError("--reference cuda: no CUDA device is available here",
                        "use --reference auto or cpu, or an .npz made on a GPU machine")
    if which not in ("cpu", "cuda"):
        raise UserError(f"reference device {which!r} is unknown", "use auto, cpu or cuda")
    return which


def greedy_decode(step: Any, prompt: list[int], n_tokens: int,
                  forced: list[int] | None = None) -> tuple[list[int], list[np.ndarray]]:
    """The prompt, then ``n_tokens`` greedy tokens, one ``step(token, position) -> logits``
    call a position; with ``forced``, those tokens are fed instead of the model's own choices.
    Returns (the greedy choices, the logits of every step)."""
    logits_all: list[np.ndarray] = []
    toks: list[int] = []
    tok = prompt[0]
    for pos in range(max(len(prompt) + n_tokens - 1, len(prompt))):
        lg = step(tok, pos)
        logits_all.append(lg)
        if pos + 1 < len(prompt):
            tok = prompt[pos + 1]
        else:
            toks.append(int(lg.argmax()))
            g = len(toks) - 1
            tok = forced[g] if forced is not None and g < len(forced) else toks[-1]
    return toks, logits_all


def run_reference(model_name: str, prompt: list[int], n_tokens: int, *, device: str = "auto",
                  seed: int = 0, forced: list[int] | None = None,
                  source: object | None = None) -> ReferenceRun:
    """Greedy decode; with ``forced``, feed those tokens instead of the model's own choices.

    ``source``: the model itself (what :func:`workloads.models.resolve_model` gave) instead of
    a preset name: a Hugging Face causal LM runs its own forward with its own KV cache, a module
    with ``decode_step`` and ``empty_kv`` its decode step."""
    import torch

    dev = pick_device(device)
    if type(source).__name__ == "ExportedProgram":
        return _run_exported(model_name, source, prompt, n_tokens, forced, seed)
    model = build_model(model_name, seed=seed) if source is None else source
    model = model.to(dev)
    hf = getattr(model, "model", None) if type(model).__name__ == "HFDecodeStep" else None
    if hf is None and not callable(getattr(model, "empty_kv", None)):
        raise UserError(f"{model_name}: no PyTorch reference for a {type(model).__name__} (it "
                        f"has no empty_kv())", "give a --reference FILE.npz")
    state = {"kv": model.empty_kv() if hf is None else None}  # the cache between steps

    def step(tok: int, pos: int) -> np.ndarray:
        ids = torch.tensor([[tok]], device=dev)
        if hf is not None:  # the model's own forward and KV cache
            from workloads.models.hf_decode import cache_kwarg, output_cache

            out = hf(input_ids=ids, use_cache=True, **cache_kwarg(hf, state["kv"]))
            state["kv"], lg = output_cache(out), out.logits[:, -1]
        else:
            lg, *state["kv"] = model.decode_step(ids, pos, *state["kv"])
        return lg[0].float().cpu().numpy()

    t0 = time.perf_counter()
    with torch.no_grad():
        toks, logits_all = greedy_decode(step, prompt, n_tokens, forced)
    info = {"torch": torch.__version__, "seconds": round(time.perf_counter() - t0, 3),
            "gpu": torch.cuda.get_device_name(0) if dev == "cuda" else "", "seed": seed}
    return ReferenceRun(model_name, dev, list(prompt), toks, np.stack(logits_all), info)


def _run_exported(model_name: str, ep: object, prompt: list[int], n_tokens: int,
                  forced: list[int] | None, seed: int) -> ReferenceRun:
    """Greedy decode with a static-cache ``ExportedProgram`` itself (``input_ids [1, 1]``,
    ``cache_position [1]``; its cache is its own buffers), on the CPU it was exported for."""
    import torch

    from compiler.frontends.torch_kv_cache import analyse

    kv = analyse(ep)
    if kv is None or kv.layout != "static":
        raise UserError(f"{model_name}: a torch.export program is its own reference only with "
                        f"a static cache (it keeps its cache itself); this one takes its past "
                        f"as inputs", "validate the module it was exported from, or give a "
                        "--reference FILE.npz")
    step = ep.module()
    ids_name, pos_name = _static_input_names(ep)

    def run(tok: int, pos: int) -> np.ndarray:
        lg = step(**{ids_name: torch.tensor([[tok]]), pos_name: torch.tensor([pos])})
        return lg.reshape(-1, lg.shape[-1])[-1].float().numpy()

    t0 = time.perf_counter()
    with torch.no_grad():
        toks, logits_all = greedy_decode(run, prompt, n_tokens, forced)
    info = {"torch": torch.__version__, "seconds": round(time.perf_counter() - t0, 3), "gpu": "",
            "seed": seed, "program": "torch.export (static cache)"}
    return ReferenceRun(model_name, "cpu", list(prompt), toks, np.stack(logits_all), info)


def _static_input_names(ep: object) -> tuple[str, str]:
    """(token ids, position) input names of a static-cache program (by shape: [1, 1] and [1])."""
    phs = {n.name: n for n in ep.graph.nodes if n.op == "placeholder"}
    users = [s.arg.name for s in ep.graph_signature.input_specs if s.kind.name == "USER_INPUT"]
    ids = next(u for u in users if len(phs[u].meta["val"].shape) == 2)
    return ids, next(u for u in users if u != ids)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m workloads.reference",
                                 description="PyTorch reference greedy decode of a GPT preset")
    ap.add_argument("model")
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--prompt", type=int, default=1, help="prompt length (deterministic ids)")
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("-o", "--out", required=True)
    a = ap.parse_args(argv)
    vocab = get_config(TRAINED.get(a.model, a.model)).vocab
    prompt = [int(t) for t in np.random.default_rng(a.seed).integers(0, vocab, a.prompt)]
    run = run_reference(a.model, prompt, a.tokens, device=a.device, seed=a.seed)
    run.save(a.out)
    print(f"{a.model} on {run.device}: {len(run.tokens)} tokens in {run.info['seconds']} s -> {a.out}")


if __name__ == "__main__":
    main()
