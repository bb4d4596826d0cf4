"""Helpers of the ONNX front end shared by the importer and the shape folder.

Reading an ONNX node: its inputs without the trailing empty ones, an integer attribute or
constant as a list of ints, and the shape of a value as the file annotates it or, where that is
missing, as the IR's shape rules derive it from the nodes imported so far. The importer
(``onnx_frontend``) and the folding of shape-only subgraphs (``onnx_shapes``) both use them.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def int_list(xs: Any) -> list[int]:
    """``xs`` (a scalar, list or array) as a flat list of ints."""
    return [int(x) for x in np.asarray(xs).reshape(-1)]


def node_inputs(node: Any) -> list[str]:
    """The input names of an ONNX node, without trailing empty (omitted optional) inputs."""
    ins = list(node.input)
    while ins and not ins[-1]:
        ins.pop()
    return ins


def annotated_shape(im: Any, name: str) -> list | None:
    """The shape of ``name``: the file's annotation, or where that is missing or has unknown
    dimensions, what the IR's shape rules derive from the nodes imported so far (``im`` is the
    importer: its ONNX graph ``g``, its ``shapes`` and its ``name`` aliasing)."""
    for vi in list(im.g.value_info) + list(im.g.input) + list(im.g.output):
        if vi.name == name and vi.type.tensor_type.HasField("shape"):
            dims = [int(d.dim_value) if d.HasField("dim_value") else d.dim_param
                    for d in vi.type.tensor_type.shape.dim]
            if all(d not in ("", None) for d in dims):
                return dims
            break
    inferred = im.shapes.shape(im.name(name))
    return None if inferred is None else list(inferred)
