"""SafetyLayer against an independent CVXPY + Clarabel projection, and its properties."""

from __future__ import annotations

import cvxpy as cp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import safedispatch as sd
from safedispatch import ProjectionStatus as PS
from safedispatch.safety import layer as layer_mod
from tests.safety.reference import (
    device_violation,
    lindistflow_matrices,
    reference_min_violation,
    reference_projection,
    violation_sq,
    violations,
)

CASES = ["ieee33-paperB-4", "ieee33-paperB", "ieee33-paperC"]


@pytest.fixture(scope="module")
def layers():
    return {c: sd.SafetyLayer(sd.load_case(c)) for c in CASES}


@pytest.fixture(scope="module")
def cvxpy_layers():
    return {c: sd.SafetyLayer(sd.load_case(c), fast=False) for c in CASES}


@pytest.fixture(scope="module")
def mats():
    return {c: lindistflow_matrices(sd.load_case(c)) for c in CASES}


def random_snapshot(f, rng, ramp=False):
    snap = sd.Snapshot.nominal(f, load=rng.uniform(0.2, 1.2), pv=0.0)
    lp = snap.load_p_mw * rng.uniform(0.7, 1.3, f.n_bus)
    avail = f.pv.p_max_mw * rng.uniform(0, 1, f.n_pv)
    prev = None
    if ramp:
        pp_ = np.minimum(avail * rng.uniform(0.5, 1.0, f.n_pv), f.pv.s_mva)
        qmax = np.sqrt(f.pv.s_mva**2 - pp_**2)
        prev = sd.Action(pv_p_mw=pp_, pv_q_mvar=qmax * rng.uniform(-1, 1, f.n_pv),
                         cap_step=rng.integers(0, f.cap.n_steps + 1) if f.n_cap else None)
    return snap.replace(load_p_mw=lp, pv_avail_mw=avail, prev=prev, dt_h=5 / 60)


def random_action(f, rng):
    s = f.pv.s_mva
    return sd.Action(pv_p_mw=s * rng.uniform(-0.1, 1.2, f.n_pv), pv_q_mvar=s * rng.uniform(-1.2, 1.2, f.n_pv),
                     cap_step=rng.integers(0, f.cap.n_steps + 1) if f.n_cap else None)


@pytest.mark.parametrize("path", ["fast", "cvxpy"])
@pytest.mark.parametrize("case,n", [("ieee33-paperB-4", 120), ("ieee33-paperB", 60), ("ieee33-paperC", 80)])
def test_matches_independent_clarabel_projection(case, n, path, layers, cvxpy_layers, mats):
    f = sd.load_case(case)
    layer = (layers if path == "fast" else cvxpy_layers)[case]
    if path == "cvxpy":
        n //= 3  # the slower path: fewer instances
    rng = np.random.default_rng(7)
    seen = {s: 0 for s in PS}
    by_path = {True: 0, False: 0}
    for k in range(n):
        snap = random_snapshot(f, rng, ramp=k % 3 == 0)
        raw = random_action(f, rng)
        res = layer.project(raw, snap)
        seen[res.status] += 1
        ref = reference_projection(f, snap.checked(f), raw.checked(f), mats=mats[case])
        if ref is None:
            assert res.status == PS.INFEASIBLE
            continue
        assert res.status in (PS.PROJECTED, PS.UNCHANGED)
        a = res.action
        vv, vs = violations(f, snap, a, mats[case])
        assert vv <= 1e-6 and vs <= 1e-6, (vv, vs)
        assert device_violation(f, snap, a) <= 1e-9
        ours = res.objective + (layer.cap_weight * float(np.sum((f.cap.q_step_mvar * (a.cap_step - raw.cap_step)) ** 2))
                                if f.n_cap else 0.0)
        assert ours == pytest.approx(ref[0], rel=1e-5, abs=1e-7), (k, ours, ref[0])
        # the distance is also what the result reports
        assert res.correction_norm**2 == pytest.approx(ours, rel=1e-9, abs=1e-12)
        if res.status == PS.PROJECTED:
            by_path[res.solver == "structured_qp"] += 1
    assert seen[PS.PROJECTED] > n // 3  # the test exercises real projections
    # the path under test answered (the fast path may hand a rare instance to the CVXPY path)
    if path == "fast":
        assert by_path[True] >= 0.95 * seen[PS.PROJECTED]
    else:
        assert by_path[True] == 0


