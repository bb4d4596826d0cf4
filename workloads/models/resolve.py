"""Resolve a MODEL argument of the command line: a preset name, an ``.onnx`` file, or a Python
``module:attribute`` path.

``module:attribute`` accepts, and only accepts:

* a torch ``nn.Module`` instance with a ``decode_step(token, pos, past_k, past_v)`` method;
* a Hugging Face GPT-2 causal-LM model (``transformers.GPT2LMHeadModel``), converted to one;
* any other Hugging Face causal LM (a ``transformers`` model with an LM head: Llama, Mistral,
  Qwen2, GPT-NeoX, OPT, GPT-J, Phi, Falcon, GPT-BigCode, ...), wrapped as its decode step
  (:mod:`workloads.models.hf_decode`) and lowered op by op;
* a ``torch.export.ExportedProgram``: of a decode step (``token, pos, past_k, past_v``), or of a
  Hugging Face decoder with a static cache (``transformers.integrations.executorch.
  convert_and_export_with_cache``), its reference the program itself;
* a zero-argument factory (a function, or an ``nn.Module`` class with ``decode_step``) that
  returns one of these.

Any other object (an ``nn.Module`` without ``decode_step`` such as ``torch.nn.Conv2d``, a
function that needs arguments, a number) is rejected with a :class:`ModelError` without being
called. Importing the module runs its code: ``module:attribute`` (also in a sweep spec) is as
trusted as any Python you run.

torch is imported only when a model is built.
"""

from __future__ import annotations

import importlib
import inspect
import os
import sys
from pathlib import Path
from typing import Any

from pimsim.errors import UserError, one_line
from workloads.models.presets import PRESETS, get_config


class ModelError(UserError):
    """A MODEL argument that names nothing usable."""

    default_fix = ("give a preset, an .onnx file of a decode step or module:attribute naming a "
                   "torch module with decode_step")


class ModelNotResolved(ModelError):
    """A MODEL argument that could not be resolved here and now (a missing file, a module that
    cannot be imported): a sweep records its point as an error and tries it again on resume,
    never as a final result."""


TRAINED = {"tiny-counter": "tiny"}  # trained variants of presets (workloads.models.train)

ACCEPTED = ("an nn.Module instance with a decode_step(token, pos, past_k, past_v) method, a "
            "Hugging Face causal LM, a torch.export.ExportedProgram of one, or a zero-argument "
            "function returning one")


def preset_names() -> list[str]:
    from workloads.models import zoo

    return list(PRESETS) + list(TRAINED) + list(zoo.NAMES)


def preset_context(spec: str) -> int | None:
    """The context length of a preset or trained variant (None for other MODEL arguments)."""
    if spec in PRESETS or spec in TRAINED:
        return get_config(TRAINED.get(spec, spec)).n_ctx
    from workloads.models import zoo

    if spec in zoo.NAMES:
        return zoo.n_ctx(spec)
    return None


def build_model(name: str, *, seed: int = 0):
    """The reference module of a preset or trained variant, weights rounded to bf16 (a preset's
    in place, one parameter at a time: no second copy of a large model's weights; a trained
    variant's on a copy, as the trained module is cached)."""
    from workloads.models.gpt import GPT, round_weights_to_bf16

    if name in TRAINED:
        from workloads.models.train import counting_model

        return counting_model(TRAINED[name], seed=seed).bf16_rounded()
    return round_weights_to_bf16(GPT.from_seed(get_config(name), seed=seed)).eval()


