"""Independent references for the safety-layer tests.

Written from the feeder's tables directly (an explicit walk up the tree), in the dense
affine form, so they share no code with the layer's sparse DistFlow programs.
"""

from __future__ import annotations

import itertools
import warnings

import cvxpy as cp
import numpy as np


def path_sets(feeder):
    """For each bus, the list of in-service branches on its path to the root."""
    rs = feeder.radial
    paths = []
    for j in range(feeder.n_bus):
        p, i = [], j
        while rs.parent[i] >= 0:
            p.append(int(rs.parent_branch[i]))
            i = int(rs.parent[i])
        paths.append(p)
    return paths


def lindistflow_matrices(feeder):
    """``w = v0^2 + R @ p_inj + X @ q_inj`` (MW, MVAr; sn = 1 MVA) and branch flow
    ``P = F @ (-p_inj)`` from the definitions: R[j, k] = 2 sum of r over shared path."""
    n, nb = feeder.n_bus, feeder.n_branch
    vn = feeder.bus.vn_kv
    br = feeder.branch
    r = br.r_ohm / vn[br.to_bus] ** 2
    x = br.x_ohm / vn[br.to_bus] ** 2
    paths = [set(p) for p in path_sets(feeder)]
    R, X = np.zeros((n, n)), np.zeros((n, n))
    for j in range(n):
        for k in range(n):
            shared = list(paths[j] & paths[k])
            R[j, k] = 2 * r[shared].sum()
            X[j, k] = 2 * x[shared].sum()
    F = np.zeros((nb, n))  # F[b, k] = 1 iff bus k is downstream of branch b
    for k in range(n):
        for b in paths[k]:
            F[b, k] = 1.0
    # constant line charging at 1 pu (half at each end of every in-service branch)
    bsh = np.zeros(n)
    on = br.in_service
    half = 0.5 * br.b_us[on] * 1e-6 * vn[br.to_bus[on]] ** 2
    np.add.at(bsh, br.from_bus[on], half)
    np.add.at(bsh, br.to_bus[on], half)
    return R, X, F, bsh


def model_state(feeder, snap, act, mats=None):
    """LinDistFlow squared voltages (n_bus,) and branch flows (MW, MVAr) of an action."""
    R, X, F, bsh = mats if mats is not None else lindistflow_matrices(feeder)
    p = -np.asarray(snap.load_p_mw, float).copy()
    q = -np.asarray(snap.load_q_mvar, float).copy() + bsh
    np.add.at(p, feeder.pv.bus, act.pv_p_mw)
    np.add.at(q, feeder.pv.bus, act.pv_q_mvar)
    if feeder.n_ess and act.ess_p_mw is not None:
        np.add.at(p, feeder.ess.bus, act.ess_p_mw)
    if feeder.n_cap:
        steps = act.cap_step if act.cap_step is not None else feeder.cap.step_init
        np.add.at(q, feeder.cap.bus, np.asarray(steps) * feeder.cap.q_step_mvar)
    w = snap.checked(feeder).v_root_pu**2 + R @ p + X @ q
    return w, F @ (-p), F @ (-q)


def violations(feeder, snap, act, mats=None):
    """(voltage violation in squared-voltage pu, thermal violation in MVA), model-based."""
    w, P, Q = model_state(feeder, snap, act, mats)
    vmin, vmax = feeder.bus.vm_min_pu**2, feeder.bus.vm_max_pu**2
    nonroot = np.arange(feeder.n_bus) != feeder.root_bus
    vv = max(np.maximum(w - vmax, 0)[nonroot].max(), np.maximum(vmin - w, 0)[nonroot].max())
    on = feeder.branch.in_service
    smax = np.sqrt(3) * feeder.bus.vn_kv[feeder.branch.to_bus] * feeder.branch.i_max_ka
    vs = np.maximum(np.hypot(P, Q) - smax, 0)[on].max()
    return float(vv), float(vs)


def device_violation(feeder, snap, act):
    pv = feeder.pv
    p, q = act.pv_p_mw, act.pv_q_mvar
    v = [np.maximum(p * p + q * q - pv.s_mva**2, 0).max(initial=0), np.maximum(-p, 0).max(initial=0),
         np.maximum(p - snap.pv_avail_mw, 0).max(initial=0)]
    return float(max(v))


