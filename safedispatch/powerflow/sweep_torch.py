"""Backward/forward sweep in PyTorch, vectorized over the batch and over each tree level.

Same method as :mod:`safedispatch.powerflow.sweep_numba` (Shirmohammadi et al. 1988), written
with level-wise ``index_add``/``index_select`` so it runs on any device and is differentiable
by autograd. All samples iterate together until the slowest converges; each sample records
the iteration at which it converged.
"""

from __future__ import annotations

import torch

from safedispatch.powerflow.sweep_numba import CONVERGED, DIVERGED, MAX_ITER, VM_HIGH, VM_LOW


def sweep(levels, z, y, s, b_extra, v0, tol, max_iter):
    """Run the sweep for a batch.

    Args:
        levels: list over depth 1..D of ``(bus_index, parent_index)`` long tensors.
        z, y: (n,) complex per-unit series impedance and fixed shunt admittance.
        s: (K, n) complex injections (pu).
        b_extra: (K, n) or (1, n) real extra shunt susceptance (pu).
        v0: (K,) complex slack voltages (pu).
        tol, max_iter: convergence tolerance on the largest voltage change (pu), iteration cap.

    Returns:
        v, j: (K, n) complex; iters: (K,) int64; status: (K,) int8 (CPU tensors for the last two
        follow ``s.device``).
    """
    K, n = s.shape
    dev = s.device
    yb = y.unsqueeze(0) + 1j * b_extra
    v = v0.unsqueeze(1).expand(K, n).clone()
    j = torch.zeros_like(v)
    iters = torch.full((K,), max_iter, dtype=torch.int64, device=dev)
    status = torch.full((K,), MAX_ITER, dtype=torch.int8, device=dev)
    done = torch.zeros(K, dtype=torch.bool, device=dev)
    for it in range(1, max_iter + 1):
        # backward sweep: own current, then add each level's branch currents to the parents
        j = -torch.conj(s / v) + yb * v
        for bus, par in reversed(levels):
            j.index_add_(1, par, j.index_select(1, bus))
        # forward sweep (in place on fresh tensors: index_select saves no input for autograd)
        v_new = v.clone()
        for bus, par in levels:
            v_new.index_copy_(1, bus, v_new.index_select(1, par) - z[bus] * j.index_select(1, bus))
        m = v_new.abs()
        ok = torch.isfinite(m).all(dim=1) & (m > VM_LOW).all(dim=1) & (m < VM_HIGH).all(dim=1)
        dv = (v_new - v).abs().amax(dim=1)
        newly_div = ~ok & ~done
        status = torch.where(newly_div, torch.full_like(status, DIVERGED), status)
        iters = torch.where(newly_div, torch.full_like(iters, it), iters)
        conv = ok & (dv < tol) & ~done
        status = torch.where(conv, torch.full_like(status, CONVERGED), status)
        iters = torch.where(conv, torch.full_like(iters, it), iters)
        # samples that are finished keep their voltages (diverged ones their last finite iterate)
        keep = done | ~ok
        v = torch.where(keep.unsqueeze(1), v, v_new)
        done = done | conv | newly_div
        if bool(done.all()):
            break
    # currents consistent with the returned voltages' predecessors, as in the numba kernel:
    # recompute one backward pass at the final voltages for the flows
    j = -torch.conj(s / v) + yb * v
    for bus, par in reversed(levels):
        j.index_add_(1, par, j.index_select(1, bus))
    return v, j, iters, status
