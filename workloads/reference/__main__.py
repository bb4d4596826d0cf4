"""``python -m workloads.reference``: save a PyTorch reference run
(:mod:`workloads.reference.pytorch`)."""

from workloads.reference.pytorch import main

main()