def resolve_model(spec: str, *, weights: bool = True, seed: int = 0) -> tuple[Any, str]:
    """(source for the compiler, display name).

    Presets become a :class:`~workloads.models.gpt.GPT` with deterministic random weights from
    ``seed`` rounded to bf16 (or, with ``weights=False``, a weightless ``meta``-device module: shapes
    only, for timing runs of large models).
    """
    if not isinstance(spec, str) or not spec.strip():
        raise ModelError(f"MODEL {spec!r} is empty")
    if spec in PRESETS or spec in TRAINED:
        if weights:
            return build_model(spec, seed=seed), spec
        from workloads.models.gpt import GPT

        return GPT(get_config(TRAINED.get(spec, spec)), device="meta").eval(), spec
    from workloads.models import zoo

    if spec in zoo.NAMES:
        if weights:
            raise ModelError(f"{spec} is a shapes-only preset (timing runs); functional runs "
                             f"and validation need weights",
                             "drop --functional, or give a model with weights")
        return zoo.build(spec), spec
    if spec.lower().endswith(".onnx"):
        check_onnx_file(spec)
        return spec, Path(spec).stem
    if Path(spec).is_dir() and (Path(spec) / "config.json").is_file():
        return from_pretrained_folder(spec, weights=weights)
    if Path(spec).is_dir():
        raise ModelError(f"MODEL {spec!r} is a folder without a config.json, so it is not a "
                         f"Hugging Face model folder",
                         "give a folder written by save_pretrained (config.json and the "
                         "weights), a preset name, an .onnx file or a module:attribute")
    if ":" in spec:
        return resolve_attribute(spec)
    if Path(spec).suffix or "/" in spec or "\\" in spec:
        raise ModelNotResolved(f"MODEL {spec!r}: no such file or model folder",
                               "check the path (a sweep spec's paths are read against its folder)")
    raise ModelError(
        f"unknown MODEL {spec!r}",
        f"give a preset ({', '.join(preset_names())}), an .onnx file, or a module:attribute "
        f"path to a torch module")


def from_pretrained_folder(path: str, *, weights: bool = True) -> tuple[Any, str]:
    """A Hugging Face model folder (config.json, weights) on this machine: its causal LM, loaded
    with ``from_pretrained`` from the folder only (nothing is downloaded); ``weights=False``
    builds it from the config on the ``meta`` device. Features the lowering does not model are
    refused from the config, before any weight is read; weights that do not match the config
    (:func:`check_loading_info`) are refused."""
    try:
        import torch
        import transformers
    except ImportError:
        raise ModelError(f"MODEL {path!r} is a Hugging Face folder but transformers is not "
                         f"installed", "pip install transformers") from None
    from workloads.models.hf_decode import check_supported, decode_step_module
    from workloads.models.hf_quiet import quiet_hf

    try:
        with quiet_hf():
            cfg = transformers.AutoConfig.from_pretrained(path, local_files_only=True)
    except Exception as e:  # noqa: BLE001 - a config transformers cannot read
        raise ModelError(f"Hugging Face folder {path!r} cannot be loaded as a causal LM "
                         f"({_describe(e)})", "give a folder saved with save_pretrained") from None
    check_supported(cfg, Path(path).name)  # before loading the weights
    try:
        with quiet_hf():
            obj, info = _load_folder(transformers, torch, path, cfg, weights)
    except Exception as e:  # noqa: BLE001 - a folder transformers cannot read
        raise ModelError(f"Hugging Face folder {path!r} cannot be loaded as a causal LM "
                         f"({_describe(e)})", "give a folder saved with save_pretrained") from None
    if info is not None:
        check_loading_info(path, info)
    return decode_step_module(obj.eval()), Path(path).name


def _load_folder(transformers: Any, torch: Any, path: str, cfg: Any,
                 weights: bool) -> tuple[Any, dict | None]:
    """The causal LM of a folder and transformers' loading info (its weights), or
    (``weights=False``) the model on the meta device and None."""
    if weights:
        return transformers.AutoModelForCausalLM.from_pretrained(
            path, local_files_only=True, output_loading_info=True,
            ignore_mismatched_sizes=True)  # reported in the info, refused by the caller
    with torch.device("meta"):
        return transformers.AutoModelForCausalLM.from_config(cfg), None


_SHOWN_TENSORS = 3  # tensor names a mismatch message lists


