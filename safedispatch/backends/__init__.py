"""Solver backends with one result type (:class:`SolveResult`, :class:`SolveStatus`).

Backends are imported lazily by the layers that use them; each declares what it supports.
"""

from safedispatch.backends.result import SolveResult, SolveStatus

__all__ = ["SolveResult", "SolveStatus"]
