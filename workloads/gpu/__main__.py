"""``python -m workloads.gpu``: the GPU baselines' command line (:mod:`workloads.gpu.cli`)."""

import sys

from workloads.gpu.cli import main

sys.exit(main())