def _setup(feeder, mats):
    """Shared pieces of the reference problems: LinDistFlow maps, PV variables and their bus
    incidence, in-service branches and their MVA ratings."""
    R, X, F, bsh = mats if mats is not None else lindistflow_matrices(feeder)
    n_pv = feeder.pv.bus.size
    Bpv = np.zeros((feeder.n_bus, n_pv))
    Bpv[feeder.pv.bus, np.arange(n_pv)] = 1
    on = feeder.branch.in_service
    smax = (np.sqrt(3) * feeder.bus.vn_kv[feeder.branch.to_bus] * feeder.branch.i_max_ka)[on]
    return R, X, F, bsh, cp.Variable(n_pv), cp.Variable(n_pv), Bpv, on, smax


def reference_projection(feeder, snap, raw, cap_weight=1.0, mats=None):
    """The projection written plainly in CVXPY (dense affine LinDistFlow, Clarabel),
    capacitor steps by full enumeration. Ramp limits as documented: the box around the
    previous set-point, never forcing P above the available power.

    Returns:
        (objective, pv_p, pv_q, cap_step) of the best combination, or None if infeasible.
    """
    R, X, F, bsh, p, q, Bpv, on, smax = _setup(feeder, mats)
    pv = feeder.pv
    n = feeder.n_bus
    p0 = -np.asarray(snap.load_p_mw, float)
    q0 = -np.asarray(snap.load_q_mvar, float) + bsh
    nonroot = np.arange(n) != feeder.root_bus
    best = None
    steps = [range(int(k) + 1) for k in feeder.cap.n_steps]
    for combo in itertools.product(*steps):
        qc = q0.copy()
        np.add.at(qc, feeder.cap.bus, np.asarray(combo) * feeder.cap.q_step_mvar)
        pin = p0 + Bpv @ p
        qin = qc + Bpv @ q
        w = snap.checked(feeder).v_root_pu**2 + R @ pin + X @ qin
        P, Q = (F @ (-pin))[on], (F @ (-qin))[on]
        hi = np.minimum(snap.pv_avail_mw, pv.s_mva)
        lo = np.zeros_like(hi)
        cons = []
        if snap.prev is not None:
            m = 60 * snap.dt_h
            hi = np.minimum(hi, snap.prev.pv_p_mw + pv.ramp_p_pu_per_min * pv.s_mva * m)
            lo = np.minimum(np.maximum(lo, snap.prev.pv_p_mw - pv.ramp_p_pu_per_min * pv.s_mva * m), hi)
            cons += [cp.abs(q - snap.prev.pv_q_mvar) <= pv.ramp_q_pu_per_min * pv.s_mva * m]
        cons += [p >= lo, p <= hi, cp.square(p) + cp.square(q) <= pv.s_mva**2,
                w[nonroot] <= feeder.bus.vm_max_pu[nonroot] ** 2, w[nonroot] >= feeder.bus.vm_min_pu[nonroot] ** 2,
                cp.square(P) + cp.square(Q) <= smax**2]
        cap_cost = cap_weight * float(np.sum((feeder.cap.q_step_mvar * (np.asarray(combo) - raw.cap_step)) ** 2)) \
            if feeder.n_cap else 0.0
        prob = cp.Problem(cp.Minimize(cp.sum_squares(p - raw.pv_p_mw) + cp.sum_squares(q - raw.pv_q_mvar)), cons)
        prob.solve(solver="CLARABEL")
        if prob.status == cp.OPTIMAL:
            tot = prob.value + cap_cost
            if best is None or tot < best[0]:
                best = (tot, p.value.copy(), q.value.copy(), np.asarray(combo))
    return best


def violation_sq(feeder, snap, act, mats=None):
    """The safety layer's violation measure at an action, from the dense model: the sum over
    non-root buses of the squared excess of the squared voltage over its limits (pu^2) plus the
    sum over in-service branches of the squared excess of the apparent power over its rating
    (MVA^2, sn = 1 MVA)."""
    w, P, Q = model_state(feeder, snap, act, mats)
    nonroot = np.arange(feeder.n_bus) != feeder.root_bus
    vmax2, vmin2 = feeder.bus.vm_max_pu[nonroot] ** 2, feeder.bus.vm_min_pu[nonroot] ** 2
    on = feeder.branch.in_service
    smax = (np.sqrt(3) * feeder.bus.vn_kv[feeder.branch.to_bus] * feeder.branch.i_max_ka)[on]
    hi = np.maximum(w[nonroot] - vmax2, 0)
    lo = np.maximum(vmin2 - w[nonroot], 0)
    th = np.maximum(np.hypot(P, Q)[on] - smax, 0)
    return float(hi @ hi + lo @ lo + th @ th)


