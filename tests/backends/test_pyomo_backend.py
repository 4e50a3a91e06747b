"""The Pyomo algebra builds the same model as CVXPY from the same templates."""

from __future__ import annotations

import numpy as np
import pytest

import safedispatch as sd
from safedispatch.backends import cvxpy_, pyomo_
from safedispatch.problems.projection import ProjectionProgram, device_bounds
from safedispatch.problems.zones import model_network
from tests.safety.reference import model_state


def _program(alg, f, snap, raw, model="lindistflow"):
    mn = model_network(f)
    prog = ProjectionProgram(alg, f, mn, model, np.ones(f.n_pv), np.ones(f.n_ess), None)
    tree = mn.tree
    prog.set_snapshot(f, snap, device_bounds(f, mn, snap), raw.pv_p_mw, raw.pv_q_mvar, raw.ess_p_mw,
                      np.zeros(tree.n - 1), tree.vm_min_pu[1:] ** 2, tree.vm_max_pu[1:] ** 2, tree.s_max_pu[1:])
    return prog, mn


def test_pyomo_lindistflow_equations_match_reference():
    f = sd.load_case("ieee33-paperB-4")
    snap = sd.Snapshot.nominal(f, load=0.7, pv=0.5).checked(f)
    act = sd.Action(pv_p_mw=0.4 * f.pv.p_max_mw, pv_q_mvar=np.array([0.3, -0.2, 0.1, 0.0])).checked(f)
    prog, mn = _program(pyomo_.PyomoAlgebra(), f, snap, act)
    for k in ("p_lo", "p_hi"):
        prog.alg.set(k, act.pv_p_mw)  # pin the set-points: only the network equations remain
    for k in ("q_lo", "q_hi"):
        prog.alg.set(k, act.pv_q_mvar)
    m = mn.tree.n - 1
    prog.alg.set("wmin", np.zeros(m))  # limits out of the way
    prog.alg.set("wmax", np.full(m, 4.0))
    prog.alg.set("smax", np.full(m, 100.0))
    r = pyomo_.solve(prog.problem)
    assert r.status == sd.backends.SolveStatus.OPTIMAL
    w_ref, P_ref, _ = model_state(f, snap, act)
    np.testing.assert_allclose(r.x["w"], w_ref[mn.tree.bus[1:]], atol=1e-8)
    np.testing.assert_allclose(r.x["P"], P_ref[mn.tree.branch[1:]], atol=1e-8)


@pytest.mark.parametrize("sides", [32, 256])
def test_pyomo_projection_is_an_inner_approximation_of_the_exact_one(sides):
    f = sd.load_case("ieee33-paperB-4")
    snap = sd.Snapshot.nominal(f, load=0.3, pv=1.0).checked(f)
    raw = sd.Action(pv_p_mw=f.pv.p_max_mw.copy(), pv_q_mvar=np.zeros(4)).checked(f)
    exact = cvxpy_.solve(_program(cvxpy_.CvxpyAlgebra(), f, snap, raw)[0].problem)
    poly = pyomo_.solve(_program(pyomo_.PyomoAlgebra(polygon_sides=sides), f, snap, raw)[0].problem)
    assert exact.status == poly.status == sd.backends.SolveStatus.OPTIMAL
    # a smaller feasible set: never better than the exact optimum, and close to it
    assert poly.objective >= exact.objective - 1e-6
    assert poly.objective <= exact.objective * (1 + 2 * (1 - np.cos(np.pi / sides))) + 1e-6
    # the polygon is inside the disk: no inverter exceeds its rating
    assert np.all(np.hypot(poly.x["pv_p"], poly.x["pv_q"]) <= f.pv.s_mva + 1e-7)


def test_socp_needs_a_conic_backend():
    f = sd.load_case("ieee33-paperB-4")
    snap = sd.Snapshot.nominal(f).checked(f)
    raw = sd.Action(pv_p_mw=np.zeros(4), pv_q_mvar=np.zeros(4)).checked(f)
    with pytest.raises(sd.BackendUnavailableError, match="conic"):
        _program(pyomo_.PyomoAlgebra(), f, snap, raw, model="socp")


def test_highs_output_and_exceptions_stay_in_the_result(capfd):
    """HiGHS (compiled) writes to file descriptor 1 itself; what it or Pyomo prints is in
    ``info["solver_output"]``, and its exceptions become NUMERICAL_ERROR."""
    import os

    import pyomo.environ as pyo

    m = pyo.ConcreteModel()
    m.x = pyo.Var(range(2), bounds=(0, 1))
    m.c = pyo.Constraint(expr=m.x[0] + m.x[1] >= 1)
    m.objective = pyo.Objective(expr=m.x[0] + 2 * m.x[1])
    res = pyomo_.solve(m)
    assert res.status == pyomo_.SolveStatus.OPTIMAL and res.info["solver_output"] == ""
    np.testing.assert_allclose(res.x["x"], [1.0, 0.0], atol=1e-9)

    class Noisy:
        def solve(self, model, **kw):
            os.write(1, b"HiGHS: fatal\n")
            print("pyomo: giving up")
            raise RuntimeError("HiGHS crashed")

    res = pyomo_.solve(m, solver=Noisy())
    assert res.status == pyomo_.SolveStatus.NUMERICAL_ERROR and "RuntimeError" in res.info["errors"]["HIGHS"]
    assert res.info["solver_output"] == "HiGHS: fatal\npyomo: giving up\n"
    f = sd.load_case("ieee33-paperC")
    r = sd.baselines.solve_mip(f, sd.Snapshot.nominal(f, load=1.0, pv=0.5))
    assert "solver_output" in r.info
    out, err = capfd.readouterr()
    assert out == "" and err == "", (out, err)
