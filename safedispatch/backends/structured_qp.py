"""Exact, fast solver for the structured projection QP of the safety layer.

The problem (all data float64; ``x = [p (n_pv) | q (n_pv) | e (n_sc)]``, ``n = 2 n_pv + n_sc``)::

    minimize   0.5 sum_i wp_i ((p_i - rp_i)^2 + (q_i - rq_i)^2) + 0.5 sum_k we_k (e_k - re_k)^2
    subject to x in D  (per inverter i: p_lo <= p <= p_hi, q_lo <= q <= q_hi, p^2 + q^2 <= s^2,
                        |q| <= t p; per scalar device k: e_lo <= e <= e_hi)
               G x <= h                              (m linear rows)
               ||A_j x + c_j||_2 <= S_j              (m_soc second-order-cone rows)

Algorithm: a dual semismooth Newton method with constraint generation (for the Newton part see
Qi & Sun, "A nonsmooth version of Newton's method", Math. Program. 58, 1993; for the projected
search Bertsekas, "Projected Newton methods for optimization problems with simple constraints",
SIAM J. Control Optim. 20(2), 1982; for the damping More, "The Levenberg-Marquardt algorithm:
implementation and theory", 1978).

* Only the network rows are dualized: ``lam >= 0`` for ``G x <= h`` and a free 2-vector ``y_j``
  for each cone row, through ``||u|| <= S  <=>  sup_y (y.u - S ||y||) <= 0``. For fixed duals the
  Lagrangian separates per device and its minimizer over ``D`` is the projection
  ``x(z) = Proj_D(r - W^-1 M^T z)`` (``M = [G; A_1; ...]``, ``W`` scalar per device), exact and
  closed form in 2-D (see :func:`_proj_pv`). The dual function ``d(z) = min_{x in D} L(x, z)`` is
  concave; its smooth part has gradient ``M x(z) - b`` and generalized Hessian
  ``-M J W^-1 M^T`` (``J``: Jacobian of the device projections: identity inside, a scaled
  tangent projector on a boundary arc or line, zero at corners); its non-smooth part
  ``-sum_j S_j ||y_j||`` has the known curvature ``(S/||y||)(I - y y^T/||y||^2)``, so the cone
  rows are handled exactly (no cutting planes) and converge quadratically like the rest.
* Two levels. The outer level checks every row at the current ``x(z)`` and builds a working set:
  the rows with a non-zero multiplier plus the most violated rows, skipping a candidate nearly
  parallel (|cos| > 0.9) to one picked in the same round. The inner level maximizes ``d`` over
  the working set only (everything else held at zero) by Newton steps with Levenberg-Marquardt
  damping, a projected Armijo search on ``d`` itself (``lam`` clipped at 0, a cone multiplier
  stepping through the origin set to 0; a failed full step tries the path's first breakpoint,
  where a multiplier leaves, then backtracks by quadratic interpolation), an expanding search
  along directions where ``d`` grows linearly, and a proximal-gradient ascent step as the
  safeguard when the search fails.
  ``d`` increases at every accepted step, so the method cannot cycle.
* The outer row check is cheap: rows are scaled to unit norm at set-up and stored sparse, and a
  row whose value at a reference point is further from its bound than ``||x - x_ref||`` cannot
  be violated, so it is skipped (exact screening).
* Infeasibility is certified by weak duality: ``d(z) > max_{x in D} f(x)`` proves that no point of
  ``D`` meets the network rows. An empty device set is detected by the projection itself, an
  all-zero row with an impossible right-hand side up front.
* A final KKT check in the caller's units, with the caller's (unscaled) ``G`` and ``A``: primal
  feasibility, complementarity (including the alignment of ``A_j x + c_j`` with its
  multiplier), stationarity through an explicit normal-cone test per device set, and the
  duality gap. A failed check is reported as NUMERICAL, never as OPTIMAL.
* Tolerances are absolute, in the units of ``x`` scaled by the size of the device sets (the
  largest rating or finite scalar bound), never by the raw point: the answer for a raw
  set-point of 1e10 MW meets the rows as tightly as the answer for 1 MW.
* Polish: an optimal solve ends with pure Newton steps on the equations of its final active set
  (the rows with a multiplier held as equalities), which take the residuals from the stopping
  tolerance down to rounding. The answer then depends on the data and the active set only, not
  on the start: a warm start changes it by rounding (~1e-15 relative), not by up to the
  tolerance.

Everything per call runs in one numba-compiled function (compiled without reference counting:
it allocates nothing, see ``_NOREF``); each thread gets its own work arrays (allocated on its
first solve), so one :class:`StructuredQP` may be shared between threads.

Limits: the weak-duality certificate needs finite scalar-device bounds (with an infinite
``e_lo``/``e_hi`` an infeasible problem ends at MAX_ITER instead of INFEASIBLE); the working set
holds at most ``max(64, 2 n + 16)`` multipliers (more active rows than that cannot be
represented; the solve then ends at MAX_ITER).
"""

from __future__ import annotations

import math
import threading
from enum import IntEnum

import numpy as np
from numba import njit, prange

from safedispatch.errors import InputError

__all__ = ["QPStatus", "QPResult", "StructuredQP", "WarmStart"]


class QPStatus(IntEnum):
    """Outcome of :meth:`StructuredQP.solve`."""

    OPTIMAL = 0
    """Converged and the KKT check passed."""
    INFEASIBLE = 1
    """Proven infeasible: an empty device set, a constant row violated, or a dual value above
    the largest objective over the device sets (weak duality)."""
    MAX_ITER = 2
    """Iteration limit reached; ``x`` is the last iterate (inside the device sets)."""
    NUMERICAL = 3
    """The iteration stopped but the KKT check failed (or stalled from rounding)."""


# --- internal status codes of the compiled core (mapped to QPStatus) ---------------------------
_ST_OPT, _ST_INF, _ST_MAXIT, _ST_NUM = 0, 1, 2, 3
# infeasibility reasons (reported in QPResult.message)
_WHY_NONE, _WHY_DEVICE, _WHY_ZERO_LIN, _WHY_ZERO_SOC, _WHY_DUAL = 0, 1, 2, 3, 4
# number of KKT residuals and their names, in the order the core writes them
_KKT_NAMES = ("primal_lin", "primal_soc_rel", "device", "dual", "complementarity", "stationarity",
              "gap_rel", "gap")
#: Armijo sufficient-increase constant
_SIGMA = 1e-4
#: tolerance of the cone rows (feasibility and alignment of A x + c with the multiplier) as a
#: fraction of ``tol``, relative to S: half, so the final KKT check (``tol``) holds with a
#: margin. (A tenth cost a Newton iteration or two per solve with an active cone row: the
#: alignment residual's rounding floor on the 33-bus feeders is about 1e-10 S.)
_SOC_TOL = 0.5
#: most violated rows added to the working set per round (and the capacity of its work arrays)
_ADD_MAX = 16
#: corner slots per inverter in the ``verts`` work array (at most 15 line-line and 12 line-circle
#: corners), followed by 12 spare rows for the boundary lines of :func:`_pv_vertices`
_NV = 32
#: Compile flags of the solver's functions: cached, and without NRT reference counting. Each
#: non-inlined call of a compiled function otherwise increments and decrements the reference
#: count of every array argument (atomic operations; ``_solve_core`` takes ~110 arrays), which
#: was half the time of a 4-inverter batch solve (22.5 -> 12.0 us per instance, same iterates).
#: Consequence: nothing in these functions may allocate; all memory comes from ``_alloc_work``.
_NOREF = {"cache": True, "_nrt": False}
#: most scaled rows for which the Gram matrix M M^T is kept (512 rows: 2 MiB)
_GRAM_MAX = 512
#: most variables for which dense copies of the rows are kept (if mostly non-zero)
_DENSE_N_MAX = 32


# =============================================================================================
# 2-D device sets
# =============================================================================================
@njit(**_NOREF)
def _norm2(a, b):
    """sqrt(a^2 + b^2): hypot's overflow safety only where needed (hypot is several times slower,
    and this sits in every loop over the cone rows)."""
    if abs(a) < 1e150 and abs(b) < 1e150:
        return math.sqrt(a * a + b * b)
    return math.hypot(a, b)


@njit(**_NOREF)
def _pv_viol(p, q, plo, phi, qlo, qhi, s, haspf, th, ih):
    """Largest violation (a distance) of the constraints of one inverter at (p, q)."""
    v = plo - p
    v = max(v, p - phi)
    v = max(v, qlo - q)
    v = max(v, q - qhi)
    # sqrt of squares, not hypot (several times faster): an overflow gives +inf, i.e. "violated",
    # which is the right verdict for such a point
    v = max(v, math.sqrt(p * p + q * q) - s)
    if haspf:
        # |q| <= t p as two half-planes with unit normals (-t, +-1)/hypot(1, t)
        v = max(v, ih * q - th * p)
        v = max(v, -ih * q - th * p)
    return v


@njit(**_NOREF)
def _pv_vertices(k, plo, phi, qlo, qhi, s, haspf, th, ih, verts):
    """Store the corner points of inverter k's set in verts[k]; return their number.

    The corners are the pairwise intersections of the boundary curves (box lines, power-factor
    lines, circle) that lie in the set. They do not depend on the point being projected, so they
    are computed once per solve, and only for devices whose projection needs them.
    """
    # the (at most 6) boundary lines n . x = b, kept in verts[k]'s spare rows (no allocation:
    # the solver is compiled without reference counting, see _NOREF)
    nx = verts[k, _NV:_NV + 6, 0]
    ny = verts[k, _NV:_NV + 6, 1]
    bb = verts[k, _NV + 6:_NV + 12, 0]
    nl = 0
    if plo > -np.inf:
        nx[nl], ny[nl], bb[nl] = 1.0, 0.0, plo
        nl += 1
    if phi < np.inf:
        nx[nl], ny[nl], bb[nl] = 1.0, 0.0, phi
        nl += 1
    if qlo > -np.inf:
        nx[nl], ny[nl], bb[nl] = 0.0, 1.0, qlo
        nl += 1
    if qhi < np.inf:
        nx[nl], ny[nl], bb[nl] = 0.0, 1.0, qhi
        nl += 1
    if haspf:
        nx[nl], ny[nl], bb[nl] = -th, ih, 0.0
        nl += 1
        nx[nl], ny[nl], bb[nl] = th, ih, 0.0
        nl += 1
    cnt = 0
    for a in range(nl):
        for b in range(a + 1, nl):
            det = nx[a] * ny[b] - ny[a] * nx[b]
            if abs(det) < 1e-14:
                continue  # parallel (or coincident) lines meet the other curves elsewhere
            px = (bb[a] * ny[b] - bb[b] * ny[a]) / det
            py = (nx[a] * bb[b] - nx[b] * bb[a]) / det
            if _pv_viol(px, py, plo, phi, qlo, qhi, s, haspf, th, ih) <= 1e-12 * (s + abs(px) + abs(py)):
                verts[k, cnt, 0] = px
                verts[k, cnt, 1] = py
                cnt += 1
        # line a with the circle
        beta = bb[a]
        if abs(beta) <= s * (1.0 + 1e-12):
            hh = math.sqrt(max(0.0, s * s - beta * beta))
            for sg in (-1.0, 1.0):
                px = beta * nx[a] - sg * hh * ny[a]
                py = beta * ny[a] + sg * hh * nx[a]
                if _pv_viol(px, py, plo, phi, qlo, qhi, s, haspf, th, ih) <= 1e-12 * (s + abs(px) + abs(py)):
                    verts[k, cnt, 0] = px
                    verts[k, cnt, 1] = py
                    cnt += 1
    return cnt


@njit(**_NOREF, inline="always")
def _proj_pv(vp, vq, k, plo, phi, qlo, qhi, s, haspf, th, ih, verts, nvert):
    """Euclidean projection of (vp, vq) on inverter k's set and the Jacobian of the projection.

    Returns ``(xp, xq, kind, tp, tq, jk)``: ``kind`` 0 = interior (J = I), 1 = on one smooth
    boundary piece (J = jk * tau tau^T with unit tangent tau = (tp, tq); jk = s/|v| on the
    circle, 1 on a line), 2 = at a corner (J = 0), -1 = the set is empty.

    Exactness: if the projection has one active constraint c, it equals the projection on c's
    half-plane/disk, and v violates c; if that point is in the set it *is* the projection
    (nearest point of a superset). Otherwise two or more constraints are active: the projection
    is a corner, and the nearest corner is it.
    """
    eps = 1e-12 * (s + abs(vp) + abs(vq))
    if _pv_viol(vp, vq, plo, phi, qlo, qhi, s, haspf, th, ih) <= eps:
        return vp, vq, 0, 0.0, 0.0, 0.0
    if vp < plo and _pv_viol(plo, vq, plo, phi, qlo, qhi, s, haspf, th, ih) <= eps:
        return plo, vq, 1, 0.0, 1.0, 1.0
    if vp > phi and _pv_viol(phi, vq, plo, phi, qlo, qhi, s, haspf, th, ih) <= eps:
        return phi, vq, 1, 0.0, 1.0, 1.0
    if vq < qlo and _pv_viol(vp, qlo, plo, phi, qlo, qhi, s, haspf, th, ih) <= eps:
        return vp, qlo, 1, 1.0, 0.0, 1.0
    if vq > qhi and _pv_viol(vp, qhi, plo, phi, qlo, qhi, s, haspf, th, ih) <= eps:
        return vp, qhi, 1, 1.0, 0.0, 1.0
    nv = _norm2(vp, vq)
    if nv > s:
        sc = s / nv
        cp = vp * sc
        cq = vq * sc
        if _pv_viol(cp, cq, plo, phi, qlo, qhi, s, haspf, th, ih) <= eps:
            return cp, cq, 1, -vq / nv, vp / nv, sc
    if haspf:
        if ih * vq - th * vp > 0.0:
            a = vp * ih + vq * th
            cp = a * ih
            cq = a * th
            if _pv_viol(cp, cq, plo, phi, qlo, qhi, s, haspf, th, ih) <= eps:
                return cp, cq, 1, ih, th, 1.0
        if -ih * vq - th * vp > 0.0:
            a = vp * ih - vq * th
            cp = a * ih
            cq = -a * th
            if _pv_viol(cp, cq, plo, phi, qlo, qhi, s, haspf, th, ih) <= eps:
                return cp, cq, 1, ih, -th, 1.0
    if nvert[k] < 0:
        nvert[k] = _pv_vertices(k, plo, phi, qlo, qhi, s, haspf, th, ih, verts)
    nc = nvert[k]
    if nc == 0:
        return vp, vq, -1, 0.0, 0.0, 0.0
    best = np.inf
    bp = 0.0
    bq = 0.0
    for i in range(nc):
        dp = verts[k, i, 0] - vp
        dq = verts[k, i, 1] - vq
        d2 = dp * dp + dq * dq
        if d2 < best:
            best = d2
            bp = verts[k, i, 0]
            bq = verts[k, i, 1]
    return bp, bq, 2, 0.0, 0.0, 0.0


