"""Small compiled helpers on the safety layer's hot path (device checks, clean-up, limit
violations): a handful of scalar loops instead of dozens of tiny numpy calls per projection."""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from safedispatch.problems.projection import bounds_kernel


@njit(cache=True, nogil=True)
def device_violation(p, q, e, plo, phi, qlo, qhi, s, t, elo, ehi):  # pragma: no cover - compiled
    """Largest violation of the box, disk (``p^2 + q^2 - s^2`` as excess magnitude) and
    power-factor constraints of the inverters and of the storage bounds (MW/MVAr)."""
    v = 0.0
    for i in range(p.shape[0]):
        v = max(v, plo[i] - p[i], p[i] - phi[i], qlo[i] - q[i], q[i] - qhi[i])
        v = max(v, math.sqrt(p[i] * p[i] + q[i] * q[i]) - s[i])
        if t[i] < np.inf:
            v = max(v, abs(q[i]) - t[i] * p[i])
    for k in range(e.shape[0]):
        v = max(v, elo[k] - e[k], e[k] - ehi[k])
    return v


@njit(cache=True, nogil=True)
def onto_devices(p, q, e, plo, phi, qlo, qhi, s, t, elo, ehi):  # pragma: no cover - compiled
    """Move set-points (already feasible to solver tolerance) exactly onto the device limits,
    in place: clip to the boxes, scale into the disk, clip into the power-factor cone."""
    for i in range(p.shape[0]):
        pi = min(max(p[i], plo[i]), phi[i])
        qi = min(max(q[i], qlo[i]), qhi[i])
        mag = math.sqrt(pi * pi + qi * qi)
        if mag > s[i]:
            f = s[i] / mag
            pi = min(max(pi * f, plo[i]), phi[i])
            qi *= f
        if t[i] < np.inf:
            qi = min(max(qi, -t[i] * pi), t[i] * pi)
        p[i] = pi
        q[i] = qi
    for k in range(e.shape[0]):
        e[k] = min(max(e[k], elo[k]), ehi[k])


@njit(cache=True, nogil=True)
def network_violation(w, P, Q, wmin, wmax, smax):  # pragma: no cover - compiled
    """(voltage violation in pu of magnitude, thermal violation in pu MVA, largest violation
    in model units: squared voltage or pu MVA)."""
    vmag = 0.0
    vmod = 0.0
    for j in range(w.shape[0]):
        if w[j] > wmax[j]:
            vmod = max(vmod, w[j] - wmax[j])
            vmag = max(vmag, math.sqrt(w[j]) - math.sqrt(max(wmax[j], 0.0)))
        if w[j] < wmin[j]:
            vmod = max(vmod, wmin[j] - w[j])
            vmag = max(vmag, math.sqrt(max(wmin[j], 0.0)) - math.sqrt(max(w[j], 0.0)))
    vs = 0.0
    for j in range(P.shape[0]):
        vs = max(vs, math.sqrt(P[j] * P[j] + Q[j] * Q[j]) - smax[j])
    return vmag, vs, max(vmod, vs)


@njit(cache=True, nogil=True)
def tree_lindistflow(parent, r2, x2, ws, pi, qi, w, P, Q):  # pragma: no cover - compiled
    """LinDistFlow on the tree, linear in the number of nodes (the dense affine maps of
    :func:`safedispatch.formulations.lindistflow.affine_maps` in two sweeps).

    Arrays over nodes 1..m are indexed ``node - 1``; ``parent`` over nodes 0..m (node 0 the
    source, ``parent[j] < j``). ``pi, qi``: node injections (pu); ``ws``: squared source
    voltage. Writes the lossless flows into each node ``P = -S pi``, ``Q = -S qi`` and the
    squared voltages ``w_j = w_parent - 2 (r_j P_j + x_j Q_j)`` (``r2 = 2 r``, ``x2 = 2 x``).
    """
    m = pi.shape[0]
    for j in range(m):
        P[j] = -pi[j]
        Q[j] = -qi[j]
    for j in range(m - 1, -1, -1):
        pa = parent[j + 1]
        if pa > 0:
            P[pa - 1] += P[j]
            Q[pa - 1] += Q[j]
    for j in range(m):
        pa = parent[j + 1]
        wp = ws if pa == 0 else w[pa - 1]
        w[j] = wp - (r2[j] * P[j] + x2[j] * Q[j])


