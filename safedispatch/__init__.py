"""safedispatch: safe control of active distribution networks.

The public names are listed in ``__all__``; see README.md for a tour.
"""

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

__version__ = "0.1.0"

__all__ = [
    "BackendUnavailableError", "Feeder", "InfeasibleError", "InputError", "NetworkDataError", "PowerFlowResult",
    "SafeDispatchError", "SolverError", "from_pandapower", "list_cases", "load_case", "run_powerflow",
    "to_pandapower",
]
