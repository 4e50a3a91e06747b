"""The projection problem: the nearest set-points that satisfy the model's limits.

Formulation-agnostic (the network equations come from
:mod:`safedispatch.formulations`) and backend-agnostic (written against an algebra). The
problem is built once; every call updates parameters only:

    minimise   sum_i w_i ||(p_i, q_i) - (rp_i, rq_i)||^2 + sum_k w_k (e_k - re_k)^2
    subject to p_lo <= p <= p_hi, q_lo <= q <= q_hi, p^2 + q^2 <= s^2,
               |q| <= tan(acos(pf_min)) p                     (inverters with a pf limit)
               e_lo <= e <= e_hi                                (storage)
               network equations (LinDistFlow or SOCP branch flow)
               vm_min^2 <= w + d <= vm_max^2                    (d: certification offset)
               P^2 + Q^2 <= s_max^2                             (branch apparent power)
               sum of PV at a weak bus <= S_sc / SCR_min       (opt-in, paper B)

Device bounds ``p_lo .. e_hi`` fold in availability, ramp and state-of-charge limits and
are computed by :func:`device_bounds`. The *soft* variant adds non-negative slacks on the
voltage and thermal limits and load shedding, for snapshots where no set-point is feasible
(the safety layer minimises the sum of the squared excesses; see :mod:`safedispatch.safety.layer`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numba import njit

from safedispatch.formulations import lindistflow, socp_branchflow
from safedispatch.network.feeder import Feeder
from safedispatch.problems.types import Snapshot
from safedispatch.problems.zones import ModelNetwork

__all__ = ["FORMULATIONS", "DeviceBounds", "ProjectionProgram", "device_bounds", "BIG"]

FORMULATIONS = {lindistflow.NAME: lindistflow, socp_branchflow.NAME: socp_branchflow}

#: stands in for an absent (infinite) limit in solver parameters
BIG = 1e4


@dataclass
class DeviceBounds:
    """Per-call device bounds, all for the model's devices (``mn.pv``, ``mn.ess``)."""

    p_lo: np.ndarray
    p_hi: np.ndarray
    q_lo: np.ndarray
    q_hi: np.ndarray
    e_lo: np.ndarray
    e_hi: np.ndarray


def device_bounds(feeder: Feeder, mn: ModelNetwork, snap: Snapshot) -> DeviceBounds:
    """Box bounds of the devices at this snapshot.

    PV: ``0 <= p <= available``; ``|q| <= s``; ramp limits ``|x - prev| <= ramp * s * 60 dt``
    (per minute rates). Ramp limits never force P above the available power nor outside the
    rating: where the sun drops faster than the ramp allows, the lower ramp bound yields.
    Storage: ``|e| <= p_max`` and the next state of charge within ``[soc_min, soc_max]``
    (discharge ``e > 0`` lowers it by ``e dt / (eta_dis E)``, charging raises it by
    ``-e eta_ch dt / E``).
    """
    pv, ess = feeder.pv, feeder.ess
    i, k = mn.pv, mn.ess
    prev = snap.prev
    out_pv = np.empty((4, i.size))
    out_e = np.empty((2, k.size))
    pp_, pq_ = (prev.pv_p_mw[i], prev.pv_q_mvar[i]) if prev is not None else (out_pv[0], out_pv[0])
    bounds_kernel(np.asarray(snap.pv_avail_mw, float)[i], pv.s_mva[i], pv.ramp_p_pu_per_min[i],
                  pv.ramp_q_pu_per_min[i], prev is not None, pp_, pq_,
                  np.asarray(snap.ess_soc, float)[k], ess.p_max_mw[k], ess.e_max_mwh[k], ess.soc_min[k],
                  ess.soc_max[k], ess.eta_charge[k], ess.eta_discharge[k], float(snap.dt_h), out_pv, out_e)
    return DeviceBounds(p_lo=out_pv[0], p_hi=out_pv[1], q_lo=out_pv[2], q_hi=out_pv[3], e_lo=out_e[0], e_hi=out_e[1])


@njit(cache=True, nogil=True)
def bounds_kernel(avail, s, ramp_p, ramp_q, has_prev, prev_p, prev_q, soc, p_max, e_max, soc_min, soc_max, eta_ch,
                  eta_dis, dt, out_pv, out_e):  # pragma: no cover - compiled
    """The arithmetic of :func:`device_bounds` (also called directly by the safety layer's
    lean path): ``out_pv`` rows ``p_lo, p_hi, q_lo, q_hi``, ``out_e`` rows ``e_lo, e_hi``."""
    minutes = 60.0 * dt
    for j in range(s.shape[0]):
        plo = 0.0
        phi = min(avail[j], s[j])
        qlo = -s[j]
        qhi = s[j]
        if has_prev:
            if ramp_p[j] < np.inf:
                rp = ramp_p[j] * s[j] * minutes
                phi = min(phi, prev_p[j] + rp)
                plo = min(max(plo, prev_p[j] - rp), phi)
            if ramp_q[j] < np.inf:
                rq = ramp_q[j] * s[j] * minutes
                qlo = max(qlo, prev_q[j] - rq)
                qhi = min(qhi, prev_q[j] + rq)
        out_pv[0, j] = plo
        out_pv[1, j] = phi
        out_pv[2, j] = qlo
        out_pv[3, j] = qhi
    for j in range(p_max.shape[0]):
        out_e[1, j] = min(p_max[j], max(soc[j] - soc_min[j], 0.0) * e_max[j] * eta_dis[j] / dt)
        out_e[0, j] = -min(p_max[j], max(soc_max[j] - soc[j], 0.0) * e_max[j] / (eta_ch[j] * dt))


