"""The compiled VJP of the structured QP's solution map against central finite differences of
the solver itself, and its input errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import safedispatch as sd
from safedispatch.backends.structured_qp_vjp import vjp_batch
from safedispatch.errors import InputError


@pytest.fixture(scope="module")
def problem():
    """ieee33-paperB-4's rows and a batch of random instances (the torch layer's data)."""
    f = sd.load_case("ieee33-paperB-4")
    tl = sd.TorchSafetyLayer(f)
    rng = np.random.default_rng(5)
    B, N = 24, f.n_pv
    snap = sd.Snapshot.nominal(f, load=1.0)
    scale = rng.uniform(0.2, 1.2, (B, 1))
    lp, lq = torch.tensor(snap.load_p_mw[None] * scale), torch.tensor(snap.load_q_mvar[None] * scale)
    av = torch.tensor(f.pv.p_max_mw * rng.uniform(0.2, 1.0, (B, N)))
    bnd, h, c = tl._data(tl._static(torch.device("cpu")), lp, lq, av, None)
    s = f.pv.s_mva
    R = np.c_[s * rng.uniform(0, 1.2, (B, N)), s * rng.uniform(-1, 1, (B, N))]
    bn = [np.ascontiguousarray(b.expand(B, N).numpy()) for b in bnd]
    return tl, R, bn, h.numpy(), c.numpy()


def _solve(tl, R, bn, H, C):
    N = tl.n_pv
    e0 = np.zeros((R.shape[0], 0))
    return tl._mod.fast.solve_batch(R[:, :N], R[:, N:], e0, tl._w, np.zeros(0), *bn, tl._s, tl._t, e0, e0, H, C,
                                    tl._S, tol=1e-12)


def test_vjp_matches_finite_differences(problem):
    tl, R, bn, H, C = problem
    N = tl.n_pv
    X, code, _, LL, LS = _solve(tl, R, bn, H, C)
    assert (code == 0).all()
    rng = np.random.default_rng(0)
    G = rng.normal(size=X.shape)
    rb, bars, hb, cb = vjp_batch(tl._mod.fast, X, LL, LS, R[:, :N], R[:, N:], *bn, tl._w, tl._s, tl._t, C, tl._S, G)
    eps, checked = 1e-6, 0
    for b in range(R.shape[0]):
        # directional derivative of <G, x> along random directions in r, h and p_hi, centrally
        dr, dh, dp = rng.normal(size=2 * N), rng.normal(size=H.shape[1]), rng.normal(size=N)
        vals = []
        for sg in (1.0, -1.0):
            Rb, Hb = R[b:b + 1] + sg * eps * dr, H[b:b + 1] + sg * eps * dh
            bnb = [a[b:b + 1].copy() for a in bn]
            bnb[1] = bnb[1] + sg * eps * dp
            Xs, cs, _, _, _ = _solve(tl, Rb, bnb, Hb, C[b:b + 1])
            assert cs[0] == 0
            vals.append(G[b] @ Xs[0])
        fd = (vals[0] - vals[1]) / (2 * eps)
        an = rb[b] @ dr + hb[b] @ dh + bars[1][b] @ dp
        if abs(fd - an) > 1e-4 * max(1.0, abs(fd)):  # the active set changed inside +-eps: a kink
            continue
        checked += 1
    assert checked >= 20  # all but a few samples sit at stable active sets
    assert np.abs(rb).sum() > 0 and np.abs(hb).sum() > 0


def test_index_and_mask_write_only_those_rows(problem):
    tl, R, bn, H, C = problem
    N = tl.n_pv
    idx = np.array([3, 7, 11])
    X, code, _, LL, LS = _solve(tl, R, bn, H, C)
    Xi, codei, _, LLi, LSi = tl._mod.fast.solve_batch(R[:, :N], R[:, N:], np.zeros((R.shape[0], 0)), tl._w,
                                                       np.zeros(0), *bn, tl._s, tl._t, np.zeros((R.shape[0], 0)),
                                                       np.zeros((R.shape[0], 0)), H, C, tl._S, tol=1e-12, index=idx)
    np.testing.assert_allclose(Xi, X[idx], atol=1e-9)
    G = np.ones_like(R)
    rb, _, _, _ = vjp_batch(tl._mod.fast, Xi, LLi, LSi, R[:, :N], R[:, N:], *bn, tl._w, tl._s, tl._t, C, tl._S, G,
                            index=idx, mask=np.array([True, False, True]))
    full, _, _, _ = vjp_batch(tl._mod.fast, X, LL, LS, R[:, :N], R[:, N:], *bn, tl._w, tl._s, tl._t, C, tl._S, G)
    np.testing.assert_allclose(rb[[3, 11]], full[[3, 11]], atol=1e-12)
    assert not rb[np.setdiff1d(np.arange(R.shape[0]), [3, 11])].any()


def test_bad_input_names_the_field(problem):
    tl, R, bn, H, C = problem
    N, qp = tl.n_pv, tl._mod.fast
    X, _, _, LL, LS = _solve(tl, R, bn, H, C)
    args = [X, LL, LS, R[:, :N], R[:, N:], *bn, tl._w, tl._s, tl._t, C, tl._S, np.ones_like(R)]
    bad = list(args)
    bad[1] = LL[:, :3]
    with pytest.raises(InputError, match="shape") as e:
        vjp_batch(qp, *bad)
    assert e.value.field == "lam_lin"
    two = [X[:2], LL[:2], LS[:2]] + args[3:]
    with pytest.raises(InputError) as e:
        vjp_batch(qp, *two, index=np.array([0, R.shape[0]]))
    assert e.value.field == "index"
    with pytest.raises(InputError) as e:
        vjp_batch(qp, *args, out=(np.zeros((1, 1)), (np.zeros((1, 1)),) * 4, np.zeros((1, 1)), np.zeros((1, 1, 2))))
    assert e.value.field == "out[0]"
    e0 = np.zeros((R.shape[0], 0))
    with pytest.raises(InputError) as e:
        qp.solve_batch(R[:, :N], R[:, N:], e0, tl._w, np.zeros(0), *bn, tl._s, tl._t, e0, e0, H, C, tl._S,
                       index=np.array([-1]))
    assert e.value.field == "index"
