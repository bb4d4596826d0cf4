"""Systems of several PIM devices: the ``[system]`` section and the cost of collectives.

A system is ``devices`` identical PIM devices (each the config's device) on the interconnect of
:mod:`pimsim.interconnect`, split into ``pp`` pipeline stages of ``tp`` tensor-parallel devices
(``tp x pp = devices``, vLLM's names). Host-side work (the ASIC ops) runs on an ASIC in every
device (``host = "per-device"``, as CENT's near-memory units), so the devices of a stage exchange
only the collectives the program names:

* ``all_reduce`` of a row-parallel product's partial sums over the stage's ``tp`` devices
  (reduce-scatter, the adds on each device's ASIC, all-gather); ``broadcast`` from the first
  device when it computed the whole product (attention kept on one device);
* ``gather`` of the devices' shares of the logits on the stage's first device;
* between stages, each device of a stage sends the activations to its partner of the next
  stage (disjoint ports: the sends go in parallel), and the sampled token returns to stage 0.

A collective's time is the fabric's (ports, flits, latencies, contention, multicast) on a fresh
fabric of the group, converted to DRAM command cycles (rounded up); it does not depend on the
position, so it is computed once per step.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from pimsim.errors import ConfigError
from pimsim.interconnect import Interconnect, interconnect_from_dict

HOSTS = ("per-device",)
_CONFIG_FIX = "set [system] devices, tp and pp with tp x pp = devices (or give two of them)"
ATTENTION = ("split", "one-device", "master")  # compiler.passes.lower.ATTENTION_SPLITS
GQA = ("native", "unrolled")
LOWERINGS = ("pimsim", "cent")  # [system] lowering (pimsim.cent_ops)
PLACEMENTS = ("dense", "cent")  # [system] placement (pimsim.cent_ops.cent_part_slots)
HOST_LINES = ("stage", "device")  # [system] host_lines (pimsim.decode)
TOKEN_BYTES = 4  # a sampled token id, returned from the last stage to the first


class SystemError_(ConfigError):
    """An impossible system: devices, tp and pp that do not agree, or a bad [system] value."""

    default_fix = "give --devices N with --tp T and --pp P such that T x P = N"


@dataclass(frozen=True)
class System:
    """How many devices, how they split the model, the fabric between them."""

    devices: int = 1
    tp: int = 1
    pp: int = 1
    host: str = "per-device"
    interconnect: Interconnect = field(default_factory=Interconnect)
    # tensor parallelism: attention split by heads, "one-device", or "master" (CENT's mapping:
    # every product split by rows, broadcast from and gathered on the first device, which holds
    # the whole attention; compiler.passes.partition)
    attention: str = "split"
    # the host's time per generated token after the argmax (sampling on the host CPU), a step
    # of the program's last stage; CENT: top-k on the CPU, 0.15 ms (Yufeng98/CENT@9b4165f
    # cent_simulation/utils.py, InOut_latency); 0: none
    host_sample_ns: float = 0.0
    # pipeline stages smaller than a device (CENT's several transformer blocks per device,
    # run_sim.py: channels_per_block = 32 // blocks_per_device): tp 1 and more stages than
    # devices put ceil(pp / devices) stages on each device, each on channels // that many of
    # its channels (derived, :func:`resolve`); ``device_channels`` keeps the whole device's
    # count while a config's channels are one stage's (:func:`apply_system`)
    stages_per_device: int = 1
    device_channels: int = 0
    # grouped-query attention: "native" (a KV head stored once, its rows read once for its
    # group of query heads) or "unrolled" (CENT's, TransformerBlock.py n_repeat: each query
    # head reads its group's K/V on its own, as a cache of one KV head per query head)
    gqa: str = "native"
    # how a block's vector work and products are lowered: "pimsim" (norms, rotary embedding,
    # softmax and activation on the ASIC; a packed product's input written to the global
    # buffer once) or "cent" (CENT's trace generator, Yufeng98/CENT@9b4165f
    # cent_simulation/Llama.py trace_only: those ops' element-wise parts in the banks, with
    # their vectors written to and read back from the banks, and the input written to the
    # global buffer once per weight matrix of a pack; pimsim.cent_ops)
    lowering: str = "pimsim"
    # where a weight matrix's rows sit on the banks: "dense" (dealt over channels and banks,
    # a channel holding only the slots its rows fill) or "cent" (CENT's, with lowering =
    # "cent": every bank of every device holds ceil(rows / all banks) rows of each matrix of
    # a pack and every channel MACs them, Yufeng98/CENT@9b4165f cent_simulation/Llama.py
    # memory_mapping 1012-1068 and TransformerBlock.py Vector_Matrix_Mul_weight_pim_only_trace
    # 697-702; pimsim.cent_ops.cent_part_slots)
    placement: str = "dense"
    # whose host lines an in-bank step of CENT's lowering waits for, with stages smaller than a
    # device: "stage" (its own) or "device" (CENT's pipeline trace, one per device: the
    # device's blocks run each command at once, all its channels in the mask, and the host
    # writes every block's single-bank vector lines through the one DMA,
    # Yufeng98/CENT@9b4165f cent_simulation/TransformerBlock.py 1141-1204, ``for tb in
    # range(num_transformer_blocks_per_device)``)
    host_lines: str = "stage"
    # expert parallelism (vLLM's --enable-expert-parallel, pimsim.expert_parallel): the MoE
    # layers' experts placed whole over the ``ep`` devices of a stage's tensor-parallel group
    # (``ep == tp``: no data parallelism here), attention and dense layers still split; 1: the
    # experts split tensor-parallel like every other product
    ep: int = 1

    @property
    def multi(self) -> bool:
        return self.devices > 1


def resolve(devices: int | None, tp: int | None, pp: int | None,
            base: System | None = None, attention: str | None = None,
            where: str = "the config", ep: int | None = None,
            expert_parallel: bool = False) -> System:
    """The system asked for on the command line (``None``: from ``base``, the config's, named
    ``where`` in messages). The one rule for ``--devices / --tp / --pp``:

    * given only ``--devices N``, the devices form one tensor-parallel group (``tp = N / pp``);
    * without ``--devices``, a config of several devices keeps its count: ``--tp`` and ``--pp``
      (the one not given: the config's) must multiply to it, else a SystemError naming both
      numbers; a single-device config grows to ``tp x pp`` devices.

    ``expert_parallel`` (``--enable-expert-parallel``) or ``ep`` (``--ep N``, the explicit size):
    the experts placed whole over the tensor-parallel group (:func:`with_expert_parallel`)."""
    base = base or System()
    if ep is not None or expert_parallel:
        if ep is not None and devices is None and tp is None and base.devices == 1:
            tp = ep  # --ep N alone: N devices, one tensor-parallel group
        return with_expert_parallel(resolve(devices, tp, pp, base, attention, where), ep)
    if attention is not None:
        if attention not in ATTENTION:
            raise SystemError_(f"--tp-attention {attention!r} is not known",
                               f"use one of {', '.join(ATTENTION)}")
        base = dataclasses.replace(base, attention=attention)
    for flag, v in (("--devices", devices), ("--tp", tp), ("--pp", pp)):
        if v is not None and (not isinstance(v, int) or isinstance(v, bool) or not 1 <= v <= 4096):
            raise SystemError_(f"{flag} {v!r} must be a whole number of devices in 1..4096")
    if devices is None and tp is None and pp is None:
        return base
    if devices is not None and pp is not None and pp > devices and tp in (None, 1):
        return _sub_device(devices, pp, base)
    if devices is None and base.devices > 1:  # the config's device count stays
        return _keep_devices(tp, pp, base, where)
    pp_ = pp if pp is not None else (1 if devices is not None or tp is not None else base.pp)
    if devices is None:
        tp_ = tp if tp is not None else 1
        devices = tp_ * pp_
    elif tp is None:
        if devices % pp_:
            raise SystemError_(f"--devices {devices} is not a multiple of --pp {pp_}",
                               f"give --devices as a multiple of {pp_}")
        tp_ = devices // pp_
    else:
        tp_ = tp
    if tp_ * pp_ != devices:
        raise SystemError_(f"--tp {tp_} x --pp {pp_} = {tp_ * pp_} devices, but --devices is "
                           f"{devices}", f"make T x P = {devices}")
    return dataclasses.replace(base, devices=devices, tp=tp_, pp=pp_, stages_per_device=1)


def with_expert_parallel(sysm: System, ep: int | None = None) -> System:
    """``sysm`` with its experts placed whole over each stage's tensor-parallel group (vLLM's
    ``--enable-expert-parallel``: EP size = TP size x DP size, DP 1 here); ``ep``, the size given
    (``--ep N``), must be that group's size. A SystemError naming the fix otherwise."""
    if ep is not None and (not isinstance(ep, int) or isinstance(ep, bool) or not 1 <= ep <= 4096):
        raise SystemError_(f"--ep {ep!r} must be a whole number of devices in 1..4096",
                           "give --ep N with N the tensor-parallel devices (--tp)")
    size = sysm.tp if ep is None else ep
    if size != sysm.tp:
        what = (f"does not divide the {sysm.devices} devices" if sysm.devices % size
                else f"is not the tensor-parallel size {sysm.tp} ({sysm.devices} devices, "
                     f"tp {sysm.tp} x pp {sysm.pp})")
        raise SystemError_(f"--ep {size} {what}: the experts are placed over the tensor-parallel "
                           f"devices (EP size = TP size, no data parallelism)",
                           f"use --ep {sysm.tp} or --enable-expert-parallel (or --tp {size} "
                           f"--devices {size * sysm.pp})")
    if sysm.stages_per_device > 1:
        raise SystemError_("expert parallelism with several pipeline stages per device",
                           "give --devices at least --pp, or drop --ep")
    return dataclasses.replace(sysm, ep=size)