@njit(cache=True, nogil=True)
def _injections(load_p, load_q, nodes, sn, b_pu, pv_node, ess_node, p, q, e, pi, qi):  # pragma: no cover
    """Node injections (pu) of the loads, line charging and the devices' set-points."""
    for j in range(nodes.shape[0]):
        pi[j] = -load_p[nodes[j]] / sn
        qi[j] = -load_q[nodes[j]] / sn + b_pu[j]
    for k in range(pv_node.shape[0]):
        nd = pv_node[k]
        if nd > 0:  # a device at the source node is absorbed by the slack
            pi[nd - 1] += p[k] / sn
            qi[nd - 1] += q[k] / sn
    for k in range(ess_node.shape[0]):
        nd = ess_node[k]
        if nd > 0:
            pi[nd - 1] += e[k] / sn


@njit(cache=True, nogil=True)
def _all_finite(a):  # pragma: no cover - compiled
    for i in range(a.shape[0]):
        if not math.isfinite(a[i]):
            return False
    return True


@njit(cache=True, nogil=True)
def _outputs(w, P, Q, ws, nodes, root, branch, sn, vm, bp, bq):  # pragma: no cover - compiled
    """Feeder-indexed outputs of a model state: voltages (pu) and sending-end flows (MW, MVAr)."""
    for i in range(vm.shape[0]):
        vm[i] = 0.0
    for i in range(bp.shape[0]):
        bp[i] = 0.0
        bq[i] = 0.0
    vm[root] = math.sqrt(ws)
    for j in range(nodes.shape[0]):
        vm[nodes[j]] = math.sqrt(max(w[j], 0.0))
        bp[branch[j]] = P[j] * sn
        bq[branch[j]] = Q[j] * sn


