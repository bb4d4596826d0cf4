"""The link between an xPU (a GPU) and its PIM devices: bandwidth, latency and energy per bit.

A transfer of ``n`` bytes occupies the link (one direction; the link is full duplex) for
``n / bandwidth`` and arrives ``latency`` after its last byte left; transfers in one direction
queue on the link in the order they are issued (the contention model: one xPU port shared by
every PIM device behind it). Energy: ``pj_per_bit x 8`` per byte.

Presets (``--link``):

* ``pcie5`` -- PCIe 5.0 x16: 32 GT/s x 16 lanes, 128b/130b encoding = 63.0 GB/s per direction
  (PCI-SIG PCIe 5.0 base specification); latency 2 x 30 ns (PCIe PHY + controller at each end,
  the CENT model's 30 ns, hardware reference section 6); 4.4 pJ/bit (CENT's PCIe energy per bit);
* ``pcie6`` -- PCIe 6.0 x16: 8 GB/s per lane per direction (64 GT/s PAM4, CENT's 8 GiB/s per
  lane) x 16 = 128 GiB/s; latency and energy as ``pcie5`` (CENT's PCIe 6.0 figures);
* ``cxl`` -- CXL 3.0 over PCIe 6.0 x16 through one switch (a memory pool, as CENT): 128 GiB/s;
  latency 2 x 25 ns CXL ports + 2 x 30 ns PHYs + 20 ns switch = 130 ns one way (CENT's path);
  4.4 pJ/bit per link, two links crossed = 8.8 pJ/bit;
* ``package`` -- HBM-PIM stacks on the GPU's package (AttAcc's placement): the stacks' own
  interface, 670.4 GB/s per HBM3 stack (AttAcc simulator ``src/config.py`` MEM_BW_PER_HBM,
  scale-snu/attacc_simulator commit c60005143a6b492d7ef83231723386478b59a506) x the PIM
  devices; energy 0.3 pJ/bit silicon interposer + 0.5 pJ/bit TSV (the same file's I/O table);
  latency [assumed] 20 ns (a controller and the interposer, no PHY serialisation).
"""

from __future__ import annotations

from dataclasses import dataclass

from pimsim.errors import UserError

GIB = float(1 << 30)


@dataclass(frozen=True)
class XpuLink:
    """One xPU <-> PIM link (per direction)."""

    name: str
    bytes_per_s: float
    latency_s: float
    pj_per_bit: float
    source: str

    def transfer_s(self, n_bytes: float) -> float:
        """Time the link is occupied by ``n_bytes`` (one direction), without the latency."""
        return n_bytes / self.bytes_per_s

    def energy_j(self, n_bytes: float) -> float:
        return n_bytes * 8 * self.pj_per_bit * 1e-12

    def describe(self) -> str:
        return (f"{self.name}: {self.bytes_per_s / 1e9:.1f} GB/s per direction, "
                f"{self.latency_s * 1e9:.0f} ns, {self.pj_per_bit:g} pJ/bit ({self.source})")


LINKS = ("pcie5", "pcie6", "cxl", "package")


def xpu_link(name: str, pim_devices: int = 1) -> XpuLink:
    """The link preset ``name`` (:data:`LINKS`); ``package`` scales with the PIM devices (one
    HBM stack interface each)."""
    if name == "pcie5":
        return XpuLink("pcie5", 32e9 * 16 * 128 / 130 / 8, 60e-9, 4.4,
                       "PCIe 5.0 x16; latency and pJ/bit: CENT's PCIe figures")
    if name == "pcie6":
        return XpuLink("pcie6", 16 * 8 * GIB, 60e-9, 4.4, "PCIe 6.0 x16 as in CENT")
    if name == "cxl":
        return XpuLink("cxl", 16 * 8 * GIB, 2 * 25e-9 + 2 * 30e-9 + 20e-9, 8.8,
                       "CXL 3.0 over PCIe 6.0 x16 through a switch, CENT's path")
    if name == "package":
        return XpuLink("package", 670.4e9 * pim_devices, 20e-9, 0.8,
                       f"on-package HBM3 interface x {pim_devices}, AttAcc's I/O energies; "
                       "latency assumed")
    raise UserError(f"xPU link {name!r} is not known", f"use one of {', '.join(LINKS)}")
