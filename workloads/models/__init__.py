"""The models the workloads run: the decoder-shape record (``shape``, every family's shape), the
GPT presets (``presets``, without torch), the reference decoder (``gpt``), the model zoo of
Hugging Face families (``zoo``), Hugging Face conversion and decode steps (``hf``,
``hf_decode``), ONNX / ``torch.export`` export
(``export``), the trained tiny preset (``train``), and how a model argument (a preset, an
``.onnx`` file, a folder or ``module:attribute``) becomes a model (``resolve``).

Importing this package imports nothing else: torch loads with the modules that need it.
"""
