"""Weight loading: a model's weights written into per-bank DRAM images where the mapping says.

The functional simulator reads weights only from these images, so a placement bug shows up as
wrong outputs. ``corrupt`` is a test hook that deliberately misplaces data.
:func:`build_graph_image` is the image of a graph-lowered model.
"""

from __future__ import annotations

import numpy as np

from pimsim.functional import MemoryImage


def _store_vector(img: MemoryImage, mp, name: str, vec: np.ndarray) -> None:
    vl = mp.vectors
    e = vl.geo.col_elems
    ln, _, _ = vl.entry(name)
    padded = np.zeros(-(-ln // e) * e, np.uint16)
    padded[:ln] = img.encode(np.asarray(vec, np.float32))
    for c, b, r, col, n, first in vl.segments(name):
        img.bits[c, b, r, col * e:(col + n) * e] = padded[first:first + n * e]


CORRUPTIONS = ("shift_qkv_rows",)


def build_graph_image(mp, *, data_type: str = "bf16", rank: int = 0, corrupt: str | None = None):
    """The DRAM image of a graph-lowered model (a
    :class:`~compiler.passes.graph_mapping.GraphMapping`): every matrix and table where its
    layout says, every layer's vectors in its entry. For a
    device of a tensor-parallel group (``rank``), a split matrix contributes only that device's
    rows or columns (zero-padded to the layout's shape).

    ``corrupt="shift_qkv_rows"`` (test hook) stores every output neuron of layer 0's first
    Q/K/V matrix one place off (neuron n where n + 1 belongs), as an off-by-one mapping bug
    would; the program still reads where the layout says."""
    if corrupt is not None and corrupt not in CORRUPTIONS:
        raise ValueError(f"unknown corruption {corrupt!r}")
    g = mp.geo
    if not mp.model.has_weights:
        raise ValueError(f"{mp.model.name} was imported without weights (shapes only); functional "
                         f"simulation needs the weights")
    shifted = None
    if corrupt == "shift_qkv_rows":
        shifted = next((n for n, m in mp.matrices.items()
                        if m.role == "qkv" and n.startswith("L0.")), None)
        if shifted is None:
            raise ValueError(f"{mp.model.name}: no Q/K/V matrix of layer 0 to corrupt on this "
                             f"device")
    img = MemoryImage(g.channels, g.banks, mp.rows_used, g.row_elems, data_type)
    for name, m in mp.matrices.items():
        w = np.asarray(mp.weights[name], np.float32)
        if name == shifted:
            w = np.roll(w, 1, axis=0)
        split = mp.tp_rows.get(name)
        if split is not None:
            kind, idx = split
            if kind == "expert":  # a whole expert: on its device only (others share its rows)
                if idx == rank:
                    img.store_matrix(m, w)
                continue
            part = np.zeros((m.out_dim, m.in_dim), np.float32)
            if kind == "col":
                part[:len(idx[rank])] = w[idx[rank]]
            else:
                part[:, :len(idx[rank])] = w[:, idx[rank]]
            w = part
        img.store_matrix(m, w)
    for name, vec in mp.vector_values.items():
        if vec is not None and len(vec):
            _store_vector(img, mp, name, vec)
    return img
