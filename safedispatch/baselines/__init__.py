"""Baselines behind one controller interface: no control, Volt-VAr droop (IEEE 1547-2018),
the centralized snapshot OPF, the snapshot MIP and ADMM over zones.

Every baseline is a :class:`Controller` (``act(snapshot) -> Action``) so evaluation code is
shared with trained policies.
"""

from safedispatch.baselines.controller import Controller, NoControl
from safedispatch.baselines.droop import CATEGORY_B_DEFAULT, VoltVarCurve, VoltVarDroop

__all__ = ["CATEGORY_B_DEFAULT", "Controller", "NoControl", "VoltVarCurve", "VoltVarDroop"]
