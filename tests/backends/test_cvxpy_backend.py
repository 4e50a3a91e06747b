"""The CVXPY backend's fallback chain (cvxpy_.solve)."""

from __future__ import annotations

import cvxpy as cp
import numpy as np

from safedispatch.backends import cvxpy_
from safedispatch.backends.result import SolveStatus


def _problem(seed):
    x = cp.Variable(5, name="x")
    r = np.random.default_rng(seed).normal(size=5)
    return cp.Problem(cp.Minimize(cp.sum_squares(x - r)), [cp.norm(x) <= 1, x[0] + x[1] <= 0.1])


def test_an_inexact_answer_survives_a_later_solver_that_raises():
    """SCS stopped after 10 iterations (inexact), then a solver that is not installed raises: the
    chain returns SCS's point and status, not NUMERICAL_ERROR without a point."""
    opts = {"SCS": {"max_iters": 10}}
    ref = cvxpy_.solve(_problem(7), solvers=["SCS"], options=opts)  # SCS alone, deterministic
    assert ref.status == SolveStatus.OPTIMAL_INACCURATE
    res = cvxpy_.solve(_problem(7), solvers=["SCS", "GUROBI"], options=opts)
    assert res.info["tried"] == ["SCS", "GUROBI"] and "GUROBI" in res.info["errors"]
    assert res.status == SolveStatus.OPTIMAL_INACCURATE and res.solver == "SCS"
    assert res.info["raw_status"] == cp.OPTIMAL_INACCURATE
    np.testing.assert_array_equal(res.x["x"], ref.x["x"])
    assert res.objective == ref.objective
