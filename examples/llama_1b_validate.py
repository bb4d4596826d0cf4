"""Validate a ~1 B-parameter Llama against PyTorch in both ASIC-math modes, building it once.

    PYTHONPATH=. python examples/llama_1b_validate.py [BUILDER] [--tokens 64] [--reference cuda]

BUILDER is a function of ``examples/llama_1b.py`` (default ``build_counting``). Prints one JSON
document: per mode, what ``pimsim validate --json`` gives (less the per-step lists) and the wall
time, plus the counting model's last training loss where there is one.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
import time


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("builder", nargs="?", default="build_counting")
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--reference", default="auto")
    ap.add_argument("--hw", default="pim-gpt")
    a = ap.parse_args()
    from examples import llama_1b
    from workloads.cli import main as pimsim

    t0 = time.perf_counter()
    model = getattr(llama_1b, a.builder)()  # built (and trained) once: validate reuses it
    out = {"builder": a.builder, "build_s": round(time.perf_counter() - t0, 1),
           "counting_loss": getattr(model, "counting_loss", None)}
    llama_1b._BUILT = model
    for mode in ("approx", "exact"):
        argv = ["validate", "examples.llama_1b:_built", "--hw", a.hw, "--tokens", str(a.tokens),
                "--reference", a.reference, "--json", "--no-progress"]
        argv += ["--exact"] if mode == "exact" else []
        buf = io.StringIO()
        t0 = time.perf_counter()
        with contextlib.redirect_stdout(buf):
            rc = pimsim(argv)
        rep = json.loads(buf.getvalue())
        out[mode] = {k: v for k, v in rep.items() if not k.startswith("per_step")}
        out[mode].update(rc=rc, wall_s=round(time.perf_counter() - t0, 1),
                         min_step_cosine=min(rep.get("per_step_cosine", [1.0])))
        print(f"{mode}: rc {rc}, top-1 {rep['top1_agreement']:.4f}, min cosine "
              f"{rep['min_cosine']:.6f}", file=sys.stderr)
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
