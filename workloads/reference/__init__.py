"""References the simulator's logits are validated against: the model in PyTorch, greedy decode
step by step (``pytorch``; ``python -m workloads.reference`` saves a run as ``.npz``), and an
``.onnx`` decode step in onnxruntime (``onnxruntime``).
"""