@njit(**_NOREF, inline="always")
def _project_all(v, x, jkind, jtp, jtq, jk, n_pv, n_sc, plo, phi, qlo, qhi, s, haspf, th, ih, elo, ehi,
                 verts, nvert):
    """Project v on the product of device sets into x (and record the Jacobians).

    Returns -1 when all sets are non-empty, else the index of the first empty inverter set.
    """
    for k in range(n_pv):
        xp, xq, kind, tp, tq, kk = _proj_pv(v[k], v[n_pv + k], k, plo[k], phi[k], qlo[k], qhi[k], s[k],
                                            haspf[k], th[k], ih[k], verts, nvert)
        if kind < 0:
            return k
        x[k] = xp
        x[n_pv + k] = xq
        jkind[k] = kind
        jtp[k] = tp
        jtq[k] = tq
        jk[k] = kk
    o = 2 * n_pv
    for i in range(n_sc):
        vi = v[o + i]
        if vi <= elo[i]:
            x[o + i] = elo[i]
            jkind[n_pv + i] = 2
        elif vi >= ehi[i]:
            x[o + i] = ehi[i]
            jkind[n_pv + i] = 2
        else:
            x[o + i] = vi
            jkind[n_pv + i] = 0
    return -1


@njit(**_NOREF)
def _cone_residual(dp, dq, gx, gy, ng):
    """Distance from (dp, dq) to the cone generated by the ng 2-D vectors (gx, gy)."""
    nd = _norm2(dp, dq)
    if nd == 0.0:
        return 0.0
    best = nd
    for a in range(ng):
        # in 2-D every point of a finitely generated cone lies in the cone of two generators
        for b in range(a + 1, ng):
            det = gx[a] * gy[b] - gy[a] * gx[b]
            if abs(det) > 1e-14:
                m1 = (dp * gy[b] - dq * gx[b]) / det
                m2 = (gx[a] * dq - gy[a] * dp) / det
                if m1 >= 0.0 and m2 >= 0.0:
                    return 0.0
        t = dp * gx[a] + dq * gy[a]
        if t > 0.0:
            rr = _norm2(dp - t * gx[a], dq - t * gy[a])
            if rr < best:
                best = rr
    return best


# =============================================================================================
# the compiled solver
# =============================================================================================
@njit(**_NOREF)
def _check_inputs(n_pv, n_sc, rp, rq, re, wp, we, plo, phi, qlo, qhi, s, t, elo, ehi, h, c, S):
    """One pass over the dynamic data. Returns (0, 0, 0) when valid, else (field id, kind, index):
    kind 1 = NaN or inf where a finite value is needed, 2 = lo > hi, 3 = not > 0 / not >= 0."""
    for i in range(n_pv):
        if not (np.isfinite(rp[i])):
            return 1, 1, i
        if not (np.isfinite(rq[i])):
            return 2, 1, i
        if not (np.isfinite(wp[i]) and wp[i] > 0.0):
            return 4, 3, i
        if math.isnan(plo[i]) or plo[i] == np.inf:
            return 6, 1, i
        if math.isnan(phi[i]) or phi[i] == -np.inf:
            return 7, 1, i
        if plo[i] > phi[i]:
            return 6, 2, i
        if math.isnan(qlo[i]) or qlo[i] == np.inf:
            return 8, 1, i
        if math.isnan(qhi[i]) or qhi[i] == -np.inf:
            return 9, 1, i
        if qlo[i] > qhi[i]:
            return 8, 2, i
        if not (np.isfinite(s[i]) and s[i] >= 0.0):
            return 10, 3, i
        if not (t[i] >= 0.0):  # NaN fails too; +inf means no power-factor limit
            return 11, 3, i
    for i in range(n_sc):
        if not np.isfinite(re[i]):
            return 3, 1, i
        if not (np.isfinite(we[i]) and we[i] > 0.0):
            return 5, 3, i
        if math.isnan(elo[i]) or elo[i] == np.inf:
            return 12, 1, i
        if math.isnan(ehi[i]) or ehi[i] == -np.inf:
            return 13, 1, i
        if elo[i] > ehi[i]:
            return 12, 2, i
    for i in range(h.shape[0]):
        if not np.isfinite(h[i]):
            return 14, 1, i
    for j in range(S.shape[0]):
        if not (np.isfinite(c[j, 0]) and np.isfinite(c[j, 1])):
            return 15, 1, j
        if not (np.isfinite(S[j]) and S[j] > 0.0):
            return 16, 3, j
    return 0, 0, 0


@njit(**_NOREF, inline="always")
def _dual_terms(z, g, rows, nrows, soc_of_row, Sp, m):
    """sum_r z_r g_r - sum_j S'_j ||y_j|| over the listed rows (soc rows come in pairs)."""
    acc = 0.0
    i = 0
    while i < nrows:
        r = rows[i]
        if r < m:
            acc += z[r] * g[r]
            i += 1
        else:
            j = soc_of_row[r]
            y0 = z[r]
            y1 = z[r + 1]
            acc += y0 * g[r] + y1 * g[r + 1] - Sp[j] * _norm2(y0, y1)
            i += 2
    return acc


@njit(**_NOREF, inline="always")
def _row_dot(mp, mi, mv, Md, i, x):
    """(M x)_i from the dense copy Md of M where there is one (small, dense problems: a short
    loop the compiler vectorizes), else from M's CSR form (the scaled network rows are sparse
    on large feeders: a voltage or flow row only involves the inverters of its own lateral)."""
    acc = 0.0
    if Md.shape[0] > 0:
        for k in range(x.shape[0]):
            acc += Md[i, k] * x[k]
        return acc
    for k in range(mp[i], mp[i + 1]):
        acc += mv[k] * x[mi[k]]
    return acc


@njit(**_NOREF, inline="always")
def _rows_full(x, mp, mi, mv, Md, b, g, nrow, n, dup):
    """g = M x - b for every row; a row equal to an earlier one (or to its negative, as a lower
    and an upper limit are; dup[i] = +-(k + 1)) reuses that row's product."""
    for i in range(nrow):
        dk = dup[i]
        if dk == 0:
            g[i] = _row_dot(mp, mi, mv, Md, i, x) - b[i]
        elif dk > 0:
            g[i] = (g[dk - 1] + b[dk - 1]) - b[i]
        else:
            g[i] = -(g[-dk - 1] + b[-dk - 1]) - b[i]


@njit(**_NOREF)
def _rows_screened(x, xref, gref, g, mp, mi, mv, Md, b, Sp, is_memb, m, ms, n, tol, tol_lin, xdev, dup):
    """g = M x - b on the rows that may be violated; a safe upper bound elsewhere.

    Rows have unit norm (cone blocks unit spectral norm), so ``g_i(x) <= gref_i + ||x - xref||``:
    a row whose bound is within tolerance cannot be violated and needs no product. Working-set
    rows already hold exact values. When more than a quarter of the rows need a product, all
    are computed and the reference moves to x.
    """
    nrow = m + 2 * ms
    dx = 0.0
    for i in range(n):
        dd = x[i] - xref[i]
        dx += dd * dd
    dx = math.sqrt(dx)
    need = 0
    for i in range(m):
        if not is_memb[i] and gref[i] + dx > tol_lin:
            need += 1
    for j in range(ms):
        r0 = m + 2 * j
        if not is_memb[r0] and _norm2(gref[r0], gref[r0 + 1]) + dx - Sp[j] > _SOC_TOL * tol * Sp[j] + 1e-15 * xdev:
            need += 2
    if 4 * need > nrow:
        _rows_full(x, mp, mi, mv, Md, b, g, nrow, n, dup)
        for i in range(n):
            xref[i] = x[i]
        for i in range(nrow):
            gref[i] = g[i]
        return
    for i in range(m):
        if is_memb[i]:
            continue
        if gref[i] + dx > tol_lin:
            g[i] = _row_dot(mp, mi, mv, Md, i, x) - b[i]
        else:
            g[i] = gref[i] + dx
    for j in range(ms):
        r0 = m + 2 * j
        if is_memb[r0]:
            continue
        if _norm2(gref[r0], gref[r0 + 1]) + dx - Sp[j] > _SOC_TOL * tol * Sp[j] + 1e-15 * xdev:
            g[r0] = _row_dot(mp, mi, mv, Md, r0, x) - b[r0]
            g[r0 + 1] = _row_dot(mp, mi, mv, Md, r0 + 1, x) - b[r0 + 1]
        else:
            # a vector no longer than the bound: enough for every test made on it
            nr = _norm2(gref[r0], gref[r0 + 1])
            if nr > 0.0:
                sc = (nr + dx) / nr
                g[r0] = gref[r0] * sc
                g[r0 + 1] = gref[r0 + 1] * sc
            else:
                g[r0] = dx
                g[r0 + 1] = 0.0


@njit(**_NOREF)
def _eval_point(zs, memb, nmr, r, w, winv, mp, mi, mv, Md, b, Sp, soc_of_row, m, n, n_pv, n_sc, plo, phi, qlo, qhi, s,
                haspf, th, ih, elo, ehi, verts, nvert, v, xo, jkind, jtp, jtq, jk, go):
    """x(z) = Proj_D(r - W^-1 M^T z) for z supported on the working set; f(x), d(z) and the
    working-set rows of g. Returns (f, d, index of an empty device set or -1)."""
    for i in range(n):
        v[i] = r[i]
    for q in range(nmr):
        rr = memb[q]
        zr = zs[rr]
        if zr != 0.0:
            if Md.shape[0] > 0:
                for col in range(n):
                    v[col] -= zr * winv[col] * Md[rr, col]
            else:
                for k in range(mp[rr], mp[rr + 1]):
                    col = mi[k]
                    v[col] -= zr * winv[col] * mv[k]
    bad = _project_all(v, xo, jkind, jtp, jtq, jk, n_pv, n_sc, plo, phi, qlo, qhi, s, haspf, th, ih, elo, ehi,
                       verts, nvert)
    f = 0.0
    for i in range(n):
        dd = xo[i] - r[i]
        f += 0.5 * w[i] * dd * dd
    for q in range(nmr):
        rr = memb[q]
        go[rr] = _row_dot(mp, mi, mv, Md, rr, xo) - b[rr]
    d = f + _dual_terms(zs, go, memb, nmr, soc_of_row, Sp, m)
    return f, d, bad


@njit(**_NOREF, inline="always")
def _newton_entries(memb, nmr, m, g, z, Sp, soc_of_row, tol, tol_lin, xdev, fent_row, fent_kind, fent_u0, fent_u1, rhs,
                    support_only):
    """The entries of the Newton system over the working set and their residuals (``rhs``):
    linear rows with a multiplier or a violation, cone rows with a multiplier (the alignment
    residual ``g - S y/||y||``, two entries) or violated without one (one entry along the
    violation). With ``support_only``, only the rows with a multiplier (the polish).

    Returns ``(nF, rviol, res)``: the number of entries, the working set's largest violation of
    its optimality conditions (a cone row out of tolerance counts as ``2 tol_lin``), and the
    largest residual of the entries themselves."""
    nF = 0
    rviol = 0.0
    res = 0.0
    q = 0
    while q < nmr:
        rr = memb[q]
        if rr < m:
            gi = g[rr]
            if z[rr] > 0.0:
                rviol = max(rviol, abs(gi))
            elif not support_only:
                rviol = max(rviol, gi)
            if z[rr] > 0.0 or (gi > tol_lin and not support_only):
                fent_row[nF] = rr
                fent_kind[nF] = 0
                rhs[nF] = gi
                res = max(res, abs(gi))
                nF += 1
            q += 1
        else:
            j = soc_of_row[rr]
            y0 = z[rr]
            y1 = z[rr + 1]
            tj = _SOC_TOL * tol * Sp[j] + 1e-15 * xdev
            ng = _norm2(g[rr], g[rr + 1])
            if y0 != 0.0 or y1 != 0.0:
                ny = _norm2(y0, y1)
                a0 = g[rr] - Sp[j] * y0 / ny
                a1 = g[rr + 1] - Sp[j] * y1 / ny
                if _norm2(a0, a1) > tj or ng - Sp[j] > tj:
                    rviol = max(rviol, 2.0 * tol_lin)
                fent_row[nF] = rr
                fent_kind[nF] = 1
                rhs[nF] = a0
                fent_row[nF + 1] = rr + 1
                fent_kind[nF + 1] = 2
                rhs[nF + 1] = a1
                res = max(res, abs(a0), abs(a1))
                nF += 2
            elif ng - Sp[j] > tj and not support_only:
                rviol = max(rviol, 2.0 * tol_lin)
                fent_row[nF] = rr
                fent_kind[nF] = 3
                fent_u0[nF] = g[rr] / ng
                fent_u1[nF] = g[rr + 1] / ng
                rhs[nF] = ng - Sp[j]
                nF += 1
            q += 2
    return nF, rviol, res


