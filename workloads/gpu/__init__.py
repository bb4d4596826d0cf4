"""GPU baselines: what a GPU does per decoded token, measured and modelled.

* :mod:`workloads.gpu.model` -- the analytic batch-1 decode model (memory bandwidth, per-kernel
  overhead, tensor parallelism over NVLink) with the GPU presets;
* :mod:`workloads.gpu.baseline` -- the measured GPT baseline (eager and CUDA-graph decode,
  timing and board power);
* :mod:`workloads.gpu.llama` -- the measured Llama-family baseline on one GPU;
* :mod:`workloads.gpu.llama_tp` -- the measured Llama-family baseline, tensor parallel over
  several GPUs of one host;
* ``data/`` -- the shipped measurements (``gpu_measured_<gpu>.json``,
  ``gpu_measured_<gpu>_llama.json``) the model is calibrated on.

Importing this package imports neither torch nor the simulator.
"""
