"""Every baseline entry point answers bad arguments with a typed error naming the argument,
and handles a feeder with nothing to control with a clear status (#18 item 12)."""

from __future__ import annotations

import numpy as np
import pytest

import safedispatch as sd
from safedispatch.baselines import (
    NoControl,
    OPFController,
    SnapshotMIP,
    VoltVarCurve,
    VoltVarDroop,
    ZonalADMM,
    solve_admm,
    solve_mip,
    solve_opf,
)
from safedispatch.network.feeder import ESSTable, PVTable

WRONG = [1.0, (1, 2), None, "snapshot", {"load_p_mw": 0.0}, np.zeros(33)]


@pytest.fixture(scope="module")
def f():
    return sd.load_case("ieee33-paperB-4")


@pytest.fixture(scope="module")
def snap(f):
    return sd.Snapshot.nominal(f, load=0.5, pv=0.5)


def _entry_points(f):
    return {
        "solve_opf": lambda s: solve_opf(f, s, model="lindistflow"),
        "solve_mip": lambda s: solve_mip(f, s),
        "solve_admm": lambda s: solve_admm(f, s, max_iter=5),
        "droop": lambda s: VoltVarDroop(f).act(s),
        "no_control": lambda s: NoControl(f).act(s),
        "opf_controller": lambda s: OPFController(f, model="lindistflow")(s),
    }


@pytest.mark.parametrize("bad", WRONG, ids=lambda b: type(b).__name__)
def test_a_wrong_snapshot_type_is_a_typed_error_naming_the_argument(f, bad):
    for name, call in _entry_points(f).items():
        with pytest.raises(sd.InputError, match="expected a Snapshot") as e:
            call(bad)
        assert e.value.field == "snapshot", name


@pytest.mark.parametrize("bad", [1.0, None, "ieee33", (1, 2)], ids=lambda b: type(b).__name__)
def test_a_wrong_feeder_type_is_a_typed_error(snap, bad):
    for call in (lambda: solve_opf(bad, snap), lambda: solve_mip(bad, snap), lambda: solve_admm(bad, snap),
                 lambda: VoltVarDroop(bad), lambda: NoControl(bad), lambda: SnapshotMIP(bad),
                 lambda: ZonalADMM(bad)):
        with pytest.raises(sd.InputError) as e:
            call()
        assert e.value.field == "feeder"


def test_options_of_the_wrong_type_are_typed_errors(f, snap):
    cases = [
        (lambda: solve_opf(f, snap, model=["socp"]), "model"),
        (lambda: solve_opf(f, snap, model=None), "model"),
        (lambda: solve_opf(f, snap, scr_min=[3.0]), "scr_min"),
        (lambda: solve_opf(f, snap, scr_min="3"), "scr_min"),
        (lambda: solve_opf(f, snap, repair=np.array([1, 2])), "repair"),
        (lambda: solve_opf(f, snap, objective={"loss": "x"}), "weights.loss"),
        (lambda: solve_opf(f, snap, objective={"v_ref_pu": "x"}), "weights.v_ref_pu"),
        (lambda: solve_opf(f, snap, objective={"v_ref_pu": 1e300}), "weights.v_ref_pu"),
        (lambda: solve_opf(f, snap, objective={"voltage": 1e300}), "weights.voltage"),
        (lambda: solve_mip(f, snap, curtailment="x"), "curtailment"),
        (lambda: solve_mip(f, snap, curtailment=[1.0]), "curtailment"),
        (lambda: solve_mip(f, snap, bogus=1), "options"),
        (lambda: solve_mip(f, snap, v_ref_pu=np.nan), "v_ref_pu"),
        (lambda: solve_mip(f, snap, polygon_sides=2.5), "polygon_sides"),
        (lambda: solve_mip(f, snap, time_limit_s="1"), "time_limit_s"),
        (lambda: solve_admm(f, snap, rho="1"), "rho"),
        (lambda: solve_admm(f, snap, rho=[1.0]), "rho"),
        (lambda: solve_admm(f, snap, model={}), "model"),
        (lambda: solve_admm(f, snap, bogus=1), "options"),
        (lambda: solve_admm(f, snap, zones=1.0), "zones"),
        (lambda: solve_admm(f, snap, zones=[["a", "b"]]), "zones"),
        (lambda: solve_admm(f, snap, relaxation=np.nan), "relaxation"),
        (lambda: VoltVarDroop(f, damping="x"), "damping"),
        (lambda: VoltVarDroop(f, tol_mvar=None), "tol_mvar"),
        (lambda: VoltVarDroop(f).act(snap, vm_pu="x"), "vm_pu"),
        (lambda: VoltVarDroop(f).act(snap, vm_pu=np.full(f.n_bus, 1e300)), "vm_pu"),
        (lambda: VoltVarCurve(v_pu=("a", "b", "c", "d")), "curve.v_pu"),
        (lambda: SnapshotMIP(f).solve_fixed_caps(snap, "x"), "cap_step"),
    ]
    for call, field in cases:
        with pytest.raises(sd.InputError) as e:
            call()
        assert e.value.field == field, (field, e.value)


def _nothing_to_control():
    """ieee33 has no inverter, capacitor bank or storage; ieee33-zones without its inverters
    and storage keeps four zones with nothing to control in any."""
    fz = sd.load_case("ieee33-zones")
    e = np.zeros(0, np.int64)
    empty = fz.replace(pv=PVTable(bus=e, s_mva=np.zeros(0)),
                       ess=ESSTable(bus=e, p_max_mw=np.zeros(0), e_max_mwh=np.zeros(0)))
    return [sd.load_case("ieee33"), empty]


@pytest.mark.parametrize("load", [0.3, 1.0])
def test_a_feeder_with_nothing_to_control_gets_a_clear_status(load):
    """Solved like any other feeder: the model then only checks the snapshot. ieee33 at full
    load is below 0.95 pu (INFEASIBLE: nothing can raise it), at 30 % load within limits
    (OPTIMAL, an empty action); never a crash inside CVXPY."""
    from safedispatch.baselines import ADMMStatus, MIPStatus, OPFStatus

    for feeder in _nothing_to_control():
        snap = sd.Snapshot.nominal(feeder, load=load)
        ok = load < 0.5
        for model in ("socp", "lindistflow"):
            r = solve_opf(feeder, snap, model=model)
            assert r.status == (OPFStatus.OPTIMAL if ok else OPFStatus.INFEASIBLE), (feeder.name, model, r.status)
            if ok:
                assert r.action.pv_p_mw.shape == (0,) and np.isfinite(r.vm_pu).all()
        m = solve_mip(feeder, snap)
        assert m.status == (MIPStatus.OPTIMAL if ok else MIPStatus.INFEASIBLE)
        a = solve_admm(feeder, snap, max_iter=20)
        if ok:
            assert a.status in (ADMMStatus.CONVERGED, ADMMStatus.MAX_ITER) and a.action.pv_p_mw.shape == (0,)
        else:  # a single zone sees the infeasibility; four zones, each feasible alone, never agree
            assert a.status in (ADMMStatus.INFEASIBLE, ADMMStatus.MAX_ITER)
        assert VoltVarDroop(feeder).act(snap).pv_p_mw.shape == (0,)
        assert NoControl(feeder).act(snap).pv_p_mw.shape == (0,)