def test_feasible_raw_action_comes_back_unchanged_and_projection_is_idempotent(layers):
    f = sd.load_case("ieee33-paperB-4")
    layer = layers["ieee33-paperB-4"]
    snap = sd.Snapshot.nominal(f, load=0.6, pv=0.3)
    raw = sd.Action(pv_p_mw=0.2 * f.pv.p_max_mw, pv_q_mvar=np.zeros(4))
    res = layer.project(raw, snap)
    assert res.status == PS.UNCHANGED and res.correction_norm == 0.0 and res.n_solves == 0
    np.testing.assert_array_equal(res.action.pv_p_mw, raw.pv_p_mw)
    far = sd.Action(pv_p_mw=f.pv.s_mva * 1.5, pv_q_mvar=f.pv.s_mva)
    r1 = layer.project(far, snap.replace(pv_avail_mw=f.pv.p_max_mw))
    assert r1.status == PS.PROJECTED
    r2 = layer.project(r1.action, snap.replace(pv_avail_mw=f.pv.p_max_mw))
    assert r2.status == PS.UNCHANGED
    np.testing.assert_array_equal(r2.action.pv_p_mw, r1.action.pv_p_mw)


def test_reverse_flow_case_curtails_and_reports_active_limits(layers):
    f = sd.load_case("ieee33-paperB")
    snap = sd.Snapshot.nominal(f, load=0.3, pv=1.0)
    raw = sd.Action(pv_p_mw=f.pv.p_max_mw.copy(), pv_q_mvar=np.zeros(f.n_pv))
    res = layers["ieee33-paperB"].project(raw, snap)
    assert res.status == PS.PROJECTED
    assert res.action.pv_p_mw.sum() < raw.pv_p_mw.sum()
    assert any(a.startswith("vmax") or a.startswith("thermal") for a in res.active)
    assert res.vm_pu.max() <= 1.05 + 1e-7


def test_infeasible_snapshot_returns_least_violating_point():
    f = sd.load_case("ieee33-paperC")
    layer = sd.SafetyLayer(f)
    snap = sd.Snapshot.nominal(f, load=2.6, pv=0.0)  # heavy load at night: voltage collapse region
    raw = sd.Action(pv_p_mw=np.zeros(2), pv_q_mvar=np.zeros(2), cap_step=[0, 0])
    res = layer.project(raw, snap)
    assert res.status == PS.INFEASIBLE
    assert res.violation["vm_pu"] > 0.01
    assert np.isfinite(res.action.to_vector()).all() and np.isfinite(res.vm_pu).all()
    assert res.energy_not_supplied_mwh == 0.0
    # least violating: the violation measure (the sum of the squared excesses, see the module
    # docstring of safedispatch.safety.layer) equals an independent minimisation of it
    total = violation_sq(f, snap.checked(f), res.action)
    assert total == pytest.approx(reference_min_violation(f, snap.checked(f)), rel=1e-5)
    assert res.info["violation_sq"] == pytest.approx(total, rel=1e-9)
    # the reported violation is what the model predicts at the returned action
    vv, vs = violations(f, snap, res.action)
    assert res.violation["thermal_mva"] == pytest.approx(vs, rel=1e-6)


