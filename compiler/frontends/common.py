"""What the front ends share: the unsupported-op error and small conversions."""

from __future__ import annotations

from typing import Iterable

import numpy as np

from compiler.ir import f32_attr
from pimsim.errors import UserError

__all__ = ["UnsupportedOpError", "as_const_array", "f32_attr"]


class UnsupportedOpError(UserError):
    """A source op the front end has no IR mapping for.

    The message names the op type, the node, and the ops the front end does support.
    """

    def __init__(self, frontend: str, op_type: str, node_name: str, supported: Iterable[str],
                 detail: str = "") -> None:
        self.frontend = frontend
        self.op_type = op_type
        self.node_name = node_name
        self.supported = tuple(sorted(supported))
        extra = f" ({detail})" if detail else ""
        super().__init__(
            f"{frontend}: unsupported op {op_type!r} at node {node_name!r}{extra}; "
            f"supported ops: {', '.join(self.supported)}"
        )


def as_const_array(arr: np.ndarray) -> np.ndarray:
    """Constants in the IR: floating arrays are float32, integer arrays int64, bools stay bool."""
    if arr.dtype.kind in "iu":
        return np.array(arr, dtype=np.int64, order="C")
    if arr.dtype.kind == "b":
        return np.array(arr, dtype=np.bool_, order="C")
    return np.array(arr, dtype=np.float32, order="C")  # float kinds, incl. ml_dtypes bfloat16
