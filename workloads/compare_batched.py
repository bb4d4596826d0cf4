"""PIM vs GPU at several batch sizes: tokens/s and mJ/token per batch, and the crossover batch.

What ``pimsim compare MODEL --batch 1,16,64,256`` computes. One decode step of a batch of ``B``
sequences, every sequence generating the token at the same position (the mean position of the
batch-1 comparison, ``prompt - 1 + tokens // 2``):

* PIM: :func:`pim_batch_step` with the named PIM cost (``pim_cost``): ``"batched"`` (the
  default, :class:`workloads.serving.costs.PimBatchedCost`): one batched decode step of
  :mod:`pimsim.batch` of the ``B`` sequences, simulated (consecutive batched steps of at most the
  device's ``max_batch`` when the batch's KV regions do not fit at once); ``"serial"``
  (:class:`~workloads.serving.costs.PimSerialCost`): ``B`` batch-1 steps at that position (one
  simulation, memoised). The cost's label is ``pim_method`` in the table and JSON.
* GPU: :func:`workloads.gpu.model.predict_batch` on the preset with the shipped calibrations
  (weights read once per step, each sequence's KV; uncalibrated beyond batch 1 until a batched
  measurement is fitted), energy from the named power model (``util`` by default: fitted to the
  shipped measurement of that GPU where there is one; ``board`` when asked); ``gpu_power_source``
  says which (``fitted``, ``utilisation`` or ``board``).

Per row, ``pim_ms`` / ``gpu_ms`` are each sequence's time per token (one step of the batch),
``pim_j`` / ``gpu_j`` the energy per output token, ``*_tokens_per_s`` the batch's tokens/s. The
crossover batch of a model is the smallest batch where the GPU's tokens/s exceeds PIM's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from pimsim.config import HwConfig
from pimsim.errors import UserError
from pimsim.report import system_label
from workloads.serving.costs import PIM_BATCHED_LABEL, PIM_SERIAL_LABEL, PimSerialCost, check_pim_cost, pim_cost

__all__ = ["GPU_POWER_MODELS", "PIM_BATCHED_LABEL", "PIM_SERIAL_LABEL", "BatchRow", "PimBatchStep",
           "batch_table", "compare_batches", "crossover", "crossover_lines",
           "gpu_kv_fits", "parse_batches", "pim_batch_step"]

GPU_POWER_MODELS = ("util", "board")


@dataclass
class BatchRow:
    model: str
    hw: str
    gpu: str
    batch: int
    position: int
    pim_ms: float            # each sequence's time per token: one step of the batch
    gpu_ms: float
    pim_j: float             # energy per output token
    gpu_j: float
    pim_tokens_per_s: float  # the batch's
    gpu_tokens_per_s: float
    speedup: float           # PIM tokens/s over the GPU's (= GPU ms / PIM ms)
    efficiency: float        # GPU J/token over PIM J/token
    pim_method: str = PIM_BATCHED_LABEL
    gpu_source: str = ""
    gpu_power: str = "util"
    gpu_power_source: str = ""  # "fitted", "utilisation" or "board" (GPUSpec.power_source)
    pim_kv_fits: bool = True  # the batch's KV cache fits the PIM system's KV capacity
    gpu_kv_fits: bool = True  # weights + the batch's KV + reserve fit the GPU memory
    pim_devices: int = 1      # the PIM system: devices (tp x pp)
    pim_tp: int = 1
    pim_pp: int = 1


@dataclass(frozen=True)
class PimBatchStep:
    """One PIM decode step of a batch: seconds, J per output token, the method's label, and
    whether the batch's KV cache fits the system."""

    step_s: float
    j_per_token: float
    method: str
    kv_fits: bool


def parse_batches(batches: Sequence[int] | str) -> list[int]:
    """Batch sizes, sorted and unique: positive ints (a string: comma-separated)."""
    fix = "give batch sizes >= 1, e.g. --batch 1,16,64,256"
    if isinstance(batches, str):
        try:
            batches = [int(x) for x in batches.split(",") if x.strip()]
        except ValueError:
            raise UserError(f"--batch {batches!r} is not a comma-separated list of integers",
                            fix) from None
    out = sorted(set(batches))
    if not out or any(not isinstance(b, int) or isinstance(b, bool) or b < 1 for b in out):
        raise UserError(f"batch sizes {list(batches)!r} must be integers >= 1", fix)
    return out


def pim_batch_step(cost: PimSerialCost, batch: int, pos: int) -> PimBatchStep:
    """A PIM decode step of ``batch`` sequences at ``pos`` priced by ``cost``: one batched step
    (:class:`~workloads.serving.costs.PimBatchedCost`) or ``B`` batch-1 steps one after another
    (:class:`PimSerialCost`); the label of the cost's decode step is the method."""
    st = cost.step([pos] * batch, [])
    if st.energy_j is None:
        raise UserError(f"{cost.cfg.name} has no [energy] table", "compare needs a config with one")
    fits = batch * (pos + 1) <= cost.kv_capacity_tokens
    return PimBatchStep(st.time_s, st.energy_j / batch, cost.decode_label, fits)


def gpu_kv_fits(spec: Any, shape: Any, batch: int, pos: int, tp: int) -> bool:
    """Whether the fp16 weights / tp, the batch's KV cache (its share per GPU) and the [assumed]
    reserve fit one GPU's memory (a preset without a capacity always fits)."""
    from workloads.gpu import model as gm
    from workloads.models.shape import FP16_BYTES

    if spec.mem_bytes <= 0:
        return True
    need = (shape.n_params * FP16_BYTES / tp + batch * gm.kv_bytes_read(shape, pos)
            * gm._kv_share(shape, tp) + spec.reserve_bytes)
    return need <= spec.mem_bytes


