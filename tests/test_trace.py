"""AiM trace reader: unrolling into per-channel streams, and errors that name the line."""

import dataclasses

import numpy as np
import pytest

from pimsim.config import load_config
from pimsim.spec.commands import cmd_id
from pimsim.timing import SYNC
from pimsim.trace import TraceError, parse_trace


@pytest.fixture(scope="module")
def cfg():
    return load_config("aim-gddr6")


def test_mac_abk_unrolls_to_opsize_columns_on_masked_channels(cfg):
    # AiM's mask order (host.mask_order = "msb32"): bit i selects channel 31 - i
    tr = parse_trace("AiM MAC_ABK 64 0x5 7\n", cfg)
    for ch in range(32):
        s = tr.streams[ch]
        if ch in (31, 29):
            assert s.tolist() == [[cmd_id("MAC_AB"), -1, 7, 64, 0]]
        else:
            assert s.shape == (0, 5)


def test_lsb_mask_order_selects_bit_i_as_channel_i(cfg):
    lsb = cfg.replace(host=dataclasses.replace(cfg.host, mask_order="lsb"))
    tr = parse_trace("AiM MAC_ABK 64 0x5 7\n", lsb)
    assert [ch for ch, s in tr.streams.items() if s.shape[0]] == [0, 2]


def test_isr_prefix_is_accepted(cfg):
    a = parse_trace("AiM ISR_MAC_ABK 8 0x80000000 3\nAiM ISR_EOC\n", cfg)
    b = parse_trace("AiM MAC_ABK 8 0x80000000 3\nAiM EOC\n", cfg)
    assert a.lines.tolist() == b.lines.tolist()


def test_every_isr_maps_to_its_dram_command(cfg):
    text = """
    AiM WR_GB 8 0 0x80000000
    AiM WR_BIAS 0 0x80000000
    AiM RD_MAC 0 0x80000000
    AiM WR_SBK 0 0x80000000 3 9
    AiM RD_SBK 0 0x80000000 3 9
    AiM WR_ABK 0 0x80000000 11
    AiM COPY_BKGB 4 0x80000000 2 5
    AiM COPY_GBBK 4 0x80000000 2 5
    AiM MAC_SBK 16 0x80000000 1 6
    AiM EWMUL 16 0x80000000 12
    AiM AF 0x80000000
    AiM RD_AF 0 0x80000000
    """
    s = parse_trace(text, cfg).streams[0]
    names = ["WR_GB", "WR_MAC", "RD_MAC", "WR", "RD", "WR_AB", "RD_CP", "WR_CP", "MAC_SB",
             "EWMUL", "AF", "RD_AF"]
    assert s[:, 0].tolist() == [cmd_id(n) for n in names]
    assert s[:, 3].tolist() == [8, 1, 1, 1, 1, 1, 4, 4, 16, 16, 1, 1]
    assert s[3, 1:3].tolist() == [3, 9]


def test_sync_goes_to_every_channel_and_eoc_stops(cfg):
    tr = parse_trace("AiM MAC_ABK 1 0x80000000 0\nAiM SYNC\nAiM EOC\nAiM MAC_ABK 1 0x1 1\n", cfg)
    assert tr.n_syncs == 1
    assert all(int(np.count_nonzero(s[:, 0] == SYNC)) == 1 for s in tr.streams.values())
    assert tr.streams[0].shape[0] == 2  # nothing after EOC


def test_host_accesses(cfg):
    tr = parse_trace("R GPR 1\nW GPR 2\nW CFR 0 0x1\nR MEM 4 2 17\nW MEM 4 2 18\n", cfg)
    assert tr.host_ops == {"R_GPR": 1, "W_GPR": 1, "W_CFR": 1}
    assert tr.streams[4][:, :3].tolist() == [[cmd_id("RD"), 2, 17], [cmd_id("WR"), 2, 18]]


def test_comments_blank_lines_and_hex(cfg):
    tr = parse_trace("# header\n\nAiM MAC_ABK 0x40 0x80000000 0x10  # row 16\n", cfg)
    assert tr.streams[0].tolist() == [[cmd_id("MAC_AB"), -1, 16, 64, 0]]


@pytest.mark.parametrize(
    "line, needle",
    [
        ("AiM MAC_ABK 64 0x1", "takes 3 argument"),
        ("AiM FOO 1 2", "unknown AiM operation"),
        ("AiM MAC_ABK 65 0x1 0", "opsize 65"),
        ("AiM MAC_ABK 64 0x1 16384", "row 16384 out of range"),
        ("AiM MAC_SBK 4 0x1 16 0", "bank 16 out of range"),
        ("AiM MAC_ABK 64 0x1ffffffff 0", "channel mask"),
        ("AiM MAC_ABK 64 -1 0", "must be a positive number"),
        ("AiM WR_ABK 0 0xc0000000 0", "exactly one channel"),
        ("AiM MAC_ABK " + "9" * 10**6 + " 0x1 0", "too long for a number"),
        ("AiM MAC_ABK sixty 0x1 0", "opsize must be a number"),
        ("X GPR 1", "must start with"),
        ("R MEM 99 0 0", "channel 99"),
        ("R FOO 1", "unknown host access"),
    ],
)
def test_malformed_lines_name_the_line(cfg, line, needle):
    with pytest.raises(TraceError) as e:
        parse_trace("AiM SYNC\n# fine\n" + line + "\n", cfg, name="t.trace")
    assert "t.trace:3" in str(e.value)
    assert needle in str(e.value)


def test_pim_op_on_plain_dram_is_refused():
    cfg = load_config("aim-gddr6")
    plain = cfg.replace(pim=type(cfg.pim)(enabled=False))
    with pytest.raises(TraceError, match="pim.enabled = false"):
        parse_trace("AiM MAC_ABK 64 0x1 0\n", plain)
