"""Formulation-agnostic problem builders: the projection problem and model networks (zones)."""

from safedispatch.problems.types import Action, Snapshot, net_injection

__all__ = ["Action", "Snapshot", "net_injection"]
