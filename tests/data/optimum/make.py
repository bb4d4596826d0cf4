"""Regenerate the optimum-exported decode steps of this folder (one subfolder per family).

Each subfolder holds what a user gets from optimum: ``model.onnx`` and ``config.json`` written by
``optimum.exporters.onnx.main_export(folder, task="text-generation-with-past")``, and the Hugging
Face model it was exported from (``model.safetensors``, the tiny random model of
``tests/hf_tiny.py``, weights rounded to bf16). ``provenance.json`` records the versions.

optimum's ONNX exporter needs an environment of its own: the released ``optimum-onnx`` 0.1.0
requires transformers < 4.58, and the transformers-5 port ``optimum-onnx-naf`` 0.1.1 exports
with transformers 5.2 (not with the 5.20+ the project uses). So, in a separate environment:

    pip install optimum-onnx-naf==0.1.1 transformers==5.2.0 torch==2.13.0 safetensors
    PYTHONPATH=.:tests python tests/data/optimum/make.py [FAMILY ...]
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from importlib import metadata

HERE = os.path.dirname(os.path.abspath(__file__))
FAMILIES = ("llama-gqa", "qwen2", "mistral", "gpt2", "gpt-neox", "phi", "opt", "gpt-j", "falcon",
            "gpt-bigcode", "llama")


def make(family: str) -> str:
    from hf_tiny import tiny_model
    from optimum.exporters.onnx import main_export

    out = os.path.join(HERE, family)
    shutil.rmtree(out, ignore_errors=True)
    tiny_model(family).save_pretrained(out)
    main_export(out, output=out, task="text-generation-with-past", do_validation=False)
    for junk in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if os.path.exists(os.path.join(out, junk)):
            os.remove(os.path.join(out, junk))
    prov = {k: metadata.version(k) for k in ("optimum-onnx-naf", "optimum", "transformers",
                                            "torch", "onnx")}
    prov["command"] = (f"main_export({family!r} folder, task='text-generation-with-past', "
                       "do_validation=False)")
    with open(os.path.join(out, "provenance.json"), "w") as f:
        json.dump(prov, f, indent=1)
    return out


if __name__ == "__main__":
    for fam in sys.argv[1:] or FAMILIES:
        try:
            print(fam, "->", make(fam), sorted(os.listdir(os.path.join(HERE, fam))))
        except Exception as e:  # noqa: BLE001 - report and go on with the next family
            print(fam, "FAILED:", type(e).__name__, str(e)[:300])