class ProjectionProgram:
    """The projection problem for one model network, built once on an algebra.

    Args:
        alg: A fresh algebra (``CvxpyAlgebra()``).
        feeder: The feeder.
        mn: The model network (whole feeder or a zone).
        model: "lindistflow" or "socp".
        weights_pv, weights_ess: Per-device distance weights (> 0).
        scr_min: Minimum short-circuit ratio at buses with a finite ``s_sc_mva`` (None: off).
        soft: Build the soft variant (slacks on limits, load shedding).
        correction: Add the affine model correction ``w + d + Ep p_node + Eq q_node`` used by
            AC certification after re-linearisation.
        loss_weight: SOCP only: objective weight on the (relaxed) losses ``sum r l`` in pu.
        caps_relaxed: Capacitor steps as continuous variables in ``[c_lo, c_hi]`` (parameters)
            with their distance ``cap_weight * sum (q_step (c - raw))^2`` in the objective: the
            relaxation a branch and bound over steps solves at each node.
    """

    def __init__(self, alg, feeder: Feeder, mn: ModelNetwork, model: str, weights_pv, weights_ess,
                 scr_min: float | None, soft: bool = False, correction: bool = False, loss_weight: float = 0.0,
                 caps_relaxed: bool = False, cap_weight: float = 1.0):
        self.alg, self.mn, self.model, self.soft, self.correction = alg, mn, model, soft, correction
        tree = mn.tree
        m = tree.n - 1
        n_pv, n_ess = mn.pv.size, mn.ess.size
        a = alg
        P = a.param
        self.p = a.var("pv_p", n_pv)
        self.q = a.var("pv_q", n_pv)
        self.e = a.var("ess_p", n_ess)
        for name, lo, hi, v in (("p", "p_lo", "p_hi", self.p), ("q", "q_lo", "q_hi", self.q),
                                ("e", "e_lo", "e_hi", self.e)):
            n = v.shape[0] if hasattr(v, "shape") else len(v)
            a.le(f"{name}_lo", P(lo, np.zeros(n)), v)
            a.le(f"{name}_hi", v, P(hi, np.zeros(n)))
        s = feeder.pv.s_mva[mn.pv]
        if n_pv:
            a.soc("disk", s, self.p, self.q)
            pf = feeder.pv.pf_min[mn.pv]
            lim = np.flatnonzero(pf > 0)
            if lim.size:
                t = np.tan(np.arccos(pf[lim]))
                a.le("pf_up", self.q[lim], a.mul(t, self.p[lim]))
                a.le("pf_dn", -self.q[lim], a.mul(t, self.p[lim]))
        if scr_min is not None:
            weak = [b for b in np.unique(feeder.pv.bus[mn.pv]) if np.isfinite(feeder.bus.s_sc_mva[b])]
            for b in weak:
                idx = np.flatnonzero(feeder.pv.bus[mn.pv] == b)
                a.le(f"scr[{b}]", a.total(self.p[idx]), feeder.bus.s_sc_mva[b] / scr_min / mn.sn_mva)
        Bpv, Bess = mn.incidence(mn.pv_node), mn.incidence(mn.ess_node)
        self.Bpv, self.Bess = Bpv, Bess
        load_p, load_q = P("load_p", np.zeros(m)), P("load_q", np.zeros(m))
        cap_q = P("cap_q", np.zeros(m))
        sn = mn.sn_mva
        p_inj = a.matvec(Bpv / sn, self.p) + a.matvec(Bess / sn, self.e) - load_p
        q_inj = a.matvec(Bpv / sn, self.q) + cap_q - load_q + tree.b_pu[1:]
        if caps_relaxed:
            qs = feeder.cap.q_step_mvar[mn.cap]
            self.c = a.var("cap", mn.cap.size)
            a.le("c_lo", P("c_lo", np.zeros(mn.cap.size)), self.c)
            a.le("c_hi", self.c, P("c_hi", np.zeros(mn.cap.size)))
            q_inj = q_inj + a.matvec(mn.incidence(mn.cap_node) * qs / sn, self.c)
        if soft:
            self.shed = a.var("shed", m, lb=0.0)
            a.le("shed_max", self.shed, P("shed_max", np.zeros(m)))
            p_inj = p_inj + self.shed
            q_inj = q_inj + a.mul(P("shed_q_ratio", np.zeros(m)), self.shed)  # shed at the load's pf
        self.w_src = P("w_src", 1.0)
        net = FORMULATIONS[model].build(a, tree, p_inj, q_inj, self.w_src)
        self.net = net
        w = net.w
        if correction:
            ctrl = np.flatnonzero(Bpv.any(axis=1) | Bess.any(axis=1))
            self.ctrl_nodes = ctrl
            k = ctrl.size
            pn = a.matvec(Bpv[ctrl] / sn, self.p) + a.matvec(Bess[ctrl] / sn, self.e)
            qn = a.matvec(Bpv[ctrl] / sn, self.q)
            w = w + P("d", np.zeros(m)) + a.matvec_param(P("Ep", np.zeros((m, k))), pn) \
                + a.matvec_param(P("Eq", np.zeros((m, k))), qn)
        self.w_eff = w
        wmin, wmax, smax = P("wmin", np.zeros(m)), P("wmax", np.ones(m)), P("smax", np.ones(m))
        if soft:
            self.sv_hi = a.var("slack_vmax", m, lb=0.0)
            self.sv_lo = a.var("slack_vmin", m, lb=0.0)
            self.ss = a.var("slack_thermal", m, lb=0.0)
            a.le("vmax", w, wmax + self.sv_hi)
            a.le("vmin", wmin - self.sv_lo, w)
            a.soc("thermal", smax + self.ss, net.P, net.Q)
        else:
            a.le("vmax", w, wmax)
            a.le("vmin", wmin, w)
            a.soc("thermal", smax, net.P, net.Q)
        swp = np.sqrt(np.asarray(weights_pv, float)[mn.pv])
        swe = np.sqrt(np.asarray(weights_ess, float)[mn.ess])
        dist = (a.sum_squares(a.mul(swp, self.p - P("rp", np.zeros(n_pv))))
                + a.sum_squares(a.mul(swp, self.q - P("rq", np.zeros(n_pv)))))
        if n_ess:
            dist = dist + a.sum_squares(a.mul(swe, self.e - P("re", np.zeros(n_ess))))
        if caps_relaxed:
            dist = dist + a.sum_squares(a.mul(np.sqrt(cap_weight) * qs, self.c - P("rc", np.zeros(mn.cap.size))))
        if soft:
            viol = a.total(self.sv_hi) + a.total(self.sv_lo) + a.total(self.ss)
            shed_total = a.total(self.shed)
            a.le("viol_cap", viol, P("viol_cap", BIG))
            a.le("shed_cap", shed_total, P("shed_cap", BIG))
            # an epigraph variable keeps the weighted objective DPP (parameter x variable)
            t = a.var("dist", 1)
            a.le("dist_epi", dist, a.total(t))
            obj = (P("beta", 1.0, nonneg=True) * a.total(t) + P("alpha", 0.0, nonneg=True) * viol
                   + P("c_shed", 0.0, nonneg=True) * shed_total)
        else:
            obj = dist
        if net.l is not None and loss_weight > 0:
            # a small price on (possibly fictitious) losses tightens the relaxed cones; without
            # it the projection is indifferent to l and returns inexact points
            obj = obj + loss_weight * a.total(a.mul(tree.r_pu[1:], net.l))
        self.problem = a.problem(obj)

    def set_snapshot(self, feeder: Feeder, snap: Snapshot, bounds: DeviceBounds, raw_p, raw_q, raw_e, cap_node_q,
                     wmin, wmax, smax, w_source=None, boundary_p=None, boundary_q=None) -> None:
        """Write one call's numbers into the parameters (model units: pu).

        Args:
            raw_p, raw_q, raw_e: The raw action of the model's devices (MW, MVAr).
            cap_node_q: ``(n-1,)`` capacitor injection at 1 pu per node (pu).
            wmin, wmax, smax: ``(n-1,)`` effective limits (squared voltage, pu MVA).
            w_source: Squared voltage of the source node (default ``v_root_pu^2``; a zone's
                model needs its upstream boundary voltage).
            boundary_p, boundary_q: ``(n-1,)`` flows into downstream zones (pu), added to the
                node loads.
        """
        a, mn, sn = self.alg, self.mn, self.mn.sn_mva
        nodes = mn.tree.bus[1:]
        lp = np.asarray(snap.load_p_mw, float)[nodes] / sn
        lq = np.asarray(snap.load_q_mvar, float)[nodes] / sn
        if boundary_p is not None:
            lp = lp + boundary_p
            lq = lq + boundary_q
        a.set("load_p", lp)
        a.set("load_q", lq)
        a.set("cap_q", cap_node_q)
        a.set("w_src", snap.v_root_pu**2 if w_source is None else w_source)
        for name in ("p_lo", "p_hi", "q_lo", "q_hi", "e_lo", "e_hi"):
            a.set(name, getattr(bounds, name))
        a.set("rp", raw_p)
        a.set("rq", raw_q)
        if mn.ess.size:
            a.set("re", raw_e)
        a.set("wmin", wmin)
        a.set("wmax", np.minimum(wmax, BIG))
        a.set("smax", np.minimum(smax, BIG))
