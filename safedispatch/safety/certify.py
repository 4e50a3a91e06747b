"""AC certification of a projected action.

The convex models are approximations: LinDistFlow drops losses (so it overestimates low
voltages under heavy load and misjudges high voltages under heavy reverse flow), and the SOCP
relaxation may be inexact. ``certify`` checks the projected set-points with the full AC power
flow (:func:`safedispatch.run_powerflow`) and, while a voltage or thermal limit is violated:

1. **Bias correction** (rounds 1..): the model's squared voltages are shifted by the measured
   error ``d = V_ac^2 - w_model`` at the current point, and each branch's apparent-power limit
   is scaled by ``S_model / S_ac`` (the AC current expressed as MVA at nominal voltage), then
   the raw action is projected again. A small extra margin (``margin_pu``) on violated limits
   makes the iteration settle on the feasible side.
2. **Re-linearisation** (when bias correction has not certified after ``max_rounds // 2``
   rounds): the squared voltages are linearised around the AC operating point, with the
   sensitivities to the controllable nodes' injections taken from the AC power flow by
   central differences, and the projection is solved with this model.

Rounds stop as soon as the AC violation stops improving: a round that does not reduce the
best violation so far by ``IMPROVE_RTOL`` (relative) is a stall; certification ends after one
stall when the model found no feasible point (INFEASIBLE: no correction can reduce the
violation of a snapshot that no set-point satisfies). Feasible models run up to ``max_rounds``
(their corrections do not improve monotonically, the bias moves with the point, and stopping
them early left AC excesses of 5e-6 pu that later rounds remove). An infeasible snapshot
therefore costs two projections, not ``max_rounds + 1``. The result is the
best round's (the least AC violation: the largest of the voltage excursion in pu and the
loading excess).

The result states ``certified``, the rounds used, the AC voltages and loadings, and, when not
certified, the remaining AC violation. It never claims a certificate it did not check.
"""

from __future__ import annotations

import numpy as np

from safedispatch.powerflow import run_powerflow
from safedispatch.problems.types import Action, Snapshot, net_injection

__all__ = ["ac_check", "certify"]

#: AC tolerance on voltage magnitude (pu) and loading (fraction): the AC power flow's own accuracy, so
#: "certified" means no violation an AC solver could see
AC_TOL = 1e-9
#: a round must reduce the best AC violation so far by this fraction to count as an improvement
IMPROVE_RTOL = 1e-2


def ac_check(feeder, snap: Snapshot, action: Action, shed_p_mw=None):
    """AC power flow of an applied action and its limit violations.

    Returns:
        ``(pf, v_violation_pu, loading_violation)``: the power-flow result, the largest voltage
        excursion outside ``[vm_min, vm_max]`` over non-slack buses, and the largest
        ``loading - 1`` (0 when within limits). A power flow that does not converge counts as
        a violation of at least 1.0 (finite, so nothing non-finite leaves).
    """
    p, q, sh = net_injection(feeder, snap, action, shed_p_mw)
    pf = run_powerflow(feeder, p, q, v_root_pu=snap.v_root_pu, shunt_q_mvar=sh)
    nonroot = np.arange(feeder.n_bus) != feeder.root_bus
    vm = pf.vm_pu[nonroot]
    vv = max(np.maximum(vm - feeder.bus.vm_max_pu[nonroot], 0).max(initial=0),
             np.maximum(feeder.bus.vm_min_pu[nonroot] - vm, 0).max(initial=0))
    lv = max(float(pf.loading.max(initial=0)) - 1.0, 0.0)
    if not pf.converged:
        vv, lv = max(vv, 1.0), max(lv, 1.0)
    return pf, float(vv), float(lv)