def check_loading_info(path: str, info: dict) -> None:
    """Refuse a folder whose weights do not match its ``config.json`` (``from_pretrained``'s
    ``output_loading_info``): transformers fills missing tensors with random values, so a run
    would compute with weights nobody saved (and two runs would differ)."""
    problems = []
    for key, what in (("missing_keys", "missing from the weight files"),
                      ("unexpected_keys", "in the weight files but not in the model config.json "
                                          "describes"),
                      ("mismatched_keys", "of another shape than config.json gives")):
        names = sorted(str(k[0] if isinstance(k, tuple) else k) for k in info.get(key) or ())
        if names:
            shown = ", ".join(names[:_SHOWN_TENSORS])
            more = f" and {len(names) - _SHOWN_TENSORS} more" if len(names) > _SHOWN_TENSORS else ""
            problems.append(f"{len(names)} tensor(s) {what} ({shown}{more})")
    if problems:
        raise ModelError(
            f"Hugging Face folder {path!r}: the weights do not match config.json: "
            f"{', '.join(problems)} (transformers would fill in random values or drop saved ones)",
            "save the model again with save_pretrained, or correct config.json (for example "
            "num_hidden_layers) to match the weight files")


def check_onnx_file(path: str) -> None:
    """A readable file (its contents are checked by the ONNX front end)."""
    p = Path(path)
    try:
        if not p.exists():
            raise ModelNotResolved(f"ONNX file {path!r} not found", "check the path")
        if p.is_dir():
            raise ModelError(f"ONNX file {path!r} is a directory", "give the .onnx file")
        with p.open("rb") as f:
            head = f.read(1)
    except OSError as e:
        raise ModelError(f"ONNX file {path!r} cannot be read ({e.strerror or e})",
                         "check the path and its permissions") from None
    if not head:
        raise ModelError(f"ONNX file {path!r} is empty",
                         "export the decode step again "
                         "(workloads.models.export.export_decode_onnx)")


def _describe(e: BaseException) -> str:
    msg = one_line(str(e))
    return f"{type(e).__name__}: {msg}" if msg else type(e).__name__


def resolve_attribute(spec: str) -> tuple[Any, str]:
    """``module:attribute`` -> (torch module, attribute name); see the module docstring."""
    mod_name, attr = spec.split(":", 1)
    if not mod_name or not attr:
        raise ModelError(f"MODEL {spec!r} is not module:attribute",
                         "write it as package.module:name")
    try:
        mod = importlib.import_module(mod_name)
    except ModuleNotFoundError as e:
        if e.name and mod_name.startswith(e.name):
            local = Path(*mod_name.split(".")).with_suffix(".py")
            if local.is_file() and "" not in sys.path and os.getcwd() not in sys.path:
                raise ModelNotResolved(
                    f"cannot import module {mod_name!r} for MODEL {spec!r}: {local} is in the "
                    f"current directory, which is not on the import path",
                    "run with PYTHONPATH=. (or install the module)") from None
            raise ModelNotResolved(f"cannot import module {mod_name!r} for MODEL {spec!r}: no "
                                   f"such module", "check the name and that its directory is on "
                                   "PYTHONPATH") from None
        raise ModelNotResolved(f"importing module {mod_name!r} for MODEL {spec!r} failed "
                               f"({_describe(e)})", "install what it needs or fix the module"
                               ) from None
    except ImportError as e:  # a package it needs is missing: may be installed later
        raise ModelNotResolved(f"importing module {mod_name!r} for MODEL {spec!r} raised "
                               f"{_describe(e)}", "install what it needs or fix the module"
                               ) from None
    except (Exception, SystemExit) as e:  # noqa: BLE001 - the user's code: any failure
        raise ModelError(f"importing module {mod_name!r} for MODEL {spec!r} raised "
                         f"{_describe(e)}", "fix the module (it runs when imported)") from None
    try:
        obj = getattr(mod, attr)
    except AttributeError:
        raise ModelError(f"module {mod_name!r} has no attribute {attr!r}",
                         "check the name after the colon") from None
    except Exception as e:  # noqa: BLE001 - a module __getattr__ that fails
        raise ModelError(f"reading {spec!r} raised {_describe(e)}", "fix the module") from None
    kind = classify(obj)
    if kind == "factory":
        try:
            obj = obj()
        except (Exception, SystemExit) as e:  # noqa: BLE001 - the user's code
            raise ModelError(f"calling {spec}() raised {_describe(e)}",
                             "fix the factory function") from None
        kind = classify(obj)
        if kind not in ("decoder", "hf", "hf-lm", "exported"):
            raise ModelError(f"{spec}() returned {_what(obj)}, not a model",
                             f"return {ACCEPTED.split(', or')[0]}")
    if kind == "hf":  # a Hugging Face GPT2LMHeadModel: same maths, our module
        from workloads.models.hf import from_hf_gpt2

        try:
            obj = from_hf_gpt2(obj, name=attr)
        except ValueError as e:
            raise ModelError(f"{spec}: this GPT-2 variant cannot be converted ({one_line(str(e))})",
                             "use a standard GPT2LMHeadModel") from None
    elif kind == "hf-lm":  # any other causal LM: its decode step, lowered op by op
        from workloads.models.hf_decode import decode_step_module

        obj = decode_step_module(obj.eval())
    elif kind not in ("decoder", "exported"):
        raise ModelError(f"{spec} is {_what(obj)}: {_why(obj, kind)}", f"give {ACCEPTED}")
    return obj, attr


