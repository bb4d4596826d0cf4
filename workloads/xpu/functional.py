"""Functional mode of an xPU beside PIM (attention offloaded, AttAcc's placement): the numbers.

:class:`XpuFlowExecutor` runs a compiled decode step as :class:`pimsim.functional.FlowExecutor`
does, except that the weight matrix-vector products (q/K/V projections, output projection,
FFN, LM head) run on the xPU: torch matrix products of the same bf16 / fp16 weights (read back
from the PIM memory image, as the xPU would hold them) and the activations rounded to that
format, accumulated in float32, the result rounded to float32 like the PIM accumulator's read.
The K/V writes, scores and context stay on the PIM bank MAC kernels; the other ops use the
ASIC arithmetic of the config on both sides (the xPU runs them in the same precision). A test
holds the greedy tokens of ``tiny-counter`` equal to the all-PIM run.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from pimsim.functional import FlowExecutor


class XpuFlowExecutor(FlowExecutor):
    """:class:`FlowExecutor` with the weight products on the xPU (see the module docstring)."""

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self._weights: dict[str, Any] = {}
        self.xpu_products = 0  # matrix-vector products the xPU ran

    def _xpu_weights(self, name: str):
        import torch

        w = self._weights.get(name)
        if w is None:
            m = self.prog.matrices[name]
            rows = [self._base._read_matrix_row(m, n) for n in range(m.out_dim)]
            w = self._weights[name] = torch.from_numpy(np.stack(rows).astype(np.float32))
        return w

    def _mv(self, matrix: str, x: np.ndarray, n_out: int) -> np.ndarray:
        import torch

        w = self._xpu_weights(matrix)
        xr = self.img.decode(self.img.encode(np.asarray(x, np.float32)))  # the weights' format
        self.xpu_products += 1
        return (w @ torch.from_numpy(np.ascontiguousarray(xr, np.float32))).numpy()


def xpu_functional_executor(compiled: Any, cfg: Any, *, exact: bool = False) -> XpuFlowExecutor:
    """The xPU + PIM executor of a model compiled with its weights for one device of ``cfg``."""
    from compiler.passes.images import build_graph_image
    from pimsim.errors import UserError
    from pimsim.functional import AsicMath

    if compiled.stages:
        raise UserError("functional xPU + PIM runs on a system of several devices",
                        "run it on one PIM device")
    img = build_graph_image(compiled.mapping, data_type=cfg.pim.data_type)
    return XpuFlowExecutor(compiled.program, img, cfg, math=AsicMath.from_config(cfg, exact=exact))
