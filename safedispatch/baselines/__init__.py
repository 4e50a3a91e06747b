"""Baselines behind one controller interface: no control, Volt-VAr droop (IEEE 1547-2018),
the centralized snapshot OPF, the snapshot MIP and ADMM over zones.

Every baseline is a :class:`Controller` (``act(snapshot) -> Action``) so evaluation code is
shared with trained policies.
"""

from safedispatch.baselines.admm import (
           ADMMResult,
           ADMMStatus,
           SerialExecutor,
           ThreadExecutor,
           ZonalADMM,
           ZoneExecutor,
           solve_admm,
           subtree_zones,
)
from safedispatch.baselines.controller import Controller, NoControl
from safedispatch.baselines.droop import CATEGORY_B_DEFAULT, VoltVarCurve, VoltVarDroop
from safedispatch.baselines.mip import MIPResult, MIPStatus, SnapshotMIP, solve_mip
from safedispatch.baselines.opf import OPFController, OPFResult, OPFStatus, SnapshotOPF, solve_opf
from safedispatch.problems.opf import PAPER_B_WEIGHTS, OPFWeights

__all__ = ["CATEGORY_B_DEFAULT", "PAPER_B_WEIGHTS", "ADMMResult", "ADMMStatus", "Controller", "MIPResult", "MIPStatus",
           "NoControl", "OPFController", "OPFResult", "OPFStatus", "OPFWeights", "SerialExecutor", "SnapshotMIP",
           "SnapshotOPF", "ThreadExecutor", "VoltVarCurve", "VoltVarDroop", "ZonalADMM", "ZoneExecutor", "solve_admm",
           "solve_mip", "solve_opf", "subtree_zones"]