def _ac_sensitivities(feeder, snap, action, shed, nodes_bus, h=1e-5):
    """d(V^2)/dp and d(V^2)/dq (per MW / MVAr) of every bus w.r.t. injections at
    ``nodes_bus``, by central differences on one batched AC power flow."""
    p, q, sh = net_injection(feeder, snap, action, shed)
    k = len(nodes_bus)
    P = np.repeat(p[None, :], 4 * k, axis=0)
    Q = np.repeat(q[None, :], 4 * k, axis=0)
    for i, b in enumerate(nodes_bus):
        P[4 * i, b] += h
        P[4 * i + 1, b] -= h
        Q[4 * i + 2, b] += h
        Q[4 * i + 3, b] -= h
    pf = run_powerflow(feeder, P, Q, v_root_pu=snap.v_root_pu, shunt_q_mvar=sh)
    w = pf.vm_pu**2
    Jp = ((w[0::4] - w[1::4]) / (2 * h)).T  # (n_bus, k)
    Jq = ((w[2::4] - w[3::4]) / (2 * h)).T
    return Jp, Jq, bool(pf.converged.all())


def certify(layer, act: Action, snap: Snapshot, res, max_rounds: int = 6, margin_pu: float = 1e-4,
            relinearise_after: int | None = None):
    """Check ``res`` with the AC power flow and correct the model until it holds.

    Args:
        layer: The :class:`~safedispatch.safety.layer.SafetyLayer` that produced ``res``.
        act, snap: The validated raw action and snapshot.
        res: The projection result to certify.
        max_rounds: Projections after the first, at most.
        margin_pu: Extra squared-voltage margin added on limits found violated.
        relinearise_after: Bias-correction rounds before re-linearising (default
            ``max_rounds // 2``; the SOCP model re-linearises at once).

    Returns:
        ``res`` (or a corrected result: the round with the least AC violation) with
        ``certified``, ``rounds`` (the projections made after the first), ``ac_vm_pu``,
        ``ac_loading`` and ``info["certification"]`` (one entry per AC check; ``"best"`` marks
        the round returned). Rounds stop when the violation stops improving (module docstring).
    """
    from safedispatch.safety.layer import ProjectionStatus, _Limits

    f = layer.feeder
    mod = None if layer.zoned else layer.models[0]  # zone models are checked, not corrected
    if relinearise_after is None:
        relinearise_after = max_rounds // 2
    history = []
    cur = res
    relinearised = False
    best = None  # (violation, round, result, power flow)
    stalls = 0
    for rnd in range(max_rounds + 1):
        pf, vv, lv = ac_check(f, snap, cur.action, cur.shed_p_mw)
        history.append({"round": rnd, "v_violation_pu": vv, "loading_violation": lv,
                        "mode": "relinearised" if relinearised else ("bias" if rnd else "model")})
        viol = max(vv, lv)
        improved = best is None or viol < best[0] * (1.0 - IMPROVE_RTOL)
        if best is None or viol < best[0]:
            best = (viol, rnd, cur, pf)
        stalls = 0 if improved else stalls + 1
        ok = vv <= AC_TOL and lv <= AC_TOL
        if ok or mod is None or rnd == max_rounds or cur.status == ProjectionStatus.SOLVER_FAILED:
            break
        if stalls >= 1 and cur.status == ProjectionStatus.INFEASIBLE:
            break  # no correction reduces the violation of an infeasible snapshot: the best round is returned
        tree = mod.mn.tree
        nodes = tree.bus[1:]
        w_model = cur.vm_pu[nodes] ** 2
        w_ac = pf.vm_pu[nodes] ** 2
        base = mod.base_limits()
        if not relinearised and (rnd >= relinearise_after or layer.model == "socp"):
            # the SOCP model's error is relaxation inexactness, not a bias: go straight to
            # the AC linearisation
            relinearised = True
        if relinearised:
            # affine model around the AC point: w(x) = w_ac + J_ac (x - x_k)
            prog = mod.program(correction=True, model="lindistflow")
            ctrl = prog.ctrl_nodes
            Jp, Jq, conv = _ac_sensitivities(f, snap, cur.action, cur.shed_p_mw, tree.bus[1:][ctrl])
            if not conv:
                break
            sn = mod.mn.sn_mva
            Ep = Jp[nodes] * sn - mod.Rw[:, ctrl]
            Eq = Jq[nodes] * sn - mod.Xw[:, ctrl]
            pn, qn = layer._ctrl_injection(mod, cur.action.pv_p_mw[mod.mn.pv], cur.action.pv_q_mvar[mod.mn.pv],
                                           cur.action.ess_p_mw[mod.mn.ess])
            w_lin = _lin_w(layer, mod, cur, snap)
            d = w_ac - w_lin - Ep @ pn - Eq @ qn
            lim = _Limits(wmin=base.wmin + _viol_margin(w_ac, base.wmin, -1, margin_pu),
                          wmax=base.wmax - _viol_margin(w_ac, base.wmax, 1, margin_pu),
                          smax=_thermal(mod, cur, pf, base), d=d, Ep=Ep, Eq=Eq)
        else:
            d = w_ac - w_model
            lim = _Limits(wmin=base.wmin - d + _viol_margin(w_ac, base.wmin, -1, margin_pu),
                          wmax=base.wmax - d - _viol_margin(w_ac, base.wmax, 1, margin_pu),
                          smax=_thermal(mod, cur, pf, base))
        new = layer._project_model(mod, act, snap, lim, model="lindistflow" if relinearised else None)
        new.iterations += cur.iterations
        new.n_solves += cur.n_solves
        if new.status == ProjectionStatus.UNCHANGED and cur.status != ProjectionStatus.UNCHANGED:
            new.status = ProjectionStatus.PROJECTED
        cur = new
    n_rounds = len(history) - 1
    _viol, b_rnd, b_res, pf = best
    if b_res is not cur:
        # the returned result carries the solver effort of every round
        b_res.iterations, b_res.n_solves = cur.iterations, cur.n_solves
    cur = b_res
    history[b_rnd]["best"] = True
    h = history[b_rnd]
    certified = h["v_violation_pu"] <= AC_TOL and h["loading_violation"] <= AC_TOL
    cur.certified = bool(certified)
    cur.rounds = n_rounds
    cur.ac_vm_pu = pf.vm_pu.copy()
    cur.ac_loading = pf.loading.copy()
    cur.info["certification"] = history
    if certified and cur.status == ProjectionStatus.INFEASIBLE:
        # a corrected model found no point within its limits, but the AC check of the point
        # returned passes: a feasible point exists and this is it
        cur.status = ProjectionStatus.PROJECTED
    if not certified:
        cur.violation = {**cur.violation, "ac_vm_pu": h["v_violation_pu"], "ac_loading": h["loading_violation"]}
        if cur.status in (ProjectionStatus.UNCHANGED, ProjectionStatus.PROJECTED):
            cur.info["certification_failed"] = True
    return cur


