"""One result type for every backend (linopy's habit, done right)."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

__all__ = ["SolveResult", "SolveStatus"]


class SolveStatus(IntEnum):
    """Outcome of one solve. Only OPTIMAL carries a trusted optimum; hitting a time or
    iteration limit without a certified point is never OPTIMAL."""

    OPTIMAL = 0
    OPTIMAL_INACCURATE = 1  # solver stopped at reduced accuracy; the caller checks feasibility
    INFEASIBLE = 2
    UNBOUNDED = 3
    LIMIT_REACHED = 4  # time or iteration limit
    NUMERICAL_ERROR = 5
    NOT_SOLVED = 6

    @property
    def has_solution(self) -> bool:
        return self in (SolveStatus.OPTIMAL, SolveStatus.OPTIMAL_INACCURATE)


@dataclass
class SolveResult:
    """What a backend returns.

    Attributes:
        status: The outcome.
        x: Variable values by name (numpy arrays; empty when there is no solution).
        objective: Objective value (nan-free: ``inf`` when there is none).
        solver: Name of the solver that produced the result (after any fallback).
        solve_time_s: Wall time of the solve call(s), seconds.
        iterations: Solver iterations (0 when unknown).
        info: Anything else (solvers tried, raw status strings, residuals).
    """

    status: SolveStatus
    x: dict = field(default_factory=dict)
    objective: float = float("inf")
    solver: str = ""
    solve_time_s: float = 0.0
    iterations: int = 0
    info: dict[str, Any] = field(default_factory=dict)
