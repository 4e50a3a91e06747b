"""Backward/forward sweep over a radial feeder, compiled with numba, one sample per thread.

The sweep is the classic current-summation method for radial networks (Shirmohammadi et
al., "A compensation-based power flow method for weakly meshed distribution and
transmission networks", IEEE Trans. Power Syst. 3(2), 1988): given bus voltages, the
injected currents are summed from the leaves to the root (backward), then voltages are
updated from the root outward (forward). Each iteration is O(n_bus); every sample of a batch
converges on its own, so an easy sample never pays for a hard one.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

#: status codes returned per sample
CONVERGED, MAX_ITER, DIVERGED = 0, 1, 2

#: a sample whose voltage leaves [VM_LOW, VM_HIGH] pu is declared diverged (voltage collapse)
VM_LOW, VM_HIGH = 0.05, 5.0


def _backward(order, parent, y, s, b_extra, v, j, acc):
    """Backward sweep, leaves first: the current drawn by each bus (load - generation + shunt)
    plus its children's branch currents; conj(s / v) in real arithmetic (no complex divide)."""
    n = order.shape[0]
    for k in range(n):
        acc[k] = 0.0
    for idx in range(n - 1, 0, -1):
        b = order[idx]
        vr, vi = v[b].real, v[b].imag
        d = vr * vr + vi * vi
        pr, qr = s[b].real, s[b].imag
        gy, by = y[b].real, y[b].imag + b_extra[b]
        cr = -(pr * vr + qr * vi) / d + gy * vr - by * vi + acc[b].real
        ci = -(pr * vi - qr * vr) / d + gy * vi + by * vr + acc[b].imag
        cur = complex(cr, ci)
        j[b] = cur
        acc[parent[b]] += cur


_backward_jit = njit(cache=True, nogil=True, inline="always")(_backward)


def _sweep_one(order, parent, z, y, s, b_extra, v0, tol, max_iter, v, j):
    """Solve one sample in place; returns (iterations, status).

    Args:
        order: (n,) breadth-first bus order, root first.
        parent: (n,) parent bus (-1 at root).
        z: (n,) series impedance (pu) of the branch from each bus's parent.
        y: (n,) fixed shunt admittance per bus (pu): branch shunt halves and bus shunts.
        s: (n,) complex injection (pu), positive into the network.
        b_extra: (n,) extra shunt susceptance (pu), e.g. switched capacitors.
        v0: complex slack voltage (pu).
        v, j: (n,) outputs: bus voltages and the series current from the parent into each
            bus, consistent with the returned voltages.
    """
    n = order.shape[0]
    acc = np.empty(n, dtype=np.complex128)
    v_prev = np.empty(n, dtype=np.complex128)
    for k in range(n):
        v[k] = v0
    status = MAX_ITER
    it = 0
    while it < max_iter:
        it += 1
        for k in range(n):
            v_prev[k] = v[k]
        _backward_jit(order, parent, y, s, b_extra, v, j, acc)
        # forward sweep, root first
        dv = 0.0
        bad = False
        for idx in range(1, n):
            b = order[idx]
            vn = v[parent[b]] - z[b] * j[b]
            dr, di = vn.real - v[b].real, vn.imag - v[b].imag
            d = dr * dr + di * di
            if d > dv:
                dv = d
            m = vn.real * vn.real + vn.imag * vn.imag
            if not (m > VM_LOW * VM_LOW and m < VM_HIGH * VM_HIGH):  # also catches NaN
                bad = True
            v[b] = vn
        if bad:  # keep the last finite iterate
            for k in range(n):
                v[k] = v_prev[k]
            status = DIVERGED
            break
        if dv < tol * tol:
            status = CONVERGED
            break
    # currents at the returned voltages, so flows and losses are consistent with them
    _backward_jit(order, parent, y, s, b_extra, v, j, acc)
    return it, status


_sweep_one_jit = njit(cache=True, nogil=True)(_sweep_one)


def _flows_one(v, j, s, b_extra, ysh, child, par, yh, fwd, ib, imax, on, sn, vm, va, i_ka, loading, flows, totals,
               k):
    """Bus voltages, branch currents and flows, losses and slack supply of solved sample k.

    Writes ``vm[k], va[k]`` (n,), ``i_ka[k], loading[k]`` (n_branch,), ``flows[:, k]`` =
    [p_from, q_from, p_to, q_to] and ``totals[:, k]`` = [p_loss, q_loss, p_slack, q_slack,
    p_shunt, q_shunt]; branch arrays are indexed by ``on``. ``ysh`` (n,) is the fixed bus
    shunt admittance (pu), whose consumption is ``conj(ysh) |v|^2``; ``b_extra`` the
    switched capacitors' susceptance (injection ``b_extra |v|^2``).
    """
    deg = 180.0 / np.pi
    for b in range(v.shape[0]):
        vm[k, b] = abs(v[b])
        va[k, b] = np.arctan2(v[b].imag, v[b].real) * deg
    lr = 0.0
    li = 0.0
    for m in range(child.shape[0]):
        c, p = child[m], par[m]
        ip = j[c] + yh[m] * v[p]  # entering the branch upstream
        ic = j[c] - yh[m] * v[c]  # leaving it downstream
        sp_ = v[p] * np.conj(ip) * sn
        sc_ = -v[c] * np.conj(ic) * sn
        a = max(abs(ip) * ib[p], abs(ic) * ib[c])
        b = on[m]
        i_ka[k, b] = a
        loading[k, b] = a / imax[b]
        lr += sp_.real + sc_.real
        li += sp_.imag + sc_.imag
        if not fwd[m]:
            sp_, sc_ = sc_, sp_
        flows[0, k, b] = sp_.real
        flows[1, k, b] = sp_.imag
        flows[2, k, b] = sc_.real
        flows[3, k, b] = sc_.imag
    # slack supply = losses + shunt consumption - injections
    psh = 0.0
    qsh = 0.0
    pin = 0.0
    qin = 0.0
    for b in range(v.shape[0]):
        m2 = v[b].real * v[b].real + v[b].imag * v[b].imag
        psh += ysh[b].real * sn * m2
        qsh -= (ysh[b].imag + b_extra[b]) * sn * m2
        pin += s[b].real * sn
        qin += s[b].imag * sn
    totals[0, k] = lr
    totals[1, k] = li
    totals[2, k] = lr + psh - pin
    totals[3, k] = li + qsh - qin
    totals[4, k] = psh
    totals[5, k] = qsh


