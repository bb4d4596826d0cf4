"""Collective costs in closed form (``pimsim.system.collective``) against the transfer-by-transfer
fabric simulation they replace (``pimsim.interconnect.Fabric``), the oracle kept here.

Exact equality of nanoseconds (floats, to the bit), DRAM cycles and wire bits (energy) over
every collective, device counts 2..64, message sizes around flit boundaries, latencies from 0 to
the top of the [interconnect] range, bandwidths and multicast on and off; then a 4096-device
system, which the oracle would take minutes for.
"""

from __future__ import annotations

import dataclasses

import pytest

from pimsim.interconnect import Fabric, Interconnect
from pimsim.system import CommCost, collective

OPS = ("all_reduce", "gather", "broadcast", "send")
DEVICES = (2, 3, 4, 5, 7, 8, 16, 31, 32, 64)
SIZES = (0, 1, 191, 192, 193, 4096, 12_345, 1 << 20)
FABRICS = (
    Interconnect(),
    Interconnect(lanes=1, gib_per_lane=0.37, flit_bytes=68, flit_payload_bytes=64),
    Interconnect(port_latency_ns=0.0, phy_latency_ns=0.0, switch_latency_ns=0.0, lanes=16),
    Interconnect(port_latency_ns=1e9, phy_latency_ns=1e9, switch_latency_ns=1e9,
                 multicast_phy_factor=1e6, multicast_bw_factor=1e-6),
    Interconnect(port_latency_ns=3.3, phy_latency_ns=17.1, switch_latency_ns=0.7,
                 gib_per_lane=1e6, lanes=1024, flit_bytes=1, flit_payload_bytes=1),
    Interconnect(lanes=4, unicast_bw_factor=0.5),  # CENT's fabric model
)
TCK_PS = (1000, 625, 500, 357)


def oracle(ic: Interconnect, op: str, n_devices: int, n_bytes: int,
           reduce_ns: float = 0.0) -> CommCost:
    """The collective simulated transfer by transfer on a fresh fabric (the former
    ``pimsim.system.collective``)."""
    if n_devices <= 1 and op != "send":
        return CommCost(0.0, 0)
    if op == "send":
        f = Fabric(ic, 2)
        return CommCost(f.send(0, (1,), n_bytes), f.wire_bits)
    f = Fabric(ic, n_devices)
    nodes = list(range(n_devices))
    if op == "all_reduce":
        t = f.all_reduce(nodes, n_bytes, reduce_ns=reduce_ns)
    elif op == "gather":
        t = f.gather(nodes[1:], 0, n_bytes)
    elif op == "broadcast":
        t = f.broadcast(0, nodes[1:], n_bytes)
    else:
        raise ValueError(f"collective {op!r} unknown")
    return CommCost(t, f.wire_bits)


def _same(ic, op, n, size, reduce_ns=0.0):
    got = collective(ic, op, n, size, reduce_ns)
    want = oracle(ic, op, n, size, reduce_ns)
    where = f"{op} N={n} {size} B reduce {reduce_ns} ns on {ic}"
    assert got.ns == want.ns, where  # to the bit, not approximately
    assert got.wire_bits == want.wire_bits, where
    for tck in TCK_PS:
        assert got.cycles(tck) == want.cycles(tck), where


def _grid(op, n, multicast, fabrics, sizes, reduce_ns=(37.5, 1e9)):
    for base in fabrics:
        ic = dataclasses.replace(base, multicast=multicast)
        for size in sizes:
            _same(ic, op, n, size)
            if op == "all_reduce":
                for r in reduce_ns:
                    _same(ic, op, n, size, reduce_ns=r)


@pytest.mark.parametrize("multicast", [True, False], ids=["multicast", "unicast"])
@pytest.mark.parametrize("n", DEVICES)
@pytest.mark.parametrize("op", OPS)
def test_closed_form_equals_the_transfer_simulation(op, n, multicast):
    """Every collective on every device count: the default fabric, the top of the latency
    range and a slow narrow one (the larger groups: the first two), sizes around a flit."""
    fabrics = (FABRICS[0], FABRICS[3], FABRICS[1]) if n < 32 else (FABRICS[0], FABRICS[3])
    _grid(op, n, multicast, fabrics, (0, 193, 12_345), reduce_ns=(37.5,))


@pytest.mark.slow
@pytest.mark.parametrize("multicast", [True, False], ids=["multicast", "unicast"])
@pytest.mark.parametrize("n", DEVICES)
@pytest.mark.parametrize("op", OPS)
def test_closed_form_equals_the_transfer_simulation_full_grid(op, n, multicast):
    _grid(op, n, multicast, FABRICS, SIZES)


def test_one_device_costs_nothing_and_unknown_ops_are_refused():
    for op in ("all_reduce", "gather", "broadcast"):
        assert collective(Interconnect(), op, 1, 4096) == CommCost(0.0, 0)
    with pytest.raises(ValueError, match="unknown"):
        collective(Interconnect(), "scatter", 4, 4096)


def test_4096_devices_is_fast_and_follows_the_formula():
    """4096 devices: ring rounds and multicasts as the closed form's sums; the oracle would need
    33 million transfers (its speed: benchmarks/bench_collectives.py). Checked against the
    formula written out here."""
    ic = Interconnect()
    n, size = 4096, 1 << 20
    costs = {op: collective(ic, op, n, size, 50.0) for op in OPS}
    share = -(-size // n)  # 256 B: two flits
    ser, ser_mc = ic.serialise_ns(share), ic.serialise_ns(share, multicast=True)
    rs = 0.0
    for _ in range(n - 1):
        rs += ser
    ag = rs + ic.latency_ns() + 50.0
    for _ in range(n):
        ag += ser_mc
    assert costs["all_reduce"].ns == ag + ic.latency_ns(multicast=True)
    w = ic.wire_bytes(share) * 8
    assert costs["all_reduce"].wire_bits == n * (n - 1) * w * 2 + n * n * w
    assert costs["broadcast"].ns == ic.serialise_ns(size, multicast=True) + ic.latency_ns(True)
    g = 0.0
    for _ in range(n - 1):
        g += ic.serialise_ns(size)
    assert costs["gather"].ns == g + ic.latency_ns()
    assert costs["gather"].wire_bits == (n - 1) * ic.wire_bytes(size) * 16


def test_unicast_bandwidth_factor_slows_gathers_and_sends_not_multicasts():
    """CENT's fabric (cxl_latency.py: every transfer at half the lanes under multicast): a
    gather's and a send's serialisation doubles, a multicast broadcast stays."""
    full, half = Interconnect(lanes=4), Interconnect(lanes=4, unicast_bw_factor=0.5)
    for op in ("gather", "send"):
        a, b = collective(full, op, 32, 512), collective(half, op, 32, 512)
        n = 1 if op == "send" else 31
        assert b.ns - full.latency_ns() == pytest.approx(2 * (a.ns - full.latency_ns()))
        assert b.ns - a.ns == pytest.approx(n * full.serialise_ns(512))
        assert b.wire_bits == a.wire_bits
    assert collective(half, "broadcast", 32, 16384) == collective(full, "broadcast", 32, 16384)