def compare_batches(models: list[str], cfg: HwConfig, gpu: str, batches: Sequence[int], *,
                    prompt: int = 1, tokens: int = 8, schedule: str = "serial",
                    cache: bool = False, show: bool = False, tp: int = 1,
                    power: str = "util", pim: str = "batched") -> list[BatchRow]:
    """One row per model and batch size (see the module docstring); the library entry point
    with its input checks is :func:`workloads.session.compare` (``batches=``)."""
    from workloads import comparison as C
    from workloads.compiling import compile_model
    from workloads.gpu import model as gm
    from workloads.gpu.shapes import shape_for
    from workloads.models import zoo
    from workloads.models.presets import PRESETS

    if power not in GPU_POWER_MODELS:
        raise UserError(f"GPU power model {power!r} is not known", "use util or board")
    if C._is_file_arg(gpu):
        raise UserError(f"--batch needs a modelled GPU, not the batch-1 measurement {gpu!r}",
                        "give a GPU name (T4, A100, H100, H200)")
    batches = parse_batches(batches)
    check_pim_cost(pim)
    if cfg.system.pp > 1:
        raise UserError(f"compare --batch on {cfg.system.pp} pipeline stages is not modelled "
                        "(PIM sequences one after another would leave the stages idle)",
                        "compare batches on one stage (pp 1; --devices N with tp N is fine)")
    C.check_gpu(gpu, models)
    C._check_gpu_memory(gpu, models, tp)
    from workloads.gpu.calibration import serving_preset

    spec, note = serving_preset(gpu)
    where = f"{tp} x {spec.name}" if tp > 1 else spec.name
    pos = prompt - 1 + tokens // 2
    rows = []
    for m in models:
        c = compile_model(m, cfg, cache=cache, show_progress=show)
        pim_step = pim_cost(pim, c, cfg, schedule=schedule)
        shape = shape_for(m) if (m in PRESETS or m in zoo.NAMES) else C.gpu_shape(c.spec)
        gpos = min(pos, shape.n_ctx - 1)
        psrc = spec.power_source(shape, power)
        source = f"modelled {where} ({note}), power: {gm.POWER_SOURCE_LABELS[psrc]}"
        for b in batches:
            p = pim_batch_step(pim_step, b, pos)
            try:
                g = gm.predict_batch(spec, shape, b, gpos, power=power, tp=tp)
            except ValueError as e:
                raise UserError(f"GPU model: {e}", C._more_gpus_fix(spec, shape)) from None
            pim_ms = p.step_s * 1e3
            rows.append(BatchRow(
                model=m, hw=cfg.name, gpu=gpu, batch=b, position=pos, pim_ms=pim_ms,
                gpu_ms=g["ms"], pim_j=p.j_per_token, gpu_j=g["j_per_token"],
                pim_tokens_per_s=b / p.step_s, gpu_tokens_per_s=g["tokens_per_s"],
                speedup=g["ms"] / pim_ms, efficiency=g["j_per_token"] / p.j_per_token,
                pim_method=p.method, gpu_source=source, gpu_power=power, gpu_power_source=psrc,
                pim_kv_fits=p.kv_fits, gpu_kv_fits=gpu_kv_fits(spec, shape, b, gpos, tp),
                pim_devices=cfg.system.devices, pim_tp=cfg.system.tp, pim_pp=cfg.system.pp))
    return rows


def crossover(rows: list[BatchRow]) -> dict[str, int | None]:
    """Per model: the smallest batch whose GPU tokens/s exceeds PIM's (None: none up to the
    largest batch compared)."""
    out: dict[str, int | None] = {}
    for r in sorted(rows, key=lambda r: r.batch):
        out.setdefault(r.model, None)
        if out[r.model] is None and r.gpu_tokens_per_s > r.pim_tokens_per_s:
            out[r.model] = r.batch
    return out


def crossover_lines(rows: list[BatchRow]) -> list[str]:
    top = max((r.batch for r in rows), default=0)
    return [f"crossover {m}: " + (f"GPU tokens/s exceeds PIM's from batch {b}" if b is not None
                                  else f"none up to batch {top}")
            for m, b in crossover(rows).items()]


def batch_table(rows: list[BatchRow]) -> str:
    head = (f"{'model':<12} {'batch':>5} {'PIM tok/s':>11} {'GPU tok/s':>11} {'PIM ms/tok':>10} "
            f"{'GPU ms/tok':>10} {'PIM mJ/tok':>10} {'GPU mJ/tok':>10}")
    out = [head, "-" * len(head)]
    for r in rows:
        flag = ("" if r.pim_kv_fits else " (PIM KV exceeds capacity)") + \
            ("" if r.gpu_kv_fits else " (GPU KV exceeds memory)")
        out.append(f"{r.model:<12} {r.batch:5d} {r.pim_tokens_per_s:11,.0f} "
                   f"{r.gpu_tokens_per_s:11,.0f} {r.pim_ms:10.4f} {r.gpu_ms:10.4f} "
                   f"{r.pim_j * 1e3:10.4f} {r.gpu_j * 1e3:10.3f}{flag}")
    firsts: dict[str, BatchRow] = {}
    for r in rows:
        firsts.setdefault(r.model, r)  # each model's first row
    for r in firsts.values():  # one footer per model (its GPU source names its own power source)
        who = f"{r.model}: " if len(firsts) > 1 else ""
        out.append(f"{who}position {r.position}; PIM: "
                   f"{system_label(r.hw, r.pim_devices, r.pim_tp, r.pim_pp)}, {r.pim_method}; "
                   f"GPU: {r.gpu_source}")
    out.extend(crossover_lines(rows))
    return "\n".join(out)
