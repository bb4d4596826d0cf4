"""Hardware configs: every shipped preset loads and compiles, derived sizes are right, and every
validation error names the file and the key that is wrong."""

from __future__ import annotations

import copy
import dataclasses
import json
import re
from pathlib import Path

import pytest
import tomllib

from pimsim.config import (
    HWCONFIG_DIR,
    PIM_TIMING,
    ConfigError,
    available_configs,
    channel_ids,
    config_from_dict,
    load_config,
)
from pimsim.spec.commands import cmd_id
from pimsim.timing.tables import CT_ENABLED, G_NODES, build_tables

SHIPPED = ("aim-gddr6", "gddr6", "hbm-pim", "pim-gpt")
GiB = 1 << 30


# ---------------------------------------------------------------- helpers


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)  # a JSON string of printable ASCII is a valid TOML basic string
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(f"cannot write {v!r} as TOML")


def dump_toml(data: dict) -> str:
    """A tiny TOML writer: scalars first, then tables (nested tables as [a.b])."""
    lines: list[str] = []

    def emit(table: dict, prefix: str) -> None:
        scalars = {k: v for k, v in table.items() if not isinstance(v, dict)}
        subs = {k: v for k, v in table.items() if isinstance(v, dict)}
        if prefix and (scalars or not subs):
            lines.append(f"\n[{prefix}]")
        for k, v in scalars.items():
            lines.append(f"{k} = {_toml_value(v)}")
        for k, v in subs.items():
            emit(v, f"{prefix}.{k}" if prefix else k)

    emit(data, "")
    return "\n".join(lines) + "\n"


def base_data() -> dict:
    """The parsed aim-gddr6 preset, to mutate into bad configs."""
    return tomllib.loads((HWCONFIG_DIR / "aim-gddr6.toml").read_text())


def write_config(tmp_path: Path, name: str, mutate) -> Path:
    data = copy.deepcopy(base_data())
    mutate(data)
    path = tmp_path / f"{name}.toml"
    path.write_text(dump_toml(data))
    return path


def expect_error(path: Path | str, *fragments: str) -> str:
    """load_config(path) raises ConfigError whose message names the file and every fragment."""
    with pytest.raises(ConfigError) as exc:
        load_config(path)
    msg = str(exc.value)
    if isinstance(path, Path):
        assert path.name in msg, f"file name {path.name!r} missing from: {msg}"
    for frag in fragments:
        assert frag in msg, f"{frag!r} missing from: {msg}"
    return msg


# ---------------------------------------------------------------- shipped configs


def test_shipped_configs_are_listed():
    assert set(SHIPPED) <= set(available_configs())


@pytest.mark.parametrize("name", available_configs())
def test_shipped_config_loads_and_builds_tables(name):
    cfg = load_config(name)
    assert cfg.name == name
    assert cfg.source == f"{name}.toml"
    tables = build_tables(cfg)
    assert tables.geom.shape == (len(tables.geom),) and tables.geom[G_NODES] == 1 + cfg.org.bankgroups + cfg.org.banks
    assert len(tables.pr_tab) > 0
    assert len(channel_ids(cfg)) == cfg.org.channels


@pytest.mark.parametrize("name", available_configs())
def test_shipped_config_loads_by_path(name):
    assert load_config(HWCONFIG_DIR / f"{name}.toml") == load_config(name)


@pytest.mark.parametrize("name", available_configs())
def test_toml_writer_round_trips_shipped_config(tmp_path, name):
    data = tomllib.loads((HWCONFIG_DIR / f"{name}.toml").read_text())
    path = tmp_path / f"{name}.toml"
    path.write_text(dump_toml(data))
    assert tomllib.loads(path.read_text()) == data
    assert load_config(path) == load_config(name)


_TAG = re.compile(r"\[([a-z0-9]+)\]")


@pytest.mark.parametrize("name", available_configs())
def test_shipped_config_values_cite_a_defined_source(name):
    """Every value (outside the op tables, whose header carries the tag) names a [tag] that the
    file's header comment defines, or [assumed]."""
    text = (HWCONFIG_DIR / f"{name}.toml").read_text().splitlines()
    header = []
    for line in text:
        if not line.startswith("#"):
            break
        header.append(line)
    defined = set(_TAG.findall("\n".join(header)))
    assert "assumed" in defined
    section = ""
    for line in text:
        s = line.strip()
        if s.startswith("["):
            section = s.split("]")[0].strip("[")
            continue
        if not s or s.startswith("#") or "=" not in s or not section:
            continue
        if section.startswith("asic.") or section == "refresh":
            continue  # op tables: tagged on the table header line
        key = s.split("=")[0].strip()
        if (section, key) in {("pim", "enabled"), ("organization", "standard"), ("energy", "table")}:
            continue
        _, _, comment = s.partition("#")
        tags = _TAG.findall(comment)
        assert tags, f"{name}: [{section}] {key} has no source tag"
        assert set(tags) <= defined, f"{name}: [{section}] {key} cites undefined {tags}"


