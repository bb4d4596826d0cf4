"""GPU baselines: what a GPU does per decoded token, measured and modelled.

The analytic model (numpy and the standard library only):

* :mod:`workloads.gpu.model` -- the decode model (bytes over memory bandwidth, per-kernel
  overhead, tensor parallelism over NVLink) at batch 1 and over a batch of decode sequences and
  prefill chunks (``predict_batch``, ``predict_prefill``), and the GPU presets (T4, A100, H100,
  H200);
* :mod:`workloads.gpu.shapes` -- the :class:`~workloads.models.shape.DecoderShape` of every zoo
  preset, read from its config arguments;
* :mod:`workloads.gpu.calibration` -- the fit of the model to the shipped measurements in
  ``data/`` (``gpu_measured_<gpu>.json``, ``gpu_measured_<gpu>_llama.json``);
* :mod:`workloads.gpu.batched_calibration` -- the fit of the batched model to a ``measure
  batched`` JSON, with the held-out error by batch size and prompt length;
* :mod:`workloads.gpu.tables` -- measured against modelled, and the zoo presets modelled (batch 1
  and batched).

The measured baselines (torch; run on a GPU machine, or ``--dry-run`` on a CPU):

* :mod:`workloads.gpu.decoders` -- the static-cache decoders captured as one CUDA graph (GPT and
  Llama-family);
* :mod:`workloads.gpu.baseline` -- GPT presets: eager and CUDA-graph decode, timing, board power,
  and the measurement helpers the other two reuse;
* :mod:`workloads.gpu.llama_shapes` -- the Llama-family shapes measured (no torch; decoder shapes
  of :mod:`workloads.models.shape`);
* :mod:`workloads.gpu.llama` -- Llama-family decode on one GPU, checked against transformers;
* :mod:`workloads.gpu.llama_tp` -- the same, tensor parallel over several GPUs of one host;
* :mod:`workloads.gpu.batched` -- Llama-family batched decode and prefill at every batch size.

:mod:`workloads.gpu.cli` is the one command line, ``python -m workloads.gpu predict`` /
``predict --batched FILE`` / ``measure gpt|llama|llama-tp|batched``. The models side
(:mod:`workloads.models.zoo`, the presets) does not import this package. Importing this
package imports neither torch nor the simulator.
"""