def _keep_devices(tp: int | None, pp: int | None, base: System, where: str) -> System:
    """``--tp`` / ``--pp`` without ``--devices`` on a config of several devices."""
    n = base.devices
    tp_ = tp if tp is not None else base.tp
    pp_ = pp if pp is not None else base.pp
    if tp_ == 1 and pp_ > n:
        return _sub_device(n, pp_, base)
    if tp_ * pp_ != n:
        def flag(name: str, v: int, given: int | None) -> str:
            return f"--{name} {v}" if given is not None else f"{name} {v} (the config's)"

        if tp is not None and pp is None and n % tp == 0:
            fix = f"add --pp {n // tp} ({tp} x {n // tp} = {n})"
        elif pp is not None and tp is None and n % pp == 0:
            fix = f"add --tp {n // pp} ({n // pp} x {pp} = {n})"
        else:
            fix = f"give --tp T and --pp P with T x P = {n}"
        raise SystemError_(f"{flag('tp', tp_, tp)} x {flag('pp', pp_, pp)} = {tp_ * pp_} devices, "
                           f"but {where} has {n} devices",
                           f"{fix}, or --devices {tp_ * pp_} for a system of that size")
    return dataclasses.replace(base, devices=n, tp=tp_, pp=pp_, stages_per_device=1)