def test_pim_gpt_derived_sizes():
    cfg = load_config("pim-gpt")
    o = cfg.org
    assert (o.channels, o.bankgroups, o.banks_per_group) == (8, 4, 4)
    assert o.banks == 16
    assert o.row_bytes == 2048
    assert o.channel_bytes == 16 * 16384 * 2048
    assert o.capacity_bytes == 8 * 16 * 16384 * 2048 == 4 * GiB
    assert channel_ids(cfg) == list(range(8))
    assert cfg.pim.enabled and cfg.pim.mac_lanes_per_bank == 16 and cfg.pim.data_type == "bf16"
    assert cfg.pim.global_buffer_bytes == 2048
    assert cfg.asic.clock_mhz == 1000.0
    assert cfg.link.bytes_per_cyc == 32
    # same AiM timing set as aim-gddr6
    assert cfg.timing == load_config("aim-gddr6").timing
    assert cfg.timing.nRCDRDMAC == 56 and cfg.tCK_ps == 500


def test_aim_gddr6_derived_sizes():
    cfg = load_config("aim-gddr6")
    assert cfg.org.capacity_bytes == 32 * 16 * 16384 * 2048 == 16 * GiB
    assert channel_ids(cfg) == list(range(32))


def test_gddr6_is_plain_dram():
    cfg = load_config("gddr6")
    assert not cfg.pim.enabled
    assert cfg.tCK_ps == 570
    assert cfg.org.row_bytes == 2048 and cfg.org.banks == 16
    assert cfg.org.capacity_bytes == 4 * GiB
    assert not PIM_TIMING & set(cfg.timing.cycles)
    assert (cfg.timing.nRCDRD, cfg.timing.nRFC, cfg.timing.nREFI) == (27, 211, 3333)
    t = build_tables(cfg)
    assert t.cmd_tab[cmd_id("MAC_AB"), CT_ENABLED] == 0
    assert t.cmd_tab[cmd_id("RD"), CT_ENABLED] == 1


def test_hbm_pim_organisation():
    cfg = load_config("hbm-pim")
    assert cfg.org.channels == 16 and channel_ids(cfg) == list(range(16))
    assert cfg.org.banks == 16
    assert cfg.org.row_bytes == 1024
    assert cfg.org.capacity_bytes == 16 * 16 * 16384 * 1024 == 4 * GiB
    assert cfg.pim.banks_per_pim_unit == 2
    assert cfg.pim.mac_lanes_per_bank == 16
    assert cfg.pim.data_type == "fp16"
    assert cfg.pim.global_buffer_bytes == 256
    assert cfg.timing.nCCDL == 4 and cfg.timing.nRC == 47 and cfg.timing.nRFC == 350
    assert cfg.timing.nRCDRDMAC == cfg.timing.nRCDRD
    t = build_tables(cfg)
    assert t.cmd_tab[cmd_id("MAC_AB"), CT_ENABLED] == 1


def test_channel_ids_follow_a_sparse_mask():
    cfg = load_config("pim-gpt")
    sparse = cfg.replace(org=dataclasses.replace(cfg.org, channels=4, channel_mask=0b1010_0101))
    assert channel_ids(sparse) == [0, 2, 5, 7]
    all_ch = cfg.replace(org=dataclasses.replace(cfg.org, channel_mask=0))
    assert channel_ids(all_ch) == list(range(8))


def test_refresh_override():
    assert load_config("pim-gpt").refresh.enabled
    assert not load_config("pim-gpt", refresh=False).refresh.enabled


def test_replace_revalidates():
    cfg = load_config("pim-gpt")
    with pytest.raises(ConfigError, match="channel_mask"):
        cfg.replace(org=dataclasses.replace(cfg.org, channels=4))


def test_nonzero_minimum_zero_is_allowed(tmp_path):
    """nCWL may be 0 (its minimum is 0), unlike nRCDRD."""
    path = write_config(tmp_path, "cwl-zero", lambda d: d["timing"].update(nCWL=0))
    assert load_config(path).timing.nCWL == 0


# ---------------------------------------------------------------- validation errors


def test_error_unknown_top_level_key(tmp_path):
    path = write_config(tmp_path, "bad-top-key", lambda d: d.update(colour="red"))
    expect_error(path, "unknown top-level key", "colour")


def test_error_unknown_key_in_organization(tmp_path):
    path = write_config(tmp_path, "bad-org-key", lambda d: d["organization"].update(ranks=2))
    expect_error(path, "[organization]", "ranks")


