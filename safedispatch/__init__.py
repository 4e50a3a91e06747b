"""safedispatch: safe control of active distribution networks.

The public names are listed in ``__all__``; see README.md for a tour. The heavier parts load on
first use: ``sd.TorchSafetyLayer`` (torch), ``sd.baselines`` (pandapower's OPF, Pyomo),
``sd.envs``, ``sd.scenarios`` and ``sd.metrics``.
"""

import importlib

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
from safedispatch.safety import ProjectionResult, ProjectionStatus, SafetyLayer, project_action

__version__ = "0.1.0"

__all__ = [
    "Action", "BackendUnavailableError", "Feeder", "InfeasibleError", "InputError", "NetworkDataError",
    "PowerFlowResult", "ProjectionResult", "ProjectionStatus", "SafeDispatchError", "SafetyLayer", "Snapshot",
    "SolverError", "TorchSafetyLayer", "from_pandapower", "list_cases", "load_case", "net_injection",
    "project_action", "run_powerflow", "to_pandapower",
]

_LAZY_MODULES = ("baselines", "envs", "scenarios", "metrics")


def __getattr__(name: str):
    if name == "TorchSafetyLayer":
        from safedispatch.safety.torch_layer import TorchSafetyLayer

        return TorchSafetyLayer
    if name in _LAZY_MODULES:
        return importlib.import_module(f"safedispatch.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | {"TorchSafetyLayer", *_LAZY_MODULES})