@njit(**_NOREF, inline="always")
def _set_trial(alpha, nF, fent_row, fent_kind, fent_u0, fent_u1, dz, z, zt, memb, nmr):
    """zt = P(z + alpha dz) on the working set: lam clipped at 0, a cone multiplier stepping
    through the origin lands on it (the kink of -S||y||), a new cone multiplier on its ray."""
    for q in range(nmr):
        zt[memb[q]] = z[memb[q]]
    e = 0
    while e < nF:
        kd = fent_kind[e]
        rr = fent_row[e]
        if kd == 0:
            zt[rr] = max(0.0, z[rr] + alpha * dz[e])
            e += 1
        elif kd == 1:
            y0 = z[rr] + alpha * dz[e]
            y1 = z[rr + 1] + alpha * dz[e + 1]
            if y0 * z[rr] + y1 * z[rr + 1] <= 0.0:
                y0 = 0.0
                y1 = 0.0
            zt[rr] = y0
            zt[rr + 1] = y1
            e += 2
        else:
            mu = max(0.0, alpha * dz[e])
            zt[rr] = mu * fent_u0[e]
            zt[rr + 1] = mu * fent_u1[e]
            e += 1


@njit(**_NOREF)
def _newton_dir(nF, fent_row, fent_kind, fent_u0, fent_u1, rhs, z, mp, mi, mv, Md, Sp, soc_of_row, n_pv, n_sc, jkind,
                jtp, jtq, jk, winv, winv_max, xscale, theta, ecol_of, ecoef, stamp, elist, ecnt, acc_v, Bt, K, Kf, dz):
    """Solve (B J W^-1 B^T + C + delta I) dz = rhs for the working-set entries.

    B J W^-1 B^T = Bt Bt^T with Bt = B J^(1/2) W^(-1/2) on the effective columns: two per
    interior inverter, one per inverter on a smooth boundary piece, one per free scalar device,
    none at corners. Bt's rows are kept sparse (the rows of B are), so the product costs
    O(nF^2 nnz) rather than O(nF^2 n); dense (plain loops) where M has a dense copy. C is the
    curvature of -S||y|| of the active cone rows.

    Returns (ok, rhs.dz, delta ||dz||^2): the last two give the quadratic model's predicted
    increase, 0.5 (rhs.dz + delta ||dz||^2) for the full step.
    """
    o = 2 * n_pv
    ne = 0
    for k in range(n_pv):
        kd = jkind[k]
        if kd == 0:
            sw = math.sqrt(winv[k])
            ecol_of[k] = ne
            ecoef[k] = sw
            ecol_of[n_pv + k] = ne + 1
            ecoef[n_pv + k] = sw
            ne += 2
        elif kd == 1 and jk[k] > 0.0:
            sw = math.sqrt(winv[k] * jk[k])
            ecol_of[k] = ne
            ecoef[k] = sw * jtp[k]
            ecol_of[n_pv + k] = ne
            ecoef[n_pv + k] = sw * jtq[k]
            ne += 1
        else:
            ecol_of[k] = -1
            ecol_of[n_pv + k] = -1
    for i in range(n_sc):
        if jkind[n_pv + i] == 0:
            ecol_of[o + i] = ne
            ecoef[o + i] = math.sqrt(winv[o + i])
            ne += 1
        else:
            ecol_of[o + i] = -1
    if Md.shape[0] > 0:
        # dense rows (small problems): Bt and K = Bt Bt^T as plain loops over the ne columns
        for e in range(nF):
            rr = fent_row[e]
            for q in range(ne):
                Bt[e, q] = 0.0
            if fent_kind[e] == 3:
                c0 = fent_u0[e]
                c1 = fent_u1[e]
                for col in range(o + n_sc):
                    q = ecol_of[col]
                    if q >= 0:
                        Bt[e, q] += ecoef[col] * (c0 * Md[rr, col] + c1 * Md[rr + 1, col])
            else:
                for col in range(o + n_sc):
                    q = ecol_of[col]
                    if q >= 0:
                        Bt[e, q] += ecoef[col] * Md[rr, col]
        gmax = 0.0
        dmax = 0.0
        for e in range(nF):
            gmax = max(gmax, abs(rhs[e]))
            for f2 in range(e + 1):
                acc = 0.0
                for q in range(ne):
                    acc += Bt[e, q] * Bt[f2, q]
                K[e, f2] = acc
            dmax = max(dmax, K[e, e])
    else:
        for e in range(nF):
            rr = fent_row[e]
            cnt = 0
            nrows = 2 if fent_kind[e] == 3 else 1
            for t in range(nrows):
                row = rr + t
                cf = 1.0
                if fent_kind[e] == 3:
                    cf = fent_u0[e] if t == 0 else fent_u1[e]
                for kk in range(mp[row], mp[row + 1]):
                    col = mi[kk]
                    q = ecol_of[col]
                    if q < 0:
                        continue
                    val = cf * ecoef[col] * mv[kk]
                    if stamp[q] != e:
                        stamp[q] = e
                        elist[e, cnt] = q
                        cnt += 1
                        Bt[e, q] = val
                    else:
                        Bt[e, q] += val
            ecnt[e] = cnt
            for t in range(cnt):
                stamp[elist[e, t]] = -1
        gmax = 0.0
        dmax = 0.0
        for e in range(nF):
            gmax = max(gmax, abs(rhs[e]))
            # row e scattered into acc_v (kept all-zero outside), dotted with the sparse rows f <= e
            for t in range(ecnt[e]):
                acc_v[elist[e, t]] = Bt[e, elist[e, t]]
            for f2 in range(e + 1):
                acc = 0.0
                for t in range(ecnt[f2]):
                    q = elist[f2, t]
                    acc += Bt[f2, q] * acc_v[q]
                K[e, f2] = acc
            for t in range(ecnt[e]):
                acc_v[elist[e, t]] = 0.0
            dmax = max(dmax, K[e, e])
    e = 0
    while e < nF:
        if fent_kind[e] == 1:
            rr = fent_row[e]
            j = soc_of_row[rr]
            ny = _norm2(z[rr], z[rr + 1])
            cf = Sp[j] / ny
            u0 = z[rr] / ny
            u1 = z[rr + 1] / ny
            K[e, e] += cf * (1.0 - u0 * u0)
            K[e + 1, e] += -cf * u0 * u1
            K[e + 1, e + 1] += cf * (1.0 - u1 * u1)
            e += 2
        else:
            e += 1
    # Levenberg-Marquardt regularization: proportional to the residual, so the local convergence
    # stays quadratic; it keeps singular systems (devices at corners, duplicate rows) solvable,
    # and theta (adapted by the caller from the model's accuracy) sets the step length where d
    # is locally linear
    dscale = max(dmax, winv_max)
    delta = dscale * (1e-13 + theta * min(1.0, gmax / xscale))
    okc = False
    for _attempt in range(6):
        # Cholesky of K + delta I into the upper triangle of Kf (K keeps the matrix)
        okc = True
        for e in range(nF):
            for f2 in range(e + 1):
                acc = K[e, f2]
                if f2 == e:
                    acc += delta
                for q in range(f2):
                    acc -= Kf[q, e] * Kf[q, f2]
                if f2 == e:
                    if not (acc > 0.0):
                        okc = False
                        break
                    Kf[e, e] = math.sqrt(acc)
                else:
                    Kf[f2, e] = acc / Kf[f2, f2]
            if not okc:
                break
        if okc:
            break
        delta = delta * 100.0 + dscale * 1e-10
    if not okc:
        return False, 0.0, 0.0
    for e in range(nF):
        acc = rhs[e]
        for q in range(e):
            acc -= Kf[q, e] * dz[q]
        dz[e] = acc / Kf[e, e]
    for e in range(nF - 1, -1, -1):
        acc = dz[e]
        for q in range(e + 1, nF):
            acc -= Kf[e, q] * dz[q]
        dz[e] = acc / Kf[e, e]
    gtd = 0.0
    dn2 = 0.0
    for e in range(nF):
        gtd += rhs[e] * dz[e]
        dn2 += dz[e] * dz[e]
    return True, gtd, delta * dn2


@njit(cache=True)
def _alloc_work(n, n_pv, n_sc, nrow, msp, cap, soc_of_row, nk):  # pragma: no cover - compiled
    """The work arrays of :func:`_solve_core`, in its argument order (one set per thread)."""
    i8 = np.int64
    npv_ = max(n_pv, 1)
    nr = max(nrow, 1)
    return (
        np.empty(n), np.empty(n), np.empty(n), np.empty(nr), np.empty(max(msp, 1)),      # r w winv b Sp
        np.empty(npv_), np.empty(npv_), np.empty(npv_), np.empty(npv_), np.empty(npv_),  # plo phi qlo qhi s
        np.zeros(npv_, dtype=np.bool_), np.empty(npv_), np.empty(npv_),                  # haspf th ih
        np.empty(n), np.empty(n), np.empty(n), np.empty(nr), np.empty(nr),               # v x xt g gt
        np.zeros(n_pv + n_sc + 1, dtype=i8), np.zeros(npv_), np.zeros(npv_), np.zeros(npv_),  # jkind jtp jtq jk
        np.zeros(n_pv + n_sc + 1, dtype=i8), np.zeros(npv_), np.zeros(npv_), np.zeros(npv_),  # trial copies
        np.zeros((npv_, _NV + 12, 2)), np.full(npv_, -1, dtype=i8),                     # verts nvert
        np.zeros(nr),                                                                   # zt
        np.zeros(cap, dtype=i8), np.zeros(cap, dtype=i8),                               # fent_row fent_kind
        np.zeros(cap), np.zeros(cap),                                                   # fent_u0 u1
        np.zeros((cap, n)), np.zeros((cap, cap)), np.zeros((cap, cap)),                 # Bt K Kf
        np.zeros(cap), np.zeros(cap),                                                   # rhs dz
        np.zeros(nr, dtype=i8), np.zeros(nr),                                           # cand cand_v
        np.zeros(n, dtype=i8), np.zeros(n), np.full(n, -1, dtype=i8),                   # ecol_of ecoef stamp
        np.zeros((cap, n), dtype=i8), np.zeros(cap, dtype=i8), np.zeros(n),             # elist ecnt acc_v
        soc_of_row, np.zeros(n), np.zeros((_ADD_MAX, n)),                               # soc_of_row dirv picked
        np.zeros((_ADD_MAX, n), dtype=i8), np.zeros(_ADD_MAX, dtype=i8), np.zeros(n, dtype=i8),  # pcols pcnt clist
        np.zeros(nr, dtype=i8), np.zeros(nr, dtype=np.bool_),                           # memb is_memb
        np.zeros(n), np.zeros(nr),                                                      # xref gref
        np.zeros((2, 7)),                                                               # gxy
        np.zeros(_ADD_MAX, dtype=i8), np.zeros((_ADD_MAX, 3)),                          # pick_row pick_u
        np.zeros(n), np.zeros(n_pv + n_sc + 1, dtype=i8), np.zeros(npv_), np.zeros(npv_),  # xb jkind_b jtp_b jtq_b
        np.zeros(npv_), np.zeros(nr),                                                   # jk_b gb
        np.zeros(max(nk, 1)),                                                           # kprod
    )


@njit(**_NOREF, inline="always")
def _copy_point(xd, xs, jkind_d, jkind_s, jtp_d, jtp_s, jtq_d, jtq_s, jk_d, jk_s, gd, gs, memb, nmr):
    """Copy a point, its device Jacobians and its first ``nmr`` working-set rows (``s`` -> ``d``):
    a trial point made current, or an accepted one kept while the line search tries a longer
    step (so it need not be evaluated again)."""
    for i in range(xd.shape[0]):
        xd[i] = xs[i]
    for k in range(jkind_d.shape[0]):
        jkind_d[k] = jkind_s[k]
    for k in range(jtp_d.shape[0]):
        jtp_d[k] = jtp_s[k]
        jtq_d[k] = jtq_s[k]
        jk_d[k] = jk_s[k]
    for q in range(nmr):
        gd[memb[q]] = gs[memb[q]]


