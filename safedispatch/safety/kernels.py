"""Small compiled helpers on the safety layer's hot path (device checks, clean-up, limit
violations): a handful of scalar loops instead of dozens of tiny numpy calls per projection."""

from __future__ import annotations

import math

import numpy as np
from numba import njit


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
