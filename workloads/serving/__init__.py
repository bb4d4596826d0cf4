"""Serving: continuous batching of a request stream on a PIM system or a GPU.

A request stream (:mod:`~workloads.serving.requests`) goes through a vLLM-like continuous-batching
scheduler (:mod:`~workloads.serving.scheduler`) simulated in time; every scheduler step is priced
by a pluggable step cost (:mod:`~workloads.serving.costs`); the per-request latencies and the
summary use vLLM ``benchmark_serving``'s metric names (:mod:`~workloads.serving.metrics`).
:func:`workloads.session.serve` and ``pimsim serve`` put them together.
"""

from workloads.serving.costs import GpuModelCost, PimBatchedCost, PimSerialCost, StepCost, StepTime
from workloads.serving.metrics import ServeResult
from workloads.serving.requests import Request, load_jsonl, synthetic
from workloads.serving.scheduler import SchedulerConfig, simulate_serving

__all__ = ["GpuModelCost", "PimBatchedCost", "PimSerialCost", "Request", "SchedulerConfig", "ServeResult",
           "StepCost", "StepTime", "load_jsonl", "simulate_serving", "synthetic"]