@njit(**_NOREF)
def _solve_core(n_pv, n_sc, mp, mi, mv, bnorm, lin_map, soc_map, dup, zero_lin, zero_soc, gp, gi_, gv, ap, ai, av, L2,
                Gm, Md, Gd, Ad, rp, rq, re, wp, we, plo_in, phi_in, qlo_in, qhi_in, s_in, t_in, elo_in, ehi_in, h, c, S,
                z, use_warm, tol, max_iter, add_max, reg,
                # work arrays
                r, w, winv, b, Sp, plo, phi, qlo, qhi, s, haspf, th, ih, v, x, xt, g, gt, jkind, jtp, jtq, jk,
                jkind_t, jtp_t, jtq_t, jk_t, verts, nvert, zt, fent_row, fent_kind, fent_u0, fent_u1, Bt, K, Kf, rhs,
                dz, cand, cand_v, ecol_of, ecoef, stamp, elist, ecnt, acc_v, soc_of_row, dirv, picked, pcols, pcnt,
                clist, memb, is_memb, xref, gref, gxy, pick_row, pick_u,
                xb, jkind_b, jtp_b, jtq_b, jk_b, gb, kprod,
                # outputs
                x_out, lam_lin, lam_soc, act_lin, act_soc, kkt, info):
    """Solve one instance. Returns the internal status; fills x_out, multipliers, kkt, info.

    Returns -1 when the dynamic data are invalid (info[1:4] = field id, index, kind; see
    _check_inputs) before touching anything else.

    z (nrow,) holds the scaled duals (lam for the m' linear rows, then y_j pairs); on entry it is
    the warm start when use_warm, on exit the final duals.
    info = [iterations, why (infeasibility reason), which (row/device index), f, d, n_newton,
            n_fallback, nF_max].

    Tolerances are absolute in the units of x, scaled by the size of the device sets (``xdev``:
    the largest rating or finite scalar bound), never by the raw point: a raw set-point of
    1e10 MW must not loosen the feasibility of the answer. An optimal solve ends with the
    polish (pure Newton steps on its final active set, see the module docstring).
    """
    for k in range(info.shape[0]):
        info[k] = 0.0
    field, kind, idx = _check_inputs(n_pv, n_sc, rp, rq, re, wp, we, plo_in, phi_in, qlo_in, qhi_in, s_in, t_in, elo_in,
                                     ehi_in, h, c, S)
    if field:
        info[1] = field
        info[2] = idx
        info[3] = kind
        return -1
    n = 2 * n_pv + n_sc
    m = lin_map.shape[0]          # non-zero linear rows in M (groups of identical caller rows)
    ms = soc_map.shape[0]         # non-zero cone rows in M
    nrow = m + 2 * ms
    capF = K.shape[0]
    o = 2 * n_pv
    use_gram = Gm.shape[0] == nrow
    for k in range(info.shape[0]):
        info[k] = 0.0
    for k in range(kkt.shape[0]):
        kkt[k] = 0.0

    # ---- per-call data -------------------------------------------------------------------
    xscale = 0.0
    xdev = 0.0
    for k in range(n_pv):
        r[k] = rp[k]
        r[n_pv + k] = rq[k]
        w[k] = wp[k]
        w[n_pv + k] = wp[k]
        plo[k] = plo_in[k]
        phi[k] = phi_in[k]
        qlo[k] = qlo_in[k]
        qhi[k] = qhi_in[k]
        s[k] = s_in[k]
        tk = t_in[k]
        if tk < np.inf:
            haspf[k] = True
            hh = math.hypot(1.0, tk)
            th[k] = tk / hh
            ih[k] = 1.0 / hh
        else:
            haspf[k] = False
            th[k] = 0.0
            ih[k] = 0.0
        nvert[k] = -1
        xdev = max(xdev, s[k])
    for i in range(n_sc):
        r[o + i] = re[i]
        w[o + i] = we[i]
        if np.isfinite(elo_in[i]):
            xdev = max(xdev, abs(elo_in[i]))
        if np.isfinite(ehi_in[i]):
            xdev = max(xdev, abs(ehi_in[i]))
    # xscale (the raw point included) only scales the damping; the tolerances use xdev
    xscale = xdev
    winv_max = 0.0
    for i in range(n):
        winv[i] = 1.0 / w[i]
        winv_max = max(winv_max, winv[i])
        xscale = max(xscale, abs(r[i]))
    xscale = max(xscale, 1e-300)
    xdev = max(xdev, 1e-300)
    for i in range(m):
        # identical caller rows are one internal row: the smallest right-hand side binds
        hb = h[lin_map[i, 0]]
        for t in range(1, lin_map.shape[1]):
            jj = lin_map[i, t]
            if jj < 0:
                break
            hb = min(hb, h[jj])
        b[i] = hb / bnorm[i]
    for j in range(ms):
        jj = soc_map[j]
        an = bnorm[m + 2 * j]
        b[m + 2 * j] = -c[jj, 0] / an
        b[m + 2 * j + 1] = -c[jj, 1] / an
        Sp[j] = S[jj] / an
    # tolerances in the scaled rows: rows have unit norm, so a residual is a distance in x-space;
    # absolute, scaled by the device sets (x lies in them), not by the raw point
    tol_lin = tol * max(1.0, xdev)
    # largest objective over D: any feasible point has f <= f_up (weak-duality certificate)
    f_up = 0.0
    for k in range(n_pv):
        dmax = _norm2(r[k], r[n_pv + k]) + s[k]
        f_up += 0.5 * w[k] * dmax * dmax
    for i in range(n_sc):
        dmax = max(abs(r[o + i] - elo_in[i]), abs(r[o + i] - ehi_in[i]))
        f_up += 0.5 * w[o + i] * dmax * dmax  # inf when a bound is infinite: no certificate

    # constant rows (all-zero in G or A) are checked once; a violated one makes the problem
    # infeasible whatever x is (the projection of r on D is still returned as the best point)
    pre = -1
    for i in range(zero_lin.shape[0]):
        if h[zero_lin[i]] < -tol:
            info[1] = _WHY_ZERO_LIN
            info[2] = zero_lin[i]
            pre = _ST_INF
            break
    for i in range(zero_soc.shape[0]):
        jj = zero_soc[i]
        if pre < 0 and _norm2(c[jj, 0], c[jj, 1]) > S[jj] * (1.0 + tol):
            info[1] = _WHY_ZERO_SOC
            info[2] = jj
            pre = _ST_INF

    # ---- z = 0: the projection of r on D; optimal as it is when it meets every row -----------
    for i in range(n):
        v[i] = r[i]
    bad = _project_all(v, x, jkind, jtp, jtq, jk, n_pv, n_sc, plo, phi, qlo, qhi, s, haspf, th, ih, elo_in,
                       ehi_in, verts, nvert)
    if bad >= 0:
        # an empty device set: no point to project on; r itself is returned (finite)
        info[1] = _WHY_DEVICE
        info[2] = bad
        pre = _ST_INF
        for i in range(n):
            x[i] = r[i]
    status = -1
    it = 0
    n_newton = 0
    n_fb = 0
    nF_max = 0
    n_outer = 0
    # reference point of the screened row check: every row has unit norm, so
    # |g_i(x) - g_i(xref)| <= ||x - xref||: a row far from its bound needs no product
    _rows_full(x, mp, mi, mv, Md, b, g, nrow, n, dup)
    for i in range(n):
        xref[i] = x[i]
    for i in range(nrow):
        gref[i] = g[i]
        is_memb[i] = False
    feas0 = True
    for i in range(m):
        if g[i] > tol_lin:
            feas0 = False
    for j in range(ms):
        r0 = m + 2 * j
        if _norm2(g[r0], g[r0 + 1]) - Sp[j] > _SOC_TOL * tol * Sp[j] + 1e-15 * xdev:
            feas0 = False
    if pre >= 0:
        for i in range(nrow):
            z[i] = 0.0
        status = pre
    elif feas0 or nrow == 0:
        for i in range(nrow):
            z[i] = 0.0
        status = _ST_OPT
    else:
        # ---- start point: the warm start (cleaned) or zero -------------------------------------
        nmr = 0
        if use_warm:
            for i in range(m):
                if z[i] > 0.0 and np.isfinite(z[i]):
                    memb[nmr] = i
                    nmr += 1
                else:
                    z[i] = 0.0
            for j in range(ms):
                r0 = m + 2 * j
                if np.isfinite(z[r0]) and np.isfinite(z[r0 + 1]) and (z[r0] != 0.0 or z[r0 + 1] != 0.0):
                    memb[nmr] = r0
                    memb[nmr + 1] = r0 + 1
                    nmr += 2
                else:
                    z[r0] = 0.0
                    z[r0 + 1] = 0.0
            if nmr > capF:
                nmr = 0
                for i in range(nrow):
                    z[i] = 0.0
        else:
            for i in range(nrow):
                z[i] = 0.0
        # d(0) = f(Proj_D r): x holds Proj_D r here
        fval = 0.0
        for i in range(n):
            dd = x[i] - r[i]
            fval += 0.5 * w[i] * dd * dd
        if nmr > 0:
            # start from the warm duals only where they are the better start: the dual value
            # increases at every accepted step, and duals from an unrelated instance can sit
            # below d(0), costing iterations instead of saving them
            ft, dt, bad = _eval_point(z, memb, nmr, r, w, winv, mp, mi, mv, Md, b, Sp, soc_of_row, m, n, n_pv, n_sc,
                                      plo, phi, qlo, qhi, s, haspf, th, ih, elo_in, ehi_in, verts, nvert, v, xt,
                                      jkind_t, jtp_t, jtq_t, jk_t, gt)
            if bad < 0 and dt >= fval:
                fval = ft
                _copy_point(x, xt, jkind, jkind_t, jtp, jtp_t, jtq, jtq_t, jk, jk_t, g, gt, memb, 0)
                _rows_full(x, mp, mi, mv, Md, b, g, nrow, n, dup)
                for i in range(n):
                    xref[i] = x[i]
                for i in range(nrow):
                    gref[i] = g[i]
            else:
                for i in range(nrow):
                    z[i] = 0.0
                nmr = 0
        dval = fval + _dual_terms(z, g, memb, nmr, soc_of_row, Sp, m)

        theta = reg
        npick_prev = 0
        # ---- outer loop: check every row, grow the working set ------------------------------
        while True:
            viol = 0.0
            comp = 0.0
            socok = True
            for i in range(m):
                gi = g[i]
                if gi > viol:
                    viol = gi
                if z[i] > 0.0:
                    comp = max(comp, abs(gi))
            for j in range(ms):
                r0 = m + 2 * j
                tj = _SOC_TOL * tol * Sp[j] + 1e-15 * xdev
                if _norm2(g[r0], g[r0 + 1]) - Sp[j] > tj:
                    socok = False
                if z[r0] != 0.0 or z[r0 + 1] != 0.0:
                    ny = _norm2(z[r0], z[r0 + 1])
                    if _norm2(g[r0] - Sp[j] * z[r0] / ny, g[r0 + 1] - Sp[j] * z[r0 + 1] / ny) > tj:
                        socok = False
            if viol <= tol_lin and comp <= tol_lin and socok:
                status = _ST_OPT
                break
            if dval > f_up * (1.0 + 1e-9) + 1e-300:
                status = _ST_INF
                info[1] = _WHY_DUAL
                break
            if it >= max_iter or n_outer >= max_iter:
                status = _ST_MAXIT
                break
            n_outer += 1
            # new rows change the local model: do not trust the last round's tiny damping
            theta = max(theta, reg * 1e-2)

            # working set: the support of z, then violated rows (most violated first, skipping
            # rows nearly parallel to one picked this round: near-parallel rows, e.g. voltages
            # along one lateral, make the Newton system ill-conditioned, and fixing one usually
            # fixes the others)
            for q in range(nmr):
                is_memb[memb[q]] = False
            nmr = 0
            for i in range(m):
                if z[i] > 0.0:
                    memb[nmr] = i
                    is_memb[i] = True
                    nmr += 1
            for j in range(ms):
                r0 = m + 2 * j
                if z[r0] != 0.0 or z[r0 + 1] != 0.0:
                    memb[nmr] = r0
                    memb[nmr + 1] = r0 + 1
                    is_memb[r0] = True
                    is_memb[r0 + 1] = True
                    nmr += 2
            nc = 0
            for i in range(m):
                if not is_memb[i] and g[i] > tol_lin:
                    cand[nc] = i
                    cand_v[nc] = g[i]
                    nc += 1
            for j in range(ms):
                r0 = m + 2 * j
                if not is_memb[r0]:
                    vj = _norm2(g[r0], g[r0 + 1]) - Sp[j]
                    if vj > _SOC_TOL * tol * Sp[j] + 1e-15 * xdev:
                        cand[nc] = r0
                        cand_v[nc] = vj
                        nc += 1
            for pq in range(npick_prev if not use_gram else 0):
                for t in range(pcnt[pq]):
                    picked[pq, pcols[pq, t]] = 0.0
            nadd = 0
            npick = 0
            nscan = 0
            while nadd < add_max and nc > 0 and nmr < capF and nscan < 4 * add_max:
                nscan += 1
                best = 0
                for q in range(1, nc):
                    if cand_v[q] > cand_v[best]:
                        best = q
                rr = cand[best]
                cand[best] = cand[nc - 1]
                cand_v[best] = cand_v[nc - 1]
                nc -= 1
                if rr >= m and nmr + 2 > capF:
                    continue  # no room for a cone row's pair
                u0 = 1.0
                u1 = 0.0
                if rr >= m:
                    ng = _norm2(g[rr], g[rr + 1])
                    u0 = g[rr] / ng
                    u1 = g[rr + 1] / ng
                parallel = False
                if use_gram:
                    # |cos| between the candidate's direction (u0 M_rr [+ u1 M_rr+1]) and each
                    # picked one, from the Gram matrix of the rows
                    if rr < m:
                        nn = math.sqrt(Gm[rr, rr])
                    else:
                        nn = math.sqrt(max(0.0, u0 * u0 * Gm[rr, rr] + 2.0 * u0 * u1 * Gm[rr, rr + 1]
                                           + u1 * u1 * Gm[rr + 1, rr + 1]))
                    if nn > 0.0:
                        for pq in range(npick):
                            pr = pick_row[pq]
                            p0 = pick_u[pq, 0]
                            p1 = pick_u[pq, 1]
                            acc = u0 * p0 * Gm[rr, pr]
                            if pr >= m:
                                acc += u0 * p1 * Gm[rr, pr + 1]
                            if rr >= m:
                                acc += u1 * p0 * Gm[rr + 1, pr]
                                if pr >= m:
                                    acc += u1 * p1 * Gm[rr + 1, pr + 1]
                            if abs(acc) > 0.9 * nn * pick_u[pq, 2]:
                                parallel = True
                                break
                        if not parallel and npick < pick_row.shape[0]:
                            pick_row[npick] = rr
                            pick_u[npick, 0] = u0
                            pick_u[npick, 1] = u1
                            pick_u[npick, 2] = nn
                            npick += 1
                else:
                    # the candidate's unit direction, sparse: dirv (all-zero outside) on the columns clist
                    cnt = 0
                    nrows = 1 if rr < m else 2
                    nn = 0.0
                    for t in range(nrows):
                        cf = u0 if t == 0 else u1
                        for kk in range(mp[rr + t], mp[rr + t + 1]):
                            col = mi[kk]
                            if stamp[col] != -2:
                                stamp[col] = -2
                                clist[cnt] = col
                                cnt += 1
                            dirv[col] += cf * mv[kk]
                    for t in range(cnt):
                        stamp[clist[t]] = -1
                        nn += dirv[clist[t]] * dirv[clist[t]]
                    nn = math.sqrt(nn)
                    if nn > 0.0:
                        for t in range(cnt):
                            dirv[clist[t]] /= nn
                        for pq in range(npick):
                            acc = 0.0
                            for t in range(cnt):
                                acc += picked[pq, clist[t]] * dirv[clist[t]]
                            if abs(acc) > 0.9:
                                parallel = True
                                break
                    if not parallel and npick < picked.shape[0]:
                        for t in range(cnt):
                            picked[npick, clist[t]] = dirv[clist[t]]
                            pcols[npick, t] = clist[t]
                        pcnt[npick] = cnt
                        npick += 1
                    for t in range(cnt):
                        dirv[clist[t]] = 0.0
                if parallel:
                    continue
                memb[nmr] = rr
                is_memb[rr] = True
                nmr += 1
                if rr >= m:
                    memb[nmr] = rr + 1
                    is_memb[rr + 1] = True
                    nmr += 1
                nadd += 1

            npick_prev = npick
            # ---- inner loop: Newton on the dual restricted to the working set --------------------
            while True:
                # entries of the Newton system: members with a multiplier or a violation
                nF, rviol, _res = _newton_entries(memb, nmr, m, g, z, Sp, soc_of_row, tol, tol_lin, xdev, fent_row,
                                                  fent_kind, fent_u0, fent_u1, rhs, False)
                if rviol <= tol_lin or nF == 0:
                    break
                if it >= max_iter or dval > f_up * (1.0 + 1e-9) + 1e-300:
                    break
                it += 1
                nF_max = max(nF_max, nF)

                # Newton system (B J W^-1 B^T + C + delta I) dz = grad_F
                ok_newton, gtd, ddn = _newton_dir(nF, fent_row, fent_kind, fent_u0, fent_u1, rhs, z, mp, mi, mv, Md,
                                                  Sp, soc_of_row, n_pv, n_sc, jkind, jtp, jtq, jk, winv, winv_max,
                                                  xscale, theta, ecol_of, ecoef, stamp, elist, ecnt, acc_v, Bt, K,
                                                  Kf, dz)
                accepted = False
                if ok_newton:
                    n_newton += 1
                    # projected Armijo search on d; expanding while d grows linearly
                    alpha = 1.0
                    best_d = dval
                    best_f = fval
                    best_alpha = 0.0
                    expanding = False
                    # first breakpoint of the projected path: the step at which a multiplier
                    # reaches zero (a linear one, or a cone one crossing the origin's half-plane)
                    abp = 1.0
                    e = 0
                    while e < nF:
                        kd = fent_kind[e]
                        rr = fent_row[e]
                        if kd == 0:
                            if z[rr] > 0.0 and dz[e] < 0.0:
                                abp = min(abp, -z[rr] / dz[e])
                            e += 1
                        elif kd == 1:
                            yd = z[rr] * dz[e] + z[rr + 1] * dz[e + 1]
                            if yd < 0.0:
                                abp = min(abp, -(z[rr] * z[rr] + z[rr + 1] * z[rr + 1]) / yd)
                            e += 2
                        else:
                            e += 1
                    for _ls in range(60):
                        _set_trial(alpha, nF, fent_row, fent_kind, fent_u0, fent_u1, dz, z, zt, memb, nmr)
                        ft, dt, bad = _eval_point(zt, memb, nmr, r, w, winv, mp, mi, mv, Md, b, Sp, soc_of_row, m, n,
                                                  n_pv, n_sc, plo, phi, qlo, qhi, s, haspf, th, ih, elo_in, ehi_in,
                                                  verts, nvert, v, xt, jkind_t, jtp_t, jtq_t, jk_t, gt)
                        # predicted increase: linear smooth part + exact change of -S||y||
                        pred = 0.0
                        q = 0
                        while q < nmr:
                            rr = memb[q]
                            if rr < m:
                                pred += g[rr] * (zt[rr] - z[rr])
                                q += 1
                            else:
                                j = soc_of_row[rr]
                                pred += g[rr] * (zt[rr] - z[rr]) + g[rr + 1] * (zt[rr + 1] - z[rr + 1])
                                pred -= Sp[j] * (_norm2(zt[rr], zt[rr + 1]) - _norm2(z[rr], z[rr + 1]))
                                q += 2
                        slack = 1e-14 * (abs(dval) + abs(dt))
                        ok_ls = (dt - dval >= _SIGMA * pred - slack) and (pred > 0.0 or dt >= dval)
                        if not expanding:
                            if ok_ls:
                                best_d = dt
                                best_alpha = alpha
                                accepted = True
                                best_f = ft
                                _copy_point(xb, xt, jkind_b, jkind_t, jtp_b, jtp_t, jtq_b, jtq_t, jk_b, jk_t, gb, gt,
                                            memb, nmr)
                                if alpha == 1.0 and pred > 0.0 and dt - dval >= 0.9 * pred and dt <= f_up:
                                    expanding = True
                                    alpha = 4.0
                                    continue
                                break
                            # the full step failed: first the breakpoint (a multiplier leaving; with
                            # near-parallel rows the Newton step along their difference is long and
                            # d falls steeply past it), then the maximizer of the quadratic through
                            # d(z), its slope pred/alpha and d at alpha, kept in [0.1, 0.5] alpha
                            red = pred - (dt - dval)
                            if alpha == 1.0 and abp < 1.0:
                                alpha = abp
                            elif pred > 0.0 and red > 0.0 and np.isfinite(dt):
                                alpha *= min(0.5, max(0.1, 0.5 * pred / red))
                            else:
                                alpha *= 0.5
                            if alpha < 1e-12:
                                break
                        else:
                            if ok_ls and dt > best_d and dt - dval >= 0.9 * pred:
                                best_d = dt
                                best_alpha = alpha
                                best_f = ft
                                _copy_point(xb, xt, jkind_b, jkind_t, jtp_b, jtp_t, jtq_b, jtq_t, jk_b, jk_t, gb, gt,
                                            memb, nmr)
                                if dt > f_up:
                                    break
                                alpha *= 4.0
                                continue
                            break
                    # trust update from the model's accuracy (Levenberg-Marquardt)
                    if not accepted:
                        theta = min(theta * 4.0, 1e4)
                    elif best_alpha < 1.0 and best_alpha == abp:
                        pass  # cut short by a leaving multiplier, not by a poor model
                    elif best_alpha < 1.0:
                        # damping that would have given about the accepted step length
                        theta = min(theta * max(4.0, 1.0 / best_alpha), 1e4)
                    elif best_alpha > 1.0:
                        theta = max(theta / 16.0, 1e-12)
                    else:
                        rho = (best_d - dval) / max(0.5 * (gtd + ddn), 1e-300)
                        if rho > 0.75:
                            theta = max(theta / 4.0, 1e-12)
                        elif rho < 0.25:
                            theta = min(theta * 2.0, 1e4)
                    if accepted:
                        if best_alpha != alpha:
                            # the last evaluation was another alpha: the accepted step's duals (its
                            # point, rows and Jacobians were kept when it was accepted)
                            _set_trial(best_alpha, nF, fent_row, fent_kind, fent_u0, fent_u1, dz, z, zt, memb, nmr)
                        for q in range(nmr):
                            rr = memb[q]
                            z[rr] = zt[rr]
                            g[rr] = gb[rr]
                        _copy_point(x, xb, jkind, jkind_b, jtp, jtp_b, jtq, jtq_b, jk, jk_b, g, gb, memb, 0)
                        fval = best_f
                        dval = best_d
                if not accepted:
                    # safeguard: a proximal-gradient ascent step with step 1/L on the working set
                    n_fb += 1
                    tstep = 1.0 / (L2 * winv_max)
                    q = 0
                    while q < nmr:
                        rr = memb[q]
                        if rr < m:
                            z[rr] = max(0.0, z[rr] + tstep * g[rr])
                            q += 1
                        else:
                            j = soc_of_row[rr]
                            y0 = z[rr] + tstep * g[rr]
                            y1 = z[rr + 1] + tstep * g[rr + 1]
                            ny = _norm2(y0, y1)
                            thr = tstep * Sp[j]
                            if ny <= thr:
                                z[rr] = 0.0
                                z[rr + 1] = 0.0
                            else:
                                z[rr] = y0 * (1.0 - thr / ny)
                                z[rr + 1] = y1 * (1.0 - thr / ny)
                            q += 2
                    fval, dval, bad = _eval_point(z, memb, nmr, r, w, winv, mp, mi, mv, Md, b, Sp, soc_of_row, m, n,
                                                  n_pv, n_sc, plo, phi, qlo, qhi, s, haspf, th, ih, elo_in, ehi_in,
                                                  verts, nvert, v, x, jkind, jtp, jtq, jk, g)
            # ---- every row again (screened) -----------------------------------------------------
            _rows_screened(x, xref, gref, g, mp, mi, mv, Md, b, Sp, is_memb, m, ms, n, tol, tol_lin, xdev, dup)
        # picked rows of the last round back to zero (the next solve with these work arrays
        # starts from npick_prev = 0)
        for pq in range(npick_prev if not use_gram else 0):
            for t in range(pcnt[pq]):
                picked[pq, pcols[pq, t]] = 0.0
        if status == _ST_OPT and nmr > 0:
            # ---- polish: the answer must not depend on the start (warm or cold) -----------------
            # The stopping rule leaves residuals up to tol_lin, so two starts that end on the same
            # active set can give points ~tol apart. Pure Newton steps on the equations of that
            # active set (the rows with a multiplier held as equalities; no damping, no
            # projection of the multipliers) take the residuals down to rounding: the point then
            # depends on the active set and the data only. A step that would move a multiplier
            # through zero (not this active set) or does not reduce the residual ends the polish;
            # a polished point that fails the full row check is replaced by the unpolished one.
            for q in range(nmr):
                cand_v[q] = z[memb[q]]
            polished = False
            for _pol in range(4):
                nF, _rv, res0 = _newton_entries(memb, nmr, m, g, z, Sp, soc_of_row, tol, tol_lin, xdev, fent_row,
                                                fent_kind, fent_u0, fent_u1, rhs, True)
                if nF == 0 or res0 <= 1e-15 * max(1.0, xdev):
                    break
                ok_newton, gtd, ddn = _newton_dir(nF, fent_row, fent_kind, fent_u0, fent_u1, rhs, z, mp, mi, mv, Md,
                                                  Sp, soc_of_row, n_pv, n_sc, jkind, jtp, jtq, jk, winv, winv_max,
                                                  xscale, 0.0, ecol_of, ecoef, stamp, elist, ecnt, acc_v, Bt, K, Kf,
                                                  dz)
                if not ok_newton:
                    break
                valid = True
                for q in range(nmr):
                    zt[memb[q]] = z[memb[q]]
                e = 0
                while e < nF:
                    rr = fent_row[e]
                    if fent_kind[e] == 0:
                        zt[rr] = z[rr] + dz[e]
                        if not (zt[rr] > 0.0):
                            valid = False
                        e += 1
                    else:
                        zt[rr] = z[rr] + dz[e]
                        zt[rr + 1] = z[rr + 1] + dz[e + 1]
                        if not (zt[rr] * z[rr] + zt[rr + 1] * z[rr + 1] > 0.0):
                            valid = False
                        e += 2
                if not valid:
                    break
                ft, dt, bad = _eval_point(zt, memb, nmr, r, w, winv, mp, mi, mv, Md, b, Sp, soc_of_row, m, n, n_pv,
                                          n_sc, plo, phi, qlo, qhi, s, haspf, th, ih, elo_in, ehi_in, verts, nvert, v,
                                          xt, jkind_t, jtp_t, jtq_t, jk_t, gt)
                if bad >= 0:
                    break
                nF1, _rv1, res1 = _newton_entries(memb, nmr, m, gt, zt, Sp, soc_of_row, tol, tol_lin, xdev, fent_row,
                                                  fent_kind, fent_u0, fent_u1, rhs, True)
                if not (res1 < res0) or nF1 != nF:
                    break
                for q in range(nmr):
                    z[memb[q]] = zt[memb[q]]
                _copy_point(x, xt, jkind, jkind_t, jtp, jtp_t, jtq, jtq_t, jk, jk_t, g, gt, memb, nmr)
                fval = ft
                dval = dt
                polished = True
            if polished:
                _rows_full(x, mp, mi, mv, Md, b, g, nrow, n, dup)
                ok_pol = True
                for i in range(m):
                    if g[i] > tol_lin or (z[i] > 0.0 and abs(g[i]) > tol_lin):
                        ok_pol = False
                for j in range(ms):
                    r0 = m + 2 * j
                    if _norm2(g[r0], g[r0 + 1]) - Sp[j] > _SOC_TOL * tol * Sp[j] + 1e-15 * xdev:
                        ok_pol = False
                if not ok_pol:
                    for q in range(nmr):
                        z[memb[q]] = cand_v[q]
                    fval, dval, bad = _eval_point(z, memb, nmr, r, w, winv, mp, mi, mv, Md, b, Sp, soc_of_row, m, n,
                                                  n_pv, n_sc, plo, phi, qlo, qhi, s, haspf, th, ih, elo_in, ehi_in,
                                                  verts, nvert, v, x, jkind, jtp, jtq, jk, g)
                    _rows_full(x, mp, mi, mv, Md, b, g, nrow, n, dup)

    # ---- outputs in the caller's units and the KKT check ------------------------------------
    fin = True
    for i in range(n):
        if not np.isfinite(x[i]):
            fin = False
    for i in range(nrow):
        if not np.isfinite(z[i]):
            fin = False
    if not fin:
        # rounding blew up: fall back to the projection of r, which is finite
        for i in range(n):
            v[i] = r[i]
        _project_all(v, x, jkind, jtp, jtq, jk, n_pv, n_sc, plo, phi, qlo, qhi, s, haspf, th, ih, elo_in,
                     ehi_in, verts, nvert)
        for i in range(nrow):
            z[i] = 0.0
        status = _ST_NUM
    for i in range(n):
        x_out[i] = x[i]
    for i in range(lam_lin.shape[0]):
        lam_lin[i] = 0.0
        act_lin[i] = False
    for j in range(lam_soc.shape[0]):
        lam_soc[j] = 0.0
        act_soc[j] = False
    for i in range(m):
        if z[i] > 0.0:
            # the multiplier goes to the binding caller row of the group (the first smallest h)
            jb = lin_map[i, 0]
            for t in range(1, lin_map.shape[1]):
                jj = lin_map[i, t]
                if jj < 0:
                    break
                if h[jj] < h[jb]:
                    jb = jj
            lam_lin[jb] = z[i] / bnorm[i]
            act_lin[jb] = True
    for j in range(ms):
        r0 = m + 2 * j
        ny = _norm2(z[r0], z[r0 + 1])
        if ny > 0.0:
            lam_soc[soc_map[j]] = ny / bnorm[r0]
            act_soc[soc_map[j]] = True

    # KKT residuals with the caller's G and A (CSR or, on small dense problems, dense copies;
    # unscaled: independent of the internal row scaling)
    mo = gp.shape[0] - 1
    mso = (ap.shape[0] - 1) // 2
    fval = 0.0
    for i in range(n):
        dd = x[i] - r[i]
        fval += 0.5 * w[i] * dd * dd
    p_lin = 0.0
    comp_v = 0.0
    lag = fval
    for i in range(mo):
        # identical caller rows (dup[nrow + i] = k + 1 > 0) share the product, bit for bit
        dk = dup[nrow + i]
        if dk == 0:
            kprod[i] = _row_dot(gp, gi_, gv, Gd, i, x)
        else:
            kprod[i] = kprod[dk - 1]
        acc = kprod[i] - h[i]
        p_lin = max(p_lin, acc)
        comp_v = max(comp_v, abs(lam_lin[i] * acc))
        lag += lam_lin[i] * acc
    p_soc = 0.0
    for j in range(mso):
        dk = dup[nrow + mo + j]
        if dk == 0:
            kprod[mo + 2 * j] = _row_dot(ap, ai, av, Ad, 2 * j, x)
            kprod[mo + 2 * j + 1] = _row_dot(ap, ai, av, Ad, 2 * j + 1, x)
        else:
            kprod[mo + 2 * j] = kprod[mo + 2 * (dk - 1)]
            kprod[mo + 2 * j + 1] = kprod[mo + 2 * (dk - 1) + 1]
        a0 = kprod[mo + 2 * j] + c[j, 0]
        a1 = kprod[mo + 2 * j + 1] + c[j, 1]
        na = _norm2(a0, a1)
        p_soc = max(p_soc, (na - S[j]) / S[j])
        comp_v = max(comp_v, lam_soc[j] * abs(na - S[j]))
        if lam_soc[j] > 0.0:
            # the multiplier direction must be the direction of A x + c (alignment)
            jm = -1
            for jj in range(ms):
                if soc_map[jj] == j:
                    jm = jj
            r0 = m + 2 * jm
            ny = _norm2(z[r0], z[r0 + 1])
            y0 = lam_soc[j] * z[r0] / ny
            y1 = lam_soc[j] * z[r0 + 1] / ny
            comp_v = max(comp_v, lam_soc[j] * _norm2(a0 - S[j] * z[r0] / ny, a1 - S[j] * z[r0 + 1] / ny))
            lag += y0 * a0 + y1 * a1 - S[j] * lam_soc[j]
    # device feasibility
    dev = 0.0
    for k in range(n_pv):
        dev = max(dev, _pv_viol(x[k], x[n_pv + k], plo[k], phi[k], qlo[k], qhi[k], s[k], haspf[k], th[k], ih[k]))
    for i in range(n_sc):
        dev = max(dev, elo_in[i] - x[o + i], x[o + i] - ehi_in[i])
    # stationarity: r - W^-1 (G^T lam + sum A_j^T y_j) - x must lie in the normal cone of D at x
    for i in range(n):
        v[i] = r[i]
    for i in range(mo):
        if lam_lin[i] > 0.0:
            for kk in range(gp[i], gp[i + 1]):
                v[gi_[kk]] -= lam_lin[i] * winv[gi_[kk]] * gv[kk]
    for jm in range(ms):
        r0 = m + 2 * jm
        ny = _norm2(z[r0], z[r0 + 1])
        if ny > 0.0:
            j = soc_map[jm]
            for t in range(2):
                yt = lam_soc[j] * z[r0 + t] / ny
                for kk in range(ap[2 * j + t], ap[2 * j + t + 1]):
                    v[ai[kk]] -= winv[ai[kk]] * yt * av[kk]
    stat = 0.0
    vscale = 1.0
    gx = gxy[0]
    gy = gxy[1]
    for k in range(n_pv):
        xp = x[k]
        xq = x[n_pv + k]
        vscale = max(vscale, abs(v[k]), abs(v[n_pv + k]))
        ea = 1e-9 * (s[k] + abs(xp) + abs(xq) + 1e-300)
        ng = 0
        whole = False
        if xp - plo[k] <= ea:
            gx[ng], gy[ng] = -1.0, 0.0
            ng += 1
        if phi[k] - xp <= ea:
            gx[ng], gy[ng] = 1.0, 0.0
            ng += 1
        if xq - qlo[k] <= ea:
            gx[ng], gy[ng] = 0.0, -1.0
            ng += 1
        if qhi[k] - xq <= ea:
            gx[ng], gy[ng] = 0.0, 1.0
            ng += 1
        nx = _norm2(xp, xq)
        if s[k] - nx <= ea:
            if nx > 1e-300:
                gx[ng], gy[ng] = xp / nx, xq / nx
                ng += 1
            else:
                whole = True  # s = 0: the set is a point, every direction is normal
        if haspf[k]:
            if th[k] * xp - ih[k] * xq <= ea:
                gx[ng], gy[ng] = -th[k], ih[k]
                ng += 1
            if th[k] * xp + ih[k] * xq <= ea:
                gx[ng], gy[ng] = -th[k], -ih[k]
                ng += 1
        if not whole:
            stat = max(stat, _cone_residual(v[k] - xp, v[n_pv + k] - xq, gx, gy, ng))
    for i in range(n_sc):
        dv = v[o + i] - x[o + i]
        vscale = max(vscale, abs(v[o + i]))
        if elo_in[i] == ehi_in[i]:
            continue
        if x[o + i] <= elo_in[i]:
            stat = max(stat, dv)
        elif x[o + i] >= ehi_in[i]:
            stat = max(stat, -dv)
        else:
            stat = max(stat, abs(dv))
    gap = fval - lag
    kkt[0] = p_lin
    kkt[1] = p_soc
    kkt[2] = dev
    kkt[3] = 0.0  # multipliers are >= 0 by construction (lam clipped, lam_soc a norm)
    kkt[4] = comp_v
    kkt[5] = stat
    kkt[6] = abs(gap) / max(fval, 1e-300)
    kkt[7] = gap
    info[0] = it
    info[3] = fval
    info[4] = lag
    info[5] = n_newton
    info[6] = n_fb
    info[7] = nF_max
    if status == _ST_OPT:
        # the safety net: thresholds a little looser than the stopping rule, in caller units
        kt = max(1e2 * tol, 1e-10) * max(1.0, xdev)
        okk = True
        rowscale = 1.0
        for i in range(m):
            rowscale = max(rowscale, bnorm[i])
        if p_lin > kt * rowscale:
            okk = False
        if p_soc > max(tol, 1e-12):
            okk = False
        if dev > 1e-9 * max(1.0, xdev):
            okk = False
        if stat > 1e-7 * vscale:
            okk = False
        if abs(gap) > 1e-7 * fval + kt * kt:
            okk = False
        if not okk:
            status = _ST_NUM
    return status