_flows_one_jit = njit(cache=True, nogil=True)(_flows_one)


def _sample(k, order, parent, z, y, ysh, s, b_extra, v0, tol, max_iter, child, par, yh, fwd, ib, imax, on, sn,
            iters, status, vm, va, i_ka, loading, flows, totals):
    """Solve sample k and write its outputs (scratch voltages and currents are per sample)."""
    n = order.shape[0]
    v = np.empty(n, dtype=np.complex128)
    j = np.zeros(n, dtype=np.complex128)
    bx = b_extra[min(k, b_extra.shape[0] - 1)]
    it, st = _sweep_one_jit(order, parent, z, y, s[k], bx, v0[k], tol, max_iter, v, j)
    iters[k] = it
    status[k] = st
    _flows_one_jit(v, j, s[k], bx, ysh, child, par, yh, fwd, ib, imax, on, sn, vm, va, i_ka, loading, flows, totals,
                   k)


_sample_jit = njit(cache=True, nogil=True)(_sample)


# Two separate Python functions, not one jitted twice: numba's cache key ignores
# ``parallel=``, so a shared function would load the serial machine code for both.
def _batch_serial(order, parent, z, y, ysh, s, b_extra, v0, tol, max_iter, child, par, yh, fwd, ib, imax, on, sn,
                  iters, status, vm, va, i_ka, loading, flows, totals):
    for k in range(s.shape[0]):
        _sample_jit(k, order, parent, z, y, ysh, s, b_extra, v0, tol, max_iter, child, par, yh, fwd, ib, imax, on, sn,
                    iters, status, vm, va, i_ka, loading, flows, totals)


def _batch_parallel(order, parent, z, y, ysh, s, b_extra, v0, tol, max_iter, child, par, yh, fwd, ib, imax, on,
                    sn, iters, status, vm, va, i_ka, loading, flows, totals):
    for kk in prange(s.shape[0]):
        k = np.int64(kk)  # prange's index is unsigned; keep index arithmetic in int64
        _sample_jit(k, order, parent, z, y, ysh, s, b_extra, v0, tol, max_iter, child, par, yh, fwd, ib, imax, on, sn,
                    iters, status, vm, va, i_ka, loading, flows, totals)


_sweep_serial = njit(cache=True, nogil=True)(_batch_serial)
_sweep_parallel = njit(cache=True, nogil=True, parallel=True)(_batch_parallel)

#: below this batch size the thread pool costs more than it saves
PARALLEL_MIN_BATCH = 64


def solve(m, s, b_extra, v0, tol, max_iter, n_branch, sn):
    """Run the sweep and the flow computation for a batch.

    Args:
        m: the feeder's per-unit model (``safedispatch.powerflow.radial._Model``).
        s: (K, n) complex128 injections (pu).
        b_extra: (K, n) or (1, n) float64 extra shunt susceptance (pu).
        v0: (K,) complex128 slack voltages (pu).
        tol: convergence tolerance on the largest voltage change (pu).
        max_iter: iteration limit.
        n_branch: number of branches (out-of-service ones get zeros).
        sn: base power (MVA).

    Returns:
        dict of arrays: vm, va (K, n) (pu, degrees); iters (K,) int64; status (K,) int8;
        i_ka, loading (K, n_branch); flows (4, K, n_branch) = [p_from, q_from, p_to, q_to]
        (MW, MVAr); totals (6, K) = [p_loss, q_loss, p_slack, q_slack, p_shunt, q_shunt].
    """
    K, n = s.shape
    r = dict(vm=np.empty((K, n)), va=np.empty((K, n)), iters=np.zeros(K, dtype=np.int64),
             status=np.zeros(K, dtype=np.int8), i_ka=np.zeros((K, n_branch)), loading=np.zeros((K, n_branch)),
             flows=np.zeros((4, K, n_branch)), totals=np.zeros((6, K)))
    fn = _sweep_parallel if K >= PARALLEL_MIN_BATCH else _sweep_serial
    fn(m.order, m.parent, m.z, m.y, m.ysh, s, b_extra, v0, float(tol), int(max_iter), m.child, m.par, m.yh,
       m.from_is_parent, m.ibase_ka, m.i_max_ka, m.on, float(sn), r["iters"], r["status"], r["vm"], r["va"],
       r["i_ka"], r["loading"], r["flows"], r["totals"])
    return r
