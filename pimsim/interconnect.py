"""The interconnect between PIM devices: a switched CXL/PCIe fabric, transfers and collectives.

Hardware modelled: every node (a PIM device, or the shared host) has one full-duplex port of
``lanes`` lanes into a single non-blocking switch (CXL 3.0 over the PCIe 6.0 PHY, as in CENT,
ASPLOS'25). A transfer of ``n`` payload bytes from ``src`` to ``dsts``:

* is cut into flits: ``ceil(n / flit_payload_bytes)`` flits of ``flit_bytes`` on the wire;
* occupies the sender's transmit side and each receiver's receive side for the serialisation time
  ``wire bytes / port bandwidth`` (port bandwidth = lanes x GiB/s per lane), starting when the
  data is ready and both sides are free (first come, first served, in the order transfers are
  submitted: the contention model);
* arrives one path latency after its last flit left: ``2 x port + 2 x PHY + switch`` (cut-through:
  src CXL port, PCIe link, switch, PCIe link, dst CXL port).

Multicast: with ``multicast = true`` the switch replicates the flits, so a broadcast to k receivers
is one transmission (the sender's port carries it once; the multicast bandwidth and latency
factors apply); without it the sender sends k unicasts one after another.

Collectives (:meth:`Fabric.broadcast`, :meth:`Fabric.gather`, :meth:`Fabric.all_gather`,
:meth:`Fabric.reduce_scatter`, :meth:`Fabric.all_reduce`) are compositions of transfers; the
reduction arithmetic itself is host work (an ASIC op) and is not timed here. Energy: each byte on
the wire costs ``pj_per_bit x 8`` on every link it crosses (sender's link once, each receiver's
link once).

Times are nanoseconds (floats); the model is deterministic.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Sequence

from pimsim.errors import UserError

GIB = float(1 << 30)


class InterconnectError(UserError):
    """A malformed ``[interconnect]`` section or an impossible transfer."""

    default_fix = "correct the [interconnect] section (docs/guide.md's Systems section lists it)"


@dataclass(frozen=True)
class Interconnect:
    """Parameters of the fabric (all values per node port, per direction)."""

    topology: str = "switch"  # one non-blocking switch, every node one port (CENT's CXL switch)
    lanes: int = 4  # CENT: 144 PCIe lanes shared by 32 devices (4 each, rounded down)
    gib_per_lane: float = 8.0  # PCIe 6.0: 64 GT/s PAM4 x1 = 8 GB/s per direction; CENT: 8 GiB/s
    port_latency_ns: float = 25.0  # CXL port (CENT cxl_latency.py)
    phy_latency_ns: float = 30.0  # PCIe PHY + controller, 5 + 20 + 5 ns (CENT)
    switch_latency_ns: float = 20.0  # CXL switch (CENT)
    flit_bytes: int = 256  # CXL 3.0 PBR flit
    flit_payload_bytes: int = 192  # 3 x 64 B messages per 256 B flit (CENT)
    multicast: bool = True  # switch replicates flits (CXL 3.0 multicast)
    multicast_bw_factor: float = 0.5  # bandwidth with multicast (CENT halves it) [assumed]
    multicast_phy_factor: float = 2.0  # PHY latency with multicast (CENT doubles it) [assumed]
    # bandwidth of a unicast (a gather's, a pipeline's sends): 1.0 the port's; CENT's fabric
    # model halves every transfer's lanes once multicast is on (Yufeng98/CENT@9b4165f
    # cent_simulation/cxl_latency.py 9-12: ``bandwidth_per_lane *= 0.5`` under MULTICAST,
    # used by its gathers too)
    unicast_bw_factor: float = 1.0
    pj_per_bit: float = 4.4  # PCIe energy per bit per link (CENT)

    @property
    def port_bytes_per_ns(self) -> float:
        return self.lanes * self.gib_per_lane * GIB / 1e9

    def wire_bytes(self, n_bytes: int) -> int:
        """Bytes on the wire for ``n_bytes`` of payload (whole flits)."""
        return math.ceil(n_bytes / self.flit_payload_bytes) * self.flit_bytes if n_bytes > 0 else 0

    def latency_ns(self, multicast: bool = False) -> float:
        phy = self.phy_latency_ns * (self.multicast_phy_factor if multicast else 1.0)
        return 2 * self.port_latency_ns + 2 * phy + self.switch_latency_ns

    def serialise_ns(self, n_bytes: int, multicast: bool = False) -> float:
        bw = self.port_bytes_per_ns * (self.multicast_bw_factor if multicast
                                       else self.unicast_bw_factor)
        return self.wire_bytes(n_bytes) / bw


# (key, type, lowest, highest) of every [interconnect] field
_FIELDS: tuple[tuple[str, type, float, float], ...] = (
    ("lanes", int, 1, 1024),
    ("gib_per_lane", float, 1e-6, 1e6),
    ("port_latency_ns", float, 0.0, 1e9),
    ("phy_latency_ns", float, 0.0, 1e9),
    ("switch_latency_ns", float, 0.0, 1e9),
    ("flit_bytes", int, 1, 1 << 20),
    ("flit_payload_bytes", int, 1, 1 << 20),
    ("multicast_bw_factor", float, 1e-6, 1.0),
    ("multicast_phy_factor", float, 1.0, 1e6),
    ("unicast_bw_factor", float, 1e-6, 1.0),
    ("pj_per_bit", float, 0.0, 1e9),
)


def interconnect_from_dict(d: dict[str, Any], where: str) -> Interconnect:
    """Validated :class:`Interconnect` from a TOML table; errors name the key and the range."""
    def fail(msg: str, fix: str | None = None) -> None:
        raise InterconnectError(f"{where}: [interconnect] {msg}", fix)

    known = {f[0] for f in _FIELDS} | {"topology", "multicast"}
    for k in d:
        if k not in known:
            fail(f"unknown key {k!r}", f"use one of {', '.join(sorted(known))}")
    kw: dict[str, Any] = {}
    topo = d.get("topology", "switch")
    if topo != "switch":
        fail(f"topology = {topo!r} is not supported", 'use topology = "switch"')
    kw["topology"] = topo
    if "multicast" in d:
        if not isinstance(d["multicast"], bool):
            fail(f"multicast = {d['multicast']!r} must be true or false")
        kw["multicast"] = d["multicast"]
    for key, typ, lo, hi in _FIELDS:
        if key not in d:
            continue
        v = d[key]
        ok = (isinstance(v, int) if typ is int else isinstance(v, (int, float))) \
            and not isinstance(v, bool)
        if not ok or (typ is float and not math.isfinite(v)):
            fail(f"{key} = {v!r} must be {'an integer' if typ is int else 'a finite number'}",
                 f"use a value in {lo:g}..{hi:g}")
        if not lo <= v <= hi:
            fail(f"{key} = {v!r} is out of range", f"use a value in {lo:g}..{hi:g}")
        kw[key] = typ(v)
    ic = Interconnect(**kw)
    if ic.flit_payload_bytes > ic.flit_bytes:
        fail(f"flit_payload_bytes = {ic.flit_payload_bytes} exceeds flit_bytes = {ic.flit_bytes}",
             "a flit carries at most its own size in payload")
    return ic


@dataclass
class Transfer:
    """One submitted transfer and when it happened (ns)."""

    src: int
    dsts: tuple[int, ...]
    n_bytes: int
    ready_ns: float
    start_ns: float
    arrive_ns: float
    multicast: bool
    tag: str = ""


@dataclass
class Fabric:
    """Port occupancy of ``n_nodes`` nodes on one switch; transfers are served in submission
    order (each starts when its data is ready and its ports are free)."""

    ic: Interconnect
    n_nodes: int
    tx_free_ns: list[float] = field(default_factory=list)
    rx_free_ns: list[float] = field(default_factory=list)
    log: list[Transfer] = field(default_factory=list)
    wire_bits: int = 0  # bits x links crossed, for energy

    def __post_init__(self) -> None:
        if not self.tx_free_ns:
            self.tx_free_ns = [0.0] * self.n_nodes
            self.rx_free_ns = [0.0] * self.n_nodes

    # ------------------------------------------------------------------ transfers
    def send(self, src: int, dsts: Sequence[int], n_bytes: int, ready_ns: float = 0.0,
             tag: str = "") -> float:
        """Move ``n_bytes`` from ``src`` to every node of ``dsts``; returns when the last
        receiver has all of it (ns). With multicast one transmission serves all receivers;
        without, unicasts go one after another in ``dsts`` order."""
        dsts = tuple(d for d in dsts if d != src)
        for n in (src, *dsts):
            if not 0 <= n < self.n_nodes:
                raise InterconnectError(f"transfer names node {n}, the fabric has nodes "
                                        f"0..{self.n_nodes - 1}")
        if not dsts or n_bytes <= 0:
            return ready_ns
        ic = self.ic
        if ic.multicast and len(dsts) > 1:
            ser = ic.serialise_ns(n_bytes, multicast=True)
            start = max([ready_ns, self.tx_free_ns[src]] + [self.rx_free_ns[d] for d in dsts])
            self.tx_free_ns[src] = start + ser
            for d in dsts:
                self.rx_free_ns[d] = start + ser
            arrive = start + ser + ic.latency_ns(multicast=True)
            self.wire_bits += ic.wire_bytes(n_bytes) * 8 * (1 + len(dsts))
            self.log.append(Transfer(src, dsts, n_bytes, ready_ns, start, arrive, True, tag))
            return arrive
        last = ready_ns
        ser = ic.serialise_ns(n_bytes)
        for d in dsts:
            start = max(ready_ns, self.tx_free_ns[src], self.rx_free_ns[d])
            self.tx_free_ns[src] = start + ser
            self.rx_free_ns[d] = start + ser
            arrive = start + ser + ic.latency_ns()
            self.wire_bits += ic.wire_bytes(n_bytes) * 8 * 2
            self.log.append(Transfer(src, (d,), n_bytes, ready_ns, start, arrive, False, tag))
            last = max(last, arrive)
        return last

    # ------------------------------------------------------------------ collectives
    def broadcast(self, src: int, dsts: Sequence[int], n_bytes: int, ready_ns: float = 0.0,
                  tag: str = "broadcast") -> float:
        return self.send(src, dsts, n_bytes, ready_ns, tag)

    def gather(self, srcs: Sequence[int], dst: int, n_bytes_each: int,
               ready_ns: float | Sequence[float] = 0.0, tag: str = "gather") -> float:
        """Every node of ``srcs`` sends its ``n_bytes_each`` to ``dst`` (they queue on the
        receiver's port); returns when ``dst`` has all of them."""
        ready = _per_node(ready_ns, srcs)
        return max([self.send(s, (dst,), n_bytes_each, ready[i], tag)
                    for i, s in enumerate(srcs)] + [max(ready, default=0.0)])

    def all_gather(self, nodes: Sequence[int], n_bytes_each: int,
                   ready_ns: float | Sequence[float] = 0.0, tag: str = "all_gather") -> float:
        """Every node sends its piece to every other node; returns when all have all pieces.
        With multicast each node multicasts once (node order); without, in N - 1 rounds node
        ``i`` sends to node ``i + r`` (mod N), so no port carries two transfers in a round."""
        ready = _per_node(ready_ns, nodes)
        done = max(ready, default=0.0)
        if self.ic.multicast and len(nodes) > 2:
            for i, s in enumerate(nodes):
                done = max(done, self.send(s, nodes, n_bytes_each, ready[i], tag))
            return done
        return max(done, self._rounds(nodes, n_bytes_each, ready, tag))

    def reduce_scatter(self, nodes: Sequence[int], n_bytes: int,
                       ready_ns: float | Sequence[float] = 0.0, tag: str = "reduce_scatter") -> float:
        """Every node sends each other node the 1/N share that node owns (direct through the
        switch, in N - 1 rounds as :meth:`all_gather` without multicast); returns when every
        node holds all N contributions to its share."""
        ready = _per_node(ready_ns, nodes)
        return max(max(ready, default=0.0),
                   self._rounds(nodes, math.ceil(n_bytes / len(nodes)), ready, tag))

    def _rounds(self, nodes: Sequence[int], n_bytes: int, ready: list[float], tag: str) -> float:
        n, done = len(nodes), 0.0
        for r in range(1, n):
            for i, s in enumerate(nodes):
                done = max(done, self.send(s, (nodes[(i + r) % n],), n_bytes, ready[i], tag))
        return done

    def all_reduce(self, nodes: Sequence[int], n_bytes: int,
                   ready_ns: float | Sequence[float] = 0.0, reduce_ns: float = 0.0,
                   tag: str = "all_reduce") -> float:
        """Reduce-scatter, ``reduce_ns`` of host arithmetic on each share, then all-gather of the
        reduced shares; returns when every node holds the whole reduced vector."""
        if len(nodes) <= 1:
            return max(_per_node(ready_ns, nodes), default=0.0)
        t = self.reduce_scatter(nodes, n_bytes, ready_ns, tag) + reduce_ns
        return self.all_gather(nodes, math.ceil(n_bytes / len(nodes)), t, tag)

    def energy_pj(self) -> float:
        return self.wire_bits * self.ic.pj_per_bit


def _per_node(ready_ns: float | Sequence[float], nodes: Sequence[int]) -> list[float]:
    if isinstance(ready_ns, (int, float)):
        return [float(ready_ns)] * len(nodes)
    if len(ready_ns) != len(nodes):
        raise InterconnectError(f"{len(ready_ns)} ready times for {len(nodes)} nodes")
    return [float(r) for r in ready_ns]