@njit(**_NOREF)
def _solve_restart(n_pv, n_sc, mp, mi, mv, bnorm, lin_map, soc_map, dup, zero_lin, zero_soc, gp, gi_, gv, ap, ai, av,
                   L2, Gm, Md, Gd, Ad, rp, rq, re, wp, we, plo_in, phi_in, qlo_in, qhi_in, s_in, t_in, elo_in, ehi_in,
                   h, c, S, z, use_warm, tol, max_iter, add_max, reg, work, x_out, lam_lin, lam_soc, act_lin, act_soc,
                   kkt, info):  # pragma: no cover - compiled
    """:func:`_solve_core` with one restart: a solve that reaches its iteration limit (a stall of
    the damping adaptation, about 1 in 10 000 random 4-inverter instances) is solved again
    from zero duals with a hundredth of the start damping, which converged on every stalled
    instance we found in under 20 iterations. The first attempt gets three quarters of
    ``max_iter``, the restart the rest; ``info[0]`` counts both."""
    it_first = max_iter - max_iter // 4
    code = _solve_core(n_pv, n_sc, mp, mi, mv, bnorm, lin_map, soc_map, dup, zero_lin, zero_soc, gp, gi_, gv, ap, ai,
                       av, L2, Gm, Md, Gd, Ad, rp, rq, re, wp, we, plo_in, phi_in, qlo_in, qhi_in, s_in, t_in, elo_in,
                       ehi_in, h, c, S, z, use_warm, tol, it_first, add_max, reg, *work, x_out, lam_lin, lam_soc,
                       act_lin, act_soc, kkt, info)
    if code != _ST_MAXIT or max_iter // 4 == 0:
        return code
    it1 = info[0]
    code = _solve_core(n_pv, n_sc, mp, mi, mv, bnorm, lin_map, soc_map, dup, zero_lin, zero_soc, gp, gi_, gv, ap, ai,
                       av, L2, Gm, Md, Gd, Ad, rp, rq, re, wp, we, plo_in, phi_in, qlo_in, qhi_in, s_in, t_in, elo_in,
                       ehi_in, h, c, S, z, False, tol, max_iter // 4, add_max, reg * 1e-2, *work, x_out, lam_lin,
                       lam_soc, act_lin, act_soc, kkt, info)
    info[0] += it1
    return code