def test_sheddable_load_is_shed_only_as_last_resort():
    f = sd.load_case("ieee33-zones")
    layer = sd.SafetyLayer(f)
    raw = sd.Action(pv_p_mw=np.zeros(4), pv_q_mvar=np.zeros(4), ess_p_mw=np.zeros(4))
    easy = layer.project(raw, sd.Snapshot.nominal(f, load=1.0, pv=0.0))
    assert easy.status == PS.PROJECTED and easy.energy_not_supplied_mwh == 0.0
    snap = sd.Snapshot.nominal(f, load=2.2, pv=0.0)
    res = layer.project(raw, snap)
    assert res.status == PS.PROJECTED  # feasible thanks to shedding
    assert res.energy_not_supplied_mwh > 0
    assert res.energy_not_supplied_mwh == pytest.approx(res.shed_p_mw.sum() * snap.dt_h)
    assert res.violation == {"vm_pu": 0.0, "thermal_mva": 0.0} or max(res.violation.values()) < 1e-7
    # storage discharges before load is shed
    assert (res.action.ess_p_mw > 0).all()


@pytest.mark.parametrize("make,field", [
    (lambda f: (sd.Action(pv_p_mw=np.zeros(3), pv_q_mvar=np.zeros(4)), sd.Snapshot.nominal(f)), "action.pv_p_mw"),
    (lambda f: (sd.Action(pv_p_mw=np.full(4, np.nan), pv_q_mvar=np.zeros(4)), sd.Snapshot.nominal(f)),
     "action.pv_p_mw"),
    (lambda f: (sd.Action(pv_p_mw=np.zeros(4), pv_q_mvar=np.full(4, np.inf)), sd.Snapshot.nominal(f)),
     "action.pv_q_mvar"),
    (lambda f: (sd.Action(pv_p_mw=np.zeros(4), pv_q_mvar=np.zeros(4)),
                sd.Snapshot.nominal(f).replace(load_p_mw=np.zeros(5))), "snapshot.load_p_mw"),
    (lambda f: (sd.Action(pv_p_mw=np.zeros(4), pv_q_mvar=np.zeros(4)),
                sd.Snapshot.nominal(f).replace(pv_avail_mw=f.pv.p_max_mw * 2)), "snapshot.pv_avail_mw"),
    (lambda f: (sd.Action(pv_p_mw=np.zeros(4), pv_q_mvar=np.zeros(4)),
                sd.Snapshot.nominal(f).replace(v_root_pu=float("nan"))), "snapshot.v_root_pu"),
    (lambda f: (sd.Action(pv_p_mw=np.zeros(4), pv_q_mvar=np.zeros(4)),
                sd.Snapshot.nominal(f).replace(dt_h=0)), "snapshot.dt_h"),
    (lambda f: (sd.Action(pv_p_mw=np.zeros(4), pv_q_mvar=np.zeros(4)),
                sd.Snapshot.nominal(f).replace(prev=sd.Action(pv_p_mw=f.pv.s_mva * 2, pv_q_mvar=np.zeros(4)))),
     "snapshot.prev"),
])
def test_bad_input_raises_typed_error(make, field, layers):
    f = sd.load_case("ieee33-paperB-4")
    act, snap = make(f)
    with pytest.raises(sd.InputError) as ei:
        layers["ieee33-paperB-4"].project(act, snap)
    assert ei.value.field == field and isinstance(ei.value, ValueError)


def test_bad_layer_options():
    f = sd.load_case("ieee33-paperB-4")
    with pytest.raises(sd.InputError, match="model"):
        sd.SafetyLayer(f, model="acopf")
    with pytest.raises(sd.InputError, match="weights_pv"):
        sd.SafetyLayer(f, weights_pv=[1, 1, 0, 1])
    with pytest.raises(sd.InputError, match="pv_error_sd_mw"):
        sd.SafetyLayer(f, pv_error_sd_mw=[0.1, np.nan, 0, 0])


# ---- property tests ----------------------------------------------------------------------

F4 = sd.load_case("ieee33-paperB-4")
LAYER4 = sd.SafetyLayer(F4)
MATS4 = lindistflow_matrices(F4)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(load=st.floats(0.1, 1.3), pv=st.floats(0.0, 1.0), p=st.lists(st.floats(-2, 6), min_size=4, max_size=4),
       q=st.lists(st.floats(-6, 6), min_size=4, max_size=4))
