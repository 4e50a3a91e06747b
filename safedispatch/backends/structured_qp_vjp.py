"""Compiled vector-Jacobian product of the structured projection QP's solution map.

The companion of :meth:`StructuredQP.solve_batch <safedispatch.backends.structured_qp.StructuredQP>`
for training: given a batch of solutions with their multipliers (inverters only, ``n_sc = 0``)
and an upstream gradient ``gx = dL/dx``, it returns ``dL/dr``, ``dL/d(p_lo, p_hi, q_lo, q_hi)``,
``dL/dh`` and ``dL/dc`` by implicit differentiation of the optimality conditions with the active
set held fixed (the derivative wherever the active set is locally stable; the same formulas as
:func:`safedispatch.backends.torch_qp.implicit_vjp`, which is its reference in the tests).

At the solution, ``x = Proj_D(v)`` with ``v = r - W^-1 M^T z`` (``M``: the scaled network
rows, ``z``: their duals). With ``J`` the Jacobian of the device projection at ``v`` and ``F``
the rows with a non-zero multiplier, ``u`` solves
``(M_F J W^-1 M_F^T + C) u = M_F J W^-1 gx`` (``C``: the cone rows' curvature
``S/|y| (I - y y^T/|y|^2)``), then ``t = gx - M_F^T u``, ``dL/dr = J t``, the bound adjoints
follow from ``t`` and the active device constraints, ``dL/dh = u / |G_i|`` and
``dL/dc = -u / |A_j|``.

Compiled per sample (numba) and split over threads: one batch of 1 024 four-inverter samples
costs ~1 us per sample instead of the batched torch linear algebra's ~5 us.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from safedispatch.backends.structured_qp import _NOREF, _norm2, _pv_viol

__all__ = ["vjp_batch"]

# device constraint ids (as in torch_qp)
_PLO, _PHI, _QLO, _QHI, _CIRC, _PFP, _PFM, _NONE = range(8)


@njit(**_NOREF, inline="always")
def _line(a, plo, phi, qlo, qhi, haspf, th, ih):
    """Boundary line ``a`` (0..5) of an inverter set as ``(nx, ny, b, id, exists)``."""
    if a == 0:
        return 1.0, 0.0, plo, _PLO, plo > -np.inf
    if a == 1:
        return 1.0, 0.0, phi, _PHI, phi < np.inf
    if a == 2:
        return 0.0, 1.0, qlo, _QLO, qlo > -np.inf
    if a == 3:
        return 0.0, 1.0, qhi, _QHI, qhi < np.inf
    if a == 4:
        return -th, ih, 0.0, _PFP, haspf
    return th, ih, 0.0, _PFM, haspf


@njit(**_NOREF)
def _pv_jac(vp, vq, plo, phi, qlo, qhi, s, haspf, th, ih):  # pragma: no cover - compiled
    """Jacobian ``[[ja, jb], [jb, jc]]`` of the projection of ``(vp, vq)`` on one inverter's set
    and the ids of the active constraints ``(c1, c2)`` (the same case order and tolerances as
    the solver's projection and ``torch_qp.project_devices``)."""
    eps = 1e-12 * (s + abs(vp) + abs(vq))
    if _pv_viol(vp, vq, plo, phi, qlo, qhi, s, haspf, th, ih) <= eps:
        return 1.0, 0.0, 1.0, _NONE, _NONE
    if vp < plo and _pv_viol(plo, vq, plo, phi, qlo, qhi, s, haspf, th, ih) <= eps:
        return 0.0, 0.0, 1.0, _PLO, _NONE
    if vp > phi and _pv_viol(phi, vq, plo, phi, qlo, qhi, s, haspf, th, ih) <= eps:
        return 0.0, 0.0, 1.0, _PHI, _NONE
    if vq < qlo and _pv_viol(vp, qlo, plo, phi, qlo, qhi, s, haspf, th, ih) <= eps:
        return 1.0, 0.0, 0.0, _QLO, _NONE
    if vq > qhi and _pv_viol(vp, qhi, plo, phi, qlo, qhi, s, haspf, th, ih) <= eps:
        return 1.0, 0.0, 0.0, _QHI, _NONE
    nv = _norm2(vp, vq)
    if nv > s:
        sc = s / nv
        if _pv_viol(vp * sc, vq * sc, plo, phi, qlo, qhi, s, haspf, th, ih) <= eps:
            tp = -vq / nv
            tq = vp / nv
            return sc * tp * tp, sc * tp * tq, sc * tq * tq, _CIRC, _NONE
    if haspf:
        if ih * vq - th * vp > 0.0:
            a = vp * ih + vq * th
            if _pv_viol(a * ih, a * th, plo, phi, qlo, qhi, s, haspf, th, ih) <= eps:
                return ih * ih, ih * th, th * th, _PFP, _NONE
        if -ih * vq - th * vp > 0.0:
            a = vp * ih - vq * th
            if _pv_viol(a * ih, -a * th, plo, phi, qlo, qhi, s, haspf, th, ih) <= eps:
                return ih * ih, -ih * th, th * th, _PFM, _NONE
    # a corner: the nearest feasible intersection of two boundary pieces (J = 0)
    best = np.inf
    c1 = _NONE
    c2 = _NONE
    for a in range(6):
        nxa, nya, ba, ia, ea = _line(a, plo, phi, qlo, qhi, haspf, th, ih)
        if not ea:
            continue
        for b in range(a + 1, 6):
            nxb, nyb, bb, ib, eb = _line(b, plo, phi, qlo, qhi, haspf, th, ih)
            if not eb:
                continue
            det = nxa * nyb - nya * nxb
            if abs(det) <= 1e-14:
                continue
            px = (ba * nyb - bb * nya) / det
            py = (nxa * bb - nxb * ba) / det
            if _pv_viol(px, py, plo, phi, qlo, qhi, s, haspf, th, ih) <= 1e-12 * (s + abs(px) + abs(py)):
                d2 = (px - vp) ** 2 + (py - vq) ** 2
                if d2 < best:
                    best = d2
                    c1 = ia
                    c2 = ib
        if abs(ba) <= s * (1.0 + 1e-12):
            hh = math.sqrt(max(0.0, s * s - ba * ba))
            for sg in (-1.0, 1.0):
                px = ba * nxa - sg * hh * nya
                py = ba * nya + sg * hh * nxa
                if _pv_viol(px, py, plo, phi, qlo, qhi, s, haspf, th, ih) <= 1e-12 * (s + abs(px) + abs(py)):
                    d2 = (px - vp) ** 2 + (py - vq) ** 2
                    if d2 < best:
                        best = d2
                        c1 = ia
                        c2 = _CIRC
    return 0.0, 0.0, 0.0, c1, c2


@njit(**_NOREF, inline="always")
def _normal(cid, xp, xq, th, ih):
    """Normal of active device constraint ``cid`` at ``(xp, xq)`` (the circle: x itself)."""
    if cid <= _PHI:
        return 1.0, 0.0
    if cid <= _QHI:
        return 0.0, 1.0
    if cid == _CIRC:
        return xp, xq
    if cid == _PFP:
        return -th, ih
    return th, ih


@njit(**_NOREF)
def _vjp_range(lo, hi, n_pv, mp, mi, mv, bnorm, lin_map, soc_map, IDX, MASK, X, LL, LS, RP_, RQ_, PLO_, PHI_, QLO_,
               QHI_, s, haspf, th, ih, winv, C_, S, GX_, RB_, PLOB_, PHIB_, QLOB_, QHIB_, HB_, CB_,
               v, ja, jb, jc, c1, c2, rows, MF, JMF, K, rhs, tv, yd):  # pragma: no cover - compiled
    """The VJP for the solved slots ``lo..hi-1`` (those with ``MASK``) with one set of work
    arrays; slot ``b`` is row ``IDX[b]`` of the inputs and outputs (see the module docstring)."""
    n = 2 * n_pv
    m = lin_map.shape[0]
    ms = soc_map.shape[0]
    cap = K.shape[0]
    for b in range(lo, hi):
        if not MASK[b]:
            continue
        i_ = IDX[b]
        RP, RQ, PLO, PHI, QLO, QHI, C, GX = RP_[i_], RQ_[i_], PLO_[i_], PHI_[i_], QLO_[i_], QHI_[i_], C_[i_], GX_[i_]
        RB, PLOB, PHIB, QLOB, QHIB, HB, CB = RB_[i_], PLOB_[i_], PHIB_[i_], QLOB_[i_], QHIB_[i_], HB_[i_], CB_[i_]
        # v = r - W^-1 M^T z at the solution (z from the caller's multipliers; a cone's dual is
        # aligned with its row value A x + c at the optimum)
        for k in range(n_pv):
            v[k] = RP[k]
            v[n_pv + k] = RQ[k]
        nF = 0
        for i in range(m):
            lam = LL[b, lin_map[i]]
            if lam > 0.0 and nF < cap:
                zi = lam * bnorm[i]
                for kk in range(mp[i], mp[i + 1]):
                    v[mi[kk]] -= zi * winv[mi[kk]] * mv[kk]
                rows[nF] = i
                nF += 1
        for j in range(ms):
            ls = LS[b, soc_map[j]]
            if ls > 0.0 and nF + 2 <= cap:
                r0 = m + 2 * j
                an = bnorm[r0]
                u0 = C[soc_map[j], 0] / an  # scaled row value A_j x / |A_j| + c_j / |A_j|
                u1 = C[soc_map[j], 1] / an
                for kk in range(mp[r0], mp[r0 + 1]):
                    u0 += mv[kk] * X[b, mi[kk]]
                for kk in range(mp[r0 + 1], mp[r0 + 2]):
                    u1 += mv[kk] * X[b, mi[kk]]
                nu = _norm2(u0, u1)
                if nu <= 0.0:
                    continue
                yn = ls * an
                y0 = yn * u0 / nu
                y1 = yn * u1 / nu
                for kk in range(mp[r0], mp[r0 + 1]):
                    v[mi[kk]] -= y0 * winv[mi[kk]] * mv[kk]
                for kk in range(mp[r0 + 1], mp[r0 + 2]):
                    v[mi[kk]] -= y1 * winv[mi[kk]] * mv[kk]
                rows[nF] = r0
                rows[nF + 1] = r0 + 1
                # curvature of -S'|y| on the pair: S'/|y| and the unit dual direction
                yd[nF, 0] = S[soc_map[j]] / an / yn
                yd[nF, 1] = u0 / nu
                yd[nF, 2] = u1 / nu
                nF += 2
        for f in range(nF):
            for g in range(nF):
                K[f, g] = 0.0
        f = 0
        while f < nF:
            if rows[f] >= m:
                cv = yd[f, 0]
                e0 = yd[f, 1]
                e1 = yd[f, 2]
                K[f, f] += cv * (1.0 - e0 * e0)
                K[f, f + 1] += -cv * e0 * e1
                K[f + 1, f] += -cv * e0 * e1
                K[f + 1, f + 1] += cv * (1.0 - e1 * e1)
                f += 2
            else:
                f += 1
        # device Jacobians at v
        for k in range(n_pv):
            a_, b_, c_, i1, i2 = _pv_jac(v[k], v[n_pv + k], PLO[k], PHI[k], QLO[k], QHI[k], s[k],
                                         haspf[k], th[k], ih[k])
            ja[k] = a_
            jb[k] = b_
            jc[k] = c_
            c1[k] = i1
            c2[k] = i2
        # dense active rows M_F and J W^-1 M_F^T (as rows)
        for f in range(nF):
            for i in range(n):
                MF[f, i] = 0.0
            rr = rows[f]
            for kk in range(mp[rr], mp[rr + 1]):
                MF[f, mi[kk]] = mv[kk]
            for k in range(n_pv):
                ap_ = MF[f, k]
                aq_ = MF[f, n_pv + k]
                JMF[f, k] = (ja[k] * ap_ + jb[k] * aq_) * winv[k]
                JMF[f, n_pv + k] = (jb[k] * ap_ + jc[k] * aq_) * winv[n_pv + k]
        scale = 1.0
        for f in range(nF):
            for g in range(f, nF):
                acc = 0.0
                for i in range(n):
                    acc += MF[f, i] * JMF[g, i]
                K[f, g] += acc
                if g != f:
                    K[g, f] += acc
            scale = max(scale, abs(K[f, f]))
            acc = 0.0
            for i in range(n):
                acc += JMF[f, i] * GX[i]
            rhs[f] = acc
        for f in range(nF):
            K[f, f] += 1e-13 * scale
        # K u = rhs by Gaussian elimination with partial pivoting (K is tiny)
        for col in range(nF):
            p = col
            for r_ in range(col + 1, nF):
                if abs(K[r_, col]) > abs(K[p, col]):
                    p = r_
            if p != col:
                for c_ in range(nF):
                    tmp = K[col, c_]
                    K[col, c_] = K[p, c_]
                    K[p, c_] = tmp
                tmp = rhs[col]
                rhs[col] = rhs[p]
                rhs[p] = tmp
            d = K[col, col]
            if d == 0.0:
                continue
            for r_ in range(col + 1, nF):
                fac = K[r_, col] / d
                if fac != 0.0:
                    for c_ in range(col, nF):
                        K[r_, c_] -= fac * K[col, c_]
                    rhs[r_] -= fac * rhs[col]
        for col in range(nF - 1, -1, -1):
            acc = rhs[col]
            for c_ in range(col + 1, nF):
                acc -= K[col, c_] * rhs[c_]
            rhs[col] = acc / K[col, col] if K[col, col] != 0.0 else 0.0
        # t = gx - M_F^T u; r_bar = J t
        for i in range(n):
            tv[i] = GX[i]
        for f in range(nF):
            uf = rhs[f]
            for i in range(n):
                tv[i] -= MF[f, i] * uf
        for k in range(n_pv):
            tp = tv[k]
            tq = tv[n_pv + k]
            RB[k] = ja[k] * tp + jb[k] * tq
            RB[n_pv + k] = jb[k] * tp + jc[k] * tq
            # bound adjoints: one active box line, or a corner N x = b (b_bar = N^-T t)
            PLOB[k] = 0.0
            PHIB[k] = 0.0
            QLOB[k] = 0.0
            QHIB[k] = 0.0
            i1 = c1[k]
            i2 = c2[k]
            xp = X[b, k]
            xq = X[b, n_pv + k]
            v1 = 0.0
            v2 = 0.0
            if i1 != _NONE and i2 == _NONE:
                if i1 <= _QHI:
                    n1x, n1y = _normal(i1, xp, xq, th[k], ih[k])
                    v1 = n1x * tp + n1y * tq
            elif i1 != _NONE:
                n1x, n1y = _normal(i1, xp, xq, th[k], ih[k])
                n2x, n2y = _normal(i2, xp, xq, th[k], ih[k])
                det = n1x * n2y - n1y * n2x
                if abs(det) > 1e-14:
                    v1 = (n2y * tp - n2x * tq) / det
                    v2 = (-n1y * tp + n1x * tq) / det
            for which in range(2):
                cid = i1 if which == 0 else i2
                val = v1 if which == 0 else v2
                if cid == _PLO:
                    PLOB[k] += val
                elif cid == _PHI:
                    PHIB[k] += val
                elif cid == _QLO:
                    QLOB[k] += val
                elif cid == _QHI:
                    QHIB[k] += val
        # h_bar, c_bar in the caller's rows
        for f in range(nF):
            rr = rows[f]
            if rr < m:
                HB[lin_map[rr]] = rhs[f] / bnorm[rr]
            else:
                j = (rr - m) // 2
                CB[soc_map[j], (rr - m) % 2] = -rhs[f] / bnorm[rr]


@njit(cache=True, parallel=True)
def _vjp_batch(n_pv, mp, mi, mv, bnorm, lin_map, soc_map, IDX, MASK, X, LL, LS, RP, RQ, PLO, PHI, QLO, QHI, s, haspf,
               th, ih, winv, C, S, GX, cap, n_chunks, RB, PLOB, PHIB, QLOB, QHIB, HB, CB):  # pragma: no cover
    k = IDX.shape[0]
    n = 2 * n_pv
    for ch in prange(n_chunks):
        lo = ch * k // n_chunks
        hi = (ch + 1) * k // n_chunks
        nn = max(n, 2)
        _vjp_range(lo, hi, n_pv, mp, mi, mv, bnorm, lin_map, soc_map, IDX, MASK, X, LL, LS, RP, RQ, PLO, PHI, QLO,
                   QHI, s, haspf, th, ih, winv, C, S, GX, RB, PLOB, PHIB, QLOB, QHIB, HB, CB,
                   np.empty(n), np.empty(n_pv), np.empty(n_pv), np.empty(n_pv), np.empty(n_pv, dtype=np.int64),
                   np.empty(n_pv, dtype=np.int64), np.empty(cap, dtype=np.int64), np.empty((cap, nn)),
                   np.empty((cap, nn)), np.empty((cap, cap)), np.empty(cap), np.empty(max(n, cap)),
                   np.empty((cap, 3)))


def vjp_batch(qp, x, lam_lin, lam_soc, rp, rq, p_lo, p_hi, q_lo, q_hi, wp, s, t, c, S, gx, *, index=None,
              mask=None, out=None, n_chunks: int | None = None):
    """Vector-Jacobian product of ``qp``'s solution map over a batch of solved instances.

    Args:
        qp: The :class:`~safedispatch.backends.structured_qp.StructuredQP` that solved them
            (inverters only: ``n_sc == 0``).
        x, lam_lin, lam_soc: ``(k, n)``, ``(k, m)``, ``(k, m_soc)``: solutions and multipliers as
            returned by ``solve_batch`` (one row per solved instance).
        rp, rq, p_lo, p_hi, q_lo, q_hi: ``(B, n_pv)`` the instances' raw points and bounds.
        wp, s, t: ``(n_pv,)`` weights, ratings, power-factor slopes (shared).
        c: ``(B, m_soc, 2)`` cone offsets; S: ``(m_soc,)`` cone limits.
        gx: ``(B, n)`` upstream gradient w.r.t. ``x``.
        index: ``(k,)`` the input row of each solved instance (as passed to ``solve_batch``;
            default ``arange(B)``, then ``k = B``).
        mask: ``(k,)`` bool, the instances to differentiate (e.g. code OPTIMAL); default all.
        out: ``(r_bar, (p_lo_bar, p_hi_bar, q_lo_bar, q_hi_bar), h_bar, c_bar)`` float64
            C-contiguous arrays of the shapes below to write into (rows outside ``index`` or
            ``mask`` are left as they are); default new zero arrays.

    Returns:
        ``(r_bar (B, n), (p_lo_bar, p_hi_bar, q_lo_bar, q_hi_bar) (B, n_pv) each, h_bar (B, m),
        c_bar (B, m_soc, 2))``.

    Raises:
        InputError: scalar devices (``n_sc > 0``) or a wrong shape (the field is named).
    """
    import numba

    from safedispatch.errors import InputError

    if qp.n_sc:
        raise InputError("expected a problem without scalar devices (n_sc = 0)", "qp")
    f8 = np.float64
    N, n = qp.n_pv, qp.n
    B = np.shape(rp)[0]
    IDX = np.arange(B, dtype=np.int64) if index is None else np.ascontiguousarray(index, dtype=np.int64)
    k = IDX.size
    MASK = np.ones(k, dtype=np.bool_) if mask is None else np.ascontiguousarray(mask, dtype=np.bool_)
    C64 = lambda a: np.ascontiguousarray(a, dtype=f8)  # noqa: E731
    X, LL, LS, RP, RQ, PLO, PHI, QLO, QHI, CC, GX = (C64(a) for a in (x, lam_lin, lam_soc, rp, rq, p_lo, p_hi, q_lo,
                                                                     q_hi, c, gx))
    for name, a, shp in (("x", X, (k, n)), ("lam_lin", LL, (k, qp.m)), ("lam_soc", LS, (k, qp.m_soc)),
                         ("mask", MASK, (k,)), ("rp", RP, (B, N)), ("rq", RQ, (B, N)), ("p_lo", PLO, (B, N)),
                         ("p_hi", PHI, (B, N)), ("q_lo", QLO, (B, N)), ("q_hi", QHI, (B, N)),
                         ("c", CC, (B, qp.m_soc, 2)), ("gx", GX, (B, n))):
        if a.shape != shp:
            raise InputError(f"expected shape {shp}, got {a.shape}", name)
    if IDX.ndim != 1 or (k and (IDX.min() < 0 or IDX.max() >= B)):
        raise InputError(f"expected a 1-D array of rows in [0, {B})", "index")
    t = np.asarray(t, dtype=f8)
    haspf = np.isfinite(t)
    tt = np.where(haspf, t, 0.0)
    hyp = np.hypot(1.0, tt)
    th, ih = np.where(haspf, tt / hyp, 0.0), np.where(haspf, 1.0 / hyp, 0.0)
    winv = np.tile(1.0 / np.asarray(wp, dtype=f8), 2)
    if out is None:
        out = (np.zeros((B, n)), tuple(np.zeros((B, N)) for _ in range(4)), np.zeros((B, qp.m)),
               np.zeros((B, qp.m_soc, 2)))
    RB, bars, HB, CB = out
    for name, a, shp in (("out[0]", RB, (B, n)), ("out[1]", bars[0], (B, N)), ("out[1]", bars[1], (B, N)),
                         ("out[1]", bars[2], (B, N)), ("out[1]", bars[3], (B, N)), ("out[2]", HB, (B, qp.m)),
                         ("out[3]", CB, (B, qp.m_soc, 2))):
        if a.shape != shp or a.dtype != f8 or not a.flags.c_contiguous or not a.flags.writeable:
            raise InputError(f"expected a writeable C-contiguous float64 array of shape {shp}", name)
    if k:
        nch = n_chunks or min(k, 4 * numba.get_num_threads())
        _vjp_batch(N, *qp._vjp_rows, IDX, MASK, X, LL, LS, RP, RQ, PLO,
                   PHI, QLO, QHI, np.asarray(s, dtype=f8), haspf, th, ih, winv, CC, np.asarray(S, dtype=f8), GX,
                   max(qp._cap, 2), int(nch), RB, *bars, HB, CB)
    return RB, tuple(bars), HB, CB