def _what(obj: Any) -> str:
    if inspect.isclass(obj):
        return f"the class {obj.__module__}.{obj.__qualname__}"
    if inspect.isroutine(obj):
        return f"the function {getattr(obj, '__qualname__', obj)}"
    return f"a {type(obj).__module__}.{type(obj).__qualname__}"


def _why(obj: Any, kind: str) -> str:
    return {
        "module": "an nn.Module without a decode_step method",
        "module-class": "an nn.Module class without decode_step (it is not called)",
        "hf-other": "a Hugging Face model without a language-model head (give its *ForCausalLM)",
        "needs-args": "a callable that needs arguments (it is not called)",
    }.get(kind, "not a model")


def _mro_names(cls: type) -> list[str]:
    return [c.__name__ for c in getattr(cls, "__mro__", ())]


def _is_torch_module_class(cls: type) -> bool:
    return "Module" in _mro_names(cls) and any(
        c.__module__.startswith("torch.nn") and c.__name__ == "Module" for c in cls.__mro__)


def _is_hf(cls: type) -> bool:
    return any(c.__module__.startswith("transformers") for c in getattr(cls, "__mro__", ()))


def _zero_args(f: Any) -> bool:
    try:
        sig = inspect.signature(f)
    except (TypeError, ValueError):
        return False
    return all(p.default is not p.empty or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
               for p in sig.parameters.values())


def classify(obj: Any) -> str:
    """``decoder``, ``hf`` (GPT2LMHeadModel), ``hf-lm`` (another HF causal LM), ``exported``
    (a torch.export program), ``factory``, or why not: ``module``,
    ``module-class``, ``hf-other``, ``needs-args``, ``other``. Never calls ``obj``."""
    if not inspect.isclass(obj) and "ExportedProgram" in _mro_names(type(obj)) and \
            type(obj).__module__.startswith("torch.export"):
        return "exported"
    if inspect.isclass(obj):
        if _is_torch_module_class(obj):
            if callable(getattr(obj, "decode_step", None)) and _zero_args(obj):
                return "factory"
            return "module-class" if not callable(getattr(obj, "decode_step", None)) \
                else "needs-args"
        return "other"
    cls = type(obj)
    if _is_torch_module_class(cls):
        if "GPT2LMHeadModel" in _mro_names(cls):
            return "hf"
        if callable(getattr(obj, "decode_step", None)):
            return "decoder"
        if _is_hf(cls):
            return "hf-lm" if callable(getattr(obj, "get_output_embeddings", None)) and \
                obj.get_output_embeddings() is not None else "hf-other"
        return "module"
    if callable(obj):
        return "factory" if _zero_args(obj) else "needs-args"
    return "other"