@njit(cache=True, nogil=True)
def lean_prepare(load_p, load_q, avail, rp, rq, re, has_prev, prev_p, prev_q, prev_e, soc, ws, dt,
                 nodes, sn, b_pu, parent, r2, x2, pv_node, ess_node, p_max, s, t, ramp_p, ramp_q,
                 ess_pmax, e_max, soc_min, soc_max, eta_ch, eta_dis, wmin, wmax, smax,
                 weak_ptr, weak_idx, weak_cap, dev_tol, feas_tol, root, branch,
                 av, out_pv, out_e, pi, qi, w, P, Q, h, c, vm, bp, bq):  # pragma: no cover - compiled
    """The safety layer's lean path before the solve, in one call: input checks, device
    bounds, the model state at the raw action and the feasibility verdict, and the QP's
    right-hand sides.

    Returns -1 when an input fails a check (the caller re-validates with the typed checks of
    :class:`~safedispatch.problems.types.Snapshot`, which raise), 0 when the raw action
    satisfies every device and model limit (``w, P, Q`` and ``vm, bp, bq`` hold its state),
    1 when it needs a projection (``h`` = ``[wmax - w0; w0 - wmin; weak caps]`` and
    ``c[j] = (P0_j, Q0_j)`` of the uncontrolled state, as in ``SafetyLayer._solve_fast``).
    """
    n_pv = s.shape[0]
    tol = 1e-9
    if not (_all_finite(load_p) and _all_finite(load_q) and _all_finite(avail) and _all_finite(rp)
            and _all_finite(rq) and _all_finite(re) and _all_finite(soc)):
        return -1
    for k in range(n_pv):
        if avail[k] < -tol or avail[k] > p_max[k] + tol:
            return -1
        av[k] = min(max(avail[k], 0.0), p_max[k])
    for k in range(soc.shape[0]):
        if soc[k] < soc_min[k] - tol or soc[k] > soc_max[k] + tol:
            return -1
    if has_prev:
        if not (_all_finite(prev_p) and _all_finite(prev_q) and _all_finite(prev_e)):
            return -1
        for k in range(n_pv):
            if prev_p[k] * prev_p[k] + prev_q[k] * prev_q[k] > s[k] * s[k] * (1 + 1e-6) + 1e-12:
                return -1
    bounds_kernel(av, s, ramp_p, ramp_q, has_prev, prev_p, prev_q, soc, ess_pmax, e_max, soc_min, soc_max, eta_ch,
                  eta_dis, dt, out_pv, out_e)
    # the raw action: device limits, then the model
    smax_dev = 0.0
    for k in range(n_pv):
        smax_dev = max(smax_dev, s[k])
    ok = device_violation(rp, rq, re, out_pv[0], out_pv[1], out_pv[2], out_pv[3], s, t, out_e[0],
                          out_e[1]) <= dev_tol * (1.0 + smax_dev)
    for g in range(weak_cap.shape[0]):
        acc = 0.0
        for kk in range(weak_ptr[g], weak_ptr[g + 1]):
            acc += rp[weak_idx[kk]]
        if acc > weak_cap[g] + dev_tol:
            ok = False
    _injections(load_p, load_q, nodes, sn, b_pu, pv_node, ess_node, rp, rq, re, pi, qi)
    tree_lindistflow(parent, r2, x2, ws, pi, qi, w, P, Q)
    if ok and network_violation(w, P, Q, wmin, wmax, smax)[2] <= feas_tol:
        _outputs(w, P, Q, ws, nodes, root, branch, sn, vm, bp, bq)
        return 0
    # the uncontrolled state (no device injection) gives the QP's right-hand sides
    m = nodes.shape[0]
    for j in range(m):
        pi[j] = -load_p[nodes[j]] / sn
        qi[j] = -load_q[nodes[j]] / sn + b_pu[j]
    tree_lindistflow(parent, r2, x2, ws, pi, qi, w, P, Q)
    for j in range(m):
        h[j] = wmax[j] - w[j]
        h[m + j] = w[j] - wmin[j]
        c[j, 0] = P[j]
        c[j, 1] = Q[j]
    for g in range(weak_cap.shape[0]):
        h[2 * m + g] = weak_cap[g]
    return 1


@njit(cache=True, nogil=True)
def lean_finish(x, rp, rq, re, wpv, wess, out_pv, out_e, s, t, load_p, load_q, ws, nodes, sn, b_pu, parent, r2, x2,
                pv_node, ess_node, wmin, wmax, smax, root, branch, p, q, e, pi, qi, w, P, Q, vm, bp, bq):
    # pragma: no cover - compiled
    """The lean path after an optimal solve: the solution moved exactly onto the device limits
    (``p, q, e``), its model state and feeder-indexed outputs. Returns ``(objective,
    correction norm, voltage violation pu, thermal violation pu MVA)``."""
    n_pv = s.shape[0]
    for k in range(n_pv):
        p[k] = x[k]
        q[k] = x[n_pv + k]
    for k in range(e.shape[0]):
        e[k] = x[2 * n_pv + k]
    onto_devices(p, q, e, out_pv[0], out_pv[1], out_pv[2], out_pv[3], s, t, out_e[0], out_e[1])
    _injections(load_p, load_q, nodes, sn, b_pu, pv_node, ess_node, p, q, e, pi, qi)
    tree_lindistflow(parent, r2, x2, ws, pi, qi, w, P, Q)
    _outputs(w, P, Q, ws, nodes, root, branch, sn, vm, bp, bq)
    obj = 0.0
    d2 = 0.0
    for k in range(n_pv):
        dp = p[k] - rp[k]
        dq = q[k] - rq[k]
        obj += wpv[k] * (dp * dp + dq * dq)
        d2 += dp * dp + dq * dq
    for k in range(e.shape[0]):
        de = e[k] - re[k]
        obj += wess[k] * de * de
        d2 += de * de
    vv, vs, _ = network_violation(w, P, Q, wmin, wmax, smax)
    return obj, math.sqrt(d2), vv, vs


