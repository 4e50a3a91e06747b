"""Snapshot OPF against pandapower's AC OPF (runopp) and AC power flow (runpp)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import safedispatch as sd
from safedispatch.baselines import OPFController, OPFStatus, SnapshotOPF, solve_opf
from tests.conftest import pp_powerflow


def pp_runopp(feeder, snap, curtailment=0.0):
    """pandapower AC OPF with the same controllable inverters and limits: P in [0, avail],
    |Q| <= s (a box: the test checks that the disk holds at pandapower's optimum), voltage and
    line limits; cost = slack import + (1 - curtailment) x PV = loads + losses + curtailment
    x curtailed PV (up to constants)."""
    import pandapower as pp

    snap = snap.checked(feeder)
    shunt = feeder.cap_shunt_q_mvar(feeder.cap.step_init) if feeder.n_cap else None
    net = sd.to_pandapower(feeder, -snap.load_p_mw, -snap.load_q_mvar, shunt_q_mvar=shunt)
    net.line["max_loading_percent"] = 100.0
    for k in range(feeder.n_pv):
        s, av = float(feeder.pv.s_mva[k]), float(snap.pv_avail_mw[k])
        pp.create_sgen(net, int(feeder.pv.bus[k]), p_mw=av, q_mvar=0.0, controllable=True, max_p_mw=av,
                       min_p_mw=0.0, max_q_mvar=s, min_q_mvar=-s)
    pp.create_poly_cost(net, 0, "ext_grid", cp1_eur_per_mw=1.0)
    for k in range(feeder.n_pv):
        pp.create_poly_cost(net, k, "sgen", cp1_eur_per_mw=1.0 - curtailment)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # the cost is dominated by the constant load: tighten the cost tolerance (default 1e-6
        # stops ~2 % above the optimal losses at light load)
        pp.runopp(net, init="pf", calculate_voltage_angles=False, PDIPM_COSTTOL=1e-9)
    assert net.OPF_converged
    return net


def pp_check_setpoints(feeder, snap, act):
    """pandapower Newton-Raphson at the set-points: (losses MW, max V violation pu, max loading)."""
    snap = snap.checked(feeder)
    p, q, sh = sd.net_injection(feeder, snap, act.checked(feeder))
    net = pp_powerflow(feeder, p, q, shunt_q_mvar=sh, v_root_pu=snap.v_root_pu)
    vm = net.res_bus.vm_pu.to_numpy()
    viol = max(np.max(vm - feeder.bus.vm_max_pu), np.max(feeder.bus.vm_min_pu - vm), 0.0)
    return float(net.res_line.pl_mw.sum()), float(viol), float(net.res_line.loading_percent.max() / 100)


CASES = [("ieee33-paperB-4", 1.0, 0.5, 0.0), ("ieee33-paperB-4", 0.3, 1.0, 0.0), ("ieee33-paperB-4", 0.6, 0.8, 0.5),
         ("ieee33-paperC", 1.0, 0.6, 0.0)]


@pytest.mark.parametrize(("case", "load", "pv", "curt"), CASES)
def test_socp_opf_matches_pandapower_acopf(case, load, pv, curt):
    f = sd.load_case(case)
    snap = sd.Snapshot.nominal(f, load=load, pv=pv)
    res = solve_opf(f, snap, model="socp", objective={"loss": 1.0, "curtailment": curt})
    assert res.status == OPFStatus.OPTIMAL and res.ac_feasible
    net = pp_runopp(f, snap, curtailment=curt)
    p_pp, q_pp = net.res_sgen.p_mw.to_numpy(), net.res_sgen.q_mvar.to_numpy()
    assert np.all(p_pp**2 + q_pp**2 <= f.pv.s_mva**2 + 1e-6)  # pandapower's box optimum is in the disks
    loss_pp = float(net.res_line.pl_mw.sum())
    obj_pp = loss_pp + curt * float(np.sum(snap.pv_avail_mw - p_pp))
    assert res.losses_mw == pytest.approx(loss_pp, rel=1e-2)
    assert res.objective == pytest.approx(obj_pp, rel=1e-2)
    assert res.ac_objective <= obj_pp * (1 + 1e-6)  # same or better
    # the set-points, checked by pandapower's Newton-Raphson: feasible, and the losses we report
    loss_nr, v_viol, loading = pp_check_setpoints(f, snap, res.action)
    assert v_viol <= 1e-4 and loading <= 1 + 1e-3
    assert res.losses_mw == pytest.approx(loss_nr, rel=1e-6)
    assert abs(res.relaxation_gap) < 1e-4 and res.cone_gap < 1e-3


def test_inexact_relaxation_is_repaired_and_its_gap_stated():
    # light load, full sun, curtailment priced above losses: the relaxation burns the surplus
    # in fictitious losses instead of curtailing (slack cones), and its set-points violate
    # voltage and branch limits in AC
    f = sd.load_case("ieee33-paperB-4")
    snap = sd.Snapshot.nominal(f, load=0.3, pv=1.0)
    raw = SnapshotOPF(f, objective="paperB", repair=False).solve(snap)
    assert raw.status == OPFStatus.AC_VIOLATION and raw.cone_gap > 0.1
    _, v_viol, loading = pp_check_setpoints(f, snap, raw.action)
    assert v_viol > 1e-3 and loading > 1 + 1e-3  # pandapower agrees: over 1.05 pu and a rating
    res = solve_opf(f, snap, model="socp", objective="paperB")
    assert res.status == OPFStatus.REPAIRED and res.ac_feasible
    assert res.info["relaxed_cone_gap"] > 0.1 and res.cone_gap < 1e-3
    _, v_viol, loading = pp_check_setpoints(f, snap, res.action)
    assert v_viol <= 1e-4 and loading <= 1 + 1e-3
    assert res.objective == pytest.approx(raw.objective)  # the bound is the unrepaired relaxation's
    assert res.relaxation_gap == pytest.approx((res.ac_objective - res.objective) / res.objective)
    assert 0 < res.relaxation_gap < 0.02  # measured 0.41 %
    # the repair is no worse than the LinDistFlow OPF's (AC-evaluated) set-points
    lin = solve_opf(f, snap, model="lindistflow", objective="paperB")
    assert lin.ac_feasible and res.ac_objective <= lin.ac_objective


def test_lindistflow_opf_close_to_acopf_and_ac_checked():
    f = sd.load_case("ieee33-paperB-4")
    snap = sd.Snapshot.nominal(f, load=1.0, pv=0.5)
    res = solve_opf(f, snap, model="lindistflow")
    loss_pp = float(pp_runopp(f, snap).res_line.pl_mw.sum())
    assert res.ac_feasible and res.losses_mw == pytest.approx(loss_pp, rel=1e-2)
    assert res.cone_gap == 0.0


def test_parameters_only_are_updated_between_snapshots():
    f = sd.load_case("ieee33-paperB-4")
    opf = SnapshotOPF(f, model="socp")
    problem = opf.prog.problem
    a, b = sd.Snapshot.nominal(f, load=1.0, pv=0.5), sd.Snapshot.nominal(f, load=0.5, pv=0.9)
    ra = opf.solve(a)
    opf.solve(b)
    ra2 = opf.solve(a)
    assert opf.prog.problem is problem
    assert ra2.objective == pytest.approx(ra.objective, rel=1e-7)
    np.testing.assert_allclose(ra2.action.pv_q_mvar, ra.action.pv_q_mvar, atol=1e-6)


def test_infeasible_snapshot_is_a_status_and_the_controller_falls_back():
    f = sd.load_case("ieee33-paperB-4")
    snap = sd.Snapshot.nominal(f, load=3.0, pv=0.0)  # far below 0.95 pu whatever the inverters do
    res = solve_opf(f, snap, model="socp")
    assert res.status == OPFStatus.INFEASIBLE and res.action is None
    assert np.isfinite(res.objective) is False or res.objective == float("inf")
    ctl = OPFController(f, model="socp")
    act = ctl.act(snap)
    assert ctl.last_result.status == OPFStatus.INFEASIBLE
    np.testing.assert_array_equal(act.pv_q_mvar, 0.0)


def test_bad_arguments_raise_typed_errors():
    f = sd.load_case("ieee33-paperB-4")
    snap = sd.Snapshot.nominal(f)
    for kw, field in (({"model": "dc"}, "model"), ({"objective": "cheap"}, "objective"),
                      ({"objective": {"loss": -1.0}}, "weights.loss"), ({"objective": {"speed": 1.0}}, "objective")):
        with pytest.raises(sd.InputError) as e:
            solve_opf(f, snap, **kw)
        assert e.value.field == field


def test_inaccurate_clarabel_is_retried_before_the_slow_fallback():
    # on this snapshot Clarabel stops OPTIMAL_INACCURATE at the projection's 1e-10 tolerances;
    # the OPF re-runs it at its defaults instead of falling through to ECOS and SCS (seconds)
    from safedispatch.backends import cvxpy_

    f = sd.load_case("ieee33-paperB-4")
    rng = np.random.default_rng(0)
    snap = sd.Snapshot.nominal(f, load=float(rng.uniform(0.4, 1.1)))
    snap = snap.replace(pv_avail_mw=rng.uniform(0.3, 1.0, f.n_pv) * f.pv.p_max_mw)
    opf = SnapshotOPF(f, "socp")
    res = opf.solve(snap)
    assert res.status == OPFStatus.OPTIMAL and res.solver == "CLARABEL"
    assert res.info["solver_info"]["tried"] == ["CLARABEL", "CLARABEL(default tolerances)"]
    chain = cvxpy_.solve(opf.prog.problem)  # the full chain on the same parameters
    assert chain.info["tried"] != ["CLARABEL"]
    # the chain ends in SCS, itself only OPTIMAL_INACCURATE: they agree to 1.3e-5 here
    assert res.objective == pytest.approx(chain.objective, rel=1e-4)


def test_opf_solve_keeps_the_latest_inexact_answer_when_the_chain_ends_without_one(monkeypatch):
    """SCS stopped early (inexact), re-run with more iterations (still inexact), then a solver that
    is not installed raises: solve_opf_problem returns the re-run's point and status (equal to
    SCS run alone with those options), not NUMERICAL_ERROR without a point."""
    import importlib

    from safedispatch.backends import cvxpy_
    from safedispatch.backends.result import SolveStatus
    from tests.conftest import small_socp

    opf_mod = importlib.import_module("safedispatch.baselines.opf")
    ref = cvxpy_.solve(small_socp(7), solvers=["SCS"], options={"SCS": {"max_iters": 20}})
    assert ref.status == SolveStatus.OPTIMAL_INACCURATE
    monkeypatch.setitem(cvxpy_.DEFAULT_OPTIONS, "SCS", {"max_iters": 10})
    monkeypatch.setattr(opf_mod, "OPF_RETRY_OPTIONS", {"SCS": {"max_iters": 20}})
    res = opf_mod.solve_opf_problem(small_socp(7), solvers=("SCS", "GUROBI"))
    assert res.info["tried"] == ["SCS", "SCS(default tolerances)", "GUROBI"]
    assert "GUROBI" in res.info["errors"]
    assert res.status == SolveStatus.OPTIMAL_INACCURATE and res.solver == "SCS"
    np.testing.assert_array_equal(res.x["x"], ref.x["x"])
    assert res.objective == ref.objective