def test_property_output_feasible_finite_and_idempotent(load, pv, p, q):
    snap = sd.Snapshot.nominal(F4, load=load, pv=pv)
    raw = sd.Action(pv_p_mw=np.array(p), pv_q_mvar=np.array(q))
    res = LAYER4.project(raw, snap)
    x = res.action.to_vector()
    assert np.isfinite(x).all() and np.isfinite(res.vm_pu).all()
    if res.status in (PS.PROJECTED, PS.UNCHANGED):
        vv, vs = violations(F4, snap, res.action, MATS4)
        assert vv <= 1e-6 and vs <= 1e-6
        assert device_violation(F4, snap, res.action) <= 1e-9
        again = LAYER4.project(res.action, snap)
        assert again.status == PS.UNCHANGED
        np.testing.assert_array_equal(again.action.to_vector(), x)
    else:
        assert res.status == PS.INFEASIBLE and res.violation["vm_pu"] + res.violation["thermal_mva"] > 0


@settings(max_examples=60, deadline=None)
@given(load=st.floats(0.2, 1.2), pv=st.floats(0.0, 1.0), frac=st.lists(st.floats(0, 1), min_size=8, max_size=8))
def test_property_feasible_raw_is_unchanged(load, pv, frac):
    snap = sd.Snapshot.nominal(F4, load=load, pv=pv)
    f = np.array(frac)
    p = f[:4] * snap.pv_avail_mw
    q = (2 * f[4:] - 1) * np.sqrt(F4.pv.s_mva**2 - p**2)
    raw = sd.Action(pv_p_mw=p, pv_q_mvar=q)
    vv, vs = violations(F4, snap, raw, MATS4)
    res = LAYER4.project(raw, snap)
    if vv <= 0 and vs <= 0:
        assert res.status == PS.UNCHANGED
        np.testing.assert_array_equal(res.action.to_vector(), raw.to_vector())
    elif vv > 1e-6 or vs > 1e-6:
        assert res.status != PS.UNCHANGED


def test_project_action_one_call_and_vector_form():
    snap = sd.Snapshot.nominal(F4, load=0.3, pv=1.0)
    raw = sd.Action(pv_p_mw=F4.pv.p_max_mw.copy(), pv_q_mvar=np.zeros(4))
    r1 = sd.project_action(raw, snap, feeder=F4)
    x, r2 = LAYER4.project_vector(raw.to_vector(), snap)
    np.testing.assert_allclose(r1.action.to_vector(), x, atol=1e-7)
    assert x.shape == (8,)
    with pytest.raises(sd.InputError, match="x"):
        LAYER4.project_vector(np.zeros(7), snap)


def test_branch_and_bound_matches_enumeration(monkeypatch):
    from safedispatch.network import CapTable
    from safedispatch.safety import layer as layer_mod

    f0 = sd.load_case("ieee33-paperC")
    # three multi-step banks: 4 x 3 x 5 = 60 combinations
    f = f0.replace(cap=CapTable(bus=[5, 17, 31], q_step_mvar=[0.25, 0.3, 0.2], n_steps=[3, 2, 4],
                                name=("c6", "c18", "c32")))
    rng = np.random.default_rng(3)
    for _ in range(6):
        snap = random_snapshot(f, rng)
        raw = random_action(f, rng)
        enum = sd.SafetyLayer(f).project(raw, snap)
        monkeypatch.setattr(layer_mod, "MAX_CAP_COMBINATIONS", 1)
        bnb = sd.SafetyLayer(f).project(raw, snap)
        monkeypatch.setattr(layer_mod, "MAX_CAP_COMBINATIONS", 64)
        assert bnb.status == enum.status
        if enum.status == PS.PROJECTED:
            assert bnb.correction_norm == pytest.approx(enum.correction_norm, rel=1e-6, abs=1e-8)
            np.testing.assert_array_equal(bnb.action.cap_step, enum.action.cap_step)
            assert bnb.n_solves < 60  # pruning works


