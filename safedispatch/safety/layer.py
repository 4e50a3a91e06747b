"""The safety layer: the nearest set-points that keep the feeder within its limits.

``SafetyLayer(feeder, model=...)`` is set up once per feeder (the convex problem is built
once, see :mod:`safedispatch.problems.projection`); ``layer.project(action, snapshot)`` only
updates numbers and re-solves. ``project_action`` is the one-call form.

Outcomes (:class:`ProjectionStatus`):

* UNCHANGED: the raw action already satisfies every device and model limit (checked
  directly, without a solver); it is returned as is.
* PROJECTED: the returned action is the nearest feasible one (weighted Euclidean distance
  in MW/MVAr; capacitor steps are chosen exactly: by enumeration with pruning up to
  ``MAX_CAP_COMBINATIONS`` combinations, by branch and bound on the convex relaxation
  beyond).
* INFEASIBLE: no set-point satisfies the limits. The returned action is the least-violating
  one, lexicographically: first the least *violation* (below), then the least load shed, then
  the nearest (weighted distance as above); ``result.violation`` states the remaining
  violation and ``result.info["violation_sq"]`` the minimised measure. Where the case declares
  sheddable load (paper A's supply preservation), load is shed only when no set-point without
  shedding is feasible, the least amount first, and the result reports the energy not
  supplied. A model without controllable devices (no inverter, no storage) has nothing to
  project: capacitor steps, if any, are chosen by evaluating each combination, else the raw
  action comes back UNCHANGED or INFEASIBLE with the measured violation.
* SOLVER_FAILED: every solver in the fallback chain failed (or ran out of its time budget);
  the returned action is the raw action moved onto the device limits only, and ``violation``
  says what the model predicts.

A success status (UNCHANGED, PROJECTED) is given only to a point that has been checked
against the model's limits (voltage rows, thermal cones, device sets) to ``FEAS_TOL`` in model
units (squared-voltage pu, pu MVA) and ``DEV_TOL`` (MW, MVAr): a solver answer that fails the
check is discarded, never reported as a success.

The violation measure minimised for INFEASIBLE snapshots (model units, per unit on
``sn_mva``; "least squares of the excesses")::

    V = sum_i [max(0, w_i - wmax_i)^2 + max(0, wmin_i - w_i)^2]       (non-root model nodes)
      + sum_j max(0, sqrt(P_j^2 + Q_j^2) - smax_j)^2                 (branches)

with ``w`` the squared voltages and ``(P_j, Q_j)`` the sending-end flows of the model, and the
effective limits (including uncertainty margins and certification corrections). The minimising
excesses are unique (V is strictly convex in them), so "the least-violating set-points" is a
well-defined set; the answer is its point nearest to the raw action. The short-circuit-ratio
bounds stay hard. (``tests/safety/reference.py::reference_min_violation`` states the same
measure in CVXPY.)

Infeasible snapshots take a compiled path too (LinDistFlow, no load shedding, no
short-circuit-ratio rows): a projected Newton method in the set-points
(:func:`~safedispatch.safety.kernels.least_violation`; its Hessian is ``n x n`` however many
limits are violated) finds a least-violating point ``x_V`` from the raw set-points; every
least-violating point has ``x_V``'s excesses, so the nearest of them is the projection
(:class:`~safedispatch.backends.structured_qp.StructuredQP`) with each violated limit moved out
to its value at ``x_V`` (widened by ``LV_WIDEN`` relative, so the least violation is met to
about twice that). Skipped when every device sits at a corner of its set at ``x_V`` (then no
other least-violating point is near); when it does not converge (large, heavily violated
feeders), ``x_V`` itself is returned (``info["least_violation_nearest"]`` says so): a
least-violating point, not necessarily the nearest. Capacitor steps are enumerated as for
PROJECTED. The SOCP model, sheddable loads and short-circuit-ratio rows use CVXPY (the same
measure), with a time budget (``CVXPY_BUDGET_S`` per call, each solve capped by solver time and
iteration limits, no warm starts, SCS only to ``SCS_MAX_ITERS``).

No exception escapes ``project`` for a valid input: invalid input raises
:class:`~safedispatch.errors.InputError` naming the field.

Thread-safety and reproducibility: one :class:`SafetyLayer` may be shared by threads; its
calls are serialized by an internal lock (concurrent calls wait for each other). Answers
depend on the call's input only, not on earlier calls: the structured solver's warm starts
change an answer by rounding (an optimal solve ends with a polish on its final active set),
infeasible snapshots are solved from a cold start, and CVXPY solves never warm-start.

Speed: the common call (whole-feeder LinDistFlow, continuous devices, float64 arrays) takes
a lean path: one compiled call checks the inputs, computes the device bounds, evaluates the
model on the tree and decides UNCHANGED, the structured QP solves (warm-started from the
previous call's duals when they are the better start), and one more compiled call moves the
answer onto the device limits and evaluates it. Anything else (capacitor banks, zones, SOCP,
certification, an input that fails a check or lies outside the physical ranges
``MAX_ABS_POWER_MW`` / ``V_ROOT_RANGE_PU``, a QP outcome other than optimal, an answer that
fails the limit check) takes the general path, which gives the same answers (tested) with the
typed errors.
"""

from __future__ import annotations

import itertools
import math
import threading
import time
from dataclasses import dataclass, field
from enum import IntEnum
from functools import lru_cache

import numpy as np
from scipy.stats import norm

from safedispatch.backends import cvxpy_
from safedispatch.backends.result import SolveStatus
from safedispatch.errors import MAX_ABS_POWER_MW, V_ROOT_RANGE_PU, InputError
from safedispatch.formulations import lindistflow
from safedispatch.network.feeder import Feeder
from safedispatch.problems.projection import BIG, FORMULATIONS, DeviceBounds, ProjectionProgram, device_bounds
from safedispatch.problems.types import DT_RANGE_H, Action, Snapshot, load_q_ratio
from safedispatch.problems.zones import ModelNetwork, model_network
from safedispatch.safety import kernels

__all__ = ["ProjectionResult", "ProjectionStatus", "SafetyLayer", "project_action"]

#: feasibility tolerance of the model check (squared-voltage pu and MVA pu)
FEAS_TOL = 1e-7
#: device tolerance: set-points are moved exactly onto device limits after a solve
DEV_TOL = 1e-9
#: models with more nodes evaluate LinDistFlow through the sparse tree instead of dense maps
DENSE_MAX_NODES = 300
#: largest number of capacitor step combinations enumerated (pruned by distance); above it
#: the exact steps come from a branch and bound on the convex relaxation
MAX_CAP_COMBINATIONS = 64
#: least-violation problem: stopping tolerance of the projected Newton method (the length of a
#: full Newton step, MW / MVAr relative to the largest rating) and its iteration limit
LV_TOL = 1e-11
LV_MAX_ITER = 200
#: least-violation problem, nearest-point stage: the relative widenings of the violated limits
#: tried in turn (the violation grows by about twice that, relative) and the iteration limit of
#: each attempt
LV_WIDEN = (1e-9, 1e-7)
LV_NEAREST_MAX_ITER = 100
#: wall-time budget (s) of the CVXPY fallbacks within one call (all their solves together);
#: when it is spent the remaining solves are skipped (the outcome is then SOLVER_FAILED if no
#: answer was found)
CVXPY_BUDGET_S = 0.6
#: per-solve limits of the CVXPY fallbacks
CVXPY_MAX_ITER = 200
SCS_MAX_ITERS = 2000


class ProjectionStatus(IntEnum):
    """Outcome of one projection (an IntEnum, so it fits in numpy arrays and ``info``)."""

    UNCHANGED = 0
    PROJECTED = 1
    INFEASIBLE = 2
    SOLVER_FAILED = 3


@dataclass
class ProjectionResult:
    """Result of :meth:`SafetyLayer.project`.

    Attributes:
        action: The safe action (always finite).
        status: See :class:`ProjectionStatus`.
        vm_pu: ``(n_bus,)`` voltages predicted by the model at the safe action (buses outside
            a zone model hold their boundary values).
        branch_p_mw, branch_q_mvar: ``(n_branch,)`` model-predicted sending-end flows.
        correction_norm: Euclidean distance between raw and safe continuous set-points
            (MW/MVAr), capacitor steps counted in MVAr.
        active: Names of the binding constraints, e.g. ``"vmax[17]"`` (0-based bus),
            ``"thermal[3]"`` (branch), ``"disk[5]"`` (inverter), ``"p_hi[5]"`` (a property,
            computed on first access).
        violation: Remaining model violation at the safe action: ``{"vm_pu": ..,
            "thermal_mva": ..}`` (0 when feasible).
        shed_p_mw: ``(n_bus,)`` load shed (supply preservation), zeros when none.
        energy_not_supplied_mwh: ``shed_p_mw.sum() * dt_h``.
        objective: Weighted squared distance.
        iterations: Solver iterations summed over the solves of this call.
        n_solves: Number of convex solves in this call.
        solve_time_s: Wall time of the whole call.
        solver: Solver that produced the answer ("" when no solve was needed).
        certified: AC certification verdict (None when not requested).
        rounds: Certification rounds used.
        ac_vm_pu: ``(n_bus,)`` AC voltages at the safe action (when certified).
        ac_loading: ``(n_branch,)`` AC current / rating (when certified).
        info: Extra details (limits used, certification history; ``"violation_sq"``, the minimised
            violation measure, when INFEASIBLE; ``"solver_output"``, what the CVXPY solvers
            printed, when they did).

    Thread-safe: a plain value once returned (``active`` reads the result's own arrays).
    """

    action: Action
    status: ProjectionStatus
    vm_pu: np.ndarray
    branch_p_mw: np.ndarray
    branch_q_mvar: np.ndarray
    correction_norm: float
    violation: dict = field(default_factory=lambda: {"vm_pu": 0.0, "thermal_mva": 0.0})
    shed_p_mw: np.ndarray | None = None
    energy_not_supplied_mwh: float = 0.0
    objective: float = 0.0
    iterations: int = 0
    n_solves: int = 0
    solve_time_s: float = 0.0
    solver: str = ""
    certified: bool | None = None
    rounds: int = 0
    ac_vm_pu: np.ndarray | None = None
    ac_loading: np.ndarray | None = None
    info: dict = field(default_factory=dict)
    _active: tuple | None = field(default=None, repr=False)
    _active_fn: object = field(default=None, repr=False, compare=False)

    @property
    def active(self) -> tuple:
        """Names of the binding constraints (computed on first access: most callers in a
        training loop never look)."""
        if self._active is None:
            self._active = tuple(self._active_fn()) if self._active_fn is not None else ()
        return self._active


@dataclass
class _Limits:
    """Effective limits over model nodes 1..n-1 (pu), and the optional affine correction."""

    wmin: np.ndarray
    wmax: np.ndarray
    smax: np.ndarray
    d: np.ndarray | None = None
    Ep: np.ndarray | None = None
    Eq: np.ndarray | None = None
    smax_qp: np.ndarray | None = None
    #: structured QP and least-violation data of a corrected model ({"hard": ..., "lv": ...}), built on first use
    qps: dict | None = None


@dataclass
class _Point:
    """A candidate solution in model units."""

    p: np.ndarray
    q: np.ndarray
    e: np.ndarray
    cap: np.ndarray
    shed: np.ndarray
    w: np.ndarray
    P: np.ndarray
    Q: np.ndarray
    objective: float = 0.0
    solver: str = ""
    extra: dict = field(default_factory=dict)


