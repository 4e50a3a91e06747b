"""Batched solver of the safety layer's structured projection QP in PyTorch, with implicit
gradients.

The problem is the one of :mod:`safedispatch.backends.structured_qp` without scalar devices
(``x = [p (n_pv) | q (n_pv)]``, ``n = 2 n_pv``), for a batch of right-hand sides::

    minimize   0.5 sum_i w_i ((p_i - rp_i)^2 + (q_i - rq_i)^2)
    subject to (p_i, q_i) in D_i   (p_lo <= p <= p_hi, q_lo <= q <= q_hi, p^2 + q^2 <= s^2,
                                    |q| <= t p)
               G x <= h                          (m linear rows; h per sample)
               ||A_j x + c_j||_2 <= S_j           (m_soc cone rows; c per sample, S fixed)

Algorithm (the dual semismooth Newton method of the CPU solver, batched): only the network rows
are dualized (``lam >= 0`` for the linear rows, a 2-vector ``y_j`` per cone row), so for fixed
duals the minimizer over the devices is the closed-form projection
``x(z) = Proj_D(r - W^-1 M^T z)`` (:func:`project_devices`). Each sample keeps a small working
set (``k_lin`` linear and ``k_soc`` cone slots, padded); every iteration evaluates all rows at
``x(z)``, drops rows with a zero multiplier that are satisfied, adds the most violated rows,
and takes a Newton step on the dual function over the working set (generalized Hessian
``M J W^-1 M^T`` plus the cone curvature ``S/||y|| (I - y y^T/||y||^2)``, Levenberg-Marquardt
damping) with a projected Armijo backtracking on the dual value, which therefore increases
monotonically. A cone row entering at ``y = 0`` moves along its violation direction only. All
samples of a chunk iterate together; converged samples leave the batch.

A sample is OPTIMAL only when the KKT check passes: every row met to
``tol * max(1, |x|_inf)`` (rows scaled to unit norm, so this is a distance in MW/MVAr),
complementarity on the working set to the same tolerance, stationarity and device feasibility
hold by construction (``x`` is the exact projection of ``r - W^-1 M^T z`` on the device sets).
INFEASIBLE is certified by weak duality (the dual value exceeds an upper bound of the objective
over the device sets) or by an empty device set or a constant row that cannot hold; everything
else is MAX_ITER, for the caller to hand to an exact fallback.

Gradients (:func:`implicit_vjp`) come from implicit differentiation of the optimality
conditions at the solution, on the rows with a non-zero multiplier: with ``J`` the Jacobian of
the device projection and ``K = M_F J W^-1 M_F^T + C``, the vector-Jacobian product of an
upstream gradient ``g`` is ``u = K^-1 M_F W^-1 J g``, ``r_bar = J (g - M_F^T u)``,
``h_bar = u`` (per scaled row), ``c_bar = -u``, and the device bounds get ``g - M_F^T u``
through the active device constraints. It is exact wherever the active set is locally stable
(strict complementarity); at a degenerate point it is one element of the generalized Jacobian.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

import numpy as np
import torch

__all__ = ["TorchQP", "TorchQPStatus", "TorchQPSolution", "project_devices", "implicit_vjp"]

# ids of the constraints of one inverter set (which are active at a projection)
_PLO, _PHI, _QLO, _QHI, _CIRC, _PFP, _PFM, _NONE = range(8)
#: Armijo sufficient-increase constant
_SIGMA = 1e-4
#: trial steps (halvings) before a sample is declared stalled
_MAX_HALVINGS = 20
#: of which Newton steps (the rest are proximal-gradient steps)
_NEWTON_TRIES = 12


class TorchQPStatus(IntEnum):
    """Per-sample outcome of :meth:`TorchQP.solve`."""

    OPTIMAL = 0
    """Converged and the KKT check passed."""
    INFEASIBLE = 1
    """Certified: empty device set, an impossible constant row, or weak duality."""
    MAX_ITER = 2
    """Iteration limit or stalled search; ``x`` is the last iterate (inside the device sets)."""


# =============================================================================================
# 2-D device sets
# =============================================================================================
def _viol(p, q, plo, phi, qlo, qhi, s, th, ih, pf):
    v = torch.maximum(torch.maximum(plo - p, p - phi), torch.maximum(qlo - q, q - qhi))
    v = torch.maximum(v, torch.sqrt(p * p + q * q) - s)
    if pf:
        v = torch.maximum(v, torch.maximum(ih * q - th * p, -ih * q - th * p))
    return v


def _lines(plo, phi, qlo, qhi, th, ih, pf):
    """Boundary lines ``nx p + ny q = bb`` with their constraint ids, each entry ``(..)`` shaped."""
    one, zero = torch.ones_like(plo), torch.zeros_like(plo)
    out = [(one, zero, plo, _PLO), (one, zero, phi, _PHI), (zero, one, qlo, _QLO), (zero, one, qhi, _QHI)]
    if pf:
        out += [(-th, ih, zero, _PFP), (th, ih, zero, _PFM)]
    return out


def project_devices(vp, vq, plo, phi, qlo, qhi, s, th, ih, pf: bool):
    """Euclidean projection of points on the inverter sets, and its derivatives.

    All arguments are broadcastable tensors of one shape (e.g. ``(B, n_pv)``): the points
    ``(vp, vq)``, the box bounds (finite), the ratings ``s`` and the power-factor lines given by
    ``th = t / hypot(1, t)``, ``ih = 1 / hypot(1, t)`` (``|q| <= t p``); ``pf=False`` skips them.

    Returns:
        ``(xp, xq, ja, jb, jc, c1, c2, empty)``: the projection; the Jacobian
        ``[[ja, jb], [jb, jc]]`` of the projection w.r.t. ``v`` (identity inside, ``k tau tau^T``
        on a boundary piece with unit tangent ``tau``, zero at a corner); the ids of the active
        constraints (``c1``: the boundary piece or the first of a corner's two, ``c2``: the
        corner's second, ``_NONE`` otherwise); ``empty``: the set is empty (x is then ``v``).

    Exactness: if one constraint is active at the projection, the projection equals the
    projection on that constraint's half-plane or disk (the nearest point of a superset that
    lies in the set); otherwise it is the nearest corner. Every candidate is checked in the set.
    """
    eps = 1e-12 * (s + vp.abs() + vq.abs())
    zero = torch.zeros_like(vp)
    one = torch.ones_like(vp)
    nv = torch.sqrt(vp * vp + vq * vq)
    ok = _viol(vp, vq, plo, phi, qlo, qhi, s, th, ih, pf) <= eps
    xp, xq = vp.clone(), vq.clone()
    ja, jb, jc = one.clone(), zero.clone(), one.clone()
    c1 = torch.full(vp.shape, _NONE, dtype=torch.int8, device=vp.device)
    c2 = c1.clone()
    done = ok.clone()

    def take(mask, cp, cq, a, b, c, cid):
        nonlocal done
        m = mask & ~done
        xp.copy_(torch.where(m, cp, xp))
        xq.copy_(torch.where(m, cq, xq))
        ja.copy_(torch.where(m, a, ja))
        jb.copy_(torch.where(m, b, jb))
        jc.copy_(torch.where(m, c, jc))
        c1.masked_fill_(m, cid)
        done = done | m

    def feas(cp, cq):
        return _viol(cp, cq, plo, phi, qlo, qhi, s, th, ih, pf) <= eps

    # one active constraint: the projection on it, if that point is in the set
    take((vp < plo) & feas(plo, vq), plo, vq, zero, zero, one, _PLO)
    take((vp > phi) & feas(phi, vq), phi, vq, zero, zero, one, _PHI)
    take((vq < qlo) & feas(vp, qlo), vp, qlo, one, zero, zero, _QLO)
    take((vq > qhi) & feas(vp, qhi), vp, qhi, one, zero, zero, _QHI)
    nvs = torch.where(nv > 0, nv, one)
    sc = s / nvs
    cp, cq = vp * sc, vq * sc
    tp, tq = -vq / nvs, vp / nvs
    take((nv > s) & feas(cp, cq), cp, cq, sc * tp * tp, sc * tp * tq, sc * tq * tq, _CIRC)
    if pf:
        a = vp * ih + vq * th
        cp, cq = a * ih, a * th
        take((ih * vq - th * vp > 0) & feas(cp, cq), cp, cq, ih * ih, ih * th, th * th, _PFP)
        a = vp * ih - vq * th
        cp, cq = a * ih, -a * th
        take((-ih * vq - th * vp > 0) & feas(cp, cq), cp, cq, ih * ih, -ih * th, th * th, _PFM)
    empty = torch.zeros_like(done)
    rest = ~done
    if bool(rest.any()):
        # corners, only where needed: pairwise line intersections and line-circle points
        idx = rest.nonzero(as_tuple=True)
        sel = [t[idx] if t.shape == vp.shape else t.expand_as(vp)[idx]
               for t in (vp, vq, plo, phi, qlo, qhi, s, th, ih)]
        svp, svq, splo, sphi, sqlo, sqhi, ss, sth, sih = sel
        lines = _lines(splo, sphi, sqlo, sqhi, sth, sih, pf)
        cands, ids = [], []
        for a in range(len(lines)):
            nxa, nya, ba, ia = lines[a]
            for b in range(a + 1, len(lines)):
                nxb, nyb, bb, ib = lines[b]
                det = nxa * nyb - nya * nxb
                good = det.abs() > 1e-14
                dets = torch.where(good, det, torch.ones_like(det))
                px = (ba * nyb - bb * nya) / dets
                py = (nxa * bb - nxb * ba) / dets
                cands.append((px, py, good))
                ids.append((ia, ib))
            hh = torch.sqrt(torch.clamp(ss * ss - ba * ba, min=0.0))
            good = ba.abs() <= ss * (1 + 1e-12)
            for sg in (-1.0, 1.0):
                cands.append((ba * nxa - sg * hh * nya, ba * nya + sg * hh * nxa, good))
                ids.append((ia, _CIRC))
        px = torch.stack([c[0] for c in cands], dim=-1)
        py = torch.stack([c[1] for c in cands], dim=-1)
        good = torch.stack([c[2] for c in cands], dim=-1)
        vf = _viol(px, py, *(t.unsqueeze(-1) for t in (splo, sphi, sqlo, sqhi, ss, sth, sih)), pf)
        good = good & (vf <= 1e-12 * (ss.unsqueeze(-1) + px.abs() + py.abs()))
        d2 = (px - svp.unsqueeze(-1)) ** 2 + (py - svq.unsqueeze(-1)) ** 2
        d2 = torch.where(good, d2, torch.full_like(d2, float("inf")))
        best = d2.argmin(dim=-1)
        has = good.any(dim=-1)
        bx = px.gather(-1, best.unsqueeze(-1)).squeeze(-1)
        by = py.gather(-1, best.unsqueeze(-1)).squeeze(-1)
        idt = torch.tensor(ids, dtype=torch.int8, device=vp.device)
        xp[idx] = torch.where(has, bx, svp)
        xq[idx] = torch.where(has, by, svq)
        ja[idx] = 0.0
        jb[idx] = 0.0
        jc[idx] = 0.0
        c1[idx] = torch.where(has, idt[best, 0], torch.full_like(idt[best, 0], _NONE))
        c2[idx] = torch.where(has, idt[best, 1], torch.full_like(idt[best, 1], _NONE))
        empty[idx] = ~has
    return xp, xq, ja, jb, jc, c1, c2, empty


def _bound_vjp(tp, tq, xp, xq, c1, c2, th, ih):
    """Adjoint of the device projection w.r.t. the box bounds, for an upstream ``(tp, tq)``.

    On a bound line the point follows the bound along the line's normal; at a corner it solves
    the two active constraints ``N x = b`` (a line's normal, or ``x`` itself for the circle,
    whose radius is fixed), so ``b_bar = N^-T t``.

    Returns:
        ``(plo_bar, phi_bar, qlo_bar, qhi_bar)``.
    """
    def normal(cid):
        nx = torch.where(cid <= _PHI, 1.0, torch.where(cid <= _QHI, 0.0, torch.where(cid == _CIRC, xp, torch.where(
            cid == _PFP, -th, th))))
        ny = torch.where(cid <= _PHI, 0.0, torch.where(cid <= _QHI, 1.0, torch.where(cid == _CIRC, xq, ih)))
        return nx.to(xp.dtype), ny.to(xp.dtype)

    out = [torch.zeros_like(xp) for _ in range(4)]
    c1l, c2l = c1.long(), c2.long()
    # one active constraint (only box lines carry a bound)
    single = (c1l <= _QHI) & (c2l == _NONE)
    n1x, n1y = normal(c1l)
    val1 = torch.where(single, n1x * tp + n1y * tq, torch.zeros_like(tp))
    # corners: b_bar = N^-T t with N = [n1; n2]
    corner = (c1l != _NONE) & (c2l != _NONE)
    n2x, n2y = normal(c2l)
    det = n1x * n2y - n1y * n2x
    good = corner & (det.abs() > 1e-14)
    dets = torch.where(good, det, torch.ones_like(det))
    # N^-T = 1/det [[n2y, -n2x], [-n1y, n1x]]
    b1 = torch.where(good, (n2y * tp - n2x * tq) / dets, torch.zeros_like(tp))
    b2 = torch.where(good, (-n1y * tp + n1x * tq) / dets, torch.zeros_like(tp))
    val1 = torch.where(corner, b1, val1)
    for k in range(4):
        out[k] = out[k] + torch.where(c1l == k, val1, torch.zeros_like(val1)) + torch.where(
            corner & (c2l == k), b2, torch.zeros_like(b2))
    return tuple(out)


# =============================================================================================
# the batched solver
# =============================================================================================
@dataclass
class TorchQPSolution:
    """Result of :meth:`TorchQP.solve` (all tensors on the solver's device).

    Attributes:
        x: ``(B, n)`` solution (last iterate unless OPTIMAL); inside the device sets unless a
            device set is empty.
        status: ``(B,)`` int8 :class:`TorchQPStatus` values.
        iterations: ``(B,)`` Newton iterations.
        i_lin, lam: ``(B, k_lin)`` working-set rows (indices into the non-zero linear rows) and
            their multipliers (scaled rows; 0 in unused slots).
        i_soc, y: ``(B, k_soc)`` cone rows of the working set and ``(B, k_soc, 2)`` their dual
            vectors (scaled rows).
    """

    x: torch.Tensor
    status: torch.Tensor
    iterations: torch.Tensor
    i_lin: torch.Tensor
    lam: torch.Tensor
    i_soc: torch.Tensor
    y: torch.Tensor


class TorchQP:
    """Batched projection QP with fixed rows and ratings (see the module docstring).

    Args:
        n_pv: Number of inverters.
        G: ``(m, 2 n_pv)`` linear rows (numpy).
        A: ``(m_soc, 2, 2 n_pv)`` cone rows (numpy).
        S: ``(m_soc,)`` cone limits > 0 (finite; use a large number for "no limit").
        s: ``(n_pv,)`` inverter ratings (MVA).
        t: ``(n_pv,)`` power-factor slopes ``|q| <= t p`` (``inf``: none).
        w: ``(n_pv,)`` distance weights > 0.
        k_lin, k_soc: Working-set slots per sample (None: sized from the problem).
        device: Torch device of the static data.

    The static data is kept in float64: every solve runs in float64 whatever the caller's dtype
    (float32 Newton steps cannot meet a 1e-9 tolerance).

    Thread-safe: the static data are read-only after construction and :meth:`solve` keeps no
    state between calls, so one instance may be shared by threads.
    """

    def __init__(self, n_pv, G, A, S, s, t, w, k_lin=None, k_soc=None, device=None):
        f8 = torch.float64
        dev = torch.device("cpu") if device is None else torch.device(device)
        n = 2 * n_pv
        G = np.asarray(G, float).reshape(-1, n)
        A = np.asarray(A, float).reshape(-1, 2, n)
        gn = np.linalg.norm(G, axis=1)
        an = np.array([np.linalg.norm(A[j], 2) for j in range(A.shape[0])]) if A.shape[0] else np.zeros(0)
        self.n_pv, self.n = n_pv, n
        self.m_full, self.ms_full = G.shape[0], A.shape[0]
        self.lin_map = np.flatnonzero(gn > 0)
        self.soc_map = np.flatnonzero(an > 0)
        self.zero_lin = np.flatnonzero(gn == 0)
        self.zero_soc = np.flatnonzero(an == 0)
        self.mL, self.mS = self.lin_map.size, self.soc_map.size
        T = lambda a, dt=f8: torch.as_tensor(np.ascontiguousarray(a), dtype=dt, device=dev)  # noqa: E731
        self.device = dev
        self.gn = T(gn[self.lin_map])
        self.an = T(an[self.soc_map])
        self.Gn = T(G[self.lin_map] / gn[self.lin_map, None]).reshape(self.mL, n)
        self.An = T(A[self.soc_map] / an[self.soc_map, None, None]).reshape(self.mS, 2, n)
        self.MT = torch.cat([self.Gn, self.An.reshape(2 * self.mS, n)], 0).T.contiguous()  # (n, nrow)
        S = np.asarray(S, float)
        self.S_full = T(S)
        self.Sn = T(S[self.soc_map] / an[self.soc_map])
        self.lin_map_t = T(self.lin_map, torch.long)
        self.soc_map_t = T(self.soc_map, torch.long)
        self.zero_lin_t = T(self.zero_lin, torch.long)
        self.zero_soc_t = T(self.zero_soc, torch.long)
        self.s = T(s)
        t = np.asarray(t, float)
        self.pf = bool(np.isfinite(t).any())
        tt = np.where(np.isfinite(t), t, 0.0)
        hyp = np.hypot(1.0, tt)
        # no limit: th = 1, ih = 0 gives p >= 0, implied by p_lo >= 0
        self.th = T(np.where(np.isfinite(t), tt / hyp, 1.0))
        self.ih = T(np.where(np.isfinite(t), 1.0 / hyp, 0.0))
        self.w = T(w)
        self.winv = T(1.0 / np.asarray(w, float))
        # few rows are active at once in practice; samples that need more slots are re-solved
        # with twice as many (see solve)
        self.k_lin = int(k_lin) if k_lin is not None else 4 + n_pv // 8
        self.k_soc = int(k_soc) if k_soc is not None else 2 + n_pv // 16
        self.k_lin = max(1, min(self.k_lin, max(self.mL, 1)))
        self.k_soc = max(1, min(self.k_soc, max(self.mS, 1)))
        self.reg = 1e-3

    # -- pieces --------------------------------------------------------------------------------
    def proj(self, v, plo, phi, qlo, qhi):
        N = self.n_pv
        return project_devices(v[:, :N], v[:, N:], plo, phi, qlo, qhi, self.s, self.th, self.ih, self.pf)

    def _rows(self, iL, iS):
        """Working-set rows ``(B, k_lin, n)`` and ``(B, k_soc, 2, n)``."""
        return self.Gn[iL], self.An[iS]

    def _x_of(self, r, ML, MS, lam, y, bnd):
        u = torch.einsum("bk,bkn->bn", lam, ML) + torch.einsum("bkc,bkcn->bn", y, MS)
        v = r - u * self.winv.repeat(2)
        out = self.proj(v, *bnd)
        x = torch.cat([out[0], out[1]], dim=1)
        return x, v, out

    def _dual(self, x, r, lam, y, gL, gS, Sn_slot):
        """Dual value at the working set (non-members have zero multipliers)."""
        d = x - r
        f = 0.5 * (self.w.repeat(2) * d * d).sum(1)
        return f + (lam * gL).sum(1) + ((y * gS).sum(-1) - Sn_slot * y.norm(dim=-1)).sum(1)

    # -- solve ---------------------------------------------------------------------------------
    @torch.no_grad()
    def solve(self, r, plo, phi, qlo, qhi, h, c, *, tol: float = 1e-9, max_iter: int = 50,
              chunk: int = 8192) -> TorchQPSolution:
        """Solve a batch (every tensor float64 on the solver's device).

        Args:
            r: ``(B, n)`` raw points ``[p | q]``.
            plo, phi, qlo, qhi: ``(B, n_pv)`` finite box bounds, ``lo <= hi``.
            h: ``(B, m)`` right-hand sides of the linear rows.
            c: ``(B, m_soc, 2)`` offsets of the cone rows.
            tol: KKT tolerance (a distance in the units of ``x``, relative above 1).
            max_iter: Newton iterations at most per sample.
            chunk: Samples solved together (bounds the memory of the working arrays).

        Returns:
            A :class:`TorchQPSolution`.
        """
        kL, kS = self.k_lin, self.k_soc
        sol, ov = self._solve_chunks(r, plo, phi, qlo, qhi, h, c, tol, max_iter, chunk, kL, kS)
        # samples whose active rows did not fit in the working set: again with twice the slots
        while bool(ov.any()) and (kL < self.mL or kS < self.mS):
            kL, kS = min(2 * kL, max(self.mL, 1)), min(2 * kS, max(self.mS, 1))
            ids = ov.nonzero(as_tuple=True)[0]
            sub, ov_sub = self._solve_chunks(r[ids], plo[ids], phi[ids], qlo[ids], qhi[ids], h[ids], c[ids], tol,
                                             max_iter, chunk, kL, kS)
            sol = _merge(sol, sub, ids)
            ov = torch.zeros_like(ov)
            ov[ids] = ov_sub
        return sol

    def _solve_chunks(self, r, plo, phi, qlo, qhi, h, c, tol, max_iter, chunk, kL, kS):
        B = r.shape[0]
        parts = []
        for a in range(0, B, chunk):
            b = min(B, a + chunk)
            parts.append(self._solve_chunk(r[a:b], plo[a:b], phi[a:b], qlo[a:b], qhi[a:b], h[a:b], c[a:b], tol,
                                           max_iter, kL, kS))
        if len(parts) == 1:
            return parts[0]
        return (TorchQPSolution(*(torch.cat([getattr(p[0], f) for p in parts], 0) for f in _FIELDS)),
                torch.cat([p[1] for p in parts]))

    def _solve_chunk(self, r, plo, phi, qlo, qhi, h, c, tol, max_iter, kL, kS):
        B, n, N = r.shape[0], self.n, self.n_pv
        dev, f8 = r.device, r.dtype
        mL, mS = self.mL, self.mS
        # outputs
        X = torch.empty(B, n, dtype=f8, device=dev)
        ST = torch.full((B,), TorchQPStatus.MAX_ITER, dtype=torch.int8, device=dev)
        IT = torch.zeros(B, dtype=torch.long, device=dev)
        OV = torch.zeros(B, dtype=torch.bool, device=dev)
        IL = torch.zeros(B, kL, dtype=torch.long, device=dev)
        LAM = torch.zeros(B, kL, dtype=f8, device=dev)
        IS = torch.zeros(B, kS, dtype=torch.long, device=dev)
        Y = torch.zeros(B, kS, 2, dtype=f8, device=dev)
        # scaled right-hand sides; constant (all-zero) rows decide feasibility up front
        hn = h[:, self.lin_map_t] / self.gn if mL else h[:, :0]
        cn = c[:, self.soc_map_t] / self.an[:, None] if mS else c[:, :0]
        bad = torch.zeros(B, dtype=torch.bool, device=dev)
        if self.zero_lin.size:
            bad |= (h[:, self.zero_lin_t] < -tol).any(1)
        if self.zero_soc.size:
            bad |= (c[:, self.zero_soc_t].norm(dim=-1) > self.S_full[self.zero_soc_t] * (1 + tol)).any(1)
        # weak-duality bound: max of the objective over the device sets (each inside its disk)
        wr = self.w * (torch.sqrt(r[:, :N] ** 2 + r[:, N:] ** 2) + self.s) ** 2
        ub = 0.5 * wr.sum(1) * (1 + 1e-9) + 1e-12
        # state of the active samples
        act = torch.arange(B, device=dev)
        bnd = (plo, phi, qlo, qhi)
        iL = torch.zeros(B, kL, dtype=torch.long, device=dev)
        vL = torch.zeros(B, kL, dtype=torch.bool, device=dev)
        lam = torch.zeros(B, kL, dtype=f8, device=dev)
        iS = torch.zeros(B, kS, dtype=torch.long, device=dev)
        vS = torch.zeros(B, kS, dtype=torch.bool, device=dev)
        y = torch.zeros(B, kS, 2, dtype=f8, device=dev)
        ovf = torch.zeros(B, dtype=torch.bool, device=dev)

        def record(mask, ids, x, iL, vL, lam, iS, vS, y, it):
            """Store the samples ``mask`` (of the active batch) at ``ids`` of the outputs."""
            X[ids] = x[mask]
            IT[ids] = it
            IL[ids] = iL[mask]
            LAM[ids] = torch.where(vL[mask], lam[mask], torch.zeros_like(lam[mask]))
            IS[ids] = iS[mask]
            Y[ids] = torch.where(vS[mask].unsqueeze(-1), y[mask], torch.zeros_like(y[mask]))

        x, v, pj = self._x_of(r, *self._rows(iL, iS), lam, y, bnd)
        empty = pj[7].any(1)
        Sn = self.Sn
        d = None
        it = 0
        while True:
            # ---- full row check at x ------------------------------------------------------------
            g = x @ self.MT
            gl = g[:, :mL]
            gs = g[:, mL:].reshape(-1, mS, 2) + cn
            gl = gl - hn
            ns = gs.norm(dim=-1)
            vs = ns - Sn
            xs = torch.clamp(x.abs().amax(1), min=1.0)
            tolx = tol * xs
            primal = torch.maximum(gl.amax(1) if mL else torch.zeros_like(xs),
                                   vs.amax(1) if mS else torch.zeros_like(xs))
            gL = gl.gather(1, iL) if mL else torch.zeros_like(lam)
            gS = gs.gather(1, iS.unsqueeze(-1).expand(-1, kS, 2)) if mS else torch.zeros_like(y)
            SnS = Sn[iS] if mS else torch.zeros(iS.shape, dtype=f8, device=dev)
            ynorm = y.norm(dim=-1)
            yh = y / torch.where(ynorm > 0, ynorm, torch.ones_like(ynorm)).unsqueeze(-1)
            compL = torch.where(vL & (lam > 0), gL.abs(), torch.zeros_like(gL)).amax(1)
            compS = torch.where(vS & (ynorm > 0), (gS - SnS.unsqueeze(-1) * yh).norm(dim=-1),
                                torch.zeros_like(ynorm)).amax(1)
            if d is None:
                d = self._dual(x, r, lam, y, gL, gS, SnS)
            conv = (primal <= tolx) & (compL <= tolx) & (compS <= tolx) & ~empty & ~bad
            infeas = empty | bad | (d > ub)
            fin = conv | infeas | ovf | (it >= max_iter)
            if bool(fin.any()):
                ids = act[fin]
                record(fin, ids, x, iL, vL, lam, iS, vS, y, it)
                ST[ids] = torch.where(conv[fin], TorchQPStatus.OPTIMAL,
                                      torch.where(infeas[fin], TorchQPStatus.INFEASIBLE,
                                                  TorchQPStatus.MAX_ITER)).to(torch.int8)
                OV[ids] = ovf[fin] & ~conv[fin] & ~infeas[fin]
                keep = ~fin
                if not bool(keep.any()):
                    break
                (act, r, x, v, d, ub, iL, vL, lam, iS, vS, y, gl, gs, vs, gL, gS, SnS, ynorm, yh, hn, cn,
                 tolx, ovf) = (t[keep] for t in (act, r, x, v, d, ub, iL, vL, lam, iS, vS, y, gl, gs, vs, gL, gS, SnS,
                                                 ynorm, yh, hn, cn, tolx, ovf))
                pj = tuple(t[keep] for t in pj)
                bnd = tuple(t[keep] for t in bnd)
            it += 1
            Bk = act.shape[0]
            ar = torch.arange(Bk, device=dev)
            # ---- working set: drop satisfied rows without multiplier, add the most violated ----
            vL = vL & ~((lam <= 0) & (gL < 0))
            vS = vS & ~((ynorm <= 0) & (gS.norm(dim=-1) < SnS))
            if mL:
                inL = torch.zeros(Bk, mL, dtype=torch.bool, device=dev)
                inL[ar.unsqueeze(1).expand(-1, kL)[vL], iL[vL]] = True
                score = torch.where(inL, torch.full_like(gl, -float("inf")), gl)
                ovf |= self._add(score, tolx, iL, vL, lam, None, kL, lambda i: self.Gn[i])
            if mS:
                inS = torch.zeros(Bk, mS, dtype=torch.bool, device=dev)
                inS[ar.unsqueeze(1).expand(-1, kS)[vS], iS[vS]] = True
                score = torch.where(inS, torch.full_like(vs, -float("inf")), vs)
                ovf |= self._add(score, tolx, iS, vS, None, y, kS, lambda i: self.An[i])
                gS = gs.gather(1, iS.unsqueeze(-1).expand(-1, kS, 2))
                SnS = Sn[iS]
                ynorm = y.norm(dim=-1)
            if mL:
                gL = gl.gather(1, iL)
            # ---- Newton direction ---------------------------------------------------------------
            ML, MS = self._rows(iL, iS)
            # cone slots in a rotated basis (e1, e2): e1 = y/|y|, or the violation direction at y = 0
            gSn = gS.norm(dim=-1)
            e1 = torch.where((ynorm > 0).unsqueeze(-1), yh,
                             gS / torch.where(gSn > 0, gSn, torch.ones_like(gSn)).unsqueeze(-1))
            e2 = torch.stack([-e1[..., 1], e1[..., 0]], -1)
            MS1 = (e1.unsqueeze(-1) * MS).sum(2)
            MS2 = (e2.unsqueeze(-1) * MS).sum(2)
            MK = torch.cat([ML, MS1, MS2], 1)  # (Bk, kL + 2 kS, n)
            ja, jb, jc = pj[2], pj[3], pj[4]
            MKp, MKq = MK[..., :N], MK[..., N:]
            wi = self.winv
            JMp = (ja.unsqueeze(1) * MKp + jb.unsqueeze(1) * MKq) * wi
            JMq = (jb.unsqueeze(1) * MKp + jc.unsqueeze(1) * MKq) * wi
            H = MK @ torch.cat([JMp, JMq], 2).transpose(1, 2)
            grL = gL
            gr1 = (gS * e1).sum(-1) - SnS
            gr2 = (gS * e2).sum(-1)
            curv = torch.where(ynorm > 0, SnS / torch.where(ynorm > 0, ynorm, torch.ones_like(ynorm)),
                               torch.zeros_like(ynorm))
            freeL = vL & ((lam > 0) | (gL > 0))
            free1 = vS & ((ynorm > 0) | (gr1 > 0))
            free2 = vS & (ynorm > 0)
            free = torch.cat([freeL, free1, free2], 1)
            grad = torch.cat([grL, gr1, gr2], 1) * free
            diag = torch.cat([torch.zeros_like(grL), torch.zeros_like(gr1), curv], 1)
            gnorm = grad.norm(dim=1, keepdim=True)
            mu = self.reg * torch.clamp(gnorm, max=1.0) + 1e-12
            ff = free.to(f8)
            H = H * ff.unsqueeze(1) * ff.unsqueeze(2)
            H = H + torch.diag_embed(diag * ff + mu * ff + (1 - ff))
            dz = torch.linalg.solve(H, grad.unsqueeze(-1)).squeeze(-1) * ff
            dzL, dz1, dz2 = dz[:, :kL], dz[:, kL:kL + kS], dz[:, kL + kS:]
            dy = dz1.unsqueeze(-1) * e1 + dz2.unsqueeze(-1) * e2
            at0 = ynorm <= 0
            # ---- projected Armijo backtracking on the dual value, then a proximal-gradient ------
            # ascent step as the safeguard (it increases d for a step below 1/L)
            lip = float((kL + 2 * kS) * self.winv.max())
            pending = torch.ones(Bk, dtype=torch.bool, device=dev)
            lam_n, y_n = lam.clone(), y.clone()
            x_n, v_n, pj_n, d_n = x.clone(), v.clone(), [t.clone() for t in pj], d.clone()
            sel = ar
            alpha = torch.ones(Bk, dtype=f8, device=dev)
            for trial in range(_MAX_HALVINGS):
                a_ = alpha[sel].unsqueeze(1)
                if trial < _NEWTON_TRIES:
                    lt = torch.clamp(lam[sel] + a_ * dzL[sel], min=0.0)
                    yt = y[sel] + a_.unsqueeze(-1) * dy[sel]
                    # a cone entering at y = 0 moves along its violation direction only (tau >= 0);
                    # one whose radial part would pass through the origin stops there (y = 0)
                    y0 = at0[sel]
                    rad = ynorm[sel] + a_ * dz1[sel]
                    yt = torch.where(y0.unsqueeze(-1), torch.clamp(a_ * dz1[sel], min=0.0).unsqueeze(-1) * e1[sel],
                                     torch.where((rad <= 0).unsqueeze(-1), torch.zeros_like(yt), yt))
                else:
                    tstep = a_ / lip
                    lt = torch.where(vL[sel], torch.clamp(lam[sel] + tstep * gL[sel], min=0.0), lam[sel])
                    u = y[sel] + tstep.unsqueeze(-1) * gS[sel]
                    un = u.norm(dim=-1)
                    shrink = torch.clamp(un - tstep * SnS[sel], min=0.0) / torch.where(un > 0, un, torch.ones_like(un))
                    yt = torch.where(vS[sel].unsqueeze(-1), u * shrink.unsqueeze(-1), y[sel])
                bs = tuple(t[sel] for t in bnd)
                xt, vt, pt = self._x_of(r[sel], ML[sel], MS[sel], lt, yt, bs)
                gLt = torch.einsum("bkn,bn->bk", ML[sel], xt) - (hn[sel].gather(1, iL[sel]) if mL else 0.0)
                gSt = torch.einsum("bkcn,bn->bkc", MS[sel], xt) + (
                    cn[sel].gather(1, iS[sel].unsqueeze(-1).expand(-1, kS, 2)) if mS else 0.0)
                dt = self._dual(xt, r[sel], lt, yt, gLt, gSt, SnS[sel])
                inc = (grL[sel] * (lt - lam[sel])).sum(1) + ((gS[sel] - SnS[sel].unsqueeze(-1) * e1[sel]) * (
                    yt - y[sel])).sum((1, 2))
                # the slack admits steps that change d only at rounding level near the solution
                okk = (dt >= d[sel] + _SIGMA * inc.clamp(min=0.0) - 1e-15 * (1 + d[sel].abs())) & (
                    (lt != lam[sel]).any(1) | (yt != y[sel]).any(-1).any(1))
                acc = sel[okk]
                lam_n[acc], y_n[acc], x_n[acc], v_n[acc], d_n[acc] = lt[okk], yt[okk], xt[okk], vt[okk], dt[okk]
                for a_t, b_t in zip(pj_n, pt):
                    a_t[acc] = b_t[okk]
                pending[acc] = False
                sel = sel[~okk]
                if sel.numel() == 0:
                    break
                alpha[sel] = 1.0 if trial + 1 == _NEWTON_TRIES else alpha[sel] * 0.5
            # stalled samples (no increase found) keep their point; they end at max_iter
            stalled = pending
            if bool(stalled.any()):
                ST[act[stalled]] = TorchQPStatus.MAX_ITER
                record(stalled, act[stalled], x, iL, vL, lam, iS, vS, y, it)
                keep = ~stalled
                if not bool(keep.any()):
                    break
                (act, r, lam_n, y_n, x_n, v_n, d_n, ub, iL, vL, iS, vS, hn, cn, ovf) = (
                    t[keep] for t in (act, r, lam_n, y_n, x_n, v_n, d_n, ub, iL, vL, iS, vS, hn, cn, ovf))
                pj_n = [t[keep] for t in pj_n]
                bnd = tuple(t[keep] for t in bnd)
            lam, y, x, v, d, pj = lam_n, y_n, x_n, v_n, d_n, tuple(pj_n)
            empty = pj[7].any(1)
            bad = torch.zeros_like(empty)
        return TorchQPSolution(X, ST, IT, IL, LAM, IS, Y), OV

    @staticmethod
    def _add(score, tolx, idx, valid, lam, y, k, rows_of, n_add: int = 2):
        """Put up to ``n_add`` of the most violated rows (score > tol) into free slots, in place
        (multipliers start at zero, so the dual value is unchanged). A candidate nearly parallel
        (|cos| > 0.9) to one picked in the same round is skipped: two such rows make the Newton
        matrix nearly singular, and the second is usually met once the first is."""
        na = min(n_add, score.shape[1], k)
        top_v, top_i = score.topk(na, dim=1)
        first = rows_of(top_i[:, 0]).flatten(1)
        overflow = torch.zeros(score.shape[0], dtype=torch.bool, device=score.device)
        for a in range(na):
            want = top_v[:, a] > tolx
            if a > 0:
                other = rows_of(top_i[:, a]).flatten(1)
                cos = (first * other).sum(1).abs() / (first.norm(dim=1) * other.norm(dim=1)).clamp(min=1e-300)
                want = want & (cos <= 0.9)
            if not bool(want.any()):
                break
            free_slot = (~valid).to(torch.int8).argmax(1)  # first free slot (0 if none)
            has_free = ~valid.gather(1, free_slot.unsqueeze(1)).squeeze(1)
            ok = want & has_free
            overflow |= want & ~has_free
            rows = ok.nonzero(as_tuple=True)[0]
            idx[rows, free_slot[rows]] = top_i[rows, a]
            valid[rows, free_slot[rows]] = True
            if lam is not None:
                lam[rows, free_slot[rows]] = 0.0
            if y is not None:
                y[rows, free_slot[rows]] = 0.0
        return overflow


_FIELDS = ("x", "status", "iterations", "i_lin", "lam", "i_soc", "y")


def _pad(t, width):
    if t.shape[1] >= width:
        return t
    pad = torch.zeros((t.shape[0], width - t.shape[1]) + tuple(t.shape[2:]), dtype=t.dtype, device=t.device)
    return torch.cat([t, pad], 1)


def _merge(sol: TorchQPSolution, sub: TorchQPSolution, ids) -> TorchQPSolution:
    """``sol`` with the samples ``ids`` replaced by ``sub`` (slot arrays padded to one width)."""
    out = {}
    for f in _FIELDS:
        a, b = getattr(sol, f), getattr(sub, f)
        if a.ndim > 1 and f not in ("x",):
            w = max(a.shape[1], b.shape[1])
            a, b = _pad(a, w), _pad(b, w)
        a = a.clone()
        a[ids] = b
        out[f] = a
    return TorchQPSolution(**out)


# =============================================================================================
# implicit differentiation
# =============================================================================================
def implicit_vjp(qp: TorchQP, gx, x, v, i_lin, lam, i_soc, y, bnd, act_tol: float = 0.0):
    """Vector-Jacobian product of the solution map at converged samples.

    Args:
        qp: The solver (static rows).
        gx: ``(B, n)`` upstream gradient w.r.t. ``x``.
        x: ``(B, n)`` solutions; ``v``: ``(B, n)`` the points projected on the devices
            (``r - W^-1 M^T z``).
        i_lin, lam, i_soc, y: Working sets and multipliers (scaled rows) of the solutions.
        bnd: ``(plo, phi, qlo, qhi)`` device bounds, ``(B, n_pv)`` each.
        act_tol: Multipliers at or below this count as zero (inactive rows).

    Returns:
        ``(r_bar, (plo_bar, phi_bar, qlo_bar, qhi_bar), h_bar, c_bar)`` with ``h_bar`` of shape
        ``(B, m)`` and ``c_bar`` ``(B, m_soc, 2)`` in the caller's (unscaled) rows.
    """
    N, n = qp.n_pv, qp.n
    B = x.shape[0]
    dev, f8 = x.device, x.dtype
    _, _, ja, jb, jc, c1, c2, _ = qp.proj(v, *bnd)
    ML = qp.Gn[i_lin]
    MS = qp.An[i_soc].reshape(B, -1, n)
    kL, kS = i_lin.shape[1], i_soc.shape[1]
    ynorm = y.norm(dim=-1)
    fL = lam > act_tol
    fS = ynorm > act_tol
    free = torch.cat([fL, fS.repeat_interleave(2, dim=1)], 1)
    MK = torch.cat([ML, MS], 1) * free.unsqueeze(-1)
    wi = qp.winv

    def Jmul(t):  # (.., n) -> J t (per inverter, symmetric)
        tp, tq = t[..., :N], t[..., N:]
        return torch.cat([ja * tp + jb * tq, jb * tp + jc * tq], -1)

    def Jmul_rows(M):
        tp, tq = M[..., :N], M[..., N:]
        return torch.cat([ja.unsqueeze(1) * tp + jb.unsqueeze(1) * tq, jb.unsqueeze(1) * tp + jc.unsqueeze(1) * tq],
                         -1)

    W2 = wi.repeat(2)
    K = MK @ (Jmul_rows(MK) * W2).transpose(1, 2)
    # cone curvature S/|y| (I - yh yh^T) on each active cone's 2x2 block
    yh = y / torch.where(ynorm > 0, ynorm, torch.ones_like(ynorm)).unsqueeze(-1)
    Sn = qp.Sn[i_soc] if qp.mS else torch.zeros_like(ynorm)
    cv = torch.where(fS, Sn / torch.where(ynorm > 0, ynorm, torch.ones_like(ynorm)), torch.zeros_like(ynorm))
    C = cv[..., None, None] * (torch.eye(2, dtype=f8, device=dev) - yh.unsqueeze(-1) * yh.unsqueeze(-2))
    if kS:
        blk = torch.zeros(B, 2 * kS, 2 * kS, dtype=f8, device=dev)
        for j in range(kS):
            blk[:, 2 * j:2 * j + 2, 2 * j:2 * j + 2] = C[:, j]
        K[:, kL:, kL:] += blk
    ff = free.to(f8)
    scale = K.diagonal(dim1=1, dim2=2).abs().amax(1, keepdim=True).clamp(min=1.0)
    K = K + torch.diag_embed((1 - ff) + 1e-13 * scale * ff)
    rhs = (MK @ (Jmul(gx) * W2).unsqueeze(-1)).squeeze(-1) * ff
    u = torch.linalg.solve(K, rhs.unsqueeze(-1)).squeeze(-1) * ff
    t = gx - (MK.transpose(1, 2) @ u.unsqueeze(-1)).squeeze(-1)
    r_bar = Jmul(t)
    b_bar = _bound_vjp(t[:, :N], t[:, N:], x[:, :N], x[:, N:], c1, c2, qp.th.expand(B, N), qp.ih.expand(B, N))
    h_bar = torch.zeros(B, qp.m_full, dtype=f8, device=dev)
    c_bar = torch.zeros(B, qp.ms_full, 2, dtype=f8, device=dev)
    if qp.mL:
        uL = u[:, :kL] / qp.gn[i_lin]
        h_bar.scatter_add_(1, qp.lin_map_t[i_lin], uL)
    if qp.mS:
        uS = -u[:, kL:].reshape(B, kS, 2) / qp.an[i_soc].unsqueeze(-1)
        c_bar.index_put_((torch.arange(B, device=dev).unsqueeze(1).expand(B, kS), qp.soc_map_t[i_soc]), uS,
                         accumulate=True)
    return r_bar, b_bar, h_bar, c_bar
