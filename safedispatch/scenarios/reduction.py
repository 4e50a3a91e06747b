"""Scenario reduction by fast forward selection (Heitsch & Roemisch, "Scenario reduction
algorithms in stochastic programming", Comput. Optim. Appl. 24, 2003; Growe-Kuska, Heitsch &
Roemisch, "Scenario reduction and scenario tree construction for power management problems",
IEEE PowerTech 2003).

Greedy: starting from no scenario, repeatedly keep the scenario whose addition most reduces the
Kantorovich distance ``sum_i p_i min_{j kept} c(i, j)`` of the reduced distribution to the full
one (``c`` the Euclidean distance between scenario paths). The dropped scenarios' probabilities
go to their nearest kept scenario (the optimal redistribution for the kept set).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from safedispatch.errors import InputError

__all__ = ["ReducedScenarios", "forward_selection"]


@dataclass(frozen=True)
class ReducedScenarios:
    """Kept scenarios.

    Attributes:
        index: ``(n,)`` indices of the kept scenarios, in selection order.
        scenarios: ``(n, T)`` the kept paths.
        prob: ``(n,)`` their probabilities (sum 1).
        distance: Kantorovich distance of the reduced distribution to the full one.
    """

    index: np.ndarray
    scenarios: np.ndarray
    prob: np.ndarray
    distance: float


def forward_selection(scenarios: np.ndarray, n: int, prob=None) -> ReducedScenarios:
    """Reduce ``(S, T)`` scenarios to ``n`` by fast forward selection.

    Args:
        scenarios: ``(S, T)`` finite paths.
        n: Scenarios to keep, ``1 <= n <= S``.
        prob: ``(S,)`` probabilities (default uniform).

    Raises:
        InputError: wrong shape, non-finite values, bad ``n`` or ``prob``.
    """
    x = np.asarray(scenarios, float)
    if x.ndim != 2 or x.shape[0] == 0:
        raise InputError(f"expected a (S, T) array, got shape {x.shape}", "scenarios")
    if not np.isfinite(x).all():
        raise InputError("contains NaN or inf", "scenarios")
    S = x.shape[0]
    if not (isinstance(n, (int, np.integer)) and 1 <= n <= S):
        raise InputError(f"expected an integer in 1..{S}, got {n!r}", "n")
    p = np.full(S, 1.0 / S) if prob is None else np.asarray(prob, float)
    if p.shape != (S,) or not np.isfinite(p).all() or (p < 0).any() or abs(p.sum() - 1.0) > 1e-9:
        raise InputError(f"expected ({S},) probabilities >= 0 summing to 1", "prob")
    sq = (x * x).sum(axis=1)
    c = np.sqrt(np.maximum(sq[:, None] + sq[None, :] - 2.0 * x @ x.T, 0.0))
    np.fill_diagonal(c, 0.0)
    kept: list[int] = []
    near = np.full(S, np.inf)  # distance of each scenario to its nearest kept one
    for _ in range(n):
        cand = np.setdiff1d(np.arange(S), kept)
        # distance if candidate u were added: sum_i p_i min(near_i, c(i, u))
        total = (p[:, None] * np.minimum(near[:, None], c[:, cand])).sum(axis=0)
        u = int(cand[np.argmin(total)])
        kept.append(u)
        near = np.minimum(near, c[:, u])
    kept_arr = np.array(kept)
    owner = kept_arr[np.argmin(c[:, kept_arr], axis=1)]
    q = np.array([p[owner == k].sum() for k in kept_arr])
    return ReducedScenarios(index=kept_arr, scenarios=x[kept_arr].copy(), prob=q, distance=float((p * near).sum()))