def _lin_w(layer, mod, cur, snap):
    """Plain model squared voltages (no correction) at the result's set-points."""
    mn = mod.mn
    ctx = layer._context(mod, snap, mod.base_limits(), model="lindistflow")
    pt = layer._evaluate(mod, cur.action.pv_p_mw[mn.pv], cur.action.pv_q_mvar[mn.pv], cur.action.ess_p_mw[mn.ess],
                         cur.action.cap_step[mn.cap], cur.shed_p_mw[mn.tree.bus[1:]] / mn.sn_mva, ctx)
    return pt.w


def _viol_margin(w_ac, limit, sign, margin):
    """``margin`` where the AC value is at or beyond the limit (sign +1: upper, -1: lower)."""
    return np.where(sign * (w_ac - limit) >= -margin, margin, 0.0)


def _thermal(mod, cur, pf, base):
    """Each branch's apparent-power limit scaled by the model/AC ratio at the current point
    (only ever tightened), with a small extra tightening where AC is at or over the rating."""
    tree = mod.mn.tree
    br = tree.branch[1:]
    s_model = np.hypot(cur.branch_p_mw[br], cur.branch_q_mvar[br]) / mod.mn.sn_mva
    vn = mod.layer.feeder.bus.vn_kv[tree.bus[1:]]
    s_ac = np.sqrt(3.0) * vn * pf.i_ka[br] / mod.mn.sn_mva  # the AC current as MVA at nominal voltage
    ratio = np.ones_like(s_model)
    big = s_ac > 1e-9
    ratio[big] = np.minimum(s_model[big] / s_ac[big], 1.0)
    over = pf.loading[br] >= 1 - 1e-9
    return base.smax * ratio * np.where(over, 1 - 1e-4, 1.0)
