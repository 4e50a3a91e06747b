"""Fast batched radial AC power flow (numpy via numba, and torch), checked against pandapower."""

from safedispatch.powerflow.radial import PowerFlowResult, run_powerflow

__all__ = ["PowerFlowResult", "run_powerflow"]