@njit(cache=True, parallel=True)
def rhs_batch(load_p, load_q, cap_q, nodes, sn, b_pu, parent, r2, x2, ws, wmin, wmax, weak_cap, n_chunks, h, c):
    """The QP's right-hand sides of a batch: the uncontrolled LinDistFlow state by
    :func:`tree_lindistflow` (linear in the number of nodes), as :func:`lean_prepare` builds them
    for one instance.

    ``load_p, load_q``: ``(B, n_bus)`` MW / MVAr; ``cap_q``: ``(n_bus,)`` constant reactive
    injection (MVAr); writes ``h (B, 2 m + k) = [wmax - w | w - wmin | weak_cap]`` and
    ``c (B, m, 2) = (P_j, Q_j)`` (pu).
    """
    B = load_p.shape[0]
    m = nodes.shape[0]
    nk = weak_cap.shape[0]
    for ch in prange(n_chunks):
        pi = np.empty(m)
        qi = np.empty(m)
        w = np.empty(m)
        P = np.empty(m)
        Q = np.empty(m)
        for i in range(ch * B // n_chunks, (ch + 1) * B // n_chunks):
            for j in range(m):
                nd = nodes[j]
                pi[j] = -load_p[i, nd] / sn
                qi[j] = (cap_q[nd] - load_q[i, nd]) / sn + b_pu[j]
            tree_lindistflow(parent, r2, x2, ws, pi, qi, w, P, Q)
            for j in range(m):
                h[i, j] = wmax[j] - w[j]
                h[i, m + j] = w[j] - wmin[j]
                c[i, j, 0] = P[j]
                c[i, j, 1] = Q[j]
            for g in range(nk):
                h[i, 2 * m + g] = weak_cap[g]


@njit(cache=True, parallel=True)
def rhs_batch_vjp(h_bar, c_bar, nodes, sn, parent, r2, x2, n_chunks, load_p_bar, load_q_bar):
    """Adjoint of :func:`rhs_batch` w.r.t. the loads: adds ``J^T (h_bar, c_bar)`` to
    ``load_p_bar, load_q_bar`` ``(B, n_bus)`` (the two sweeps in reverse order)."""
    B = h_bar.shape[0]
    m = nodes.shape[0]
    for ch in prange(n_chunks):
        wb = np.empty(m)
        Pb = np.empty(m)
        Qb = np.empty(m)
        for i in range(ch * B // n_chunks, (ch + 1) * B // n_chunks):
            hb, cb = h_bar[i], c_bar[i]
            for j in range(m):
                wb[j] = hb[m + j] - hb[j]
                Pb[j] = cb[j, 0]
                Qb[j] = cb[j, 1]
            # w_j = w_parent - (r2 P_j + x2 Q_j): children (larger index) first
            for j in range(m - 1, -1, -1):
                Pb[j] -= r2[j] * wb[j]
                Qb[j] -= x2[j] * wb[j]
                pa = parent[j + 1]
                if pa > 0:
                    wb[pa - 1] += wb[j]
            # P_j = (own injection) + sum over the children: parents first
            for j in range(m):
                pa = parent[j + 1]
                if pa > 0:
                    Pb[j] += Pb[pa - 1]
                    Qb[j] += Qb[pa - 1]
            for j in range(m):
                nd = nodes[j]
                load_p_bar[i, nd] += Pb[j] / sn
                load_q_bar[i, nd] += Qb[j] / sn
