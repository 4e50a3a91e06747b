"""The CVXPY backend's fallback chain (cvxpy_.solve)."""

from __future__ import annotations

import cvxpy as cp
import numpy as np
import pytest

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


def _failing_scs_problem():
    """SCS fails on data of 1e300 and prints "ERROR: could not determine problem status." from
    its C code (through Python's sys.stdout)."""
    x = cp.Variable(3, name="x")
    p = cp.Parameter(3, name="p", value=np.full(3, 1e300))
    return cp.Problem(cp.Minimize(cp.sum_squares(x - p)), [cp.norm(x) <= 1])


def test_what_a_solver_prints_goes_into_the_result_not_the_terminal(capfd):
    res = cvxpy_.solve(_failing_scs_problem(), solvers=["SCS"])
    assert res.status == SolveStatus.NUMERICAL_ERROR and "SCS" in res.info["errors"]
    assert "could not determine problem status" in res.info["solver_output"]
    # a compiled solver writing to file descriptor 1 itself (Clarabel's Rust log, when verbose)
    res = cvxpy_.solve(small_socp(3), solvers=["CLARABEL"], options={"CLARABEL": {"verbose": True}})
    assert res.status == SolveStatus.OPTIMAL and "Clarabel" in res.info["solver_output"]
    res = cvxpy_.solve(small_socp(3), solvers=["CLARABEL"])
    assert res.info["solver_output"] == ""
    out, err = capfd.readouterr()
    assert out == "" and err == "", (out, err)


def test_no_exception_of_cvxpy_or_a_solver_escapes(monkeypatch):
    """CVXPY raised AttributeError ('Constant' object has no attribute 'id') on a feeder with
    nothing to control; whatever the type, it is recorded and the chain goes on."""
    def broken(self, *args, **kw):
        print("about to fail")
        raise AttributeError("'Constant' object has no attribute 'id'")

    monkeypatch.setattr(cp.Problem, "solve", broken)
    res = cvxpy_.solve(small_socp(1), solvers=["CLARABEL", "ECOS"])
    assert res.status == SolveStatus.NUMERICAL_ERROR and res.x == {}
    assert res.info["tried"] == ["CLARABEL", "ECOS"]
    assert all("AttributeError" in v for v in res.info["errors"].values())
    assert res.info["solver_output"].count("about to fail") == 2


def test_solver_chains_are_checked():
    import safedispatch as sd

    assert cvxpy_.check_solvers("ECOS") == ("ECOS",)
    for bad in ([], 3, [1, 2], None):
        with pytest.raises(sd.InputError) as e:
            cvxpy_.check_solvers(bad)
        assert e.value.field == "solvers"


def test_output_capture_is_nested_and_thread_safe():
    import ctypes
    import os
    import sys
    import threading

    from safedispatch.backends.result import captured_output

    libc = ctypes.CDLL(None)
    with captured_output() as outer:
        print("py")
        libc.printf(b"c-level ")
        libc.fflush(None)
        os.write(2, b"fd2\n")
        with captured_output() as inner:
            print("inner")
    assert outer.text == "py\nc-level fd2\ninner\n" and inner.text == "inner\n"
    stdout = sys.stdout
    texts = {}

    def work(i):
        with captured_output() as c:
            print(f"thread-{i}")
        texts[i] = c.text

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sys.stdout is stdout  # restored by the last one out
    assert all(f"thread-{i}" in texts[i] for i in range(8))  # each sees its own (maybe others' too)
