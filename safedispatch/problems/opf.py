"""The snapshot OPF problem: the projection's constraints with an economic objective.

Formulation-agnostic (LinDistFlow or SOCP branch flow from :mod:`safedispatch.formulations`)
and backend-agnostic: the device and network constraints are exactly those of
:class:`~safedispatch.problems.projection.ProjectionProgram` (built on the same algebra, so
there is one network model), and only the objective differs::

    minimise  c_loss  * losses_mw                       (SOCP: sum r l; LinDistFlow: sum r (P^2 + Q^2))
            + c_curt  * sum (avail_mw - p_mw)           (PV curtailment)
            + c_volt  * sum ((w - v_ref^2) / 2)^2       (~ sum (v - v_ref)^2, pu^2)
            + c_q     * sum q_mvar^2                    (inverter reactive usage, device cost)
            + c_ess   * sum e_mw^2                      (storage usage, device cost)
            + loss_penalty * losses_mw                  (SOCP repair only: a parameter, 0 normally)

Branch ratings: the SOCP model limits the squared current ``l <= i_max^2`` (pu, exact in the
branch flow model, what pandapower's ``max_loading_percent`` limits); LinDistFlow has no
current, so it keeps the projection's apparent-power limit ``sqrt(3) vn i_max``.

**Open boundary** (``open_boundary=True``, a zone's model for decomposition methods such as
ADMM): the zone's source voltage and the flows into its downstream zones, parameters in the
projection's zone model, become variables, and a proximal term
``0.5 * ||scale * y - target||^2`` on the boundary vector ``y`` (layout in
:class:`BoundaryLayout`) is added to the objective, ``scale`` and ``target`` parameters.

All terms are in MW-equivalent cost units per snapshot. The losses term is the relaxed branch
losses of Farivar & Low (2013) in the SOCP model and the quadratic DistFlow loss estimate
``r (P^2 + Q^2) / w`` at ``w = 1`` (Baran & Wu 1989) in the linear model.
"""

from __future__ import annotations

from dataclasses import astuple, dataclass

import numpy as np

from safedispatch.errors import V_ROOT_RANGE_PU, InputError
from safedispatch.network.feeder import Feeder
from safedispatch.problems.projection import BIG, ProjectionProgram, device_bounds
from safedispatch.problems.types import Snapshot
from safedispatch.problems.zones import ModelNetwork

__all__ = ["BoundaryLayout", "MAX_WEIGHT", "OPFProgram", "OPFWeights", "PAPER_B_WEIGHTS", "resolve_weights"]

#: largest objective weight accepted (weights are relative prices; beyond this the solvers'
#: tolerances no longer separate the terms)
MAX_WEIGHT = 1e6


@dataclass(frozen=True)
class OPFWeights:
    """Objective weights of the snapshot OPF (cost units: 1 = one MW of losses).

    Attributes:
        loss: Per MW of active losses.
        curtailment: Per MW of curtailed PV (available minus injected).
        voltage: Per pu^2 of squared voltage deviation ``sum_j (v_j - v_ref)^2`` over buses.
        q_usage: Per MVAr^2 of inverter reactive power.
        ess_usage: Per MW^2 of storage power.
        v_ref_pu: Reference voltage of the deviation term, in ``V_ROOT_RANGE_PU``.

    Raises:
        InputError: a weight that is not a finite real number in ``[0, MAX_WEIGHT]``, a
            reference voltage outside ``V_ROOT_RANGE_PU`` (the field is named).
    """

    loss: float = 1.0
    curtailment: float = 0.0
    voltage: float = 0.0
    q_usage: float = 0.0
    ess_usage: float = 0.0
    v_ref_pu: float = 1.0

    def __post_init__(self):
        for name in ("loss", "curtailment", "voltage", "q_usage", "ess_usage"):
            v = getattr(self, name)
            if not (_real(v) and 0 <= v <= MAX_WEIGHT):
                raise InputError(f"expected a finite weight in [0, {MAX_WEIGHT:g}], got {v!r}", f"weights.{name}")
        lo, hi = V_ROOT_RANGE_PU
        if not (_real(self.v_ref_pu) and lo <= self.v_ref_pu <= hi):
            raise InputError(f"expected a voltage in [{lo}, {hi}] pu, got {self.v_ref_pu!r}", "weights.v_ref_pu")


