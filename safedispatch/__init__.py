"""safedispatch: safe control of active distribution networks.

The public names are listed in ``__all__``; see README.md for a tour.
"""

from safedispatch import baselines  # noqa: F401  (sd.baselines.solve_opf, ...)
from safedispatch.errors import (
                                 BackendUnavailableError,
                                 InfeasibleError,
                                 InputError,
                                 NetworkDataError,
                                 SafeDispatchError,
                                 SolverError,
)
from safedispatch.network import Feeder, from_pandapower, list_cases, load_case, to_pandapower
from safedispatch.powerflow import PowerFlowResult, run_powerflow
from safedispatch.problems import Action, Snapshot, net_injection
from safedispatch.safety import ProjectionResult, ProjectionStatus, SafetyLayer, TorchSafetyLayer, project_action

__version__ = "0.1.0"

__all__ = [
    "Action", "BackendUnavailableError", "Feeder", "InfeasibleError", "InputError", "NetworkDataError",
    "PowerFlowResult", "ProjectionResult", "ProjectionStatus", "SafeDispatchError", "SafetyLayer", "Snapshot",
    "SolverError", "TorchSafetyLayer", "from_pandapower", "list_cases", "load_case", "net_injection",
    "project_action", "run_powerflow", "to_pandapower",
]