@njit(**_NOREF)
def _solve_range(lo, hi, n_pv, n_sc, mp, mi, mv, bnorm, lin_map, soc_map, dup, zero_lin, zero_soc, gp, gi_, gv, ap, ai,
                 av, L2, Gm, Md, Gd, Ad, RP, RQ, RE, wp, we, PLO, PHI, QLO, QHI, s, t, ELO, EHI, H, C, S, tol,
                 max_iter, add_max, reg, X, LAM_LIN, LAM_SOC, CODE, ITERS, z, x, lam_lin, lam_soc, act_lin, act_soc,
                 kkt, info, work, warm_start, IDX):  # pragma: no cover - compiled
    """:func:`_solve_core` on the instances ``IDX[lo..hi-1]`` of a batch with one set of work arrays
    (outputs in rows ``lo..hi-1``); with ``warm_start`` each solve starts from the previous one's
    duals (kept only when they are the better start, see ``_solve_core``). Compiled without
    reference counting, so the per-instance row views and the call cost no atomic operations."""
    n = 2 * n_pv + n_sc
    m = gp.shape[0] - 1
    ms = (ap.shape[0] - 1) // 2
    warm = False
    for b in range(lo, hi):
        i = IDX[b]
        code = _solve_restart(n_pv, n_sc, mp, mi, mv, bnorm, lin_map, soc_map, dup, zero_lin, zero_soc, gp, gi_, gv, ap,
                              ai, av, L2, Gm, Md, Gd, Ad, RP[i], RQ[i], RE[i], wp, we, PLO[i], PHI[i], QLO[i], QHI[i],
                              s, t, ELO[i], EHI[i], H[i], C[i], S, z, warm, tol, max_iter, add_max, reg, work, x,
                              lam_lin, lam_soc, act_lin, act_soc, kkt, info)
        warm = warm_start and code == 0
        CODE[b] = code
        ITERS[b] = int(info[0])
        for i in range(n):
            X[b, i] = x[i]
        for i in range(m):
            LAM_LIN[b, i] = lam_lin[i]
        for j in range(ms):
            LAM_SOC[b, j] = lam_soc[j]


@njit(cache=True, parallel=True)
def _solve_batch(n_pv, n_sc, mp, mi, mv, bnorm, lin_map, soc_map, dup, zero_lin, zero_soc, gp, gi_, gv, ap, ai, av, L2,
                 Gm, Md, Gd, Ad, RP, RQ, RE, wp, we, PLO, PHI, QLO, QHI, s, t, ELO, EHI, H, C, S, tol, max_iter,
                 add_max, reg, nrow, msp, cap, soc_of_row, n_chunks, X, LAM_LIN, LAM_SOC, CODE, ITERS, warm_start,
                 IDX):  # pragma: no cover
    """:func:`_solve_range` over a batch (the rows ``IDX`` of the capitalized input arrays), split
    into ``n_chunks`` contiguous chunks solved in parallel, each with its own work arrays."""
    B = IDX.shape[0]
    n = 2 * n_pv + n_sc
    m = gp.shape[0] - 1
    ms = (ap.shape[0] - 1) // 2
    for ch in prange(n_chunks):
        lo = ch * B // n_chunks
        hi = (ch + 1) * B // n_chunks
        work = _alloc_work(n, n_pv, n_sc, nrow, msp, cap, soc_of_row, m + 2 * ms)
        z = np.zeros(nrow)
        x = np.empty(n)
        lam_lin = np.empty(m)
        lam_soc = np.empty(ms)
        act_lin = np.empty(m, dtype=np.bool_)
        act_soc = np.empty(ms, dtype=np.bool_)
        kkt = np.empty(8)
        info = np.empty(8)
        _solve_range(lo, hi, n_pv, n_sc, mp, mi, mv, bnorm, lin_map, soc_map, dup, zero_lin, zero_soc, gp, gi_, gv,
                     ap, ai, av, L2, Gm, Md, Gd, Ad, RP, RQ, RE, wp, we, PLO, PHI, QLO, QHI, s, t, ELO, EHI, H, C, S,
                     tol, max_iter, add_max, reg, X, LAM_LIN, LAM_SOC, CODE, ITERS, z, x, lam_lin, lam_soc, act_lin,
                     act_soc, kkt, info, work, warm_start, IDX)


# =============================================================================================
# Python API
# =============================================================================================
_FIELDS = (None, "rp", "rq", "re", "wp", "we", "p_lo", "p_hi", "q_lo", "q_hi", "s", "t", "e_lo", "e_hi", "h",
           "c", "S")