def reference_min_violation(feeder, snap, mats=None):
    """Least violation (the sum over buses of the squared excess of the squared voltage over its
    limits, plus the sum over branches of the squared excess of the apparent power over its
    rating in MVA: :func:`violation_sq`) over all device-feasible set-points and capacitor
    steps, written plainly in CVXPY. No shedding."""
    R, X, F, bsh, p, q, Bpv, on, smax = _setup(feeder, mats)
    pv = feeder.pv
    n = feeder.n_bus
    nonroot = np.arange(n) != feeder.root_bus
    best = np.inf
    for combo in itertools.product(*[range(int(k) + 1) for k in feeder.cap.n_steps]):
        qc = -np.asarray(snap.load_q_mvar, float) + bsh
        np.add.at(qc, feeder.cap.bus, np.asarray(combo) * feeder.cap.q_step_mvar)
        pin = -np.asarray(snap.load_p_mw, float) + Bpv @ p
        qin = qc + Bpv @ q
        w = (snap.checked(feeder).v_root_pu**2 + R @ pin + X @ qin)[nonroot]
        P, Q = (F @ (-pin))[on], (F @ (-qin))[on]
        vmax2, vmin2 = feeder.bus.vm_max_pu[nonroot] ** 2, feeder.bus.vm_min_pu[nonroot] ** 2
        viol = (cp.sum_squares(cp.pos(w - vmax2)) + cp.sum_squares(cp.pos(vmin2 - w))
                + cp.sum_squares(cp.pos(cp.norm(cp.vstack([P, Q]), axis=0) - smax)))
        cons = [p >= 0, p <= snap.pv_avail_mw, cp.square(p) + cp.square(q) <= pv.s_mva**2]
        prob = cp.Problem(cp.Minimize(viol), cons)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # an inaccurate optimum is close enough here
            prob.solve(solver="CLARABEL", tol_gap_abs=1e-12, tol_gap_rel=1e-10, tol_feas=1e-10)
            if prob.status not in ("optimal", "optimal_inaccurate"):
                prob.solve(solver="CLARABEL")
        best = min(best, prob.value)
    return best


def reference_nearest_with_excess_caps(feeder, snap, raw, act, rel=1e-9, mats=None):
    """The squared distance (MW^2, MVAr^2) from the raw action to the nearest device-feasible
    set-points whose every excess (each bus's squared voltage beyond its limits, each branch's
    apparent power beyond its rating) is at most that of ``act`` (times ``1 + rel``), the
    capacitor steps of ``act``, written plainly in CVXPY: the second stage of the layer's
    lexicographic order (least violation, then nearest), given the least-violating excesses.
    No shedding, no ramp limits. None when Clarabel fails on it (a sliver of a feasible set)."""
    R, X, F, bsh, p, q, Bpv, on, smax = _setup(feeder, mats)
    pv = feeder.pv
    n = feeder.n_bus
    nonroot = np.arange(n) != feeder.root_bus
    w0, P0, Q0 = model_state(feeder, snap, act, mats)
    vmax2, vmin2 = feeder.bus.vm_max_pu[nonroot] ** 2, feeder.bus.vm_min_pu[nonroot] ** 2
    hi = np.maximum(vmax2, w0[nonroot] + rel * np.abs(w0[nonroot]))
    lo = np.minimum(vmin2, w0[nonroot] - rel * np.abs(w0[nonroot]))
    sm = np.maximum(smax, np.hypot(P0, Q0)[on] * (1 + rel))
    qc = -np.asarray(snap.load_q_mvar, float) + bsh
    if feeder.n_cap:
        np.add.at(qc, feeder.cap.bus, np.asarray(act.cap_step) * feeder.cap.q_step_mvar)
    pin = -np.asarray(snap.load_p_mw, float) + Bpv @ p
    qin = qc + Bpv @ q
    w = (snap.checked(feeder).v_root_pu**2 + R @ pin + X @ qin)[nonroot]
    P, Q = (F @ (-pin))[on], (F @ (-qin))[on]
    cons = [p >= 0, p <= snap.pv_avail_mw, cp.square(p) + cp.square(q) <= pv.s_mva**2, w <= hi, w >= lo,
            cp.norm(cp.vstack([P, Q]), axis=0) <= sm]
    prob = cp.Problem(cp.Minimize(cp.sum_squares(p - raw.pv_p_mw) + cp.sum_squares(q - raw.pv_q_mvar)), cons)
    for opts in ({"tol_gap_abs": 1e-12, "tol_gap_rel": 1e-10, "tol_feas": 1e-10}, {}):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                prob.solve(solver="CLARABEL", **opts)
        except cp.error.SolverError:
            continue
        if prob.status in ("optimal", "optimal_inaccurate"):
            return float(prob.value)
    return None  # the reference could not solve it (the caller skips the instance)
