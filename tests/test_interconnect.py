"""The device interconnect (pimsim/interconnect.py) against transfer times computed by hand.

Default fabric: 4 lanes x 8 GiB/s = 34.359738368 bytes/ns per port and direction; flits of 256 B
carry 192 B; path latency 2 x 25 (CXL ports) + 2 x 30 (PCIe) + 20 (switch) = 130 ns, with
multicast 2 x 25 + 2 x 60 + 20 = 190 ns at half the bandwidth.
"""

from __future__ import annotations

import math

import pytest

from pimsim.interconnect import Fabric, Interconnect, InterconnectError, interconnect_from_dict

PORT_B_PER_NS = 4 * 8 * 2**30 / 1e9  # 34.359738368


def ser(payload: int, bw: float = PORT_B_PER_NS) -> float:
    return math.ceil(payload / 192) * 256 / bw


def test_wire_bytes_are_whole_flits():
    ic = Interconnect()
    assert ic.wire_bytes(1) == 256
    assert ic.wire_bytes(192) == 256
    assert ic.wire_bytes(193) == 512
    assert ic.wire_bytes(0) == 0


def test_one_unicast():
    f = Fabric(Interconnect(), 2)
    t = f.send(0, [1], 8192)
    # 43 flits = 11008 wire bytes over 34.36 B/ns, then 130 ns
    assert t == pytest.approx(11008 / PORT_B_PER_NS + 130.0)
    assert t == pytest.approx(450.375, abs=1e-3)


def test_broadcast_with_multicast_is_one_transmission():
    f = Fabric(Interconnect(multicast=True), 8)
    t = f.broadcast(0, range(1, 8), 8192)
    assert t == pytest.approx(11008 / (PORT_B_PER_NS / 2) + 190.0)
    assert t == pytest.approx(830.750, abs=1e-3)
    assert len(f.log) == 1
    # energy: the sender's link once, seven receivers' links once each
    assert f.wire_bits == 11008 * 8 * 8
    assert f.energy_pj() == pytest.approx(11008 * 8 * 8 * 4.4)


def test_broadcast_without_multicast_serialises_on_the_senders_port():
    f = Fabric(Interconnect(multicast=False), 8)
    t = f.broadcast(0, range(1, 8), 8192)
    assert t == pytest.approx(7 * 11008 / PORT_B_PER_NS + 130.0)
    assert [round(x.start_ns, 6) for x in f.log] == [round(i * 11008 / PORT_B_PER_NS, 6) for i in range(7)]
    assert f.wire_bits == 7 * 11008 * 8 * 2


def test_gather_queues_on_the_receivers_port():
    f = Fabric(Interconnect(), 4)
    # three devices send 1024 B each (6 flits = 1536 wire bytes) to device 0
    t = f.gather([1, 2, 3], 0, 1024)
    assert t == pytest.approx(3 * 1536 / PORT_B_PER_NS + 130.0)


def test_contention_two_transfers_one_lane_set():
    one = ser(4096)
    # same sender: the second waits for the first to leave the port
    f = Fabric(Interconnect(), 3)
    a = f.send(0, [1], 4096)
    b = f.send(0, [2], 4096)
    assert a == pytest.approx(one + 130.0)
    assert b == pytest.approx(2 * one + 130.0)
    # disjoint ports: no contention
    g = Fabric(Interconnect(), 4)
    assert g.send(0, [1], 4096) == pytest.approx(one + 130.0)
    assert g.send(2, [3], 4096) == pytest.approx(one + 130.0)
    # ready later than the port frees: starts when ready
    h = Fabric(Interconnect(), 3)
    h.send(0, [1], 4096)
    assert h.send(0, [2], 4096, ready_ns=10_000.0) == pytest.approx(10_000.0 + one + 130.0)


def test_reduce_scatter_and_all_gather_in_contention_free_rounds():
    # 4 nodes, 8192 B: shares of 2048 B = 11 flits = 2816 wire bytes, three rounds
    s = 2816 / PORT_B_PER_NS
    f = Fabric(Interconnect(multicast=False), 4)
    assert f.reduce_scatter(range(4), 8192) == pytest.approx(3 * s + 130.0)
    g = Fabric(Interconnect(multicast=False), 4)
    assert g.all_gather(range(4), 2048, ready_ns=100.0) == pytest.approx(100.0 + 3 * s + 130.0)
    h = Fabric(Interconnect(multicast=False), 4)
    rs_end = 3 * s + 130.0
    assert h.all_reduce(range(4), 8192, reduce_ns=50.0) == pytest.approx(
        rs_end + 50.0 + 3 * s + 130.0)
    assert len(h.log) == 2 * 4 * 3


def test_all_gather_with_multicast_one_multicast_per_node():
    # each multicast holds every other node's receive port: they go one after another
    s_mc = 2816 / (PORT_B_PER_NS / 2)
    f = Fabric(Interconnect(multicast=True), 4)
    assert f.all_gather(range(4), 2048) == pytest.approx(4 * s_mc + 190.0)
    assert len(f.log) == 4


def test_single_node_collectives_cost_nothing():
    f = Fabric(Interconnect(), 1)
    assert f.all_reduce([0], 1 << 20, ready_ns=5.0) == 5.0
    assert f.broadcast(0, [0], 1 << 20, ready_ns=7.0) == 7.0
    assert f.wire_bits == 0


def test_config_validation_names_key_and_range():
    ic = interconnect_from_dict({"lanes": 8, "multicast": False}, "sys.toml")
    assert ic.lanes == 8 and not ic.multicast
    with pytest.raises(InterconnectError, match=r"lanes = 0 is out of range"):
        interconnect_from_dict({"lanes": 0}, "sys.toml")
    with pytest.raises(InterconnectError, match="unknown key 'lane'"):
        interconnect_from_dict({"lane": 4}, "sys.toml")
    with pytest.raises(InterconnectError, match="finite"):
        interconnect_from_dict({"gib_per_lane": float("nan")}, "sys.toml")
    with pytest.raises(InterconnectError, match="topology"):
        interconnect_from_dict({"topology": "ring"}, "sys.toml")
    with pytest.raises(InterconnectError, match="exceeds flit_bytes"):
        interconnect_from_dict({"flit_payload_bytes": 300}, "sys.toml")
    with pytest.raises(InterconnectError, match="node 5"):
        Fabric(Interconnect(), 2).send(0, [5], 10)