_KIND_MSG = (None, "expected finite values (NaN or an infinity where not allowed)",
             "expected lower bound <= upper bound", "expected values > 0 (weights, S) or >= 0 (s, t)")
_STATUS = (QPStatus.OPTIMAL, QPStatus.INFEASIBLE, QPStatus.MAX_ITER, QPStatus.NUMERICAL)


class WarmStart:
    """Opaque dual state of one solve (scaled multipliers), to pass as ``warm=`` next time.

    Only valid for the :class:`StructuredQP` instance (the same ``G`` and ``A``) that made it.
    Thread-safe: a value (:meth:`StructuredQP.solve` copies it), usable from any thread.
    """

    __slots__ = ("z", "owner")

    def __init__(self, z: np.ndarray, owner: int):
        self.z = z
        self.owner = owner


class QPResult:
    """Result of :meth:`StructuredQP.solve`.

    Attributes:
        x: ``(n,)`` solution ``[p (n_pv) | q (n_pv) | e (n_sc)]`` in the caller's units; always
            finite. On failure the last iterate (inside the device sets when they are non-empty).
        status: :class:`QPStatus`.
        objective: ``0.5 sum w (x - r)^2`` at ``x``.
        iterations: Newton / safeguard iterations (0 when the projection of the raw point on the
            device sets already met every row).
        kkt: Residuals in the caller's units: ``primal_lin`` (max of ``G x - h``, clipped at 0),
            ``primal_soc_rel`` (max of ``(||A_j x + c_j|| - S_j) / S_j``), ``device`` (largest
            violation of a device constraint, a distance), ``dual`` (negative multipliers, 0 by
            construction), ``complementarity`` (max of ``|lam_i (G x - h)_i|`` and the cone
            analogues, incl. the alignment of ``A_j x + c_j`` with its multiplier),
            ``stationarity`` (largest distance of the Lagrangian's residual direction from the
            normal cone of a device set, in the units of ``x``), ``gap`` and ``gap_rel``
            (``f(x) - L(x, lam)``, absolute and relative to ``f``).
        lam_lin: ``(m,)`` multipliers of ``G x <= h`` (0 for inactive rows). When the status is
            INFEASIBLE by weak duality they are the certificate (their dual value exceeds every
            objective value over the device sets), not optimal multipliers.
        lam_soc: ``(m_soc,)`` multipliers of the cone rows (the norm of the 2-D dual vector).
        active_lin, active_soc: Boolean masks of the rows with a positive multiplier.
        warm: :class:`WarmStart` for the next call.
        message: Empty when optimal; otherwise what happened (e.g. which device set is empty).
        info: Counters ``{"newton_steps", "fallback_steps", "working_set_max", "dual_value"}``.

    Thread-safe: a plain value (its arrays belong to it alone).
    """

    __slots__ = ("x", "status", "objective", "iterations", "_kkt", "lam_lin", "lam_soc", "active_lin",
                 "active_soc", "warm", "message", "_info")

    # the dicts are built on access: most callers on the hot path never read them
    @property
    def kkt(self) -> dict:
        return dict(zip(_KKT_NAMES, self._kkt.tolist()))

    @property
    def info(self) -> dict:
        i = self._info
        return {"newton_steps": int(i[5]), "fallback_steps": int(i[6]), "working_set_max": int(i[7]),
                "dual_value": float(i[4])}

    def __repr__(self) -> str:
        return (f"QPResult(status={self.status.name}, objective={self.objective:.6g}, "
                f"iterations={self.iterations}, active_lin={int(self.active_lin.sum())}, "
                f"active_soc={int(self.active_soc.sum())})")


