"""Systems of an xPU (a GPU of the analytic model) beside PIM devices: attention-latency tables
for other simulators (:mod:`workloads.xpu.tables`), the link between the two
(:mod:`workloads.xpu.link`) and the serving step cost of the placements
(:mod:`workloads.xpu.cost`)."""