class _Model:
    """Everything the layer needs for one model network: programs (built lazily), the
    affine LinDistFlow maps for direct evaluation, and the uncertainty margins."""

    def __init__(self, layer: SafetyLayer, mn: ModelNetwork):
        self.layer, self.mn = layer, mn
        tree = mn.tree
        self.Rw, self.Xw, self.S = lindistflow.affine_maps(tree)
        self.Bpv, self.Bess, self.Bcap = mn.incidence(mn.pv_node), mn.incidence(mn.ess_node), mn.incidence(mn.cap_node)
        self._programs: dict = {}
        self._base = None
        pf = layer.feeder.pv.pf_min[mn.pv]
        self.s_pv = layer.feeder.pv.s_mva[mn.pv].copy()
        self.t_pv = np.where(pf > 0, np.tan(np.arccos(np.clip(pf, 1e-12, 1.0))), np.inf)
        # stacked affine maps: [w; P; Q] = Mc @ [p_inj; q_inj] (+ w_source on the w rows), and
        # the same as a function of the set-points x = [p | q | e] and of the capacitor steps
        m, sn = tree.n - 1, mn.sn_mva
        self.nodes = tree.bus[1:]
        Bx_p = np.hstack([self.Bpv, np.zeros_like(self.Bpv), self.Bess]) / sn
        Bx_q = np.hstack([np.zeros_like(self.Bpv), self.Bpv, np.zeros_like(self.Bess)]) / sn
        Bcap_q = self.Bcap * layer.feeder.cap.q_step_mvar[mn.cap] / sn
        # small models: dense stacked maps (a few BLAS calls); large ones: the tree's sparse
        # path matrix, linear in the number of buses (a dense 3m x 2m product on a 1000-bus
        # feeder costs milliseconds and contends for threads)
        self.dense = m <= DENSE_MAX_NODES
        if self.dense:
            Z = np.zeros((m, m))
            self.Mc = np.block([[self.Rw, self.Xw], [-self.S, Z], [Z, -self.S]])
            self.Gx = self.Mc @ np.vstack([Bx_p, Bx_q])
            self.Gcap = self.Mc[:, m:] @ Bcap_q
        else:
            import scipy.sparse as sp

            self.S_sp = sp.csr_matrix(self.S)
            self.ST_sp = self.S_sp.T.tocsr()
            self.r2, self.x2 = 2 * tree.r_pu[1:], 2 * tree.x_pu[1:]
            self.Bx_p, self.Bx_q = sp.csr_matrix(Bx_p), sp.csr_matrix(Bx_q)
            self.Bcap_q = Bcap_q
        self._fast = None
        self._fast_warm: dict = {}
        self._lv_cache: dict = {}
        self._lean = None
        f = layer.feeder
        m = tree.n - 1
        self.wmin0 = tree.vm_min_pu[1:] ** 2
        self.wmax0 = tree.vm_max_pu[1:] ** 2
        self.smax0 = tree.s_max_pu[1:].copy()
        self.margin_w = np.zeros(m)
        self.margin_s = np.zeros(m)
        if layer.pv_error_sd_mw is not None:
            z = norm.ppf(layer.confidence)
            sd = np.asarray(layer.pv_error_sd_mw, float)[mn.pv] / mn.sn_mva
            G = self.Rw @ self.Bpv  # squared-voltage sensitivity to each inverter's P
            self.margin_w = z * np.sqrt((G**2) @ sd**2)
            self.margin_s = z * np.sqrt((self.S @ self.Bpv) @ sd**2)
        self.weak = []
        if layer.scr_min is not None:
            for b in np.unique(f.pv.bus[mn.pv]):
                if np.isfinite(f.bus.s_sc_mva[b]):
                    self.weak.append((np.flatnonzero(f.pv.bus[mn.pv] == b), f.bus.s_sc_mva[b] / layer.scr_min))

    def program(self, soft: bool = False, correction: bool = False, model: str | None = None,
                caps_relaxed: bool = False) -> ProjectionProgram:
        L = self.layer
        model = model or L.model
        key = (soft, correction, model, caps_relaxed)
        if key not in self._programs:
            self._programs[key] = ProjectionProgram(
                cvxpy_.CvxpyAlgebra(), L.feeder, self.mn, model, L.weights_pv, L.weights_ess, L.scr_min, soft=soft,
                correction=correction, loss_weight=L.socp_loss_weight if model == "socp" else 0.0,
                caps_relaxed=caps_relaxed, cap_weight=L.cap_weight)
        return self._programs[key]

    def lin(self, pi, qi) -> np.ndarray:
        """LinDistFlow ``[w - w_source; P; Q]`` (3m,) of node injections ``pi, qi`` (pu)."""
        if self.dense:
            return self.Mc @ np.concatenate([pi, qi])
        P = -(self.S_sp @ pi)
        Q = -(self.S_sp @ qi)
        return np.concatenate([-(self.ST_sp @ (self.r2 * P + self.x2 * Q)), P, Q])

    def lin_x(self, x) -> np.ndarray:
        """The part of :meth:`lin` due to the set-points ``x = [p | q | e]``."""
        return self.Gx @ x if self.dense else self.lin(self.Bx_p @ x, self.Bx_q @ x)

    def lin_cap(self, cap) -> np.ndarray | float:
        """The part of :meth:`lin` due to the capacitor steps."""
        if self.mn.cap.size == 0:
            return 0.0
        cap = np.asarray(cap, float)
        return self.Gcap @ cap if self.dense else self.lin(np.zeros(self.nodes.size), self.Bcap_q @ cap)

    def qp_rows(self, lim: _Limits | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The static rows of the structured QP: ``x = [p | q | e]`` (MW, MVAr), voltage rows
        ``[G; -G] x <= [wmax - c; c - wmin]`` plus the short-circuit-ratio rows, and one 2-D
        cone per branch for its apparent power. With a certification correction (``lim.d``),
        the voltage rows include its sensitivities ``Ep``, ``Eq``."""
        mn, sn = self.mn, self.mn.sn_mva
        n_pv, n_ess = mn.pv.size, mn.ess.size
        Gw = np.hstack([self.Rw @ self.Bpv, self.Xw @ self.Bpv, self.Rw @ self.Bess]) / sn
        if lim is not None and lim.d is not None:
            ctrl = np.flatnonzero(self.Bpv.any(axis=1) | self.Bess.any(axis=1))
            Gw = Gw + np.hstack([lim.Ep @ self.Bpv[ctrl], lim.Eq @ self.Bpv[ctrl], lim.Ep @ self.Bess[ctrl]]) / sn
        rows = [Gw, -Gw]
        for idx, _cap in self.weak:
            r = np.zeros((1, 2 * n_pv + n_ess))
            r[0, idx] = 1.0
            rows.append(r)
        SB = -self.S @ self.Bpv / sn
        SE = -self.S @ self.Bess / sn
        m = self.mn.tree.n - 1
        A = np.zeros((m, 2, 2 * n_pv + n_ess))
        A[:, 0, :n_pv] = SB
        A[:, 0, 2 * n_pv:] = SE
        A[:, 1, n_pv:2 * n_pv] = SB
        return np.vstack(rows), A

    @property
    def fast(self):
        """The structured QP of this model (LinDistFlow, continuous devices; rows of
        :meth:`qp_rows`), built on first use."""
        if self._fast is None:
            from safedispatch.backends.structured_qp import StructuredQP

            G, A = self.qp_rows()
            self._fast_warm = {}
            self._fast = StructuredQP(self.mn.pv.size, self.mn.ess.size, G, A)
        return self._fast

    def qp(self, lim: _Limits):
        """The structured QP for these limits: the model's own (built once) or, for a corrected
        model, one built for this correction (cached on ``lim``)."""
        from safedispatch.backends.structured_qp import StructuredQP

        if lim.d is None:
            return self.fast
        if lim.qps is None:
            lim.qps = {}
        if "hard" not in lim.qps:
            G, A = self.qp_rows(lim)
            lim.qps["hard"] = StructuredQP(self.mn.pv.size, self.mn.ess.size, G, A)
        return lim.qps["hard"]

    @property
    def lean(self) -> _Lean:
        """Arrays of the lean path (built on first use)."""
        if self._lean is None:
            self._lean = _Lean(self)
        return self._lean

    def base_limits(self) -> _Limits:
        """The limits with the uncertainty margins (built once; treat as read-only)."""
        if self._base is None:
            self._base = _Limits(wmin=self.wmin0 + self.margin_w, wmax=self.wmax0 - self.margin_w,
                                 smax=np.maximum(self.smax0 - self.margin_s, 0.0))
        return self._base


class _Lean:
    """Everything the lean path passes to its compiled kernels, as contiguous arrays (the
    whole-feeder LinDistFlow model without capacitor banks; see ``SafetyLayer._project_lean``)."""

    def __init__(self, mod: _Model):
        L, mn = mod.layer, mod.mn
        f, tree = L.feeder, mn.tree
        c = np.ascontiguousarray
        self.parent = c(tree.parent, dtype=np.int64)
        self.r2, self.x2 = c(2.0 * tree.r_pu[1:]), c(2.0 * tree.x_pu[1:])
        self.nodes = c(tree.bus[1:], dtype=np.int64)
        self.branch = c(tree.branch[1:], dtype=np.int64)
        self.root = int(tree.bus[0])
        self.b_pu = c(tree.b_pu[1:], dtype=float)
        self.sn = float(mn.sn_mva)
        self.pv_node, self.ess_node = c(mn.pv_node, dtype=np.int64), c(mn.ess_node, dtype=np.int64)
        pv, ess = f.pv, f.ess
        self.p_max, self.s, self.t = c(pv.p_max_mw, dtype=float), c(mod.s_pv), c(mod.t_pv)
        self.ramp_p, self.ramp_q = c(pv.ramp_p_pu_per_min, dtype=float), c(pv.ramp_q_pu_per_min, dtype=float)
        self.ess = tuple(c(a, dtype=float) for a in (ess.p_max_mw, ess.e_max_mwh, ess.soc_min, ess.soc_max,
                                                      ess.eta_charge, ess.eta_discharge))
        self.soc_init = c(ess.soc_init, dtype=float)
        self.wpv, self.wess = c(L.weights_pv), c(L.weights_ess)
        lim = mod.base_limits()
        self.wmin, self.wmax, self.smax = c(lim.wmin), c(lim.wmax), c(lim.smax)
        self.smax_qp = c(np.clip(lim.smax, 1e-12, BIG))
        self.weak_ptr = np.cumsum([0] + [len(idx) for idx, _ in mod.weak]).astype(np.int64)
        self.weak_idx = (np.concatenate([idx for idx, _ in mod.weak]) if mod.weak else np.zeros(0)).astype(np.int64)
        self.weak_cap = np.array([cap for _, cap in mod.weak], dtype=float)
        m = tree.n - 1
        self.av = np.empty(f.n_pv)
        self.pi, self.qi, self.w, self.P, self.Q = (np.empty(m) for _ in range(5))
        self.h = np.empty(2 * m + len(mod.weak))
        self.c = np.empty((m, 2))
        self.zero_e = np.zeros(f.n_ess)
        self.zero_cap = np.zeros(0, dtype=np.int64)
        self.qp = mod.fast
        self.z = np.zeros(self.qp.n_rows)
        self.warm = False


def _quick_vec(a, n: int):
    """``a`` when it is already a C-contiguous float64 ``(n,)`` array (a copy when it is read-only,
    as a validated snapshot's arrays are: numba compiles a separate variant of a kernel for every
    mix of read-only and writable arguments), else None."""
    if type(a) is np.ndarray and a.dtype == np.float64 and a.shape == (n,) and a.flags.c_contiguous:
        return a if a.flags.writeable else a.copy()
    return None


class SafetyLayer:
    """Projects raw actions onto the feasible set of a convex feeder model.

    Thread-safe: a layer owns solver state (CVXPY parameters, warm starts, work arrays), and
    one internal re-entrant lock serializes :meth:`project`, :meth:`project_vector` and
    :meth:`reset_warm_start`, so a layer may be shared by threads; the consequence is that
    concurrent calls on one layer run one at a time (for parallel throughput use one layer per
    thread or :class:`~safedispatch.safety.torch_layer.TorchSafetyLayer` batches). Answers do
    not depend on the order of calls (see the module docstring), so a shared layer answers
    each thread as it would answer the same calls made serially.

    Args:
        feeder: The network.
        model: "lindistflow" (Baran & Wu 1989) or "socp" (Farivar & Low 2013).
        zones: None for one whole-feeder model, or "feeder" to give every zone of
            ``feeder.zones`` its own local model (paper A): zone models are solved
            independently with boundary voltages and flows from an AC power flow at the
            previous set-points (or the raw action when there are none). Each zone's result
            satisfies its local model for those boundary values; the combination is not
            guaranteed feasible for the whole feeder (coordinate with the ADMM baseline, or
            certify it). ``zone_rounds > 1`` repeats with damped boundary updates from the
            combined result, a heuristic that is not guaranteed to settle (the history is in
            ``result.info["zone_rounds"]``).
        weights_pv: ``(n_pv,)`` distance weights per inverter (same for P and Q); default 1.
        weights_ess: ``(n_ess,)`` distance weights per storage unit; default 1.
        cap_weight: Weight of a capacitor step change, per MVAr^2 of its change.
        scr_min: Minimum short-circuit ratio at buses with a known short-circuit capacity:
            the PV active power there is at most ``s_sc_mva / scr_min`` (paper B; off by
            default since the paper gives no threshold).
        pv_error_sd_mw: ``(n_pv,)`` standard deviation of each inverter's PV forecast error
            (MW). With it, voltage and thermal limits are tightened by
            ``z(confidence) * sd`` of the resulting voltage / flow error (paper B's chance
            constraint, Gaussian errors, LinDistFlow sensitivities).
        confidence: One-sided confidence level of the margin.
        zone_rounds: Boundary-update rounds at most for ``zones="feeder"``.
        socp_loss_weight: SOCP model only: weight (MW^2 per MW) of the relaxed losses added to
            the distance, which drives the relaxation to be exact (tight cones); the relaxation
            gap is reported in ``result.info``.
        fast: Use the structured active-set QP (:mod:`safedispatch.backends.structured_qp`)
            for LinDistFlow projections with continuous devices (exact, warm-started); any
            outcome other than optimal or certified infeasible falls back to the CVXPY path.
        solvers: Solver fallback chain for the CVXPY path (bounded: ``CVXPY_BUDGET_S`` per call,
            ``CVXPY_MAX_ITER`` iterations per interior-point solve, ``SCS_MAX_ITERS`` for SCS).

    Raises:
        InputError: unknown model, bad weights or margins.
    """

    def __init__(self, feeder: Feeder, model: str = "lindistflow", zones=None, weights_pv=None, weights_ess=None,
                 cap_weight: float = 1.0, scr_min: float | None = None, pv_error_sd_mw=None,
                 confidence: float = 0.95, socp_loss_weight: float = 1e-2, zone_rounds: int = 1,
                 fast: bool = True, solvers=cvxpy_.DEFAULT_SOLVERS):
        if model not in FORMULATIONS:
            raise InputError(f"expected one of {sorted(FORMULATIONS)}, got {model!r}", "model")
        self.feeder, self.model = feeder, model
        self.weights_pv = self._positive(weights_pv, feeder.n_pv, "weights_pv")
        self.weights_ess = self._positive(weights_ess, feeder.n_ess, "weights_ess")
        if not (np.isfinite(cap_weight) and cap_weight >= 0):
            raise InputError(f"expected a finite weight >= 0, got {cap_weight}", "cap_weight")
        self.cap_weight = float(cap_weight)
        if scr_min is not None and not (np.isfinite(scr_min) and scr_min > 0):
            raise InputError(f"expected a finite ratio > 0, got {scr_min}", "scr_min")
        self.scr_min = scr_min
        if pv_error_sd_mw is not None:
            sd = np.asarray(pv_error_sd_mw, float)
            if sd.shape != (feeder.n_pv,) or not np.isfinite(sd).all() or (sd < 0).any():
                raise InputError(f"expected ({feeder.n_pv},) finite values >= 0", "pv_error_sd_mw")
        self.pv_error_sd_mw = pv_error_sd_mw
        if not 0.5 <= confidence < 1:
            raise InputError(f"expected a confidence in [0.5, 1), got {confidence}", "confidence")
        self.confidence = confidence
        if not (np.isfinite(socp_loss_weight) and socp_loss_weight >= 0):
            raise InputError(f"expected a finite weight >= 0, got {socp_loss_weight}", "socp_loss_weight")
        self.socp_loss_weight = float(socp_loss_weight)
        self.solvers = tuple(solvers)
        self.fast = bool(fast)
        if zones is None:
            self.models = [_Model(self, model_network(feeder))]
        elif isinstance(zones, str) and zones == "feeder":
            self.models = [_Model(self, model_network(feeder, k)) for k in range(len(feeder.zones))]
        else:
            raise InputError(f"expected None or 'feeder', got {zones!r}", "zones")
        self.zoned = zones is not None
        self._lock = threading.RLock()
        self._deadline = math.inf  # of the CVXPY fallbacks in the current call (see _cvx_solve)
        self._solver_output: list = []
        # the lean path: one compiled call before and one after the structured QP, no per-call
        # Python objects beyond the result (see _project_lean)
        self._lean_ok = (not self.zoned and model == "lindistflow" and self.fast and feeder.n_cap == 0
                         and feeder.n_pv + feeder.n_ess > 0)
        if not (isinstance(zone_rounds, int) and zone_rounds >= 1):
            raise InputError(f"expected an integer >= 1, got {zone_rounds!r}", "zone_rounds")
        self.zone_rounds = zone_rounds
        if self.fast and model == "lindistflow" and feeder.n_pv + feeder.n_ess > 0:
            _warm_least_violation()
        if model == "socp" or not fast or scr_min is not None or feeder.load.sheddable.any():
            # infeasible snapshots will take the CVXPY path: its problems are built (and compiled
            # for the first solver of the chain) here, in the set-up, not inside a call
            for mod in self.models:
                self._prepare_soft(mod)

    def __getstate__(self):
        state = self.__dict__.copy()
        state.pop("_lock", None)  # made anew (a lock cannot be copied)
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._lock = threading.RLock()

    @staticmethod
    def _positive(w, n, name):
        if w is None:
            return np.ones(n)
        w = np.asarray(w, float)
        if w.shape != (n,) or not np.isfinite(w).all() or (w <= 0).any():
            raise InputError(f"expected ({n},) finite weights > 0", name)
        return w

    # ------------------------------------------------------------------------------------
    def project(self, action: Action, snapshot: Snapshot, certify_ac: bool = False,
                max_rounds: int = 6) -> ProjectionResult:
        """The nearest feasible action (see the module docstring for the outcomes).

        Args:
            action: Raw set-points.
            snapshot: Loads, PV availability, previous set-points, storage state.
            certify_ac: Check the result with the AC power flow and correct the model until it
                holds (see :mod:`safedispatch.safety.certify`).
            max_rounds: Certification rounds at most.

        Raises:
            InputError: bad action or snapshot, or ``max_rounds`` not an integer >= 0 (the message
                names the field).
        """
        if not isinstance(action, Action):
            raise InputError(f"expected an Action, got {type(action).__name__}", "action")
        if not isinstance(snapshot, Snapshot):
            raise InputError(f"expected a Snapshot, got {type(snapshot).__name__}", "snapshot")
        if isinstance(max_rounds, bool) or not isinstance(max_rounds, int | np.integer) or max_rounds < 0:
            raise InputError(f"expected an integer >= 0, got {max_rounds!r}", "max_rounds")
        certify_ac = bool(certify_ac)
        with self._lock:
            t0 = time.perf_counter()
            if self._lean_ok and not certify_ac:
                res = self._project_lean(action, snapshot)
                if res is not None:
                    res.solve_time_s = time.perf_counter() - t0
                    return res
            f = self.feeder
            snap = snapshot.checked(f)
            act = action.checked(f)
            self._deadline = time.perf_counter() + CVXPY_BUDGET_S
            self._solver_output = []
            try:
                if self.zoned:
                    res = self._project_zones(act, snap)
                else:
                    mod = self.models[0]
                    res = self._project_model(mod, act, snap, mod.base_limits())
                if certify_ac:
                    from safedispatch.safety.certify import certify

                    res = certify(self, act, snap, res, max_rounds=max_rounds)
            finally:
                self._deadline = math.inf
            if self._solver_output:
                res.info["solver_output"] = "".join(self._solver_output)
            res.solve_time_s = time.perf_counter() - t0
            return res

    def reset_warm_start(self) -> None:
        """Forget the previous calls' duals: the next projection starts cold (e.g. at an
        episode boundary, where the last call's active set says nothing about the next).
        Answers do not change (beyond rounding), only the iterations they take."""
        with self._lock:
            for mod in self.models:
                mod._fast_warm.clear()
                if mod._lean is not None:
                    mod._lean.warm = False

    def project_vector(self, x, snapshot: Snapshot, **kw) -> tuple[np.ndarray, ProjectionResult]:
        """Flat-vector form for RL code: ``x = [pv_p_mw | pv_q_mvar | ess_p_mw]`` (length
        ``2 n_pv + n_ess``); capacitor banks keep ``snapshot.prev``'s steps (or their initial
        steps). Returns the safe vector and the full result.

        Raises:
            InputError: ``x`` not a finite vector of that length, a bad snapshot (the field is
                named).
        """
        if not isinstance(snapshot, Snapshot):
            raise InputError(f"expected a Snapshot, got {type(snapshot).__name__}", "snapshot")
        with self._lock:
            prev = snapshot.prev
            cap = prev.cap_step if isinstance(prev, Action) else None  # a bad prev: project() says so
            res = self.project(Action.from_vector(x, self.feeder, cap_step=cap), snapshot, **kw)
            return res.action.to_vector(), res

    # ------------------------------------------------------------------------------------
    def _project_lean(self, action: Action, snapshot: Snapshot) -> ProjectionResult | None:
        """The common case in one compiled call before and one after the structured QP: the
        whole-feeder LinDistFlow model with continuous devices, raw action UNCHANGED or
        PROJECTED. Same checks, limits and arithmetic as the general path (it evaluates
        LinDistFlow on the tree instead of the dense maps, equal to rounding). Returns None
        whenever anything is out of the ordinary (arrays not plain float64 vectors, an input
        failing a check or outside the physical ranges: a power above ``MAX_ABS_POWER_MW``, a
        root voltage outside ``V_ROOT_RANGE_PU``, a step length outside ``DT_RANGE_H``; a QP
        outcome other than optimal; an answer
        that fails the limit check): the general path then handles the call from scratch, with
        its typed errors."""
        f = self.feeder
        mod = self.models[0]
        ln = mod.lean
        n_pv, n_ess, n_bus = f.n_pv, f.n_ess, f.n_bus
        if not isinstance(action, Action) or not isinstance(snapshot, Snapshot):
            return None
        lp = _quick_vec(snapshot.load_p_mw, n_bus)
        lq = _quick_vec(snapshot.load_q_mvar, n_bus)
        av = _quick_vec(snapshot.pv_avail_mw, n_pv)
        rp = _quick_vec(action.pv_p_mw, n_pv)
        rq = _quick_vec(action.pv_q_mvar, n_pv)
        re = ln.zero_e if action.ess_p_mw is None else _quick_vec(action.ess_p_mw, n_ess)
        soc = ln.soc_init if snapshot.ess_soc is None else _quick_vec(snapshot.ess_soc, n_ess)
        if lp is None or lq is None or av is None or rp is None or rq is None or re is None or soc is None:
            return None
        if action.cap_step is not None and not (type(action.cap_step) is np.ndarray and action.cap_step.size == 0):
            return None
        prev = snapshot.prev
        if prev is None:
            has_prev, pp, pq, pe = False, rp, rq, re
        else:
            if not isinstance(prev, Action) or (prev.cap_step is not None and not (
                    type(prev.cap_step) is np.ndarray and prev.cap_step.size == 0)):
                return None
            pp, pq = _quick_vec(prev.pv_p_mw, n_pv), _quick_vec(prev.pv_q_mvar, n_pv)
            pe = ln.zero_e if prev.ess_p_mw is None else _quick_vec(prev.ess_p_mw, n_ess)
            if pp is None or pq is None or pe is None:
                return None
            has_prev = True
        v, dt = snapshot.v_root_pu, snapshot.dt_h
        if v is None:
            v = f.root_vm_pu
        if not (type(v) is float and type(dt) is float and V_ROOT_RANGE_PU[0] <= v <= V_ROOT_RANGE_PU[1]
                and DT_RANGE_H[0] < dt <= DT_RANGE_H[1]):
            return None
        ws = v * v
        out_pv, out_e = np.empty((4, n_pv)), np.empty((2, n_ess))
        vm, bp, bq = np.empty(n_bus), np.empty(f.n_branch), np.empty(f.n_branch)
        code = kernels.lean_prepare(
            lp, lq, av, rp, rq, re, has_prev, pp, pq, pe, soc, ws, dt, ln.nodes, ln.sn, ln.b_pu, ln.parent, ln.r2,
            ln.x2, ln.pv_node, ln.ess_node, ln.p_max, ln.s, ln.t, ln.ramp_p, ln.ramp_q, *ln.ess, ln.wmin, ln.wmax,
            ln.smax, ln.weak_ptr, ln.weak_idx, ln.weak_cap, DEV_TOL, FEAS_TOL, MAX_ABS_POWER_MW, ln.root, ln.branch,
            ln.av, out_pv, out_e,
            ln.pi, ln.qi, ln.w, ln.P, ln.Q, ln.h, ln.c, vm, bp, bq)
        if code < 0:
            return None
        if code == 0:
            p, q, e = rp.copy(), rq.copy(), re.copy()
            obj = corr = vv = vs = 0.0
            status, iters, n_solves, solver = ProjectionStatus.UNCHANGED, 0, 0, ""
        else:
            qcode, x, iters = ln.qp.solve_unchecked(
                rp, rq, re, ln.wpv, ln.wess, out_pv[0], out_pv[1], out_pv[2], out_pv[3], ln.s, ln.t, out_e[0], out_e[1],
                ln.h, ln.c, ln.smax_qp, ln.z, ln.warm)
            ln.warm = qcode == 0
            if qcode != 0:
                return None
            p, q, e = np.empty(n_pv), np.empty(n_pv), np.empty(n_ess)
            obj, corr, vv, vs, vmod = kernels.lean_finish(
                x, rp, rq, re, ln.wpv, ln.wess, out_pv, out_e, ln.s, ln.t, lp, lq, ws, ln.nodes, ln.sn, ln.b_pu,
                ln.parent, ln.r2, ln.x2, ln.pv_node, ln.ess_node, ln.wmin, ln.wmax, ln.smax, ln.root, ln.branch, p, q,
                e, ln.pi, ln.qi, ln.w, ln.P, ln.Q, vm, bp, bq)
            if not vmod <= FEAS_TOL:  # checked against the limits before a success status
                return None
            status, n_solves, solver = ProjectionStatus.PROJECTED, 1, "structured_qp"
        safe = Action(pv_p_mw=p, pv_q_mvar=q, cap_step=ln.zero_cap.copy(), ess_p_mw=e)

        def active():
            # from the result's own arrays: the lean buffers are reused by the next call
            pt = _Point(p=p, q=q, e=e, cap=ln.zero_cap, shed=None, w=vm[ln.nodes] ** 2, P=bp[ln.branch] / ln.sn,
                        Q=bq[ln.branch] / ln.sn)
            b = DeviceBounds(p_lo=out_pv[0], p_hi=out_pv[1], q_lo=out_pv[2], q_hi=out_pv[3], e_lo=out_e[0],
                             e_hi=out_e[1])
            return self._active(mod, pt, {"lim": mod.base_limits(), "bounds": b})

        return ProjectionResult(
            action=safe, status=status, vm_pu=vm, branch_p_mw=bp, branch_q_mvar=bq, correction_norm=corr,
            _active_fn=active, violation={"vm_pu": vv, "thermal_mva": vs * ln.sn}, shed_p_mw=np.zeros(n_bus),
            objective=obj, iterations=iters, n_solves=n_solves, solver=solver,
            info={"zone": None, "model": "lindistflow"})

    def _project_model(self, mod: _Model, act: Action, snap: Snapshot, lim: _Limits, boundary=None,
                       w_source=None, model: str | None = None) -> ProjectionResult:
        f, mn = self.feeder, mod.mn
        bounds = device_bounds(f, mn, snap)
        rp, rq, re = act.pv_p_mw[mn.pv], act.pv_q_mvar[mn.pv], act.ess_p_mw[mn.ess]
        raw_cap = act.cap_step[mn.cap]
        ctx = self._context(mod, snap, lim, bounds, boundary, w_source, model)
        zero_shed = np.zeros(mn.tree.n - 1)
        if mn.pv.size + mn.ess.size == 0:
            return self._project_fixed(mod, act, snap, rp, rq, re, raw_cap, ctx)
        # 1. the raw action may already be feasible
        if ctx["model"] == "socp" and mn.zone is None and lim.d is None:
            raw = self._ac_point(mod, act, rp, rq, re, raw_cap, ctx)
        else:
            raw = self._evaluate(mod, rp, rq, re, raw_cap, zero_shed, ctx)
        if raw is not None and self._device_feasible(mod, rp, rq, re, bounds) and self._network_violation(
                mod, raw, lim)[2] <= FEAS_TOL:
            return self._result(mod, act, snap, raw, ProjectionStatus.UNCHANGED, ctx, stats=(0, 0, ""))
        # 2. hard projection, capacitor steps by pruned enumeration
        best, stats = self._solve_hard(mod, rp, rq, re, raw_cap, ctx)
        if best is not None:
            return self._result(mod, act, snap, best, ProjectionStatus.PROJECTED, ctx, stats=stats)
        if stats[3] == "failed":
            pt = self._device_only(mod, rp, rq, re, raw_cap, bounds, ctx)
            return self._result(mod, act, snap, pt, ProjectionStatus.SOLVER_FAILED, ctx, stats=stats[:3])
        # 3. no feasible set-point: shed load if allowed, else the least-violating point
        out = None
        if self._use_fast(mod, ctx) and not self._shed_max(mod, ctx).any():
            out = self._least_violation_fast(mod, rp, rq, re, raw_cap, ctx)
        if out is None:
            out = self._solve_soft(mod, rp, rq, re, raw_cap, ctx)
        pt, status, st2 = out
        stats = (stats[0] + st2[0], stats[1] + st2[1], st2[2] or stats[2])
        if pt is None:
            pt = self._device_only(mod, rp, rq, re, raw_cap, bounds, ctx)
            status = ProjectionStatus.SOLVER_FAILED
        return self._result(mod, act, snap, pt, status, ctx, stats=stats)

    def _project_fixed(self, mod: _Model, act: Action, snap: Snapshot, rp, rq, re, raw_cap, ctx) -> ProjectionResult:
        """A model without controllable devices: nothing continuous to project. Each capacitor
        step combination (the raw steps first; all of them up to ``MAX_CAP_COMBINATIONS``, else
        raw, all off and all on) is evaluated directly: the raw steps when they satisfy the
        limits (UNCHANGED), else the nearest feasible combination (PROJECTED), else the
        least-violating one, nearest among equals (INFEASIBLE). Evaluated with the model (the
        SOCP model of the whole feeder by the AC power flow, as its UNCHANGED test; LinDistFlow
        where that does not converge or for zone and corrected models)."""
        mn, lim = mod.mn, ctx["lim"]
        zero_shed = np.zeros(mn.tree.n - 1)
        if self._n_cap_combinations(mod) > MAX_CAP_COMBINATIONS:
            n_max = self.feeder.cap.n_steps[mn.cap].astype(np.int64)
            qs = self.feeder.cap.q_step_mvar[mn.cap]
            cands = [(np.asarray(c, dtype=np.int64), self.cap_weight * float(np.sum((qs * (c - raw_cap)) ** 2)))
                     for c in (raw_cap, np.zeros_like(raw_cap), n_max)]
        else:
            cands = self._cap_candidates(mod, raw_cap)
        best = None
        lin_ctx = dict(ctx, model="lindistflow")
        for cap, cost in cands:
            pt = None
            if ctx["model"] == "socp" and mn.zone is None and lim.d is None:
                c_full = act.cap_step.copy()
                c_full[mn.cap] = cap
                pt = self._ac_point(mod, Action(pv_p_mw=act.pv_p_mw, pv_q_mvar=act.pv_q_mvar, cap_step=c_full,
                                                ess_p_mw=act.ess_p_mw), rp, rq, re, cap, ctx)
            if pt is None:
                pt = self._evaluate(mod, rp, rq, re, cap, zero_shed, lin_ctx)
            feasible = self._network_violation(mod, pt, lim)[2] <= FEAS_TOL
            key = (0.0 if feasible else self._violation_sq(pt, lim), cost)
            if best is None or _lex_less(key, best[0]):
                pt.objective = cost
                best = (key, pt, feasible, cap)
        _, pt, feasible, cap = best
        if feasible:
            status = ProjectionStatus.UNCHANGED if np.array_equal(cap, raw_cap) else ProjectionStatus.PROJECTED
        else:
            status = ProjectionStatus.INFEASIBLE
        res = self._result(mod, act, snap, pt, status, ctx, stats=(0, 0, ""))
        res.info["nothing_to_control"] = True
        return res

    @staticmethod
    def _violation_sq(pt: _Point, lim: _Limits) -> float:
        """The minimised violation measure ``V`` of a point (model units, see the module docstring)."""
        hi = np.maximum(pt.w - lim.wmax, 0.0)
        lo = np.maximum(lim.wmin - pt.w, 0.0)
        th = np.maximum(np.hypot(pt.P, pt.Q) - np.minimum(lim.smax, BIG), 0.0)
        return float(hi @ hi + lo @ lo + th @ th)

    def _shed_max(self, mod: _Model, ctx) -> np.ndarray:
        """``(n-1,)`` sheddable load per model node (pu) at this snapshot."""
        nodes = mod.mn.tree.bus[1:]
        frac = self._sheddable_fraction()[nodes]
        return np.maximum(np.asarray(ctx["snap"].load_p_mw)[nodes], 0) * frac / mod.mn.sn_mva

    # -- evaluation ------------------------------------------------------------------------
    def _context(self, mod: _Model, snap: Snapshot, lim: _Limits, bounds=None, boundary=None, w_source=None,
                 model: str | None = None) -> dict:
        """Everything one projection call shares: the snapshot, limits, device bounds, and the
        uncontrolled part of the injections with the model state it alone would give."""
        mn = mod.mn
        ws = snap.v_root_pu**2 if w_source is None else w_source
        sn, nodes = mn.sn_mva, mod.nodes
        pi0 = -np.asarray(snap.load_p_mw)[nodes] / sn
        qi0 = -np.asarray(snap.load_q_mvar)[nodes] / sn + mn.tree.b_pu[1:]
        if boundary is not None:
            pi0 = pi0 - boundary[0]
            qi0 = qi0 - boundary[1]
        base0 = mod.lin(pi0, qi0)
        base0[:pi0.size] += ws
        return dict(snap=snap, bounds=bounds, lim=lim, boundary=boundary, w_source=ws, model=model or self.model,
                    pi0=pi0, qi0=qi0, base0=base0)

    def _node_injection(self, mod: _Model, p, q, e, cap, shed, ctx):
        """Injections at nodes 1..n-1 (pu) of the model for given set-points."""
        sn = mod.mn.sn_mva
        pi = ctx["pi0"] + mod.Bpv @ p / sn + mod.Bess @ e / sn + shed
        qi = ctx["qi0"] + mod.Bpv @ q / sn + self._cap_q(mod, cap) + shed * load_q_ratio(ctx["snap"])[mod.nodes]
        return pi, qi

    def _cap_q(self, mod: _Model, cap):
        mn = mod.mn
        return mod.Bcap @ (np.asarray(cap, float) * self.feeder.cap.q_step_mvar[mn.cap]) / mn.sn_mva

    def _evaluate(self, mod: _Model, p, q, e, cap, shed, ctx) -> _Point | None:
        """Model state at given set-points: LinDistFlow directly; SOCP by a fixed-injection
        solve (the relaxation's feasible set), None when that finds no state."""
        lim = ctx["lim"]
        if ctx["model"] == "lindistflow":
            y = ctx["base0"] + mod.lin_x(np.concatenate([p, q, e])) + mod.lin_cap(cap)
            if shed.any():
                y = y + mod.lin(shed, shed * load_q_ratio(ctx["snap"])[mod.nodes])
            m = mod.nodes.size
            w, P, Q = y[:m], y[m:2 * m], y[2 * m:]
            if lim.d is not None:
                ctrl = self._ctrl_injection(mod, p, q, e)
                w = w + lim.d + lim.Ep @ ctrl[0] + lim.Eq @ ctrl[1]
            return _Point(p=p, q=q, e=e, cap=np.asarray(cap), shed=shed, w=w, P=P, Q=Q)
        pi, qi = self._node_injection(mod, p, q, e, cap, shed, ctx)
        fixed = DeviceBounds(p_lo=p, p_hi=p, q_lo=q, q_hi=q, e_lo=e, e_hi=e)
        ctx2 = dict(ctx, bounds=fixed)
        prog = mod.program(soft=True, correction=lim.d is not None, model=ctx["model"])
        self._set(mod, prog, ctx2, p, q, e, cap)
        a = prog.alg
        a.set("shed_max", shed)
        a.set("alpha", 1.0)
        a.set("beta", 0.0)
        a.set("c_shed", 0.0)
        a.set("viol_cap", BIG)
        a.set("shed_cap", BIG)
        r = self._cvx_solve(prog.problem)
        if not r.status.has_solution:
            return None
        return _Point(p=p, q=q, e=e, cap=np.asarray(cap), shed=shed, w=self._w_eff(prog, r), P=r.x["P"], Q=r.x["Q"])

    def _ac_point(self, mod: _Model, act: Action, p, q, e, cap, ctx) -> _Point | None:
        """The AC power flow state at the raw action, as a point of the SOCP model (the AC
        solution satisfies the relaxed equations with tight cones). The relaxation itself would
        accept points the AC equations reject (fictitious losses), so UNCHANGED under the SOCP
        model means AC-feasible."""
        from safedispatch.powerflow import run_powerflow
        from safedispatch.problems.types import net_injection

        f, mn, snap = self.feeder, mod.mn, ctx["snap"]
        pi, qi, sh = net_injection(f, snap, act)
        pf = run_powerflow(f, pi, qi, v_root_pu=snap.v_root_pu, shunt_q_mvar=sh)
        if not pf.converged:
            return None
        br = mn.tree.branch[1:]
        fwd = f.radial.branch_from_is_parent[br]
        P = np.where(fwd, pf.p_from_mw[br], pf.p_to_mw[br]) / mn.sn_mva
        Q = np.where(fwd, pf.q_from_mvar[br], pf.q_to_mvar[br]) / mn.sn_mva
        return _Point(p=p, q=q, e=e, cap=np.asarray(cap), shed=np.zeros(mn.tree.n - 1),
                      w=pf.vm_pu[mn.tree.bus[1:]] ** 2, P=P, Q=Q)

    @staticmethod
    def _ctrl_injection(mod: _Model, p, q, e):
        sn = mod.mn.sn_mva
        prog_nodes = np.flatnonzero(mod.Bpv.any(axis=1) | mod.Bess.any(axis=1))
        return (mod.Bpv[prog_nodes] @ p + mod.Bess[prog_nodes] @ e) / sn, mod.Bpv[prog_nodes] @ q / sn

    def _device_feasible(self, mod: _Model, p, q, e, b: DeviceBounds, tol: float = DEV_TOL) -> bool:
        v = kernels.device_violation(p, q, e, b.p_lo, b.p_hi, b.q_lo, b.q_hi, mod.s_pv, mod.t_pv, b.e_lo, b.e_hi)
        ok = v <= tol * (1.0 + float(mod.s_pv.max(initial=0.0)))
        for idx, cap in mod.weak:
            ok = ok and p[idx].sum() <= cap + tol
        return bool(ok)

    @staticmethod
    def _network_violation(mod: _Model, pt: _Point, lim: _Limits):
        """(voltage violation in pu of magnitude, thermal violation in pu MVA, max of the
        violations in model units)."""
        return kernels.network_violation(pt.w, pt.P, pt.Q, lim.wmin, lim.wmax, lim.smax)

    # -- solves ------------------------------------------------------------------------------
    def _set(self, mod: _Model, prog: ProjectionProgram, ctx, rp, rq, re, cap):
        lim, snap = ctx["lim"], ctx["snap"]
        bnd = ctx["boundary"]
        prog.set_snapshot(self.feeder, snap, ctx["bounds"], rp, rq, re, self._cap_q(mod, cap), lim.wmin, lim.wmax,
                          lim.smax, w_source=ctx["w_source"],
                          boundary_p=None if bnd is None else bnd[0], boundary_q=None if bnd is None else bnd[1])
        if prog.correction:
            m, k = prog.mn.tree.n - 1, prog.ctrl_nodes.size
            prog.alg.set("d", lim.d if lim.d is not None else np.zeros(m))
            prog.alg.set("Ep", lim.Ep if lim.Ep is not None else np.zeros((m, k)))
            prog.alg.set("Eq", lim.Eq if lim.Eq is not None else np.zeros((m, k)))
        if prog.soft:
            nodes = mod.mn.tree.bus[1:]
            prog.alg.set("shed_q_ratio", load_q_ratio(snap)[nodes])

    @staticmethod
    def _w_eff(prog, r):
        w = r.x["w"]
        if prog.correction:
            a = prog.alg
            mn = prog.mn
            sn = mn.sn_mva
            pn = (prog.Bpv[prog.ctrl_nodes] @ r.x["pv_p"] + prog.Bess[prog.ctrl_nodes] @ r.x["ess_p"]) / sn
            qn = prog.Bpv[prog.ctrl_nodes] @ r.x["pv_q"] / sn
            w = w + a.params["d"].value + a.params["Ep"].value @ pn + a.params["Eq"].value @ qn
        return w

    def _n_cap_combinations(self, mod: _Model) -> int:
        return int(np.prod([int(self.feeder.cap.n_steps[c]) + 1 for c in mod.mn.cap]))

    def _cap_candidates(self, mod: _Model, raw_cap):
        """Capacitor step combinations sorted by their own distance (MVAr^2 x weight)."""
        f, mn = self.feeder, mod.mn
        if mn.cap.size == 0:
            return [(np.zeros(0, dtype=np.int64), 0.0)]
        ranges = [range(int(f.cap.n_steps[c]) + 1) for c in mn.cap]
        qs = f.cap.q_step_mvar[mn.cap]
        out = []
        for combo in itertools.product(*ranges):
            c = np.array(combo, dtype=np.int64)
            out.append((c, self.cap_weight * float(np.sum((qs * (c - raw_cap)) ** 2))))
        out.sort(key=lambda t: t[1])
        return out

    def _use_fast(self, mod: _Model, ctx) -> bool:
        return self.fast and ctx["model"] == "lindistflow" and mod.mn.pv.size + mod.mn.ess.size > 0

    def _qp_data(self, mod: _Model, cap, ctx):
        """Right-hand sides of the structured QP for one capacitor step combination:
        ``h = [wmax - cw; cw - wmin; weak caps]`` (``cw``: squared voltages without the devices,
        with the certification offset ``d`` when there is one), ``c`` (flows without the devices)
        and the solver-safe ratings."""
        lim = ctx["lim"]
        base = ctx["base0"] + mod.lin_cap(cap)
        m = mod.nodes.size
        cw = base[:m] if lim.d is None else base[:m] + lim.d
        h = np.empty(2 * m + len(mod.weak))
        np.subtract(lim.wmax, cw, out=h[:m])
        np.subtract(cw, lim.wmin, out=h[m:2 * m])
        for k, (_idx, cap_mw) in enumerate(mod.weak):
            h[2 * m + k] = cap_mw
        c = np.ascontiguousarray(base[m:].reshape(2, m).T)
        if lim.smax_qp is None:  # cached per limits object: zero and infinite ratings made solver-safe
            lim.smax_qp = np.clip(lim.smax, 1e-12, BIG)
        return h, c, lim.smax_qp

    def _fast_point(self, mod: _Model, x, rp, rq, re, cap, ctx) -> _Point:
        """A structured-QP answer moved exactly onto the device limits and evaluated."""
        mn, b = mod.mn, ctx["bounds"]
        n_pv = mn.pv.size
        p, q, e = self._onto_devices(mod, x[:n_pv].copy(), x[n_pv:2 * n_pv].copy(), x[2 * n_pv:].copy(), b)
        pt = self._evaluate(mod, p, q, e, np.asarray(cap), np.zeros(mn.tree.n - 1), ctx)
        wp, we = self.weights_pv[mn.pv], self.weights_ess[mn.ess]
        pt.objective = float(np.sum(wp * ((p - rp) ** 2 + (q - rq) ** 2)) + np.sum(we * (e - re) ** 2))
        pt.solver = "structured_qp"
        return pt

    def _solve_fast(self, mod: _Model, rp, rq, re, cap, ctx):
        """One projection with the structured QP; returns (point or None, status name,
        iterations). None with "infeasible" is a certificate; other statuses fall back. An
        optimal answer that fails the limit check (``FEAS_TOL``, model units) counts as failed:
        it is never returned as a success."""
        from safedispatch.backends.structured_qp import QPStatus

        mn, b, lim = mod.mn, ctx["bounds"], ctx["lim"]
        qp = mod.qp(lim)
        h, c, smax = self._qp_data(mod, cap, ctx)
        key = tuple(np.asarray(cap).tolist())
        warm = mod._fast_warm.get(key) if lim.d is None else None
        res = qp.solve(rp, rq, re, self.weights_pv[mn.pv], self.weights_ess[mn.ess], b.p_lo, b.p_hi, b.q_lo, b.q_hi,
                       mod.s_pv, mod.t_pv, b.e_lo, b.e_hi, h, c, smax, warm=warm)
        if res.status == QPStatus.OPTIMAL:
            if lim.d is None:
                mod._fast_warm[key] = res.warm
            pt = self._fast_point(mod, res.x, rp, rq, re, cap, ctx)
            if not self._network_violation(mod, pt, lim)[2] <= FEAS_TOL:
                return None, "failed", res.iterations
            return pt, "optimal", res.iterations
        return None, ("infeasible" if res.status == QPStatus.INFEASIBLE else "failed"), res.iterations

    def _least_violation_fast(self, mod: _Model, rp, rq, re, raw_cap, ctx):
        """The least-violating point (module docstring) with the structured solver, capacitor
        steps enumerated (all combinations up to ``MAX_CAP_COMBINATIONS``, else the raw steps, all
        off and all on). Returns ``(point, status, (solves, iterations, solver))``, or None when
        the structured solver cannot answer (the CVXPY path then does)."""
        mn = mod.mn
        if self._n_cap_combinations(mod) > MAX_CAP_COMBINATIONS:
            n_max = self.feeder.cap.n_steps[mn.cap].astype(np.int64)
            qs = self.feeder.cap.q_step_mvar[mn.cap]
            cands = [(np.asarray(c, dtype=np.int64), self.cap_weight * float(np.sum((qs * (c - raw_cap)) ** 2)))
                     for c in (raw_cap, np.zeros_like(raw_cap), n_max)]
        else:
            cands = self._cap_candidates(mod, raw_cap)
        best = None
        n = iters = 0
        for cap, cap_cost in cands:
            out = self._least_violation_one(mod, rp, rq, re, cap, ctx)
            if out is None:
                return None
            pt, viol, k, it = out
            n += k
            iters += it
            key = (viol, pt.objective + cap_cost)
            if best is None or _lex_less(key, best[0]):
                best = (key, pt)
        pt = best[1]
        ok = self._network_violation(mod, pt, ctx["lim"])[2] <= FEAS_TOL
        return pt, (ProjectionStatus.PROJECTED if ok else ProjectionStatus.INFEASIBLE), (n, iters, "structured_qp")

    def _lv_static(self, mod: _Model, lim: _Limits):
        """Static data of the least-violation solver for these limits' rows: the voltage rows
        ``Gw`` (MW -> squared-voltage pu) in CSR form, their Gram matrix, the cone rows stacked
        ``(2m, n)`` in CSR form, the weights, and ``Gw`` and the cone rows dense."""
        if lim.d is None:
            cache = mod._lv_cache
        else:
            mod.qp(lim)  # creates lim.qps
            cache = lim.qps
        if "lv" not in cache:
            qp = mod.qp(lim)
            m = mod.nodes.size
            Gw = np.ascontiguousarray(qp.G[:m])
            A2 = np.ascontiguousarray(qp.A.reshape(2 * m, -1))
            w = np.concatenate([self.weights_pv[mod.mn.pv], self.weights_pv[mod.mn.pv], self.weights_ess[mod.mn.ess]])
            cache["lv"] = (_csr(Gw), np.ascontiguousarray(Gw.T @ Gw), _csr(A2), w, Gw, A2)
        return cache["lv"]

    def _least_violation_one(self, mod: _Model, rp, rq, re, cap, ctx):
        """The least-violating point for fixed capacitor steps, in up to two stages.

        1. Least violation: a minimiser ``x_V`` of ``V`` over the device sets, by a projected
           Newton method in the set-points (:func:`kernels.least_violation`: its Hessian is
           ``n x n`` however many limits are violated), started from the raw point moved onto
           the device sets. Its excesses (each voltage row's ``w - wmax`` or ``wmin - w``, each
           branch's ``||(P, Q)|| - smax``) are the unique least-violating ones.
        2. The nearest least-violating point: the projection of the raw point (the structured
           QP) with every violated limit moved out to its value at ``x_V`` (a hair wider,
           ``LV_WIDEN``, so that the multipliers stay bounded): every point there has each
           excess at most ``x_V``'s. Skipped when every device sits at a corner of its set at
           ``x_V``; when it fails, ``x_V`` is the answer (flagged in ``info``).

        Both stages start cold (the answer does not depend on earlier calls). Returns
        ``(point, V, solves, iterations)``, or None when the structured path does not apply
        (short-circuit-ratio rows, which stay hard) or the first stage fails."""
        from safedispatch.backends.structured_qp import QPStatus

        if mod.weak:
            return None
        mn, b, lim = mod.mn, ctx["bounds"], ctx["lim"]
        h, c, S = self._qp_data(mod, cap, ctx)
        m = mod.nodes.size
        g_csr, GG, a_csr, w, Gw, A2 = self._lv_static(mod, lim)
        r = np.concatenate([rp, rq, re])
        x = np.empty_like(r)
        code, iters, _v, _cond, nf = kernels.least_violation(
            r, r, w, 0.0, mn.pv.size, mn.ess.size, b.p_lo, b.p_hi, b.q_lo, b.q_hi, mod.s_pv, mod.t_pv, b.e_lo, b.e_hi,
            *g_csr, h[:m], h[m:2 * m], *a_csr, c, S, GG, LV_TOL, LV_MAX_ITER, x)
        if code < 0 or not np.isfinite(x).all():
            return None
        extra = {} if code == 0 else {"least_violation_converged": False}
        n_solves = 1
        if nf > 0:
            qp = mod.qp(lim)
            wp, we = self.weights_pv[mn.pv], self.weights_ess[mn.ess]
            gx = Gw @ x
            u = A2 @ x
            nu = np.hypot(u[0::2] + c[:, 0], u[1::2] + c[:, 1])
            res2 = None
            for widen in LV_WIDEN:
                h2 = h.copy()
                h2[:m] = np.maximum(h[:m], gx + widen * (np.abs(gx) + 1e-3))
                h2[m:2 * m] = np.maximum(h[m:2 * m], -gx + widen * (np.abs(gx) + 1e-3))
                S2 = np.maximum(S, nu * (1.0 + widen) + 1e-15)
                res2 = qp.solve(rp, rq, re, wp, we, b.p_lo, b.p_hi, b.q_lo, b.q_hi, mod.s_pv, mod.t_pv, b.e_lo,
                                b.e_hi, h2, c, S2, max_iter=LV_NEAREST_MAX_ITER)
                iters += res2.iterations
                n_solves += 1
                if res2.status == QPStatus.OPTIMAL:
                    x = res2.x
                    break
            else:
                extra["least_violation_nearest"] = (f"not solved ({res2.status.name}): a least-violating point, "
                                                    "not the nearest")
        pt = self._fast_point(mod, x, rp, rq, re, cap, ctx)
        if extra:
            pt.extra = {**pt.extra, **extra}
        return pt, self._violation_sq(pt, lim), n_solves, iters

    def _solve_hard(self, mod: _Model, rp, rq, re, raw_cap, ctx):
        if self._n_cap_combinations(mod) > MAX_CAP_COMBINATIONS:
            return self._branch_and_bound(mod, rp, rq, re, raw_cap, ctx)
        if self._use_fast(mod, ctx):
            best, best_total = None, np.inf
            n = iters = 0
            fallback = False
            for cap, cap_cost in self._cap_candidates(mod, raw_cap):
                if cap_cost >= best_total:
                    break
                pt, st, it = self._solve_fast(mod, rp, rq, re, cap, ctx)
                n += 1
                iters += it
                if st == "failed":
                    fallback = True
                    break
                if pt is not None and pt.objective + cap_cost < best_total:
                    best, best_total = pt, pt.objective + cap_cost
            if not fallback:
                return best, (n, iters, "structured_qp" if best is not None else "", "")
        prog = mod.program(correction=ctx["lim"].d is not None, model=ctx["model"])
        best, best_total = None, np.inf
        iters = n = 0
        solver, failed = "", False
        for cap, cap_cost in self._cap_candidates(mod, raw_cap):
            if cap_cost >= best_total:  # continuous distance >= 0: nothing later can win
                break
            self._set(mod, prog, ctx, rp, rq, re, cap)
            r = self._cvx_solve(prog.problem)
            n += 1
            iters += r.iterations
            if r.status.has_solution:
                pt = self._point_from(mod, prog, r, cap, np.zeros(mod.mn.tree.n - 1), ctx)
                if not self._network_violation(mod, pt, ctx["lim"])[2] <= FEAS_TOL:
                    failed = True  # an answer outside the limits is never a success
                    continue
                total = pt.objective + cap_cost
                if total < best_total:
                    best, best_total, solver = pt, total, r.solver
            elif r.status not in (SolveStatus.INFEASIBLE,):
                failed = True
        return best, (n, iters, solver, "failed" if failed and best is None else "")

    def _branch_and_bound(self, mod: _Model, rp, rq, re, raw_cap, ctx, max_nodes: int = 2000):
        """Exact nearest capacitor steps when there are too many combinations to enumerate:
        best-first branch and bound on the convex relaxation (steps continuous); each integral
        leaf is re-solved with the steps fixed."""
        import heapq

        f, mn = self.feeder, mod.mn
        relax = mod.program(correction=ctx["lim"].d is not None, model=ctx["model"], caps_relaxed=True)
        self._set(mod, relax, ctx, rp, rq, re, np.zeros(mn.cap.size))
        relax.alg.set("cap_q", np.zeros(mn.tree.n - 1))
        relax.alg.set("rc", raw_cap.astype(float))
        hi0 = f.cap.n_steps[mn.cap].astype(float)
        heap = [(0.0, 0, np.zeros(mn.cap.size), hi0)]
        best, best_total = None, np.inf
        n = iters = 0
        solver, failed, tick = "", False, 1
        while heap and n < max_nodes:
            bound, _, lo, hi = heapq.heappop(heap)
            if bound >= best_total:
                break  # best-first: nothing left can win
            relax.alg.set("c_lo", lo)
            relax.alg.set("c_hi", hi)
            r = self._cvx_solve(relax.problem)
            n += 1
            iters += r.iterations
            if not r.status.has_solution:
                failed |= r.status != SolveStatus.INFEASIBLE
                continue
            if r.objective >= best_total:
                continue
            c = r.x["cap"]
            frac = np.abs(c - np.round(c))
            if frac.max() <= 1e-6:
                cap = np.round(c).astype(np.int64)
                pt, st = self._solve_hard_fixed(mod, rp, rq, re, cap, ctx)
                n += 1
                iters += st
                if pt is not None:
                    total = pt.objective + self.cap_weight * float(
                        np.sum((f.cap.q_step_mvar[mn.cap] * (cap - raw_cap)) ** 2))
                    if total < best_total:
                        best, best_total, solver = pt, total, pt.solver
                continue
            i = int(np.argmax(frac))
            for new_lo, new_hi in ((lo[i], np.floor(c[i])), (np.ceil(c[i]), hi[i])):
                lo2, hi2 = lo.copy(), hi.copy()
                lo2[i], hi2[i] = new_lo, new_hi
                tick += 1
                heapq.heappush(heap, (r.objective, tick, lo2, hi2))
        incomplete = bool(heap) and n >= max_nodes
        return best, (n, iters, solver, "failed" if (failed and best is None) or (incomplete and best is None) else "")

    def _solve_hard_fixed(self, mod: _Model, rp, rq, re, cap, ctx):
        prog = mod.program(correction=ctx["lim"].d is not None, model=ctx["model"])
        self._set(mod, prog, ctx, rp, rq, re, cap)
        r = self._cvx_solve(prog.problem)
        if not r.status.has_solution:
            return None, r.iterations
        pt = self._point_from(mod, prog, r, cap, np.zeros(mod.mn.tree.n - 1), ctx)
        if not self._network_violation(mod, pt, ctx["lim"])[2] <= FEAS_TOL:
            return None, r.iterations
        return pt, r.iterations

    def _point_from(self, mod, prog, r, cap, shed, ctx) -> _Point:
        """Clean a solver's answer onto the device limits exactly and evaluate the model."""
        b = ctx["bounds"]
        p, q, e = self._onto_devices(mod, r.x["pv_p"], r.x["pv_q"], r.x["ess_p"], b)
        if prog.soft:  # solver noise on the shed: within its bounds, exact zeros below 1e-9 pu
            shed = np.clip(shed, 0.0, prog.alg.params["shed_max"].value)
            shed = np.where(shed < 1e-9, 0.0, shed)
        if ctx["model"] == "lindistflow":
            pt = self._evaluate(mod, p, q, e, cap, shed, ctx)
        else:
            pt = _Point(p=p, q=q, e=e, cap=np.asarray(cap), shed=shed, w=self._w_eff(prog, r), P=r.x["P"], Q=r.x["Q"])
            pt.extra = self._relaxation_gap(mod, r, ctx)
        wp = self.weights_pv[mod.mn.pv]
        we = self.weights_ess[mod.mn.ess]
        rp, rq = prog.alg.params["rp"].value, prog.alg.params["rq"].value
        re = prog.alg.params["re"].value if mod.mn.ess.size else np.zeros(0)
        pt.objective = float(np.sum(wp * ((p - rp) ** 2 + (q - rq) ** 2)) + np.sum(we * (e - re) ** 2))
        pt.solver = r.solver
        return pt

    @staticmethod
    def _relaxation_gap(mod: _Model, r, ctx) -> dict:
        """SOCP exactness at a solution: the largest cone gap ``w_i l_ij - P^2 - Q^2`` (pu) and
        the relaxed losses ``sum r l`` (MW)."""
        tree = mod.mn.tree
        w_all = np.r_[ctx["w_source"], r.x["w"]]
        w_par = w_all[tree.parent[1:]]
        gap = w_par * r.x["l"] - r.x["P"] ** 2 - r.x["Q"] ** 2
        return {"socp_cone_gap": float(np.max(gap, initial=0.0)),
                "socp_losses_mw": float(tree.r_pu[1:] @ r.x["l"] * mod.mn.sn_mva)}

    def _onto_devices(self, mod: _Model, p, q, e, b: DeviceBounds):
        """Move a solver answer (feasible to solver tolerance) exactly onto the device
        limits: the output never exceeds a rating or a bound, not even by 1e-9."""
        p, q, e = (np.array(v, dtype=float) for v in (p, q, e))
        kernels.onto_devices(p, q, e, b.p_lo, b.p_hi, b.q_lo, b.q_hi, mod.s_pv, mod.t_pv, b.e_lo, b.e_hi)
        return p, q, e

    def _device_only(self, mod: _Model, rp, rq, re, raw_cap, bounds, ctx) -> _Point:
        """Fallback when solvers fail: the raw action moved onto the device limits only."""
        p, q, e = self._onto_devices(mod, rp.copy(), rq.copy(), re.copy(), bounds)
        return self._evaluate(mod, p, q, e, raw_cap, np.zeros(mod.mn.tree.n - 1), dict(ctx, model="lindistflow"))

    def _cvx_solve(self, problem):
        """:func:`cvxpy_.solve` with this layer's chain, bounded: what is left of the call's
        ``CVXPY_BUDGET_S`` as every solver's time limit, ``CVXPY_MAX_ITER`` iterations
        (``SCS_MAX_ITERS`` for SCS), no warm start (an answer must not depend on earlier calls).
        A spent budget skips the solve (status LIMIT_REACHED). What the solvers print is kept
        for ``result.info["solver_output"]``."""
        from safedispatch.backends.result import SolveResult

        remaining = self._deadline - time.perf_counter()
        if remaining <= 0.0:
            return SolveResult(status=SolveStatus.LIMIT_REACHED, x={}, objective=math.inf, solver="",
                               info={"tried": [], "errors": {"budget": f"CVXPY_BUDGET_S = {CVXPY_BUDGET_S} s spent"}})
        options, retry = _bounded_options(remaining)
        r = cvxpy_.solve(problem, self.solvers, options=options, retry=retry)
        out = r.info.get("solver_output")
        if out:
            self._solver_output.append(out)
        return r

    def _prepare_soft(self, mod: _Model) -> None:
        """Build the soft CVXPY problems of ``mod`` and compile them for the first solver of the
        chain (a one-time cost of ~0.1 s that would otherwise fall on an infeasible call)."""
        import cvxpy as cp

        prog = mod.program(soft=True, model=self.model)
        for problem in self._soft_problems(prog):
            try:
                problem.get_problem_data(self.solvers[0])
            except (cp.error.SolverError, cp.error.DCPError, ValueError, KeyError):
                pass  # the solve reports it (a solver that is not installed, say)

    def _soft_problems(self, prog: ProjectionProgram):
        """The CVXPY problems of the least-violation path on the soft program (built once per
        program): least violation (the module docstring's measure: the sum of the squared
        slacks), least shed and nearest. The last two carry the program's cap on the total
        slack (``viol_cap``, linear: 0 holds every limit) and a cap on the measure (parameter
        ``lv_cap``: one quadratic constraint, which keeps an interior for the interior-point
        solvers where capping every slack at its least value would not)."""
        cache = getattr(prog, "_lv_problems", None)
        if cache is None:
            import cvxpy as cp

            a = prog.alg
            sv_hi, sv_lo, ss = a.vars["slack_vmax"], a.vars["slack_vmin"], a.vars["slack_thermal"]
            everything = [c for cons in a.constraints.values() for c in cons]
            base = [c for k, cons in a.constraints.items() if k != "viol_cap" for c in cons]
            viol = cp.sum_squares(sv_hi) + cp.sum_squares(sv_lo) + cp.sum_squares(ss)
            capped = everything + [viol <= a.param("lv_cap", BIG, nonneg=True)]
            losses = 0.0
            if prog.net.l is not None and prog.model == "socp" and self.socp_loss_weight > 0:
                # a small price on (possibly fictitious) losses keeps the relaxation tight
                losses = self.socp_loss_weight * cp.sum(cp.multiply(prog.mn.tree.r_pu[1:], prog.net.l))
            cache = prog._lv_problems = (
                cp.Problem(cp.Minimize(viol + 1e-6 * losses), base),
                cp.Problem(cp.Minimize(cp.sum(a.vars["shed"]) + losses), capped),
                cp.Problem(cp.Minimize(cp.sum(a.vars["dist"]) + losses), capped),
            )
        return cache

    def _solve_soft(self, mod: _Model, rp, rq, re, raw_cap, ctx):
        """The CVXPY path for snapshots without a feasible set-point (SOCP model, sheddable
        loads, or when the structured solver cannot answer), lexicographic: (1) if any load is
        sheddable, shed the least load that makes the limits hold, then the nearest set-points
        with that shed; otherwise (2) minimise the violation (the module docstring's measure),
        then, with the violation capped at ``(1 + 1e-6)`` times its least value, the shed load,
        then the distance. Every capacitor step combination is tried and the lexicographically
        best kept. Bounded in time (see :meth:`_cvx_solve`)."""
        mn = mod.mn
        prog = mod.program(soft=True, correction=ctx["lim"].d is not None, model=ctx["model"])
        p_viol, p_shed, p_near = self._soft_problems(prog)
        a = prog.alg
        shed_max = self._shed_max(mod, ctx)
        n = iters = 0
        solver = ""

        def run(problem):
            nonlocal n, iters, solver
            r = self._cvx_solve(problem)
            n += 1
            iters += r.iterations
            solver = r.solver or solver
            return r

        best = None
        if self._n_cap_combinations(mod) > MAX_CAP_COMBINATIONS:
            # too many to enumerate: the raw steps, all off and all on (a documented heuristic)
            n_max = self.feeder.cap.n_steps[mn.cap]
            candidates = [(c, 0.0) for c in (raw_cap, np.zeros_like(raw_cap), n_max.astype(np.int64))]
        else:
            candidates = self._cap_candidates(mod, raw_cap)
        for cap, cap_cost in candidates:
            self._set(mod, prog, ctx, rp, rq, re, cap)
            a.set("shed_max", shed_max)
            a.set("viol_cap", BIG)
            a.set("shed_cap", BIG)
            if shed_max.sum() > 0:
                a.set("viol_cap", 0.0)  # every limit holds
                a.set("lv_cap", BIG)
                r = run(p_shed)  # least shed with hard limits
                if r.status.has_solution:
                    shed_hard = float(r.x["shed"].sum())
                    a.set("shed_cap", shed_hard * (1 + 1e-6) + 1e-9)
                    r = run(p_near)
                    if r.status.has_solution:
                        pt = self._point_from(mod, prog, r, cap, r.x["shed"], ctx)
                        if self._network_violation(mod, pt, ctx["lim"])[2] <= FEAS_TOL:
                            key = (0.0, shed_hard, pt.objective + cap_cost)
                            if best is None or key < best[0]:
                                best = (key, pt, ProjectionStatus.PROJECTED)
                            continue
                        # an inexact answer outside the limits: not a success; the least violation
                a.set("shed_cap", BIG)
                a.set("viol_cap", BIG)
            r = run(p_viol)  # least violation (shedding allowed)
            if not r.status.has_solution:
                continue
            sl = [np.maximum(r.x[k], 0.0) for k in ("slack_vmax", "slack_vmin", "slack_thermal")]
            v = float(sum(x @ x for x in sl))
            a.set("lv_cap", v * (1 + 1e-6) + 1e-12)
            shed_used = 0.0
            if shed_max.sum() > 0:
                r2 = run(p_shed)  # then the least shed
                if r2.status.has_solution:
                    shed_used = float(r2.x["shed"].sum())
                    r = r2
                a.set("shed_cap", shed_used * (1 + 1e-6) + 1e-9)
            r3 = run(p_near)  # then the nearest
            if r3.status.has_solution:
                r = r3
            pt = self._point_from(mod, prog, r, cap, r.x["shed"], ctx)
            key = (v, shed_used, pt.objective + cap_cost)
            if best is None or _lex_less((key[0], key[1:]), (best[0][0], best[0][1:])):
                best = (key, pt, ProjectionStatus.INFEASIBLE)
        if best is None:
            return None, ProjectionStatus.SOLVER_FAILED, (n, iters, solver)
        return best[1], best[2], (n, iters, solver)

    def _sheddable_fraction(self) -> np.ndarray:
        """``(n_bus,)`` share of each bus's nominal load that is sheddable."""
        f = self.feeder
        tot = np.zeros(f.n_bus)
        sh = np.zeros(f.n_bus)
        np.add.at(tot, f.load.bus, np.abs(f.load.p_mw))
        np.add.at(sh, f.load.bus, np.abs(f.load.p_mw) * f.load.sheddable)
        out = np.zeros(f.n_bus)
        np.divide(sh, tot, out=out, where=tot > 0)
        return out

    # -- result ------------------------------------------------------------------------------
    def _result(self, mod: _Model, act: Action, snap: Snapshot, pt: _Point, status, ctx, stats) -> ProjectionResult:
        f, mn = self.feeder, mod.mn
        rejected = None
        if status in (ProjectionStatus.UNCHANGED, ProjectionStatus.PROJECTED):
            # the last line of defence: a success status only for a point inside the limits
            vmod = self._network_violation(mod, pt, ctx["lim"])[2]
            b = ctx["bounds"]
            if not (vmod <= FEAS_TOL and (b is None or self._device_feasible(mod, pt.p, pt.q, pt.e, b))):
                rejected = {"status": ProjectionStatus(status).name, "model_violation": float(vmod)}
                status = ProjectionStatus.SOLVER_FAILED
                pt = self._device_only(mod, act.pv_p_mw[mn.pv], act.pv_q_mvar[mn.pv], act.ess_p_mw[mn.ess],
                                       act.cap_step[mn.cap], b, ctx)
        p, q, e = act.pv_p_mw.copy(), act.pv_q_mvar.copy(), act.ess_p_mw.copy()
        cap = act.cap_step.copy()
        p[mn.pv], q[mn.pv], e[mn.ess], cap[mn.cap] = pt.p, pt.q, pt.e, pt.cap
        safe = Action(pv_p_mw=p, pv_q_mvar=q, cap_step=cap, ess_p_mw=e)
        vm = np.zeros(f.n_bus)  # buses outside a zone model stay 0
        vm[mod.nodes] = np.sqrt(np.maximum(pt.w, 0))
        vm[mn.tree.bus[0]] = math.sqrt(ctx["w_source"])
        bp = np.zeros(f.n_branch)
        bq = np.zeros(f.n_branch)
        br = mn.tree.branch[1:]
        bp[br] = pt.P * mn.sn_mva
        bq[br] = pt.Q * mn.sn_mva
        if status == ProjectionStatus.UNCHANGED:
            corr = 0.0
        else:
            d = np.concatenate([pt.p - act.pv_p_mw[mn.pv], pt.q - act.pv_q_mvar[mn.pv], pt.e - act.ess_p_mw[mn.ess],
                                (pt.cap - act.cap_step[mn.cap]) * f.cap.q_step_mvar[mn.cap]])
            corr = math.sqrt(float(d @ d))
        vv, vs, _ = self._network_violation(mod, pt, ctx["lim"])
        if pt.shed.any():
            shed = np.zeros(f.n_bus)
            shed[mod.nodes] = pt.shed * mn.sn_mva
        else:
            shed = np.zeros(f.n_bus)
        return ProjectionResult(
            action=safe, status=ProjectionStatus(status), vm_pu=vm, branch_p_mw=bp, branch_q_mvar=bq,
            correction_norm=corr, _active_fn=lambda: self._active(mod, pt, ctx),
            violation={"vm_pu": float(vv), "thermal_mva": float(vs * mn.sn_mva)},
            shed_p_mw=shed, energy_not_supplied_mwh=float(shed.sum() * snap.dt_h), objective=float(pt.objective),
            iterations=int(stats[1]), n_solves=int(stats[0]), solver=str(stats[2]),
            info={"zone": mn.zone, "model": ctx["model"], **pt.extra,
                  **({"violation_sq": self._violation_sq(pt, ctx["lim"])} if status == ProjectionStatus.INFEASIBLE
                     else {}), **({"rejected_point": rejected} if rejected else {})})

    def _active(self, mod: _Model, pt: _Point, ctx, tol: float = 1e-6) -> tuple:
        mn, lim, b = mod.mn, ctx["lim"], ctx["bounds"]
        names = []
        bus = mn.tree.bus[1:]
        names += [f"vmax[{bus[i]}]" for i in np.flatnonzero(pt.w >= lim.wmax - tol)]
        names += [f"vmin[{bus[i]}]" for i in np.flatnonzero(pt.w <= lim.wmin + tol)]
        br = mn.tree.branch[1:]
        names += [f"thermal[{br[i]}]" for i in np.flatnonzero(np.hypot(pt.P, pt.Q) >= lim.smax - tol)]
        s = self.feeder.pv.s_mva[mn.pv]
        for k, i in enumerate(mn.pv):
            if pt.p[k] * pt.p[k] + pt.q[k] * pt.q[k] >= s[k] * s[k] * (1 - tol):
                names.append(f"disk[{i}]")
            if pt.p[k] >= b.p_hi[k] - tol and b.p_hi[k] > b.p_lo[k]:
                names.append(f"p_hi[{i}]")
            if pt.p[k] <= b.p_lo[k] + tol and b.p_hi[k] > b.p_lo[k]:
                names.append(f"p_lo[{i}]")
        for idx, cap in mod.weak:
            if pt.p[idx].sum() >= cap - tol:
                names.append(f"scr[{self.feeder.pv.bus[mn.pv[idx[0]]]}]")
        return tuple(names)

    # -- zones -------------------------------------------------------------------------------
    def _project_zones(self, act: Action, snap: Snapshot) -> ProjectionResult:
        """Each zone's local model (paper A) with boundary values (upstream voltage, flows into
        downstream zones) from an AC power flow at an operating point: first the previous
        set-points (or the raw action), then the combined result of the previous round, until
        the combined action settles (``zone_rounds`` at most). Each round, every zone is
        solved on its own."""
        base = (snap.prev if snap.prev is not None else act).checked(self.feeder)
        history = []
        res = None
        for _ in range(self.zone_rounds):
            new = self._zones_once(act, snap, base)
            change = np.inf if res is None else float(np.abs(new.action.to_vector() - res.action.to_vector()).max())
            history.append({"status": int(new.status), "change": change})
            res = new
            if change <= 1e-6:
                break
            # damped boundary update: undamped (Jacobi) updates can cycle between a curtailed
            # and an uncurtailed operating point
            base = Action(pv_p_mw=0.5 * (base.pv_p_mw + new.action.pv_p_mw),
                          pv_q_mvar=0.5 * (base.pv_q_mvar + new.action.pv_q_mvar), cap_step=new.action.cap_step,
                          ess_p_mw=0.5 * (base.ess_p_mw + new.action.ess_p_mw))
        res.info["zone_rounds"] = history
        return res

    def _zones_once(self, act: Action, snap: Snapshot, base: Action) -> ProjectionResult:
        from safedispatch.powerflow import run_powerflow
        from safedispatch.problems.types import net_injection

        f = self.feeder
        p, q, sh = net_injection(f, snap, base)
        pf = run_powerflow(f, p, q, v_root_pu=snap.v_root_pu, shunt_q_mvar=sh)
        p_safe, q_safe, e_safe, cap_safe = (act.pv_p_mw.copy(), act.pv_q_mvar.copy(), act.ess_p_mw.copy(),
                                            act.cap_step.copy())
        vm = np.zeros(f.n_bus)
        bp, bq, shed = np.zeros(f.n_branch), np.zeros(f.n_branch), np.zeros(f.n_bus)
        statuses, active, subs = [], [], []
        viol = {"vm_pu": 0.0, "thermal_mva": 0.0}
        for mod in self.models:
            mn = mod.mn
            m = mn.tree.n - 1
            bnd_p, bnd_q = np.zeros(m), np.zeros(m)
            rs = f.radial
            for br, node in zip(mn.out_branch, mn.out_node):
                fwd = rs.branch_from_is_parent[br]
                P = pf.p_from_mw[br] if fwd else pf.p_to_mw[br]
                Q = pf.q_from_mvar[br] if fwd else pf.q_to_mvar[br]
                bnd_p[node - 1] += P / mn.sn_mva
                bnd_q[node - 1] += Q / mn.sn_mva
            # the boundary flows are consumption at the node: pass as negative injection
            ws = float(pf.vm_pu[mn.tree.bus[0]]) ** 2 if mn.zone is not None and mn.tree.bus[0] != f.root_bus \
                else snap.v_root_pu**2
            r = self._project_model(mod, act, snap, mod.base_limits(), boundary=(bnd_p, bnd_q), w_source=ws)
            subs.append(r)
            p_safe[mn.pv], q_safe[mn.pv], e_safe[mn.ess] = r.action.pv_p_mw[mn.pv], r.action.pv_q_mvar[mn.pv], \
                r.action.ess_p_mw[mn.ess]
            cap_safe[mn.cap] = r.action.cap_step[mn.cap]
            inside = mn.tree.bus[1:]
            vm[inside] = r.vm_pu[inside]
            brs = mn.tree.branch[1:]
            bp[brs], bq[brs] = r.branch_p_mw[brs], r.branch_q_mvar[brs]
            shed += r.shed_p_mw
            statuses.append(r.status)
            active += list(r.active)
            viol = {k: max(viol[k], r.violation[k]) for k in viol}
        vm[f.root_bus] = snap.v_root_pu
        status = max(statuses)
        safe = Action(pv_p_mw=p_safe, pv_q_mvar=q_safe, cap_step=cap_safe, ess_p_mw=e_safe)
        corr = float(np.sqrt(sum(r.correction_norm**2 for r in subs)))
        return ProjectionResult(
            action=safe, status=ProjectionStatus(status), vm_pu=vm, branch_p_mw=bp, branch_q_mvar=bq,
            correction_norm=corr, _active=tuple(active), violation=viol, shed_p_mw=shed,
            energy_not_supplied_mwh=float(shed.sum() * snap.dt_h), objective=float(sum(r.objective for r in subs)),
            iterations=sum(r.iterations for r in subs), n_solves=sum(r.n_solves for r in subs),
            solver=",".join(sorted({r.solver for r in subs if r.solver})), info={"zones": subs})


_WARM_LOCK = threading.Lock()
_WARMED = []


def _warm_least_violation() -> None:
    """Compile (or load from numba's cache) the least-violation kernel once per process, in the
    set-up of the first layer that may need it, not inside the first infeasible call."""
    with _WARM_LOCK:
        if _WARMED:
            return
        one, zero = np.ones(1), np.zeros(0)
        ptr, idx = np.array([0, 1], dtype=np.int64), np.zeros(1, dtype=np.int64)
        x = np.empty(2)
        kernels.least_violation(np.zeros(2), np.zeros(2), np.ones(2), 0.0, 1, 0, np.zeros(1), one, -one, one, one,
                                np.full(1, np.inf), zero, zero, ptr, idx, one, one, one, np.array([0, 1, 1]), idx, one,
                                np.zeros((1, 2)), one, np.ones((2, 2)), 1e-11, 5, x)
        _WARMED.append(True)


def _bounded_options(limit_s: float) -> tuple[dict, dict]:
    """Solver options (and Clarabel's retry options) of the CVXPY fallbacks: the tight
    tolerances of :data:`cvxpy_.DEFAULT_OPTIONS` with a time limit of ``limit_s`` seconds, the
    iteration caps ``CVXPY_MAX_ITER`` / ``SCS_MAX_ITERS``, and no warm start."""
    t = max(float(limit_s), 1e-3)
    d = cvxpy_.DEFAULT_OPTIONS
    options = {
        "CLARABEL": {**d.get("CLARABEL", {}), "time_limit": t, "max_iter": CVXPY_MAX_ITER},
        "ECOS": {**d.get("ECOS", {}), "max_iters": min(CVXPY_MAX_ITER, 100)},  # ECOS has no time limit
        "SCS": {**d.get("SCS", {}), "max_iters": SCS_MAX_ITERS, "time_limit_secs": t},
        "OSQP": {"max_iter": SCS_MAX_ITERS, "time_limit": t},
    }
    options = {k: {**v, "warm_start": False} for k, v in options.items()}
    retry = {"CLARABEL": tuple({**o, "time_limit": t, "max_iter": CVXPY_MAX_ITER, "warm_start": False}
                               for o in cvxpy_.RETRY_OPTIONS.get("CLARABEL", ()))}
    return options, retry


def _csr(M: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(indptr, indices, data) of a dense matrix, int64 indices."""
    nzr, nzc = np.nonzero(M)
    return (np.searchsorted(nzr, np.arange(M.shape[0] + 1)).astype(np.int64), nzc.astype(np.int64),
            np.ascontiguousarray(M[nzr, nzc], dtype=float))


def _lex_less(a: tuple, b: tuple) -> bool:
    """``(violation, distance)`` pairs compared lexicographically, violations equal within
    rounding (1e-9 relative) compared by distance."""
    tol = 1e-9 * max(abs(a[0]), abs(b[0])) + 1e-15
    if a[0] < b[0] - tol:
        return True
    if a[0] > b[0] + tol:
        return False
    return a[1] < b[1]


@lru_cache(maxsize=16)
def _cached_layer(feeder: Feeder, model: str) -> SafetyLayer:
    return SafetyLayer(feeder, model=model)


def project_action(action: Action, snapshot: Snapshot, *, feeder: Feeder, model: str = "lindistflow",
                   certify_ac: bool = False) -> ProjectionResult:
    """One-call form of :meth:`SafetyLayer.project` with default options.

    The layer is built on the first call for a (feeder, model) pair and reused afterwards,
    so calling this in a loop does not rebuild the problem.

    Thread-safe: the cached layer is shared by all threads and is itself thread-safe (its calls
    serialize; two threads calling first at once may each build a layer, one of which is kept).
    Answers do not depend on earlier calls (see :class:`SafetyLayer`).

    Raises:
        InputError: not a Feeder, an unknown model, or a bad action or snapshot (the message
            names the field).
    """
    if not isinstance(feeder, Feeder):
        raise InputError(f"expected a Feeder, got {type(feeder).__name__}", "feeder")
    if not isinstance(model, str) or model not in FORMULATIONS:
        raise InputError(f"expected one of {sorted(FORMULATIONS)}, got {model!r}", "model")
    return _cached_layer(feeder, model).project(action, snapshot, certify_ac=certify_ac)