def _real(v) -> bool:
    """A finite real number (not a bool)."""
    return isinstance(v, (int, float, np.floating, np.integer)) and not isinstance(v, (bool, np.bool_)) \
        and bool(np.isfinite(v))


#: Paper B's objective terms (losses, curtailment opportunity cost, voltage deviation, device
#: costs; the paper gives no numbers, these are the project's): curtailing a MW costs 1.5 x a MW
#: lost (the energy is lost and must be bought back at a premium), 0.01 pu deviation at every bus
#: of ieee33 costs 32e-4 x 10 = 3.2 kW, and reactive usage a small wear cost.
PAPER_B_WEIGHTS = OPFWeights(loss=1.0, curtailment=1.5, voltage=10.0, q_usage=1e-3, ess_usage=1e-3)


def resolve_weights(objective) -> OPFWeights:
    """``"losses"``, ``"paperB"``, an :class:`OPFWeights` or a dict of its fields.

    Raises:
        InputError: anything else (field ``objective``).
    """
    if isinstance(objective, OPFWeights):
        return objective
    if isinstance(objective, str):
        if objective == "losses":
            return OPFWeights()
        if objective == "paperB":
            return PAPER_B_WEIGHTS
        raise InputError(f"expected 'losses', 'paperB', OPFWeights or a dict, got {objective!r}", "objective")
    if isinstance(objective, dict):
        known = set(OPFWeights.__dataclass_fields__)
        unknown = [k for k in objective if k not in known]
        if unknown:
            raise InputError(f"unknown weight(s) {unknown!r}; expected some of {sorted(known)}", "objective")
        return OPFWeights(**objective)
    raise InputError(f"expected 'losses', 'paperB', OPFWeights or a dict, got {type(objective).__name__}",
                     "objective")


@dataclass(frozen=True, eq=False)
class BoundaryLayout:
    """Where a zone model's boundary values sit in its boundary vector ``y``.

    ``y = [w_up, P_up, Q_up] + [w_out (n_out,), P_out (n_out,), Q_out (n_out,)]``: the squared
    voltage of the zone's source bus (pu^2) and the flow into the zone's head (pu, sending
    end), present when the zone hangs below another zone (``up``); then, per boundary branch
    into a downstream zone, the squared voltage of the zone bus it leaves from and the flow it
    carries. Boundaries at the feeder's root bus are not in ``y``: the root voltage is fixed
    and the root supplies any flow, so nothing there couples two zones.

    Attributes:
        up: The zone's upstream boundary is coupled (``y`` starts with three entries).
        up_branch: Feeder branch into the zone's head (-1 when not ``up``).
        head_node: Model node of the zone's head.
        out_branch: ``(n_out,)`` feeder branches into downstream zones (from nodes > 0).
        out_node: ``(n_out,)`` model nodes they leave from.
        keys: ``(size,)`` global id of each entry, ``3 * branch + kind`` with kind 0 = voltage,
            1 = P, 2 = Q: the two zones at a boundary branch share these ids.
    """

    up: bool
    up_branch: int
    head_node: int
    out_branch: np.ndarray
    out_node: np.ndarray
    keys: np.ndarray

    @property
    def size(self) -> int:
        return int(self.keys.size)

    @classmethod
    def of(cls, feeder: Feeder, mn: ModelNetwork) -> BoundaryLayout:
        """The layout of a model network (empty for the whole feeder)."""
        tree = mn.tree
        up = mn.zone is not None and tree.bus[0] != feeder.root_bus
        head = int(np.flatnonzero(tree.parent == 0)[0]) if tree.n > 1 else 0
        up_branch = int(tree.branch[head]) if up else -1
        ok = mn.out_node > 0
        ob, on = mn.out_branch[ok], mn.out_node[ok]
        keys = [3 * up_branch + np.arange(3)] if up else []
        keys += [3 * ob + k for k in range(3)]
        return cls(up=bool(up), up_branch=up_branch, head_node=head, out_branch=ob, out_node=on,
                   keys=np.concatenate(keys).astype(np.int64) if keys else np.zeros(0, np.int64))

    def values(self, x: dict) -> np.ndarray:
        """``(size,)`` boundary vector from a solve's variable values (by name)."""
        parts = []
        if self.up:
            h = self.head_node - 1
            parts.append([x["bnd_w_src"][0], x["P"][h], x["Q"][h]])
        if self.out_node.size:
            parts += [x["w"][self.out_node - 1], x["bnd_p"], x["bnd_q"]]
        return np.concatenate(parts).astype(float) if parts else np.zeros(0)


