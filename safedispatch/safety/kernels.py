"""Compiled helpers of the safety layer: the hot path's small kernels (device checks, clean-up,
limit violations, the lean path before and after the structured QP: a handful of scalar loops
instead of dozens of tiny numpy calls per projection), the batched right-hand sides of the torch
layer, and the least-violation solver for infeasible snapshots (:func:`least_violation`, a
projected Newton method in the set-points)."""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from safedispatch.backends.structured_qp import _NV, _proj_pv
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
def _all_finite(a, max_abs=np.inf):  # pragma: no cover - compiled
    """Every entry finite and of magnitude <= ``max_abs``."""
    for i in range(a.shape[0]):
        if not (math.isfinite(a[i]) and abs(a[i]) <= max_abs):
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
                 weak_ptr, weak_idx, weak_cap, dev_tol, feas_tol, max_abs, root, branch,
                 av, out_pv, out_e, pi, qi, w, P, Q, h, c, vm, bp, bq):  # pragma: no cover - compiled
    """The safety layer's lean path before the solve, in one call: input checks, device
    bounds, the model state at the raw action and the feasibility verdict, and the QP's
    right-hand sides.

    Returns -1 when an input fails a check (a NaN or an infinity, a power of magnitude above
    ``max_abs`` MW / MVAr, availability or state of charge out of range, previous set-points
    outside a rating: the caller re-validates with the typed checks of
    :class:`~safedispatch.problems.types.Snapshot`, which raise), 0 when the raw action
    satisfies every device and model limit (``w, P, Q`` and ``vm, bp, bq`` hold its state),
    1 when it needs a projection (``h`` = ``[wmax - w0; w0 - wmin; weak caps]`` and
    ``c[j] = (P0_j, Q0_j)`` of the uncontrolled state, as in ``SafetyLayer._solve_fast``).
    """
    n_pv = s.shape[0]
    tol = 1e-9
    if not (_all_finite(load_p, max_abs) and _all_finite(load_q, max_abs) and _all_finite(avail, max_abs)
            and _all_finite(rp, max_abs) and _all_finite(rq, max_abs) and _all_finite(re, max_abs)
            and _all_finite(soc)):
        return -1
    for k in range(n_pv):
        if avail[k] < -tol or avail[k] > p_max[k] + tol:
            return -1
        av[k] = min(max(avail[k], 0.0), p_max[k])
    for k in range(soc.shape[0]):
        if soc[k] < soc_min[k] - tol or soc[k] > soc_max[k] + tol:
            return -1
    if has_prev:
        if not (_all_finite(prev_p, max_abs) and _all_finite(prev_q, max_abs) and _all_finite(prev_e, max_abs)):
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
    correction norm, voltage violation pu, thermal violation pu MVA, largest violation in model
    units)``: the caller gives a success status only when the last is within tolerance."""
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
    vv, vs, vmod = network_violation(w, P, Q, wmin, wmax, smax)
    return obj, math.sqrt(d2), vv, vs, vmod


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


# =============================================================================================
# least violation (infeasible snapshots): a projected Newton method in the primal
# =============================================================================================
#: least Levenberg-Marquardt damping, relative to the largest curvature: bounds the Newton step
#: along directions in which the violation is flat (its minimisers are not unique), which
#: otherwise come out arbitrarily long and are cut back by the line search
LV_LM_FLOOR = 1e-12
@njit(cache=True)
def _lv_project(v, x, kind, tp, tq, n_pv, n_sc, plo, phi, qlo, qhi, s, haspf, th, ih, elo, ehi, verts,
                nvert):  # pragma: no cover - compiled
    """x = the projection of v on the device sets; per device the face reached (0 interior, 1 a
    smooth boundary piece with unit tangent (tp, tq), 2 a corner / a bound). False when a set is
    empty."""
    for k in range(n_pv):
        xp, xq, kd, a, b, _jk = _proj_pv(v[k], v[n_pv + k], k, plo[k], phi[k], qlo[k], qhi[k], s[k], haspf[k], th[k],
                                         ih[k], verts, nvert)
        if kd < 0:
            return False
        x[k] = xp
        x[n_pv + k] = xq
        kind[k] = kd
        tp[k] = a
        tq[k] = b
    o = 2 * n_pv
    for i in range(n_sc):
        vi = v[o + i]
        if vi <= elo[i]:
            x[o + i] = elo[i]
            kind[n_pv + i] = 2
        elif vi >= ehi[i]:
            x[o + i] = ehi[i]
            kind[n_pv + i] = 2
        else:
            x[o + i] = vi
            kind[n_pv + i] = 0
    return True


@njit(cache=True)
def _lv_value(x, r, w, eps, gp, gi_, gv, hu, hl, ap, ai, av, c, S, gw, u, grad, want_grad):  # pragma: no cover
    """``Phi(x) = V(x) + eps/2 sum_k w_k (x_k - r_k)^2`` and ``V(x)``, with
    ``V = 1/2 sum_i [max(0, Gw_i x - hu_i)^2 + max(0, -Gw_i x - hl_i)^2]
    + 1/2 sum_j max(0, ||A_j x + c_j|| - S_j)^2``; the voltage rows' values ``Gw x`` in ``gw``,
    the flows ``A x + c`` in ``u``; with ``want_grad`` the gradient of Phi in ``grad``. ``Gw`` and
    the stacked cone rows ``A`` come in CSR form (on large feeders a row involves the inverters
    of its own lateral only: 3 % of the entries on the 991-bus feeder)."""
    m = gp.shape[0] - 1
    ms = S.shape[0]
    n = x.shape[0]
    V = 0.0
    coef = np.zeros(m)
    for i in range(m):
        gi = 0.0
        for kk in range(gp[i], gp[i + 1]):
            gi += gv[kk] * x[gi_[kk]]
        gw[i] = gi
        a = gi - hu[i]
        b = -gi - hl[i]
        if a > 0.0:
            V += 0.5 * a * a
            coef[i] = a
        elif b > 0.0:
            V += 0.5 * b * b
            coef[i] = -b
    cc = np.zeros(2 * ms)
    for j in range(ms):
        u0 = c[j, 0]
        u1 = c[j, 1]
        for kk in range(ap[2 * j], ap[2 * j + 1]):
            u0 += av[kk] * x[ai[kk]]
        for kk in range(ap[2 * j + 1], ap[2 * j + 2]):
            u1 += av[kk] * x[ai[kk]]
        u[j, 0] = u0
        u[j, 1] = u1
        nu = math.sqrt(u0 * u0 + u1 * u1)
        if nu > S[j]:
            e = nu - S[j]
            V += 0.5 * e * e
            cc[2 * j] = e * u0 / nu
            cc[2 * j + 1] = e * u1 / nu
    dist = 0.0
    for k in range(n):
        dk = x[k] - r[k]
        dist += w[k] * dk * dk
    if want_grad:
        for k in range(n):
            grad[k] = eps * w[k] * (x[k] - r[k])
        for i in range(m):
            ci = coef[i]
            if ci != 0.0:
                for kk in range(gp[i], gp[i + 1]):
                    grad[gi_[kk]] += ci * gv[kk]
        for q in range(2 * ms):
            cq = cc[q]
            if cq != 0.0:
                for kk in range(ap[q], ap[q + 1]):
                    grad[ai[kk]] += cq * av[kk]
    return V + 0.5 * eps * dist, V


@njit(cache=True)
def _lv_faces(x, grad, n_pv, n_sc, Lk, plo, phi, qlo, qhi, s, haspf, th, ih, elo, ehi, verts, nvert, v, y, kind_y, tp_y,
              tq_y, tcol, tval):  # pragma: no cover - compiled
    """The projected-gradient point ``y = Proj(x - grad / L)`` and, from the face each device
    reaches there, the free directions (``tcol``/``tval``: up to two (variable, entry) pairs per
    unit column). Returns ``(number of free directions, max |y - x|)``."""
    n = 2 * n_pv + n_sc
    o = 2 * n_pv
    for k in range(n_pv):
        v[k] = x[k] - grad[k] / Lk[k]
        v[n_pv + k] = x[n_pv + k] - grad[n_pv + k] / Lk[k]
    for i in range(n_sc):
        v[o + i] = x[o + i] - grad[o + i] / Lk[n_pv + i]
    _lv_project(v, y, kind_y, tp_y, tq_y, n_pv, n_sc, plo, phi, qlo, qhi, s, haspf, th, ih, elo, ehi, verts, nvert)
    pg = 0.0
    for i in range(n):
        pg = max(pg, abs(y[i] - x[i]))
    nf = 0
    for k in range(n_pv):
        if kind_y[k] == 0:
            tcol[nf, 0] = k
            tval[nf, 0] = 1.0
            tcol[nf, 1] = -1
            tcol[nf + 1, 0] = n_pv + k
            tval[nf + 1, 0] = 1.0
            tcol[nf + 1, 1] = -1
            nf += 2
        elif kind_y[k] == 1:
            tcol[nf, 0] = k
            tval[nf, 0] = tp_y[k]
            tcol[nf, 1] = n_pv + k
            tval[nf, 1] = tq_y[k]
            nf += 1
    for i in range(n_sc):
        if kind_y[n_pv + i] == 0:
            tcol[nf, 0] = o + i
            tval[nf, 0] = 1.0
            tcol[nf, 1] = -1
            nf += 1
    return nf, pg


@njit(cache=True)
def _lv_syrk(H, R, sign):  # pragma: no cover - compiled
    """H += sign R^T R (symmetric; plain loops over the nonzeros, see _lv_value)."""
    nf = R.shape[1]
    for q in range(R.shape[0]):
        for i in range(nf):
            ri = sign * R[q, i]
            if ri != 0.0:
                for j in range(i + 1):
                    H[i, j] += ri * R[q, j]
    for i in range(nf):
        for j in range(i):
            H[j, i] = H[i, j]


@njit(cache=True)
def _lv_hessian(nf, tcol, tval, act, n_act, cv, ncv, gp, gi_, gv, GG, ap, ai, av, S, u, n):  # pragma: no cover
    """The generalized Hessian of V on the free directions: the violated voltage rows (as the
    Gram matrix less the others when most are violated) and the violated cones
    (``uu^T + (1 - S/|u|) vv^T`` in the flow plane); ``n`` the number of variables."""
    m = gp.shape[0] - 1
    ms = S.shape[0]
    Hr = np.zeros((nf, nf))
    if nf == 0:
        return Hr
    # each variable's free columns (at most two per variable: a device has at most two)
    pos2 = np.full((n, 2), -1, dtype=np.int64)
    for a in range(nf):
        for e in range(2):
            k = tcol[a, e]
            if k >= 0:
                if pos2[k, 0] < 0:
                    pos2[k, 0] = a
                else:
                    pos2[k, 1] = a
    if 2 * n_act > m:
        for a in range(nf):
            for b in range(a + 1):
                acc = 0.0
                for e in range(2):
                    k = tcol[a, e]
                    if k < 0:
                        continue
                    for f2 in range(2):
                        l2 = tcol[b, f2]
                        if l2 >= 0:
                            acc += tval[a, e] * tval[b, f2] * GG[k, l2]
                Hr[a, b] = acc
                Hr[b, a] = acc
        sign = -1.0
        nrow = m - n_act
    else:
        sign = 1.0
        nrow = n_act
    if nrow:
        Rm = np.zeros((nrow, nf))
        q = 0
        for i in range(m):
            if (act[i] != 0) == (sign > 0):
                for kk in range(gp[i], gp[i + 1]):
                    k = gi_[kk]
                    for e2 in range(2):
                        a = pos2[k, e2]
                        if a >= 0:
                            Rm[q, a] += gv[kk] * (tval[a, 0] if tcol[a, 0] == k else tval[a, 1])
                q += 1
        _lv_syrk(Hr, Rm, sign)
    if ncv:
        Rc = np.zeros((2 * ncv, nf))
        q = 0
        for j in range(ms):
            if not cv[j]:
                continue
            nu = math.sqrt(u[j, 0] ** 2 + u[j, 1] ** 2)
            a0 = u[j, 0] / nu
            a1 = u[j, 1] / nu
            sb = math.sqrt(max(0.0, 1.0 - S[j] / nu))
            for t in range(2):
                # row t of A_j on the free columns, into the u-direction and v-direction rows
                cu = a0 if t == 0 else a1
                cv_ = -a1 if t == 0 else a0
                for kk in range(ap[2 * j + t], ap[2 * j + t + 1]):
                    k = ai[kk]
                    for e2 in range(2):
                        a = pos2[k, e2]
                        if a >= 0:
                            val = av[kk] * (tval[a, 0] if tcol[a, 0] == k else tval[a, 1])
                            Rc[q, a] += cu * val
                            Rc[q + 1, a] += sb * cv_ * val
            q += 2
        _lv_syrk(Hr, Rc, 1.0)
    return Hr


@njit(cache=True)
def least_violation(x0, r, w, eps, n_pv, n_sc, plo, phi, qlo, qhi, s, t, elo, ehi, gp, gi_, gv, hu, hl, ap, ai, av, c,
                    S, GG, tol, max_iter, x):  # pragma: no cover - compiled
    """The minimiser over the device sets of ``Phi(x) = V(x) + eps/2 sum_k w_k (x_k - r_k)^2`` (see
    :func:`_lv_value`: the violation of the voltage rows ``hl_i >= -Gw_i x``, ``Gw_i x <= hu_i`` and of
    the cones ``||A_j x + c_j|| <= S_j``; ``Gw`` as ``(gp, gi_, gv)`` and the cones' rows stacked as
    ``(ap, ai, av)``, CSR), from ``x0``, into ``x``.
    The device sets: every inverter's box, disk and power-factor cone (``t``: slope, inf = none),
    the scalar devices' bounds. ``GG = Gw^T Gw`` (the voltage rows' Gram matrix, static).
    ``eps = 0`` minimises V alone (a minimiser near ``x0``).

    Projected Newton (Bertsekas 1982, two-metric form) with Levenberg-Marquardt damping: per
    iteration, the face of each device (interior, a smooth boundary piece, a corner) is read
    from the projected-gradient point; the generalized Hessian of Phi on the free directions
    (violated rows only; the disk's curvature through its multiplier; :func:`_lv_hessian`) gives
    the Newton step, the other components move along the scaled gradient, and the path
    ``Proj(x + alpha d)`` is searched (Armijo on Phi); a projected-gradient step is the
    safeguard. Phi decreases at every step, so the iterates approach its minimisers. Stops when
    a full Newton step moves ``x`` by at most ``tol`` (x units, times the largest rating), when
    the projected gradient vanishes, when no decrease is possible (rounding), or after
    ``max_iter`` iterations.

    Returns ``(status, iterations, V, cond, nf)``: status 0 converged, 1 iteration limit or
    rounding floor (``x`` is the best point found, inside the sets), -1 an empty device set
    (``x = x0``); ``nf`` the number of free directions at ``x`` (0: every device at a corner or a
    bound) and ``cond`` the ratio of the smallest to the largest eigenvalue of V's generalized
    Hessian on them (1 when there are none): near 0, V has a flat direction there.
    """
    n = 2 * n_pv + n_sc
    m = gp.shape[0] - 1
    ms = S.shape[0]
    npv_ = max(n_pv, 1)
    haspf = np.zeros(npv_, dtype=np.bool_)
    th = np.zeros(npv_)
    ih = np.zeros(npv_)
    for k in range(n_pv):
        if t[k] < np.inf:
            haspf[k] = True
            hh = math.hypot(1.0, t[k])
            th[k] = t[k] / hh
            ih[k] = 1.0 / hh
    verts = np.zeros((npv_, _NV + 12, 2))
    nvert = np.full(npv_, -1, dtype=np.int64)
    nd = n_pv + n_sc
    kind = np.zeros(nd + 1, dtype=np.int64)
    tp = np.zeros(npv_)
    tq = np.zeros(npv_)
    kind_y = np.zeros(nd + 1, dtype=np.int64)
    tp_y = np.zeros(npv_)
    tq_y = np.zeros(npv_)
    o = 2 * n_pv
    if not _lv_project(x0, x, kind, tp, tq, n_pv, n_sc, plo, phi, qlo, qhi, s, haspf, th, ih, elo, ehi, verts, nvert):
        for i in range(n):
            x[i] = x0[i]
        return -1, 0, np.inf, 1.0, 0
    gw = np.zeros(m)
    u = np.zeros((ms, 2))
    grad = np.zeros(n)
    gwt = np.zeros(m)
    ut = np.zeros((ms, 2))
    gdum = np.zeros(n)
    xt = np.zeros(n)
    v = np.zeros(n)
    y = np.zeros(n)
    F, V = _lv_value(x, r, w, eps, gp, gi_, gv, hu, hl, ap, ai, av, c, S, gw, u, grad, True)
    xdev = 1.0
    for k in range(n_pv):
        xdev = max(xdev, s[k])
    for i in range(n_sc):
        if np.isfinite(elo[i]):
            xdev = max(xdev, abs(elo[i]))
        if np.isfinite(ehi[i]):
            xdev = max(xdev, abs(ehi[i]))
    tcol = np.full((n, 2), -1, dtype=np.int64)
    tval = np.zeros((n, 2))
    Lk = np.zeros(nd)
    theta = 1e-4
    status = 1
    it = 0
    stall = 0
    act = np.zeros(m, dtype=np.int64)   # +1 upper violated, -1 lower, 0 none
    cv = np.zeros(ms, dtype=np.bool_)
    nf = 0
    n_act = 0
    ncv = 0
    while True:
        # ---- violated rows and the curvature per variable (diagonal of the Hessian) -----------
        dg = np.zeros(n)
        n_act = 0
        for i in range(m):
            if gw[i] - hu[i] > 0.0:
                act[i] = 1
            elif -gw[i] - hl[i] > 0.0:
                act[i] = -1
            else:
                act[i] = 0
            if act[i] != 0:
                n_act += 1
                for kk in range(gp[i], gp[i + 1]):
                    dg[gi_[kk]] += gv[kk] * gv[kk]
        ncv = 0
        for j in range(ms):
            cv[j] = math.sqrt(u[j, 0] ** 2 + u[j, 1] ** 2) > S[j]
            if cv[j]:
                ncv += 1
                for kk in range(ap[2 * j], ap[2 * j + 2]):
                    dg[ai[kk]] += av[kk] * av[kk]
        dmax = 0.0
        for k in range(n):
            dg[k] += eps * w[k]
            dmax = max(dmax, dg[k])
        floor = 1e-14 * dmax + 1e-300
        for k in range(n_pv):
            Lk[k] = max(dg[k], dg[n_pv + k], floor)
        for i in range(n_sc):
            Lk[n_pv + i] = max(dg[o + i], floor)
        nf, pg = _lv_faces(x, grad, n_pv, n_sc, Lk, plo, phi, qlo, qhi, s, haspf, th, ih, elo, ehi, verts, nvert, v,
                           y, kind_y, tp_y, tq_y, tcol, tval)
        if pg == 0.0 or status == 0 or it >= max_iter:
            if pg == 0.0:
                status = 0
            break
        it += 1
        dx = np.zeros(n)
        newton_norm = np.inf
        if nf > 0:
            gr = np.zeros(nf)
            for a in range(nf):
                acc = 0.0
                for e in range(2):
                    k = tcol[a, e]
                    if k >= 0:
                        acc += tval[a, e] * grad[k]
                gr[a] = acc
            Hr = _lv_hessian(nf, tcol, tval, act, n_act, cv, ncv, gp, gi_, gv, GG, ap, ai, av, S, u, n)
            # the distance term, and the disk's curvature on a device moving along it
            for a in range(nf):
                Hr[a, a] += eps * w[tcol[a, 0]]
            for a in range(nf):
                k = tcol[a, 0]
                if tcol[a, 1] >= 0 and k < n_pv:
                    nx_ = math.sqrt(y[k] ** 2 + y[n_pv + k] ** 2)
                    if s[k] > 0.0 and abs(nx_ - s[k]) <= 1e-9 * s[k]:
                        mu = -(grad[k] * y[k] + grad[n_pv + k] * y[n_pv + k]) / nx_
                        if mu > 0.0:
                            Hr[a, a] += mu / s[k]
            gn = 0.0
            hmax = 0.0
            for a in range(nf):
                gn = max(gn, abs(gr[a]))
                hmax = max(hmax, Hr[a, a])
            lam = hmax * (LV_LM_FLOOR + theta * min(1.0, gn / (hmax * xdev + 1e-300)))
            ok = False
            d = np.zeros(nf)
            Lc = np.zeros((nf, nf))
            for _att in range(10):
                okc = True
                for a in range(nf):
                    for b in range(a + 1):
                        acc = Hr[a, b]
                        if a == b:
                            acc += lam
                        for q2 in range(b):
                            acc -= Lc[a, q2] * Lc[b, q2]
                        if a == b:
                            if not (acc > 0.0):
                                okc = False
                                break
                            Lc[a, a] = math.sqrt(acc)
                        else:
                            Lc[a, b] = acc / Lc[b, b]
                    if not okc:
                        break
                if okc:
                    for a in range(nf):
                        acc = -gr[a]
                        for q2 in range(a):
                            acc -= Lc[a, q2] * d[q2]
                        d[a] = acc / Lc[a, a]
                    for a in range(nf - 1, -1, -1):
                        acc = d[a]
                        for q2 in range(a + 1, nf):
                            acc -= Lc[q2, a] * d[q2]
                        d[a] = acc / Lc[a, a]
                    ok = True
                    break
                lam = lam * 100.0 + hmax * 1e-12 + 1e-300
            tg = np.zeros(n)
            if ok:
                newton_norm = 0.0
                for a in range(nf):
                    for e in range(2):
                        k = tcol[a, e]
                        if k >= 0:
                            dx[k] += tval[a, e] * d[a]
                for k in range(n):
                    newton_norm = max(newton_norm, abs(dx[k]))
            for a in range(nf):
                for e in range(2):
                    k = tcol[a, e]
                    if k >= 0:
                        tg[k] += tval[a, e] * gr[a]
            # the components off the free directions move along the scaled gradient
            for k in range(n_pv):
                dx[k] -= (grad[k] - tg[k]) / Lk[k]
                dx[n_pv + k] -= (grad[n_pv + k] - tg[n_pv + k]) / Lk[k]
            for i in range(n_sc):
                dx[o + i] -= (grad[o + i] - tg[o + i]) / Lk[n_pv + i]
        else:
            for k in range(n_pv):
                dx[k] = -grad[k] / Lk[k]
                dx[n_pv + k] = -grad[n_pv + k] / Lk[k]
            for i in range(n_sc):
                dx[o + i] = -grad[o + i] / Lk[n_pv + i]
        # ---- search along the projected path (Armijo on Phi), then the safeguard -------------
        accepted = False
        alpha = 1.0
        Ft = F
        for _ls in range(30):
            for k in range(n):
                v[k] = x[k] + alpha * dx[k]
            _lv_project(v, xt, kind, tp, tq, n_pv, n_sc, plo, phi, qlo, qhi, s, haspf, th, ih, elo, ehi, verts, nvert)
            Ft, _Vt = _lv_value(xt, r, w, eps, gp, gi_, gv, hu, hl, ap, ai, av, c, S, gwt, ut, gdum, False)
            pred = 0.0
            for k in range(n):
                pred += grad[k] * (xt[k] - x[k])
            if Ft <= F + 1e-4 * pred and Ft < F:
                accepted = True
                break
            alpha *= 0.5
        if accepted:
            if alpha == 1.0:
                theta = max(theta * 0.25, 1e-14)
            elif alpha < 0.1:
                theta = min(theta * 2.0, 1e4)
        else:
            theta = min(theta * 4.0, 1e4)
            step = 1.0
            for _ls in range(40):
                for k in range(n_pv):
                    v[k] = x[k] - step * grad[k] / Lk[k]
                    v[n_pv + k] = x[n_pv + k] - step * grad[n_pv + k] / Lk[k]
                for i in range(n_sc):
                    v[o + i] = x[o + i] - step * grad[o + i] / Lk[n_pv + i]
                _lv_project(v, xt, kind, tp, tq, n_pv, n_sc, plo, phi, qlo, qhi, s, haspf, th, ih, elo, ehi, verts,
                            nvert)
                Ft, _Vt = _lv_value(xt, r, w, eps, gp, gi_, gv, hu, hl, ap, ai, av, c, S, gwt, ut, gdum, False)
                pred = 0.0
                for k in range(n):
                    pred += grad[k] * (xt[k] - x[k])
                if Ft <= F + 1e-4 * pred and Ft < F:
                    accepted = True
                    break
                step *= 0.5
        if not accepted:
            # no decrease at rounding: x is as good as it gets (the faces and Hessian are x's)
            if newton_norm <= 1e3 * tol * xdev:
                status = 0
            break
        moved = 0.0
        for k in range(n):
            moved = max(moved, abs(xt[k] - x[k]))
            x[k] = xt[k]
        F_prev = F
        F, V = _lv_value(x, r, w, eps, gp, gi_, gv, hu, hl, ap, ai, av, c, S, gw, u, grad, True)
        stall = stall + 1 if F >= F_prev - 1e-14 * abs(F_prev) else 0
        if (alpha == 1.0 and moved <= tol * xdev and newton_norm <= tol * xdev) or stall >= 3:
            status = 0  # the loop's top recomputes the faces at x for cond, then leaves
    # conditioning of V's Hessian on the free directions at x (the last faces computed)
    cond = 1.0
    if nf > 0:
        Hv = _lv_hessian(nf, tcol, tval, act, n_act, cv, ncv, gp, gi_, gv, GG, ap, ai, av, S, u, n)
        ev = np.linalg.eigvalsh(Hv)
        top = max(ev[-1], 1e-300)
        cond = max(ev[0], 0.0) / top
    return status, it, V, cond, nf