def test_warm_start_saves_iterations():
    """Build once, solve many: a slowly varying snapshot sequence (a day's PV ramp) needs
    fewer iterations when each call starts from the previous call's active set."""
    f = sd.load_case("ieee33-paperB")
    warm, cold = sd.SafetyLayer(f), sd.SafetyLayer(f)
    raw = sd.Action(pv_p_mw=f.pv.p_max_mw.copy(), pv_q_mvar=np.zeros(f.n_pv))
    it_warm = it_cold = 0
    for k, pv in enumerate(np.linspace(0.6, 1.0, 15)):
        snap = sd.Snapshot.nominal(f, load=0.35, pv=pv)
        a = warm.project(raw, snap)
        cold.reset_warm_start()  # forget the previous call
        b = cold.project(raw, snap)
        assert a.status == b.status == PS.PROJECTED
        np.testing.assert_allclose(a.action.to_vector(), b.action.to_vector(), atol=1e-7)
        if k:
            it_warm += a.iterations
            it_cold += b.iterations
    assert it_warm < it_cold, (it_warm, it_cold)


def test_repeated_calls_do_not_rebuild_the_model():
    f = sd.load_case("ieee33-paperC")
    layer = sd.SafetyLayer(f)
    snap = sd.Snapshot.nominal(f, load=0.3, pv=1.0)
    raw = sd.Action(pv_p_mw=f.pv.p_max_mw.copy(), pv_q_mvar=np.zeros(2), cap_step=[1, 1])
    layer.project(raw, snap)
    mod = layer.models[0]
    qp, programs = mod.fast, dict(mod._programs)
    for load in (0.2, 0.5, 0.9):
        layer.project(raw, snap.replace(load_p_mw=snap.load_p_mw * load))
    assert mod.fast is qp and all(mod._programs[k] is v for k, v in programs.items())
    # the one-call form reuses its layer too
    a = sd.project_action(raw, snap, feeder=f)
    b = sd.project_action(raw, snap, feeder=f)
    from safedispatch.safety.layer import _cached_layer
    assert _cached_layer.cache_info().hits >= 1
    np.testing.assert_allclose(a.action.to_vector(), b.action.to_vector(), atol=1e-9)  # warm start: roundoff


def test_all_solvers_failing_is_a_status_not_an_exception():
    f = sd.load_case("ieee33-paperB-4")
    layer = sd.SafetyLayer(f, fast=False, solvers=("NO_SUCH_SOLVER",))
    snap = sd.Snapshot.nominal(f, load=0.3, pv=1.0)
    raw = sd.Action(pv_p_mw=f.pv.s_mva * 1.5, pv_q_mvar=np.zeros(4))
    res = layer.project(raw, snap)
    assert res.status == PS.SOLVER_FAILED
    x = res.action.to_vector()
    assert np.isfinite(x).all() and np.isfinite(res.vm_pu).all()
    # moved onto the device limits at least, and the model's verdict is reported
    assert device_violation(f, snap.checked(f), res.action) <= 1e-9
    assert res.violation["vm_pu"] > 0