def test_error_unknown_timing_name(tmp_path):
    path = write_config(tmp_path, "bad-timing-name", lambda d: d["timing"].update(nFOO=3))
    expect_error(path, "[timing]", "nFOO")


def test_error_missing_section(tmp_path):
    path = write_config(tmp_path, "no-link", lambda d: d.pop("link"))
    expect_error(path, "missing section", "[link]")


def test_error_missing_timing_value(tmp_path):
    path = write_config(tmp_path, "no-nfaw", lambda d: d["timing"].pop("nFAW"))
    expect_error(path, "[timing]", "missing", "nFAW")


def test_error_missing_pim_timing_only_when_pim_enabled(tmp_path):
    path = write_config(tmp_path, "no-macacc", lambda d: d["timing"].pop("nMACACC"))
    expect_error(path, "[timing]", "nMACACC")

    def disable_pim(d):
        d["timing"].pop("nMACACC")
        d["pim"]["enabled"] = False

    assert not load_config(write_config(tmp_path, "no-pim", disable_pim)).pim.enabled


def test_error_negative_timing(tmp_path):
    path = write_config(tmp_path, "negative-nrp", lambda d: d["timing"].update(nRP=-3))
    expect_error(path, "[timing]", "nRP", "-3")


def test_error_zero_timing_where_one_is_the_minimum(tmp_path):
    path = write_config(tmp_path, "zero-nrcdrd", lambda d: d["timing"].update(nRCDRD=0))
    expect_error(path, "[timing]", "nRCDRD", "at least 1")


def test_error_nras_greater_than_nrc(tmp_path):
    path = write_config(tmp_path, "nras-gt-nrc", lambda d: d["timing"].update(nRAS=90, nRC=89))
    expect_error(path, "[timing]", "nRAS", "nRC")


def test_error_channel_mask_popcount_differs_from_channels(tmp_path):
    path = write_config(tmp_path, "bad-mask",
                        lambda d: d["organization"].update(channels=32, channel_mask=0xffff))
    expect_error(path, "[organization]", "channel_mask", "channels = 32")


@pytest.mark.parametrize(
    "section,key,value",
    [("organization", "rows", "16384"), ("timing", "nRP", "32"), ("timing", "tCK_ps", "1000"),
     ("link", "bytes_per_cyc", "32"), ("pim", "enabled", "yes")],
)
def test_error_wrong_type(tmp_path, section, key, value):
    path = write_config(tmp_path, f"bad-type-{key}", lambda d: d[section].update({key: value}))
    expect_error(path, f"[{section}]", key, repr(value))


def test_error_unknown_asic_op(tmp_path):
    path = write_config(tmp_path, "bad-asic-op",
                        lambda d: d["asic"]["op_latency_cyc"].update(matmul=3))
    expect_error(path, "asic.op_latency_cyc", "matmul")


def test_error_missing_asic_op(tmp_path):
    path = write_config(tmp_path, "missing-asic-op", lambda d: d["asic"]["op_passes"].pop("gelu"))
    expect_error(path, "asic.op_passes", "gelu")


def test_error_banks_per_pim_unit_does_not_divide_banks(tmp_path):
    path = write_config(tmp_path, "bad-pim-unit",
                        lambda d: d["pim"].update(banks_per_pim_unit=3))
    expect_error(path, "[pim]", "banks_per_pim_unit", "16 banks")


def test_error_unknown_config_name_lists_shipped_names():
    with pytest.raises(ConfigError) as exc:
        load_config("no-such-config")
    msg = str(exc.value)
    assert "no-such-config" in msg
    for name in SHIPPED:
        assert name in msg


def test_error_invalid_toml(tmp_path):
    path = tmp_path / "broken.toml"
    path.write_text((HWCONFIG_DIR / "aim-gddr6.toml").read_text() + "\nnRP = = 3\n")
    expect_error(path, "not valid TOML")


def test_error_section_that_is_not_a_table(tmp_path):
    path = write_config(tmp_path, "refresh-scalar", lambda d: d.update(refresh=True))
    expect_error(path, "[refresh]", "table")


def test_error_name_not_a_string(tmp_path):
    path = write_config(tmp_path, "name-int", lambda d: d.update(name=3))
    expect_error(path, "name")


def test_error_bool_asic_op_value(tmp_path):
    path = write_config(tmp_path, "bool-op", lambda d: d["asic"]["op_passes"].update(gelu=True))
    expect_error(path, "asic.op_passes", "gelu")


def test_config_from_dict_names_its_source():
    data = base_data()
    data["organization"]["ranks"] = 2
    with pytest.raises(ConfigError, match=r"^my-source: .*ranks"):
        config_from_dict(data, source="my-source")
