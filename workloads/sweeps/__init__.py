"""Design-space sweeps (``pimsim sweep SPEC.toml``): what a sweep is and how its TOML spec
expands into points (``spec``), running the points locally or on Dask (``run``), the SQLite
store of results (``store``), and what the results say (``analysis``: scaling, Pareto fronts,
summary). Charts are in :mod:`workloads.plots`; the library entry point is
:func:`workloads.session.sweep`.
"""

from workloads.sweeps.analysis import SweepResult, json_rows, pareto_fronts, scaling_table, summary
from workloads.sweeps.run import run_point, run_sweep, stored_result
from workloads.sweeps.spec import (
    PARAMS,
    Point,
    PointError,
    Spec,
    SpecError,
    apply_params,
    canonical_hw,
    config_to_dict,
    load_spec,
    spec_from_dict,
)

__all__ = ["PARAMS", "Point", "PointError", "Spec", "SpecError", "SweepResult", "apply_params",
           "canonical_hw", "config_to_dict", "json_rows", "load_spec", "pareto_fronts",
           "run_point", "run_sweep", "scaling_table", "spec_from_dict", "stored_result",
           "summary"]