def test_cvxpy_soft_path_is_accurate_bounded_and_never_reaches_scs(monkeypatch):
    """An infeasible night-time snapshot (no PV, ramp limits, 0.9 power factor, SCR bound) on the
    CVXPY path (``fast=False``, as the SOCP model and sheddable loads): every soft solve (least violation, then
    the nearest point with the slacks capped) ends OPTIMAL in Clarabel (retried at looser
    tolerances where it stops inaccurate) without falling through to SCS (seconds per solve,
    and less accurate), runs with the bounded options (time limit, iteration cap, no warm
    start), and agrees with ECOS at its default tolerances."""
    import dataclasses

    from safedispatch.backends import cvxpy_

    calls = []
    solve = cvxpy_.solve

    def spy(problem, *args, **kw):
        r = solve(problem, *args, **kw)
        ecos = None
        if r.status == sd.backends.result.SolveStatus.OPTIMAL:  # re-solved now: later solves change parameters
            twin = cp.Problem(problem.objective, problem.constraints)
            twin.solve(solver="ECOS")
            ecos = twin.value if twin.status == "optimal" else None
        calls.append((r, kw, ecos))
        return r

    monkeypatch.setattr(cvxpy_, "solve", spy)
    f = sd.load_case("ieee33-paperC")
    f = f.replace(pv=dataclasses.replace(f.pv, pf_min=np.full(f.n_pv, 0.9)))
    layer = sd.SafetyLayer(f, scr_min=3.0, fast=False)
    rng = np.random.default_rng(0)
    checked = infeasible = 0
    for _ in range(4):
        snap = random_snapshot(f, rng, ramp=True).replace(pv_avail_mw=np.zeros(f.n_pv))
        res = layer.project(random_action(f, rng), snap)
        assert res.status in (PS.PROJECTED, PS.INFEASIBLE) and np.isfinite(res.action.to_vector()).all()
        infeasible += res.status == PS.INFEASIBLE
        for r, kw, ecos in calls:
            tried = r.info["tried"]
            assert "SCS" not in tried, tried
            opts = kw["options"]["CLARABEL"]
            assert opts["warm_start"] is False and opts["time_limit"] <= layer_mod.CVXPY_BUDGET_S
            assert opts["max_iter"] == layer_mod.CVXPY_MAX_ITER
            if ecos is None:
                continue
            assert r.objective == pytest.approx(ecos, rel=1e-5, abs=1e-8)
            checked += 1
        calls.clear()
    assert infeasible >= 2 and checked >= 8


@pytest.mark.parametrize("case,opts", [
    ("ieee33-paperB-4", {}),
    ("ieee33-paperB", {"scr_min": 2.0}),
    ("ieee33-zones", {"pv_error_sd_mw": [0.05] * 4}),  # storage and chance-constraint margins
])
def test_lean_path_equals_general_path(case, opts):
    """The lean path (one compiled call before and one after the QP) returns what the general
    path returns for the same call: status, set-points, model state, violation and active set."""
    f = sd.load_case(case)
    lean = sd.SafetyLayer(f, **opts)
    general = sd.SafetyLayer(f, **opts)
    general._lean_ok = False
    assert lean._lean_ok
    rng = np.random.default_rng(11)
    hits = 0
    seen = set()
    for k in range(40):
        snap = random_snapshot(f, rng, ramp=k % 2 == 1)
        if f.n_ess:
            snap = snap.replace(ess_soc=rng.uniform(f.ess.soc_min, f.ess.soc_max))
        raw = random_action(f, rng)
        if f.n_ess:
            raw = sd.Action(pv_p_mw=raw.pv_p_mw, pv_q_mvar=raw.pv_q_mvar, ess_p_mw=rng.uniform(-1, 1, f.n_ess))
        hits += lean._project_lean(raw, snap) is not None
        a, b = lean.project(raw, snap), general.project(raw, snap)
        seen.add(a.status)
        assert a.status == b.status
        np.testing.assert_allclose(a.action.to_vector(), b.action.to_vector(), atol=1e-7)
        np.testing.assert_allclose(a.vm_pu, b.vm_pu, atol=1e-9)
        np.testing.assert_allclose(a.branch_p_mw, b.branch_p_mw, atol=1e-9)
        assert a.correction_norm == pytest.approx(b.correction_norm, rel=1e-6, abs=1e-8)
        assert a.violation["vm_pu"] == pytest.approx(b.violation["vm_pu"], abs=1e-9)
        assert set(a.active) == set(b.active)
    assert hits >= 30 and PS.PROJECTED in seen  # the lean path did answer (not only fall back)
    # inputs the lean path does not take go to the general path, which raises the typed error
    snap = random_snapshot(f, rng)
    bad = snap.replace(pv_avail_mw=-snap.pv_avail_mw - 1.0)
    with pytest.raises(sd.InputError, match="pv_avail_mw"):
        lean.project(random_action(f, rng), bad)
    with pytest.raises(sd.InputError, match="load_p_mw"):
        lean.project(random_action(f, rng), snap.replace(load_p_mw=np.full(f.n_bus, np.nan)))
