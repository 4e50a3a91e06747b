"""The batched torch QP: closed-form device projections (optimality checked directly),
their derivatives (finite differences), and whole solves against the CPU StructuredQP."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from safedispatch.backends.structured_qp import QPStatus, StructuredQP
from safedispatch.backends.torch_qp import (
    TorchQP,
    TorchQPStatus,
    _bound_vjp,
    implicit_vjp,
    project_devices,
)

f8 = torch.float64


def random_sets(rng, K, pf):
    s = rng.uniform(0.5, 2.0, K)
    plo = np.where(rng.random(K) < 0.5, 0.0, s * rng.uniform(0, 0.6, K))
    phi = np.minimum(plo + s * rng.uniform(0.05, 1.2, K), s)
    qlo = -s * rng.uniform(0.1, 1.0, K)
    qhi = s * rng.uniform(0.1, 1.0, K)
    t = np.where(rng.random(K) < 0.5, rng.uniform(0.3, 2.0, K), np.inf) if pf else np.full(K, np.inf)
    tt = np.where(np.isfinite(t), t, 0.0)
    th = np.where(np.isfinite(t), tt / np.hypot(1, tt), 1.0)
    ih = np.where(np.isfinite(t), 1 / np.hypot(1, tt), 0.0)
    return [torch.tensor(a) for a in (plo, phi, qlo, qhi, s, th, ih)]


def inside(p, q, plo, phi, qlo, qhi, s, th, ih, tol=1e-9):
    return ((p >= plo - tol) & (p <= phi + tol) & (q >= qlo - tol) & (q <= qhi + tol)
            & (p * p + q * q <= s * s * (1 + tol)) & (ih * q - th * p <= tol) & (-ih * q - th * p <= tol))


@pytest.mark.parametrize("pf", [False, True])
def test_projection_is_the_nearest_point(pf):
    """x = Proj(v) iff x is in the set and (v - x).(u - x) <= 0 for every u in the set; checked
    against a dense cloud of points of each set (independent of the closed form)."""
    rng = np.random.default_rng(0)
    K = 400
    plo, phi, qlo, qhi, s, th, ih = random_sets(rng, K, pf)
    v = torch.tensor(rng.normal(scale=1.5, size=(K, 2)))
    xp, xq, *_, empty = project_devices(v[:, 0], v[:, 1], plo, phi, qlo, qhi, s, th, ih, pf)
    ok = ~empty
    assert ok.sum() > 0.9 * K
    assert inside(xp, xq, plo, phi, qlo, qhi, s, th, ih)[ok].all()
    g = torch.linspace(-1, 1, 81, dtype=f8)
    up, uq = torch.meshgrid(g, g, indexing="ij")
    up = up.reshape(1, -1) * s[:, None] * 1.01
    uq = uq.reshape(1, -1) * s[:, None] * 1.01
    cols = [t[:, None] for t in (plo, phi, qlo, qhi, s, th, ih)]
    mem = inside(up, uq, *cols, tol=0.0)
    vi = (v[:, :1] - xp[:, None]) * (up - xp[:, None]) + (v[:, 1:] - xq[:, None]) * (uq - xq[:, None])
    vi = torch.where(mem, vi, torch.full_like(vi, -1.0))
    assert vi[ok].max() <= 1e-9


def test_projection_jacobians_match_finite_differences():
    rng = np.random.default_rng(1)
    K = 300
    plo, phi, qlo, qhi, s, th, ih = random_sets(rng, K, True)
    v = torch.tensor(rng.normal(scale=1.5, size=(K, 2)))
    xp, xq, ja, jb, jc, c1, c2, empty = project_devices(v[:, 0], v[:, 1], plo, phi, qlo, qhi, s, th, ih, True)
    eps = 1e-7
    for k, (a, b) in enumerate(((ja, jb), (jb, jc))):
        dv = torch.zeros_like(v)
        dv[:, k] = eps
        out = project_devices(v[:, 0] + dv[:, 0], v[:, 1] + dv[:, 1], plo, phi, qlo, qhi, s, th, ih, True)
        same = (out[5] == c1) & (out[6] == c2) & ~empty  # no piece change across the step
        fd_p, fd_q = (out[0] - xp) / eps, (out[1] - xq) / eps
        assert same.sum() > 0.9 * K
        assert (fd_p - a)[same].abs().max() < 1e-5
        assert (fd_q - b)[same].abs().max() < 1e-5
    # bounds: the adjoint of dx/d(bound) against finite differences, for a random upstream vector
    tp, tq = torch.tensor(rng.normal(size=K)), torch.tensor(rng.normal(size=K))
    bars = _bound_vjp(tp, tq, xp, xq, c1, c2, th, ih)
    for k in range(4):
        bnd = [plo, phi, qlo, qhi]
        bnd[k] = bnd[k] + eps
        out = project_devices(v[:, 0], v[:, 1], *bnd, s, th, ih, True)
        same = (out[5] == c1) & (out[6] == c2) & ~empty & (plo <= phi) & inside(
            out[0], out[1], *bnd, s, th, ih)
        fd = (tp * (out[0] - xp) + tq * (out[1] - xq)) / eps
        assert (fd - bars[k])[same].abs().max() < 1e-5


def random_problem(rng, n_pv=4, m=12, ms=6):
    n = 2 * n_pv
    G = rng.normal(size=(m, n))
    A = rng.normal(size=(ms, 2, n)) * 0.5
    S = rng.uniform(0.5, 2.0, ms)
    s = rng.uniform(1.0, 2.0, n_pv)
    return G, A, S, s


def test_solve_matches_structured_qp_and_certifies_infeasibility():
    rng = np.random.default_rng(2)
    n_pv = 4
    G, A, S, s = random_problem(rng, n_pv)
    t, w = np.full(n_pv, np.inf), rng.uniform(0.5, 2.0, n_pv)
    qp = TorchQP(n_pv, G, A, S, s, t, w)
    cpu = StructuredQP(n_pv, 0, G, A)
    B = 64
    r = rng.normal(scale=1.5, size=(B, 2 * n_pv))
    plo, phi = np.zeros((B, n_pv)), np.tile(s, (B, 1)) * rng.uniform(0.3, 1.0, (B, n_pv))
    qlo, qhi = -np.tile(s, (B, 1)), np.tile(s, (B, 1))
    h = rng.uniform(0.2, 1.5, (B, G.shape[0]))
    h[0] = -50.0  # an impossible sample: G x <= -50 with |x| <= 2 per device
    c = rng.normal(scale=0.2, size=(B, A.shape[0], 2))
    T = torch.tensor
    sol = qp.solve(T(r), T(plo), T(phi), T(qlo), T(qhi), T(h), T(c))
    assert sol.status[0] == TorchQPStatus.INFEASIBLE
    e0 = np.zeros(0)
    n_opt = 0
    for i in range(1, B):
        ref = cpu.solve(r[i, :n_pv], r[i, n_pv:], e0, w, e0, plo[i], phi[i], qlo[i], qhi[i], s, t, e0, e0, h[i],
                        c[i], S)
        if ref.status != QPStatus.OPTIMAL:
            assert sol.status[i] != TorchQPStatus.OPTIMAL
            continue
        if sol.status[i] == TorchQPStatus.OPTIMAL:
            n_opt += 1
            np.testing.assert_allclose(sol.x[i].numpy(), ref.x, atol=1e-7)
    assert n_opt >= 0.9 * (B - 1)


def test_implicit_vjp_matches_finite_differences():
    rng = np.random.default_rng(3)
    n_pv = 3
    G, A, S, s = random_problem(rng, n_pv, m=8, ms=4)
    t, w = np.full(n_pv, np.inf), np.ones(n_pv)
    qp = TorchQP(n_pv, G, A, S, s, t, w)
    B = 16
    T = lambda a: torch.tensor(np.asarray(a, float))  # noqa: E731
    r = T(rng.normal(scale=1.2, size=(B, 2 * n_pv)))
    bnd = (T(np.zeros((B, n_pv))), T(np.tile(s, (B, 1)) * 0.9), T(-np.tile(s, (B, 1))), T(np.tile(s, (B, 1))))
    h = T(rng.uniform(0.2, 1.0, (B, G.shape[0])))
    c = T(rng.normal(scale=0.2, size=(B, A.shape[0], 2)))

    def solve(r, h, c):
        sol = qp.solve(r, *bnd, h, c, tol=1e-12)
        return sol

    sol = solve(r, h, c)
    ok = sol.status == TorchQPStatus.OPTIMAL
    u = torch.einsum("bk,bkn->bn", sol.lam, qp.Gn[sol.i_lin]) + torch.einsum("bkc,bkcn->bn", sol.y, qp.An[sol.i_soc])
    v = r - u * qp.winv.repeat(2)
    gx = T(rng.normal(size=(B, 2 * n_pv)))
    rb, _, hb, cb = implicit_vjp(qp, gx, sol.x, v, sol.i_lin, sol.lam, sol.i_soc, sol.y, bnd)
    eps = 1e-6
    dr, dh, dc = T(rng.normal(size=r.shape)), T(rng.normal(size=h.shape)), T(rng.normal(size=c.shape))
    xp = solve(r + eps * dr, h + eps * dh, c + eps * dc).x
    xm = solve(r - eps * dr, h - eps * dh, c - eps * dc).x
    fd = ((xp - xm) / (2 * eps) * gx).sum(1)
    an = (rb * dr).sum(1) + (hb * dh).sum(1) + (cb * dc).sum((1, 2))
    assert ok.sum() >= B - 2
    assert (fd - an)[ok].abs().max() < 1e-5
    assert (an[ok].abs() > 1e-3).any()
