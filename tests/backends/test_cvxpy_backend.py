"""The CVXPY backend's fallback chain (cvxpy_.solve)."""

from __future__ import annotations

import cvxpy as cp
import numpy as np

from safedispatch.backends import cvxpy_
from safedispatch.backends.result import SolveStatus
from tests.conftest import small_socp


def test_an_inexact_answer_survives_a_later_solver_that_raises():
    """SCS stopped after 10 iterations (inexact), then a solver that is not installed raises: the
    chain returns SCS's point and status, not NUMERICAL_ERROR without a point."""
    opts = {"SCS": {"max_iters": 10}}
    ref = cvxpy_.solve(small_socp(7), solvers=["SCS"], options=opts)  # SCS alone, deterministic
    assert ref.status == SolveStatus.OPTIMAL_INACCURATE
    res = cvxpy_.solve(small_socp(7), solvers=["SCS", "GUROBI"], options=opts)
    assert res.info["tried"] == ["SCS", "GUROBI"] and "GUROBI" in res.info["errors"]
    assert res.status == SolveStatus.OPTIMAL_INACCURATE and res.solver == "SCS"
    assert res.info["raw_status"] == cp.OPTIMAL_INACCURATE
    np.testing.assert_array_equal(res.x["x"], ref.x["x"])
    assert res.objective == ref.objective


def test_each_solver_of_the_chain_compiles_a_parametrized_problem_once(monkeypatch):
    """CVXPY recompiles a Problem whenever the solver changes; the chain keeps one Problem per
    solver, so alternating SCS (stopped inexact) and ECOS over new parameter values compiles
    twice in all, and every answer equals a fresh ECOS solve of the same values."""
    rng = np.random.default_rng(3)
    refs = []
    for _ in range(4):
        r = rng.normal(size=5)
        fresh = cp.Variable(5)
        cp.Problem(cp.Minimize(cp.sum_squares(fresh - r)), [cp.norm(fresh) <= 1, fresh[0] + fresh[1] <= 0.1]).solve(
            solver="ECOS", **cvxpy_.DEFAULT_OPTIONS["ECOS"])
        refs.append((r, fresh.value))
    chains = []
    construct = cp.Problem._construct_chain

    def spy(self, *args, **kw):
        chains.append(kw.get("solver"))
        return construct(self, *args, **kw)

    monkeypatch.setattr(cp.Problem, "_construct_chain", spy)
    x = cp.Variable(5, name="x")
    r = cp.Parameter(5, name="r")
    prob = cp.Problem(cp.Minimize(cp.sum_squares(x - r)), [cp.norm(x) <= 1, x[0] + x[1] <= 0.1])
    options = {**cvxpy_.DEFAULT_OPTIONS, "SCS": {"max_iters": 10}}
    for r_value, x_ref in refs:
        r.value = r_value
        res = cvxpy_.solve(prob, solvers=["SCS", "ECOS"], options=options)
        assert res.info["tried"] == ["SCS", "ECOS"] and res.status == SolveStatus.OPTIMAL
        np.testing.assert_allclose(res.x["x"], x_ref, atol=1e-7)
    assert sorted(chains) == ["ECOS", "SCS"], chains