class _OpenBoundary:
    """Algebra proxy for a zone model: the projection's boundary parameters (source voltage,
    flows into downstream zones added to node loads) come back as variables. Everything else
    passes through to the wrapped algebra."""

    def __init__(self, alg, mn: ModelNetwork, layout: BoundaryLayout):
        self._alg, self._layout, self._mn = alg, layout, mn
        self.w_src = self.p_out = self.q_out = None

    def __getattr__(self, name):
        return getattr(self._alg, name)

    def param(self, name: str, value, nonneg: bool = False):
        a, lay = self._alg, self._layout
        p = a.param(name, value, nonneg)
        if name == "w_src" and lay.up:
            self.w_src = a.var("bnd_w_src", 1)
            return self.w_src[0]
        if name in ("load_p", "load_q") and lay.out_node.size:
            f = a.var("bnd_p" if name == "load_p" else "bnd_q", lay.out_node.size)
            if name == "load_p":
                self.p_out = f
            else:
                self.q_out = f
            M = np.zeros((self._mn.tree.n - 1, lay.out_node.size))
            M[lay.out_node - 1, np.arange(lay.out_node.size)] = 1.0
            return p + a.matvec(M, f)
        return p


class OPFProgram:
    """The snapshot OPF on one model network, built once on an algebra (see module docstring).

    Args:
        alg: A fresh algebra (CVXPY for either model; Pyomo for LinDistFlow).
        feeder: The feeder.
        mn: The model network.
        model: "lindistflow" or "socp".
        weights: Objective weights.
        scr_min: Minimum short-circuit ratio (None: off), as in the projection.
        open_boundary: A zone model for decomposition (see module docstring): boundary values
            are variables, with a proximal term set by :meth:`set_proximal`.

    Attributes:
        proj: The projection program holding the variables and constraints (its parameters are
            written by ``proj.set_snapshot``; its distance objective is not used).
        problem: The problem with the OPF objective.
        boundary: :class:`BoundaryLayout` (None unless ``open_boundary``).
    """

    def __init__(self, alg, feeder: Feeder, mn: ModelNetwork, model: str, weights: OPFWeights,
                 scr_min: float | None = None, open_boundary: bool = False):
        self.weights, self.model, self.alg, self.mn = weights, model, alg, mn
        self.boundary = BoundaryLayout.of(feeder, mn) if open_boundary else None
        palg = _OpenBoundary(alg, mn, self.boundary) if open_boundary else alg
        proj = ProjectionProgram(palg, feeder, mn, model, np.ones(feeder.n_pv), np.ones(feeder.n_ess), scr_min)
        self.proj = proj
        a, tree, sn, wt = alg, mn.tree, mn.sn_mva, weights
        net = proj.net
        r = tree.r_pu[1:]
        if net.l is not None:
            # branch ratings as what they are, current limits: l <= i_max^2 in pu (exact in the
            # branch flow model); the caller lifts the projection's apparent-power proxy
            # (sqrt(3) vn i_max, conservative above 1 pu) by setting its ``smax`` to BIG
            a.le("thermal_current", net.l, a.param("lmax", np.ones(tree.n - 1)))
            loss = sn * a.total(a.mul(r, net.l))
        else:
            loss = sn * (a.sum_squares(a.mul(np.sqrt(r), net.P)) + a.sum_squares(a.mul(np.sqrt(r), net.Q)))
        self.avail = a.param("avail_mw", np.zeros(mn.pv.size))
        obj = wt.loss * loss
        if wt.curtailment > 0 and mn.pv.size:
            obj = obj + wt.curtailment * a.total(self.avail - proj.p)
        if wt.voltage > 0:
            obj = obj + wt.voltage * a.sum_squares(0.5 * (net.w - wt.v_ref_pu**2))
        if wt.q_usage > 0 and mn.pv.size:
            obj = obj + wt.q_usage * a.sum_squares(proj.q)
        if wt.ess_usage > 0 and mn.ess.size:
            obj = obj + wt.ess_usage * a.sum_squares(proj.e)
        if net.l is not None:
            obj = obj + a.param("loss_penalty", 0.0, nonneg=True) * loss
        if self.boundary is not None and self.boundary.size:
            lay, k = self.boundary, self.boundary.size
            scale, target = a.param("prox_scale", np.zeros(k), nonneg=True), a.param("prox_target", np.zeros(k))
            pieces = []
            if lay.up:
                h = np.array([lay.head_node - 1])
                pieces += [palg.w_src, net.P[h], net.Q[h]]
            if lay.out_node.size:
                pieces += [net.w[lay.out_node - 1], palg.p_out, palg.q_out]
            i = 0
            for y in pieces:
                n = y.shape[0]
                obj = obj + 0.5 * a.sum_squares(a.mul(scale[i:i + n], y) - target[i:i + n])
                i += n
        self.problem = a.problem(obj)

    def set_snapshot(self, feeder: Feeder, snap: Snapshot, cap_step) -> None:
        """Write one snapshot's numbers into the parameters.

        Args:
            feeder: The feeder.
            snap: A validated snapshot (``snapshot.checked(feeder)``).
            cap_step: ``(n_cap,)`` capacitor steps held during the solve.
        """
        f, mn, proj = feeder, self.mn, self.proj
        tree = mn.tree
        b = device_bounds(f, mn, snap)
        qs = f.cap.q_step_mvar[mn.cap] * np.asarray(cap_step, float)[mn.cap]
        cap_node_q = mn.incidence(mn.cap_node) @ qs / mn.sn_mva
        zp = np.zeros(mn.pv.size)
        smax = tree.s_max_pu[1:]
        if self.model == "socp":  # current limits instead (see the module docstring)
            self.alg.set("lmax", np.minimum(smax**2, BIG))
            smax = np.full_like(smax, BIG)
        proj.set_snapshot(f, snap, b, zp, zp, np.zeros(mn.ess.size), cap_node_q, tree.vm_min_pu[1:] ** 2,
                          tree.vm_max_pu[1:] ** 2, smax)
        self.alg.set("avail_mw", np.minimum(np.asarray(snap.pv_avail_mw, float)[mn.pv], f.pv.s_mva[mn.pv]))

    def set_proximal(self, scale, target) -> None:
        """Set the proximal term ``0.5 ||scale * y - target||^2`` (``(boundary.size,)`` each;
        ADMM: ``scale = sqrt(rho)``, ``target = sqrt(rho) (z - u)``)."""
        self.alg.set("prox_scale", scale)
        self.alg.set("prox_target", target)

    @staticmethod
    def cost(weights: OPFWeights, loss_mw: float, curtail_mw: float, vm_pu, q_mvar, e_mw) -> float:
        """The objective evaluated at a state (e.g. an AC power flow's), same units.

        Args:
            loss_mw: Active losses (MW).
            curtail_mw: Total curtailed PV (MW).
            vm_pu: ``(n,)`` voltage magnitudes of the modelled buses (the source excluded).
            q_mvar, e_mw: Inverter reactive and storage set-points.
        """
        w = weights
        dev = 0.5 * (np.asarray(vm_pu) ** 2 - w.v_ref_pu**2)
        return float(w.loss * loss_mw + w.curtailment * curtail_mw + w.voltage * np.sum(dev**2)
                     + w.q_usage * np.sum(np.asarray(q_mvar) ** 2) + w.ess_usage * np.sum(np.asarray(e_mw) ** 2))

    @staticmethod
    def key(weights: OPFWeights) -> tuple:
        return astuple(weights)