def _as_vec(a, name: str, n: int) -> np.ndarray:
    """``a`` as a writable C-contiguous float64 ``(n,)`` array (a scalar is broadcast); no copy when
    it already is one (a read-only array is copied: numba compiles a separate variant of the
    solver for read-only arguments). Raises InputError naming ``name``."""
    if type(a) is np.ndarray and a.dtype == np.float64 and a.shape == (n,) and a.flags.c_contiguous:
        return a if a.flags.writeable else a.copy()
    try:
        arr = np.ascontiguousarray(a, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise InputError(f"expected a float array of shape ({n},): {exc}", name) from None
    if arr.ndim == 0:
        return np.full(n, float(arr))
    if arr.shape != (n,):
        raise InputError(f"expected shape ({n},), got {arr.shape}", name)
    return arr if arr.flags.writeable else arr.copy()


def _dup_rows(M: np.ndarray, signed: bool) -> np.ndarray:
    """Per row of ``M``: 0, or ``k + 1`` when it equals (bit for bit) the earlier row ``k``
    (``-(k + 1)`` when, with ``signed``, it equals that row's negative; zero rows never match)."""
    out = np.zeros(M.shape[0], dtype=np.int64)
    seen: dict[bytes, int] = {}
    for i, row in enumerate(M):
        if not row.any():
            continue
        key = (row + 0.0).tobytes()  # -0.0 and 0.0 alike
        k = seen.get(key)
        if k is not None:
            out[i] = k + 1
            continue
        if signed:
            k = seen.get((-row + 0.0).tobytes())
            if k is not None:
                out[i] = -(k + 1)
                continue
        seen[key] = i
    return out


def _csr(M: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(indptr, indices, data) of a dense matrix, int64 indices."""
    nzr, nzc = np.nonzero(M)
    return (np.searchsorted(nzr, np.arange(M.shape[0] + 1)).astype(np.int64), nzc.astype(np.int64),
            np.ascontiguousarray(M[nzr, nzc]))


class StructuredQP:
    """Projection onto device sets intersected with linear and second-order-cone rows.

    Set up once per feeder with the static data (``G``, ``A``); each :meth:`solve` takes the
    dynamic data. See the module docstring for the problem and the algorithm.

    Thread-safe: the static data are read-only after set-up and every thread gets its own work
    arrays (allocated on its first solve), so one instance may be shared by threads that solve
    concurrently. A :class:`WarmStart` is a plain value; :meth:`solve_unchecked` returns a
    buffer of the calling thread.

    Args:
        n_pv: Number of inverters (2-D devices: ``p``, ``q``).
        n_sc: Number of scalar devices (``e``).
        G: ``(m, n)`` dense matrix of the linear rows ``G x <= h`` (``m`` may be 0).
        A: ``(m_soc, 2, n)`` matrices of the cone rows ``||A_j x + c_j|| <= S_j`` (may be
            ``(0, 2, n)``). ``None`` means no rows of that kind.

    Raises:
        InputError: wrong shapes, a negative size, or non-finite entries in ``G`` or ``A``
            (``field`` is ``"n_pv"``, ``"n_sc"``, ``"G"`` or ``"A"``).
    """

    def __init__(self, n_pv: int, n_sc: int, G: np.ndarray | None, A: np.ndarray | None):
        for name, val in (("n_pv", n_pv), ("n_sc", n_sc)):
            if isinstance(val, bool) or not isinstance(val, int | np.integer) or val < 0:
                raise InputError(f"expected an integer >= 0, got {val!r}", name)
        n_pv, n_sc = int(n_pv), int(n_sc)
        n = 2 * n_pv + n_sc
        if n == 0:
            raise InputError("expected at least one device (n_pv + n_sc > 0)", "n_pv")
        G = np.zeros((0, n)) if G is None else G
        A = np.zeros((0, 2, n)) if A is None else A
        try:
            G = np.array(G, dtype=np.float64, order="C", copy=True)
        except (TypeError, ValueError) as exc:
            raise InputError(f"expected a float matrix: {exc}", "G") from None
        try:
            A = np.array(A, dtype=np.float64, order="C", copy=True)
        except (TypeError, ValueError) as exc:
            raise InputError(f"expected a float array: {exc}", "A") from None
        if G.ndim != 2 or G.shape[1] != n:
            raise InputError(f"expected shape (m, {n}) with n = 2*n_pv + n_sc, got {G.shape}", "G")
        if A.ndim != 3 or A.shape[1:] != (2, n):
            raise InputError(f"expected shape (m_soc, 2, {n}), got {A.shape}", "A")
        if not np.isfinite(G).all():
            raise InputError("expected finite entries", "G")
        if not np.isfinite(A).all():
            raise InputError("expected finite entries", "A")
        self.n_pv, self.n_sc, self.n = n_pv, n_sc, n
        self.m, self.m_soc = G.shape[0], A.shape[0]
        G.setflags(write=False)
        A.setflags(write=False)
        self.G, self.A = G, A

        # Rows scaled to unit norm (spectral norm for the 2 x n cone blocks): residuals become
        # distances in x-space, so one tolerance fits every row, and the dual Newton matrix is
        # well scaled whatever the units of the rows. All-zero rows are constants, checked apart.
        gn = np.linalg.norm(G, axis=1) if self.m else np.zeros(0)
        an = np.array([np.linalg.norm(A[j], 2) for j in range(self.m_soc)]) if self.m_soc else np.zeros(0)
        lin_nz = np.flatnonzero(gn > 0).astype(np.int64)
        self._soc_map = np.flatnonzero(an > 0).astype(np.int64)
        self._zero_lin = np.flatnonzero(gn == 0).astype(np.int64)
        self._zero_soc = np.flatnonzero(an == 0).astype(np.int64)
        # Identical caller rows (a bus's voltage row repeats its upstream bus's when no inverter
        # sits between them: 64 -> 44 rows on the 4-inverter feeder) are one internal row whose
        # right-hand side is the group's smallest h, per call. Exact (the others are implied);
        # fewer rows to check, and never two identical rows in a Newton system (singular).
        # lin_map[i] lists group i's caller rows (first occurrence order, -1 padded).
        if lin_nz.size:
            _, first, inv = np.unique(G[lin_nz], axis=0, return_index=True, return_inverse=True)
            inv = inv.reshape(-1)
            groups = [lin_nz[inv == u] for u in np.argsort(first, kind="stable")]
        else:
            groups = []
        self._lin_map = np.full((len(groups), max((len(g) for g in groups), default=1)), -1, dtype=np.int64)
        for i, g in enumerate(groups):
            self._lin_map[i, :len(g)] = g
        lin_rep = self._lin_map[:, 0]
        mp, msp = lin_rep.size, self._soc_map.size
        nrow = mp + 2 * msp
        M = np.empty((nrow, n))
        M[:mp] = G[lin_rep] / gn[lin_rep, None]
        if msp:
            M[mp:] = (A[self._soc_map] / an[self._soc_map, None, None]).reshape(2 * msp, n)
        # sparse copies: on large feeders a row involves only the inverters of one lateral
        self._mp, self._mi, self._mv = _csr(M)
        self._G_csr = _csr(G)
        self._A_csr = _csr(A.reshape(2 * self.m_soc, n))
        self._bnorm = np.concatenate([gn[lin_rep], np.repeat(an[self._soc_map], 2)])
        # every non-zero row scaled, unmerged, for the implicit gradient (structured_qp_vjp),
        # which walks the caller's rows with their multipliers
        Mv = np.concatenate([G[lin_nz] / gn[lin_nz, None], M[mp:]])
        self._vjp_rows = (*_csr(Mv), np.concatenate([gn[lin_nz], self._bnorm[mp:]]), lin_nz, self._soc_map)
        # Lipschitz constant of the dual gradient is ||M W^-1/2||^2 <= max(1/w) ||M||^2
        self._L2 = float(np.linalg.norm(M, 2) ** 2) if nrow else 1.0
        # Gram matrix of the scaled rows, for the near-parallel test of the working-set candidates
        # (a lookup instead of two sparse rows per test: that test was ~20 % of a 4-inverter
        # solve); only where it is small, else the test goes through the sparse rows
        self._gram = M @ M.T if 0 < nrow <= _GRAM_MAX else np.zeros((0, 0))
        # dense copies of M and of the caller's G and A where they are small and mostly non-zero
        # (4 inverters: every row involves every inverter): row products as short vectorized
        # loops instead of indexed CSR ones
        dense = n <= _DENSE_N_MAX and nrow > 0 and np.count_nonzero(M) >= 0.5 * M.size
        e0 = np.zeros((0, 0))
        self._dense = (self._gram, M if dense else e0, G.copy() if dense and self.m else e0,
                       A.reshape(2 * self.m_soc, n).copy() if dense and self.m_soc else e0)
        self._nrow = nrow
        self._dup = np.concatenate([_dup_rows(M, signed=True), _dup_rows(G, signed=False),
                                    _dup_rows(A.reshape(self.m_soc, 2 * n), signed=False)])
        self._soc_of_row = np.zeros(nrow, dtype=np.int64)
        if msp:
            self._soc_of_row[mp:] = np.repeat(np.arange(msp), 2)

        # work arrays: one set per thread (see _thread_buffers)
        self._cap = max(2, min(nrow, max(64, 2 * n + 16)))
        self._tls = threading.local()
        self._zero_z = np.zeros(nrow)
        # for solve_unchecked: the static arguments and output buffers, packed once
        self._static = (n_pv, n_sc, self._mp, self._mi, self._mv, self._bnorm, self._lin_map, self._soc_map, self._dup,
                        self._zero_lin, self._zero_soc, *self._G_csr, *self._A_csr, self._L2, *self._dense)
        self._empty_c = np.zeros((0, 2))
        self._id = id(self)
        # rows added to the working set per round: at most about n/2 on small problems (few rows
        # can be active at once, and choosing among many violated near-parallel rows is then a
        # tenth of the solve: 4 inverters 9.1 -> 8.1 us per instance with 4 instead of 16), up to
        # _ADD_MAX on large ones (a 240-variable feeder needs twice the iterations with 4)
        self.add_max = min(_ADD_MAX, max(2, n // 2))
        self.reg = 1e-2

    def __getstate__(self):
        state = self.__dict__.copy()
        state.pop("_tls", None)  # per-thread work arrays: made anew
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._tls = threading.local()

    def _thread_buffers(self):
        """The calling thread's work arrays and :meth:`solve_unchecked` output buffers."""
        tls = self._tls
        work = getattr(tls, "work", None)
        if work is None:
            n = self.n
            work = tls.work = _alloc_work(n, self.n_pv, self.n_sc, self._nrow, self._soc_map.size, self._cap,
                                          self._soc_of_row, self.m + 2 * self.m_soc)
            tls.out = (np.empty(n), np.empty(self.m), np.empty(self.m_soc), np.empty(self.m, dtype=np.bool_),
                       np.empty(self.m_soc, dtype=np.bool_), np.empty(len(_KKT_NAMES)), np.empty(8))
        return work, tls.out

    def solve(self, rp, rq, re, wp, we, p_lo, p_hi, q_lo, q_hi, s, t, e_lo, e_hi, h, c, S, *,
              warm: WarmStart | None = None, tol: float = 1e-9, max_iter: int = 200) -> QPResult:
        """Project the raw set-points ``r = [rp | rq | re]`` onto the feasible set.

        Args:
            rp, rq: ``(n_pv,)`` raw active / reactive set-points (e.g. MW, MVAr).
            re: ``(n_sc,)`` raw scalar set-points.
            wp: ``(n_pv,)`` weights > 0 of the inverters (same weight on p and q).
            we: ``(n_sc,)`` weights > 0 of the scalar devices.
            p_lo, p_hi, q_lo, q_hi: ``(n_pv,)`` box bounds (``-inf`` / ``inf`` allowed: the disk
                bounds the set anyway); ``lo <= hi``.
            s: ``(n_pv,)`` apparent-power ratings, finite, >= 0 (``p^2 + q^2 <= s^2``).
            t: ``(n_pv,)`` power-factor cone slopes ``|q| <= t p``, >= 0; ``inf`` = no limit.
            e_lo, e_hi: ``(n_sc,)`` bounds of the scalar devices (``e_lo <= e_hi``).
            h: ``(m,)`` finite right-hand sides of ``G x <= h``.
            c: ``(m_soc, 2)`` finite offsets of the cone rows.
            S: ``(m_soc,)`` finite limits > 0 of the cone rows.
            warm: The ``warm`` of an earlier result of this instance, or None (cold start). The
                answer does not depend on it beyond rounding (see the polish in the module
                docstring), only the iterations do.
            tol: Stopping tolerance: linear rows met to ``tol * max(1, xdev)`` in the units of
                ``x`` (after scaling each row to unit norm; ``xdev`` is the largest rating ``s``
                or finite scalar bound, never the raw point), cone rows to ``0.5 tol`` relative.
            max_iter: Iteration limit (both attempts together: a solve that stalls is restarted once
                with less damping, see ``_solve_restart``).

        Returns:
            A :class:`QPResult`. ``status`` is OPTIMAL only when the KKT check passed.

        Raises:
            InputError: a wrong shape, NaN or an infinity where not allowed, ``lo > hi``, a
                weight or ``S`` not > 0, ``s`` or ``t`` negative, a bad ``tol``/``max_iter``, or
                a ``warm`` from another instance (``field`` names the argument).
        """
        npv, nsc, m, ms = self.n_pv, self.n_sc, self.m, self.m_soc
        rp = _as_vec(rp, "rp", npv)
        rq = _as_vec(rq, "rq", npv)
        re = _as_vec(re, "re", nsc)
        wp = _as_vec(wp, "wp", npv)
        we = _as_vec(we, "we", nsc)
        p_lo = _as_vec(p_lo, "p_lo", npv)
        p_hi = _as_vec(p_hi, "p_hi", npv)
        q_lo = _as_vec(q_lo, "q_lo", npv)
        q_hi = _as_vec(q_hi, "q_hi", npv)
        s = _as_vec(s, "s", npv)
        t = _as_vec(t, "t", npv)
        e_lo = _as_vec(e_lo, "e_lo", nsc)
        e_hi = _as_vec(e_hi, "e_hi", nsc)
        h = _as_vec(h, "h", m) if h is not None or m else np.zeros(0)
        S = _as_vec(S, "S", ms) if S is not None or ms else np.zeros(0)
        if c is None and ms == 0:
            c = self._empty_c
        elif not (type(c) is np.ndarray and c.dtype == np.float64 and c.shape == (ms, 2) and c.flags.c_contiguous
                  and c.flags.writeable):
            try:
                c = np.require(c, dtype=np.float64, requirements=("C", "W"))
            except (TypeError, ValueError) as exc:
                raise InputError(f"expected a float array of shape ({ms}, 2): {exc}", "c") from None
            if c.shape != (ms, 2):
                raise InputError(f"expected shape ({ms}, 2), got {c.shape}", "c")
        if not (isinstance(tol, float | int) and math.isfinite(tol) and tol > 0):
            raise InputError(f"expected a finite tolerance > 0, got {tol!r}", "tol")
        if isinstance(max_iter, bool) or not isinstance(max_iter, int | np.integer) or max_iter < 0:
            raise InputError(f"expected an integer >= 0, got {max_iter!r}", "max_iter")
        if warm is None:
            z = np.zeros(self._nrow)
            use_warm = False
        else:
            if not isinstance(warm, WarmStart) or warm.owner != self._id or warm.z.shape != (self._nrow,):
                raise InputError("expected the .warm of an earlier result of this StructuredQP, or None", "warm")
            z = warm.z.copy()
            use_warm = True

        x = np.empty(self.n)
        lam_lin = np.empty(m)
        lam_soc = np.empty(ms)
        act_lin = np.empty(m, dtype=np.bool_)
        act_soc = np.empty(ms, dtype=np.bool_)
        kkt = np.empty(len(_KKT_NAMES))
        info = np.empty(8)
        work, _out = self._thread_buffers()
        code = _solve_restart(npv, nsc, self._mp, self._mi, self._mv, self._bnorm, self._lin_map, self._soc_map,
                              self._dup, self._zero_lin, self._zero_soc, *self._G_csr, *self._A_csr, self._L2,
                              *self._dense, rp, rq, re, wp, we, p_lo, p_hi, q_lo, q_hi, s, t, e_lo, e_hi, h, c, S,
                              z, use_warm, float(tol), int(max_iter), self.add_max, self.reg, work,
                              x, lam_lin, lam_soc, act_lin, act_soc, kkt, info)
        if code < 0:
            field, idx, kind = int(info[1]), int(info[2]), int(info[3])
            raise InputError(f"{_KIND_MSG[kind]}; bad entry at index {idx}", _FIELDS[field])
        res = QPResult()
        res.x = x
        res.status = _STATUS[code]
        res.objective = float(info[3])
        res.iterations = int(info[0])
        res._kkt = kkt
        res._info = info
        res.lam_lin = lam_lin
        res.lam_soc = lam_soc
        res.active_lin = act_lin
        res.active_soc = act_soc
        res.warm = WarmStart(z, self._id)
        res.message = "" if code == _ST_OPT else self._message(code, info)
        return res

    @property
    def n_rows(self) -> int:
        """Length of the dual vector ``z`` of :meth:`solve_unchecked`."""
        return self._nrow

    def solve_unchecked(self, rp, rq, re, wp, we, p_lo, p_hi, q_lo, q_hi, s, t, e_lo, e_hi, h, c, S, z,
                        use_warm: bool, tol: float = 1e-9, max_iter: int = 200) -> tuple[int, np.ndarray, int]:
        """:meth:`solve` without the Python-side checks and the result object, for hot paths.

        The caller passes C-contiguous float64 arrays of the shapes :meth:`solve` documents
        (the compiled solver still checks their values) and owns the duals: ``z`` (``(n_rows,)``)
        is the warm start on entry when ``use_warm`` and the final duals on exit.

        Returns:
            ``(code, x, iterations)``: ``code`` is a :class:`QPStatus` value, or -1 for invalid
            values (call :meth:`solve` for the typed error); ``x`` is a buffer of the calling
            thread, overwritten by its next call.
        """
        work, out = self._thread_buffers()
        code = _solve_restart(*self._static, rp, rq, re, wp, we, p_lo, p_hi, q_lo, q_hi, s, t, e_lo, e_hi, h, c, S,
                              z, use_warm, tol, max_iter, self.add_max, self.reg, work, *out)
        return code, out[0], int(out[6][0])

    def solve_batch(self, rp, rq, re, wp, we, p_lo, p_hi, q_lo, q_hi, s, t, e_lo, e_hi, h, c, S, *,
                    tol: float = 1e-9, max_iter: int = 200, n_chunks: int | None = None, index=None,
                    warm_start: bool = False, out=None):
        """Solve a batch of instances in parallel (numba threads), each exactly as :meth:`solve`.

        Per-instance arrays get a leading batch axis ``B`` (``rp``: ``(B, n_pv)``, ``h``:
        ``(B, m)``, ``c``: ``(B, m_soc, 2)``, ...); ``wp``, ``we``, ``s``, ``t`` and ``S`` are
        shared. No Python-side checks beyond shapes: invalid values come back as code -1.

        Args:
            index: ``(k,)`` rows of the inputs to solve (default: all ``B``); the outputs have ``k``
                rows, in this order. Saves gathering the inputs of a subset.
            warm_start: Start each solve from the previous instance's duals (in the same chunk)
                when they give the better dual value. Pays off only for similar consecutive
                instances: on independent random instances it costs ~5 % and saves nothing.
            out: Optional ``(x, code, iterations, lam_lin, lam_soc)`` arrays to write into
                (C-contiguous, float64 / int64, at least ``k`` rows; the first ``k`` are
                written): a caller that solves large batches repeatedly reuses its memory
                instead of touching fresh pages on every call (~45 ms per 32 MiB here).

        Returns:
            ``(x, code, iterations, lam_lin, lam_soc)``: ``(k, n)`` solutions, ``(k,)`` codes
            (:class:`QPStatus` values, -1 invalid input), ``(k,)`` iterations, ``(k, m)`` and
            ``(k, m_soc)`` multipliers in the caller's rows.
        """
        import numba

        f8 = np.float64
        B = np.shape(rp)[0]
        arr = [np.require(a, dtype=f8, requirements=("C", "W")) for a in (rp, rq, re, p_lo, p_hi, q_lo, q_hi, e_lo,
                                                                             e_hi, h, c)]
        RP, RQ, RE, PLO, PHI, QLO, QHI, ELO, EHI, H, C = arr
        shapes = {"rp": (RP, (B, self.n_pv)), "rq": (RQ, (B, self.n_pv)), "re": (RE, (B, self.n_sc)),
                  "p_lo": (PLO, (B, self.n_pv)), "p_hi": (PHI, (B, self.n_pv)), "q_lo": (QLO, (B, self.n_pv)),
                  "q_hi": (QHI, (B, self.n_pv)), "e_lo": (ELO, (B, self.n_sc)), "e_hi": (EHI, (B, self.n_sc)),
                  "h": (H, (B, self.m)), "c": (C, (B, self.m_soc, 2))}
        for name, (a, shp) in shapes.items():
            if a.shape != shp:
                raise InputError(f"expected shape {shp}, got {a.shape}", name)
        wp, we, s, t, S = (_as_vec(a, nm, k) for a, nm, k in ((wp, "wp", self.n_pv), (we, "we", self.n_sc),
                                                            (s, "s", self.n_pv), (t, "t", self.n_pv),
                                                            (S, "S", self.m_soc)))
        if index is None:
            IDX = np.arange(B, dtype=np.int64)
        else:
            IDX = np.ascontiguousarray(index, dtype=np.int64)
            if IDX.ndim != 1 or (IDX.size and (IDX.min() < 0 or IDX.max() >= B)):
                raise InputError(f"expected a 1-D array of rows in [0, {B}), got shape {IDX.shape}", "index")
        k = IDX.size
        if out is None:
            X = np.empty((k, self.n))
            LL, LS = np.zeros((k, self.m)), np.zeros((k, self.m_soc))
            code = np.full(k, -1, dtype=np.int64)
            iters = np.zeros(k, dtype=np.int64)
        else:
            if not isinstance(out, tuple | list) or len(out) != 5:
                raise InputError("expected a tuple (x, code, iterations, lam_lin, lam_soc)", "out")
            spec = (("x", np.float64, (self.n,)), ("code", np.int64, ()), ("iterations", np.int64, ()),
                    ("lam_lin", np.float64, (self.m,)), ("lam_soc", np.float64, (self.m_soc,)))
            for a, (nm, dt, tail) in zip(out, spec):
                if not (isinstance(a, np.ndarray) and a.dtype == dt and a.flags.c_contiguous and a.ndim == 1 + len(tail)
                        and a.shape[1:] == tail and a.shape[0] >= k):
                    raise InputError(f"expected a C-contiguous {np.dtype(dt).name} array of shape (>= {k},) + {tail} "
                                     f"for {nm}", "out")
            X, code, iters, LL, LS = (a[:k] for a in out)
        if k:
            nch = n_chunks or min(k, 4 * numba.get_num_threads())
            _solve_batch(*self._static, RP, RQ, RE, wp, we, PLO, PHI, QLO, QHI, s, t, ELO, EHI, H, C, S, float(tol),
                         int(max_iter), self.add_max, self.reg, self._nrow, self._soc_map.size, self._cap,
                         self._soc_of_row, int(nch), X, LL, LS, code, iters, bool(warm_start), IDX)
        return X, code, iters, LL, LS

    def _message(self, code: int, info: np.ndarray) -> str:
        why, which = int(info[1]), int(info[2])
        if code == _ST_INF:
            if why == _WHY_DEVICE:
                return f"the set of inverter {which} is empty (box, disk and power-factor cone do not meet)"
            if why == _WHY_ZERO_LIN:
                return f"linear row {which} has G[{which}] = 0 and h < 0"
            if why == _WHY_ZERO_SOC:
                return f"cone row {which} has A[{which}] = 0 and ||c|| > S"
            return ("the network rows cannot be met inside the device sets: the dual value exceeds the "
                    "largest objective over the device sets (weak duality)")
        if code == _ST_MAXIT:
            return f"iteration limit reached ({int(info[0])} iterations)"
        return "the KKT check failed at the final point (see kkt)"