def _sub_device(devices: int, pp: int, base: System) -> System:
    """``pp`` stages (tp 1) on ``devices`` devices, several stages per device (CENT's pipeline:
    run_sim.py, blocks_per_device = ceil(blocks / devices)); every device but possibly the last
    holds the same number of stages (the last ones may hold fewer or none, as CENT's
    Llama2-70B: 80 stages, 3 per device, on 27 of 32 devices)."""
    k = -(-pp // devices)  # the last devices may hold fewer stages or none (as CENT's)
    return dataclasses.replace(base, devices=devices, tp=1, pp=pp, stages_per_device=k)


def apply_system(cfg: Any, sysm: System) -> Any:
    """``cfg`` with the system ``sysm``; with several stages per device, each stage's device is
    the device's channels divided among its stages (CENT: ``channels_per_block = 32 //
    blocks_per_device``), so ``cfg``'s organisation becomes one stage's."""
    full = cfg.system.device_channels or cfg.org.channels
    if sysm.stages_per_device > 1:
        ch = full // sysm.stages_per_device
        if ch < 1:
            raise SystemError_(f"{sysm.stages_per_device} pipeline stages per device on "
                               f"{full} channels leave a stage no channel",
                               f"use at most {full} stages per device (more --devices)")
        sysm = dataclasses.replace(sysm, device_channels=full)
    else:
        ch = full
        sysm = dataclasses.replace(sysm, device_channels=0)
    org = cfg.org if ch == cfg.org.channels else \
        dataclasses.replace(cfg.org, channels=ch, channel_mask=0)
    return dataclasses.replace(cfg, system=sysm, org=org)


def _choice(sec: dict[str, Any], key: str, choices: tuple[str, ...], where: str) -> str:
    """``[system] key`` popped from ``sec`` (default: the first of ``choices``), or a
    SystemError naming the choices."""
    v = sec.pop(key, choices[0])
    if v not in choices:
        raise SystemError_(f"{where}: [system] {key} = {v!r} is not known",
                           f"use one of {', '.join(choices)}")
    return v


def system_from_dict(sec: dict[str, Any] | None, ic: dict[str, Any] | None,
                     where: str) -> System:
    """Validated :class:`System` from the ``[system]`` and ``[interconnect]`` tables."""
    sec = dict(sec or {})
    known = {"devices", "tp", "pp", "host", "attention", "host_sample_ns", "gqa", "lowering",
             "placement", "host_lines"}
    for k in sec:
        if k not in known:
            raise SystemError_(f"{where}: [system] unknown key {k!r}",
                               f"use one of {', '.join(sorted(known))}")
    attention = _choice(sec, "attention", ATTENTION, where)
    sample = sec.pop("host_sample_ns", 0.0)
    if isinstance(sample, bool) or not isinstance(sample, (int, float)) or \
            not 0 <= sample < 1e9:
        raise SystemError_(f"{where}: [system] host_sample_ns = {sample!r} must be a number of "
                           f"nanoseconds in 0..1e9",
                           "give the host's sampling time per token, e.g. 150000.0 (0: none)")
    gqa = _choice(sec, "gqa", GQA, where)
    lowering = _choice(sec, "lowering", LOWERINGS, where)
    placement = _choice(sec, "placement", PLACEMENTS, where)
    host_lines = _choice(sec, "host_lines", HOST_LINES, where)
    if placement == "cent" and lowering != "cent":
        raise SystemError_(f"{where}: [system] placement = \"cent\" pads each matrix of a "
                           f"product as CENT's lowering issues it, but lowering = {lowering!r}",
                           'set lowering = "cent" with it, or placement = "dense"')
    host = sec.pop("host", "per-device")
    if host not in HOSTS:
        raise SystemError_(f"{where}: [system] host = {host!r} is not supported",
                           'use host = "per-device" (an ASIC in every device)')
    for k in ("devices", "tp", "pp"):
        v = sec.get(k)
        if v is not None and (not isinstance(v, int) or isinstance(v, bool) or not 1 <= v <= 4096):
            raise SystemError_(f"{where}: [system] {k} = {v!r} must be a whole number in 1..4096",
                               _CONFIG_FIX)
    try:
        s = resolve(sec.get("devices"), sec.get("tp"), sec.get("pp"))
    except SystemError_ as e:
        got = ", ".join(f"{k} = {sec[k]}" for k in ("devices", "tp", "pp") if k in sec)
        raise SystemError_(f"{where}: [system] {got} do not agree ({str(e).split('; ')[0]})",
                           _CONFIG_FIX) from None
    return System(devices=s.devices, tp=s.tp, pp=s.pp, host=host,
                  stages_per_device=s.stages_per_device,
                  interconnect=interconnect_from_dict(ic or {}, where), attention=attention,
                  host_sample_ns=float(sample), gqa=gqa, lowering=lowering,
                  placement=placement, host_lines=host_lines)


# ---------------------------------------------------------------- collective costs


@dataclass(frozen=True)
class CommCost:
    ns: float
    wire_bits: int  # bits x links crossed (energy: x pj_per_bit)

    def cycles(self, tck_ps: int) -> int:
        return math.ceil(self.ns * 1000.0 / tck_ps - 1e-9) if self.ns > 0 else 0


def collective(ic: Interconnect, op: str, n_devices: int, n_bytes: int,
               reduce_ns: float = 0.0) -> CommCost:
    """Time and wire bits of one collective over ``n_devices`` devices of one fabric.

    ``all_reduce``: ``n_bytes`` per device reduced and returned to all; ``gather``: every
    device's ``n_bytes`` to device 0; ``send``: ``n_bytes`` from one device to another.

    Closed form of the fabric's transfers (:class:`pimsim.interconnect.Fabric`) on a fresh
    fabric, all data ready at 0: a gather or a broadcast without multicast is ``N - 1`` transfers
    one after another on one port; a multicast broadcast is one transmission; an all-reduce's
    reduce-scatter (and its all-gather without multicast) is ``N - 1`` rounds in which every port
    is busy once, so every round starts when the previous ended; its multicast all-gather is
    ``N`` multicasts one after another, the first when the reduced shares are ready. The
    serialisation times are summed one by one, in the fabric's order, so the result is the
    transfer-by-transfer simulation's to the last bit (tests hold them equal) in ``O(N)`` float
    additions instead of ``O(N^2)`` transfers."""
    if n_devices <= 1 and op != "send":
        return CommCost(0.0, 0)
    n = n_devices
    if op == "send":
        if n_bytes <= 0:
            return CommCost(0.0, 0)
        return CommCost(0.0 + ic.serialise_ns(n_bytes) + ic.latency_ns(),
                        ic.wire_bytes(n_bytes) * 8 * 2)
    if op in ("gather", "broadcast"):
        if n_bytes <= 0:
            return CommCost(0.0, 0)
        if op == "broadcast" and ic.multicast and n > 2:  # one transmission to N - 1 receivers
            return CommCost(0.0 + ic.serialise_ns(n_bytes, multicast=True)
                            + ic.latency_ns(multicast=True), ic.wire_bytes(n_bytes) * 8 * n)
        # N - 1 unicasts queued on the sender's (broadcast) or the receiver's (gather) port
        t = _serial_sum(0.0, ic.serialise_ns(n_bytes), n - 1)
        return CommCost(t + ic.latency_ns(), ic.wire_bytes(n_bytes) * 8 * 2 * (n - 1))
    if op != "all_reduce":
        raise ValueError(f"collective {op!r} unknown")
    share = math.ceil(n_bytes / n)  # bytes of one device's share (both phases)
    if share <= 0:
        return CommCost(0.0 + reduce_ns, 0)
    ser = ic.serialise_ns(share)
    # reduce-scatter: N - 1 contention-free rounds of N unicasts; every round starts together
    t = _serial_sum(0.0, ser, n - 1) + ic.latency_ns() + reduce_ns
    if ic.multicast and n > 2:  # all-gather: N multicasts, each waits for the previous one
        t_end = _serial_sum(t, ic.serialise_ns(share, multicast=True), n)
        return CommCost(t_end + ic.latency_ns(multicast=True),
                        2 * n * (n - 1) * ic.wire_bytes(share) * 8 + n * ic.wire_bytes(share) * 8 * n)
    t_end = _serial_sum(t, ser, n - 1)
    return CommCost(t_end + ic.latency_ns(), 2 * n * (n - 1) * ic.wire_bytes(share) * 8 * 2)


def _serial_sum(start_ns: float, step_ns: float, k: int) -> float:
    """``start_ns`` plus ``k`` times ``step_ns``, added one at a time as transfers queued on a
    port end one after another (the same floating-point roundings as the fabric's)."""
    t = start_ns
    for _ in range(k):
        t += step_ns
    return t
