"""Centralized snapshot OPF: the economic optimum of one snapshot, no look-ahead.

The problem (:class:`~safedispatch.problems.opf.OPFProgram`) has the safety layer's device and
network constraints and an economic objective (losses, curtailment, voltage deviation, device
costs). The SOCP branch flow relaxation (Farivar & Low 2013) is solved with CVXPY (Clarabel,
then ECOS, then SCS); LinDistFlow (Baran & Wu 1989) is a convex QP (with second-order cones for
the branch ratings) on the same chain. The problem is built once per feeder, model and weights;
each snapshot only updates parameters (DPP).

Every result is checked by the AC power flow (:func:`safedispatch.run_powerflow`) at the
returned set-points: ``vm_pu``, ``losses_mw``, ``ac_objective`` and ``ac_feasible`` are AC
quantities. For the SOCP model ``relaxation_gap = (ac_objective - objective) / |objective|``
is the gap between the relaxation's lower bound and the cost actually incurred, and
``cone_gap`` the largest relative slack of a branch cone, ``1 - (P^2 + Q^2) / (w_i l)``.

**Repair of inexact relaxations.** Where curtailment is priced, the relaxation may prefer
fictitious losses (slack cones) to curtailment; its set-points then need not respect the
limits in AC. The repair re-solves with an extra price ``loss_penalty`` on the relaxed losses
(a parameter: no rebuild), which makes fictitious losses unattractive and tightens the cones:
the penalty is bracketed on 0.1, 1 and 10 cost units per MW and then bisected to the smallest
one whose set-points are AC-feasible (a larger penalty prices real losses too and curtails
more than needed). If none is, or for LinDistFlow (whose lossless voltages can be optimistic),
the safety layer of the same model with AC certification projects the set-points. A repaired
result has status ``REPAIRED`` and states its gap; ``objective`` stays the unpenalized
relaxation's optimum, a lower bound of the AC optimum, so the gap is conservative: it bounds
how far the repaired cost can be from the AC optimum.
"""

from __future__ import annotations

import time
import weakref
from dataclasses import dataclass, field
from enum import IntEnum

import numpy as np

from safedispatch.backends import cvxpy_
from safedispatch.backends.result import SolveStatus
from safedispatch.baselines.controller import Controller, NoControl, hold_cap_step
from safedispatch.errors import InputError
from safedispatch.network.feeder import Feeder
from safedispatch.powerflow import run_powerflow
from safedispatch.problems.opf import OPFProgram, resolve_weights
from safedispatch.problems.projection import FORMULATIONS
from safedispatch.problems.types import Action, Snapshot, check_feeder, check_snapshot, net_injection
from safedispatch.problems.zones import model_network

__all__ = ["OPFController", "OPFResult", "OPFStatus", "SnapshotOPF", "solve_opf"]

#: AC limit tolerances: voltage (pu of magnitude) and branch current (fraction of rating)
V_TOL_PU = 1e-4
I_TOL = 1e-3
#: a cone is "tight" when its relative slack is below this
CONE_TOL = 1e-4
REPAIR_PENALTIES = (0.1, 1.0, 10.0)
#: where Clarabel stops short of the projection's tight tolerances (1e-10,
#: :data:`~safedispatch.backends.cvxpy_.DEFAULT_OPTIONS`) with OPTIMAL_INACCURATE, as it often does
#: on these cones, it is re-run at its own defaults (1e-8) before the fallback chain, which would
#: otherwise spend seconds in SCS: the OPF's costs (~1e-2 MW) need no more than 1e-8 absolute.
#: The repair's penalized solves keep the full chain (their cone gaps are reported, and
#: Clarabel's looser optimum leaves them ~2e-3 slack where ECOS reaches 1e-3).
OPF_RETRY_OPTIONS = {"CLARABEL": dict(tol_gap_abs=1e-8, tol_gap_rel=1e-8, tol_feas=1e-8)}
REPAIR_BISECTIONS = 4


class OPFStatus(IntEnum):
    """Outcome of a snapshot OPF.

    OPTIMAL: the model's optimum, AC-feasible. REPAIRED: the relaxation's set-points violated
    AC limits and were repaired (AC-feasible). AC_VIOLATION: solved, but the set-points violate
    AC limits and no repair worked (returned anyway, flagged). INFEASIBLE: the model has no
    feasible point (no action). SOLVER_FAILED: no solver produced a usable answer (no action).
    """

    OPTIMAL = 0
    REPAIRED = 1
    AC_VIOLATION = 2
    INFEASIBLE = 3
    SOLVER_FAILED = 4


@dataclass
class OPFResult:
    """Result of :func:`solve_opf`.

    Attributes:
        action: The set-points (None when INFEASIBLE or SOLVER_FAILED).
        status: :class:`OPFStatus`.
        objective: The model's optimal objective (cost units; for SOCP a lower bound of the AC
            optimum). ``inf`` without a solution.
        vm_pu: ``(n_bus,)`` AC voltages at the set-points (None without an action).
        losses_mw: AC active losses at the set-points (``nan``-free: ``inf`` without one).
        ac_objective: The objective evaluated on the AC state at the set-points.
        relaxation_gap: ``(ac_objective - objective) / |objective|`` (0 when both are 0).
        cone_gap: Largest relative cone slack (SOCP; 0 for LinDistFlow).
        ac_feasible: The AC state respects voltage and branch limits (within V_TOL_PU, I_TOL).
        model: "socp" or "lindistflow".
        solver: Solver that produced the result.
        solve_time_s: Wall time of the solver call(s) (s); ``total_time_s`` includes the
            parameter update, AC check and repair.
        info: Repair history and solver details.
    """

    action: Action | None
    status: OPFStatus
    objective: float
    vm_pu: np.ndarray | None
    losses_mw: float
    ac_objective: float
    relaxation_gap: float
    cone_gap: float
    ac_feasible: bool
    model: str
    solver: str = ""
    solve_time_s: float = 0.0
    total_time_s: float = 0.0
    info: dict = field(default_factory=dict)


class SnapshotOPF:
    """The snapshot OPF for one feeder, model and objective: built once, solved per snapshot.

    Owns solver state: use one instance per thread.

    Args:
        feeder: The network.
        model: "socp" (Farivar & Low 2013) or "lindistflow" (Baran & Wu 1989).
        objective: "losses", "paperB" (:data:`~safedispatch.problems.opf.PAPER_B_WEIGHTS`), an
            :class:`~safedispatch.problems.opf.OPFWeights` or a dict of its fields.
        scr_min: Minimum short-circuit ratio at buses with a known short-circuit capacity
            (paper B), as in the safety layer; None = off.
        repair: Repair AC-infeasible SOCP results (see module docstring).
        solvers: CVXPY solver chain.

    A feeder with nothing to control (no inverter, no storage) is solved like any other: the
    model then only checks the snapshot (OPTIMAL with an empty action, or INFEASIBLE).

    Raises:
        InputError: ``feeder`` is not a Feeder, unknown model or objective, bad ``scr_min``,
            ``repair`` or ``solvers``.
    """

    def __init__(self, feeder: Feeder, model: str = "socp", objective="losses", scr_min: float | None = None,
                 repair: bool = True, solvers=cvxpy_.DEFAULT_SOLVERS):
        check_feeder(feeder)
        model, scr_min, repair = check_options(model, scr_min, repair)
        solvers = cvxpy_.check_solvers(solvers)
        self.feeder, self.model, self.scr_min = feeder, model, scr_min
        self.weights = resolve_weights(objective)
        self.repair, self.solvers = repair, solvers
        self.mn = model_network(feeder)
        self.alg = cvxpy_.CvxpyAlgebra()
        self.prog = OPFProgram(self.alg, feeder, self.mn, model, self.weights, scr_min)
        self._layer = None

    # ------------------------------------------------------------------------------------
    def _set(self, snap: Snapshot, cap) -> None:
        self.prog.set_snapshot(self.feeder, snap, cap)

    def _solve_once(self, penalty: float):
        if self.model == "socp":
            self.alg.set("loss_penalty", penalty)
        if penalty > 0:  # the repair keeps the full-precision chain: it is judged on cone tightness
            return cvxpy_.solve(self.prog.problem, self.solvers)
        return solve_opf_problem(self.prog.problem, self.solvers)

    def _action(self, r, cap) -> Action:
        f, mn = self.feeder, self.mn
        p, q, e = np.zeros(f.n_pv), np.zeros(f.n_pv), np.zeros(f.n_ess)
        s = f.pv.s_mva[mn.pv]
        pp_, qq = r.x["pv_p"], r.x["pv_q"]
        # solver tolerance can leave a point 1e-9 outside a disk: scale it back in
        scale = np.minimum(1.0, s / np.maximum(np.hypot(pp_, qq), 1e-300))
        p[mn.pv], q[mn.pv] = np.maximum(pp_ * scale, 0.0), qq * scale
        if mn.ess.size:
            e[mn.ess] = r.x["ess_p"]
        return Action(pv_p_mw=p, pv_q_mvar=q, cap_step=np.asarray(cap, dtype=np.int64), ess_p_mw=e)

    def _cone_gap(self, r) -> float:
        if self.model != "socp":
            return 0.0
        tree = self.mn.tree
        w = np.concatenate([[self.alg.params["w_src"].value], r.x["w"]])
        wpar = w[tree.parent[1:]]
        l = r.x["l"]  # noqa: E741
        lhs = wpar * l
        ok = lhs > 1e-9
        if not ok.any():
            return 0.0
        return float(np.max(1.0 - (r.x["P"][ok] ** 2 + r.x["Q"][ok] ** 2) / lhs[ok], initial=0.0))

    def _ac(self, snap: Snapshot, act: Action):
        """AC state, cost and feasibility at the set-points."""
        f = self.feeder
        pi, qi, sh = net_injection(f, snap, act)
        pf = run_powerflow(f, pi, qi, v_root_pu=snap.v_root_pu, shunt_q_mvar=sh)
        buses = self.mn.tree.bus[1:]
        vm = pf.vm_pu
        ok_v = bool(np.all(vm[buses] >= f.bus.vm_min_pu[buses] - V_TOL_PU)
                    and np.all(vm[buses] <= f.bus.vm_max_pu[buses] + V_TOL_PU))
        rated = np.isfinite(f.branch.i_max_ka) & f.branch.in_service
        ok_i = bool(np.all(pf.i_ka[rated] <= f.branch.i_max_ka[rated] * (1 + I_TOL)))
        avail = np.minimum(np.asarray(snap.pv_avail_mw, float), f.pv.s_mva)
        cost = OPFProgram.cost(self.weights, float(pf.p_loss_mw), float(np.sum(avail - act.pv_p_mw)), vm[buses],
                               act.pv_q_mvar, act.ess_p_mw)
        return pf, cost, bool(pf.converged) and ok_v and ok_i

    def solve(self, snapshot: Snapshot) -> OPFResult:
        """Solve the OPF of one snapshot (capacitors held at their previous steps).

        Args:
            snapshot: Loads, PV availability, previous set-points (ramp limits).

        Returns:
            :class:`OPFResult`; solver failures and infeasibility are statuses.

        Raises:
            InputError: the snapshot is not a Snapshot or does not fit the feeder.
        """
        t0 = time.perf_counter()
        f = self.feeder
        snap = check_snapshot(snapshot, f)
        cap = hold_cap_step(f, snap)
        self._set(snap, cap)
        r = self._solve_once(0.0)
        solve_time = r.solve_time_s
        info = {"solver_info": r.info, "repair": []}
        if not r.status.has_solution:
            st = OPFStatus.INFEASIBLE if r.status.name == "INFEASIBLE" else OPFStatus.SOLVER_FAILED
            return OPFResult(action=None, status=st, objective=float("inf"), vm_pu=None, losses_mw=float("inf"),
                             ac_objective=float("inf"), relaxation_gap=float("inf"), cone_gap=0.0, ac_feasible=False,
                             model=self.model, solver=r.solver, solve_time_s=solve_time,
                             total_time_s=time.perf_counter() - t0, info=info)
        bound = r.objective
        cone = self._cone_gap(r)
        info["relaxed_cone_gap"] = cone  # of the unpenalized relaxation, before any repair
        act = self._action(r, cap)
        pf, ac_cost, feas = self._ac(snap, act)
        status = OPFStatus.OPTIMAL
        if not feas and self.repair:
            status = OPFStatus.AC_VIOLATION
            if self.model == "socp":
                best, solve_time = self._repair_penalty(snap, cap, info, solve_time)
                if best is not None:
                    act, pf, ac_cost, cone = best
                    feas, status = True, OPFStatus.REPAIRED
            if not feas:
                act, pf, ac_cost, feas = self._certify(snap, act, info)
                if feas:
                    status = OPFStatus.REPAIRED
        elif not feas:
            status = OPFStatus.AC_VIOLATION
        gap = 0.0 if ac_cost == bound else (ac_cost - bound) / max(abs(bound), 1e-12)
        return OPFResult(action=act, status=status, objective=bound, vm_pu=np.asarray(pf.vm_pu, float),
                         losses_mw=float(pf.p_loss_mw), ac_objective=ac_cost, relaxation_gap=float(gap),
                         cone_gap=cone, ac_feasible=feas, model=self.model, solver=r.solver, solve_time_s=solve_time,
                         total_time_s=time.perf_counter() - t0, info=info)

    def _repair_penalty(self, snap, cap, info, solve_time):
        """The smallest loss penalty (bracketed on REPAIR_PENALTIES, then bisected
        REPAIR_BISECTIONS times) whose set-points are AC-feasible: a larger penalty also prices
        real losses and curtails more than needed, so the smallest is the best repair."""
        best, lo, hi = None, 0.0, None

        def attempt(pen):
            nonlocal best, solve_time
            r = self._solve_once(pen)
            solve_time += r.solve_time_s
            if not r.status.has_solution:
                info["repair"].append({"loss_penalty": pen, "status": r.status.name})
                return False
            act = self._action(r, cap)
            pf, cost, feas = self._ac(snap, act)
            info["repair"].append({"loss_penalty": pen, "cone_gap": self._cone_gap(r), "ac_feasible": feas,
                                   "ac_objective": cost})
            if feas and (best is None or cost < best[2]):
                best = (act, pf, cost, self._cone_gap(r))
            return feas

        for pen in REPAIR_PENALTIES:
            if attempt(pen):
                hi = pen
                break
            lo = pen
        if hi is not None:
            for _ in range(REPAIR_BISECTIONS):
                mid = 0.5 * (lo + hi)
                if attempt(mid):
                    hi = mid
                else:
                    lo = mid
        self._solve_once(0.0)  # leave the parameter as the next call expects it
        return best, solve_time

    def _certify(self, snap, act, info):
        """Last resort: the SOCP safety layer with AC certification projects the set-points."""
        from safedispatch.safety import SafetyLayer

        if self._layer is None:
            self._layer = SafetyLayer(self.feeder, model=self.model, scr_min=self.scr_min)
        res = self._layer.project(act, snap, certify_ac=True)
        info["repair"].append({"safety_layer": res.status.name, "certified": bool(res.certified)})
        pf, cost, feas = self._ac(snap, res.action.checked(self.feeder))
        return res.action.checked(self.feeder), pf, cost, feas


def solve_opf_problem(problem, solvers=cvxpy_.DEFAULT_SOLVERS):
    """Solve an OPF problem: the first solver at tight tolerances, re-run at its default
    tolerances when that ends inaccurate (see :data:`OPF_RETRY_OPTIONS`), then the rest of the
    chain. Never raises for solver outcomes.

    Returns:
        The :class:`~safedispatch.backends.result.SolveResult` of the last attempt, its
        ``solve_time_s`` summed over the attempts, ``info["tried"]`` listing them and
        ``info["errors"]`` and ``info["solver_output"]`` merged. When the last attempt has no
        answer (a later solver raised or failed) and no definite verdict, the latest
        OPTIMAL_INACCURATE answer found on the
        way is returned instead (as :func:`~safedispatch.backends.cvxpy_.solve` does within
        one chain).
    """
    solvers = tuple(solvers)
    definite = (SolveStatus.OPTIMAL, SolveStatus.INFEASIBLE, SolveStatus.UNBOUNDED)
    first = cvxpy_.solve(problem, solvers[:1])
    if first.status in definite:
        return first
    attempts = [first]
    tried = list(first.info.get("tried", []))
    if solvers[0] in OPF_RETRY_OPTIONS:
        attempts.append(cvxpy_.solve(problem, solvers[:1], OPF_RETRY_OPTIONS))
        tried += [f"{solvers[0]}(default tolerances)"]
    if attempts[-1].status not in definite and len(solvers) > 1:
        attempts.append(cvxpy_.solve(problem, solvers[1:]))
        tried += list(attempts[-1].info.get("tried", []))
    r = attempts[-1]
    if not r.x and r.status not in definite:
        r = next((a for a in reversed(attempts) if a.x), r)
    errors = {}
    for a in attempts:
        errors.update(a.info.get("errors", {}))
    r.solve_time_s = sum(a.solve_time_s for a in attempts)
    r.info["tried"] = tried
    r.info["errors"] = errors
    r.info["solver_output"] = "".join(a.info.get("solver_output", "") for a in attempts)
    return r


def check_options(model, scr_min, repair=True) -> tuple[str, float | None, bool]:
    """The validated ``(model, scr_min, repair)`` options shared by the OPF baselines.

    Raises:
        InputError: ``model`` is not one of the formulations' names, ``scr_min`` not None or a
            finite ratio > 0, ``repair`` not a bool (each named).
    """
    if not (isinstance(model, str) and model in FORMULATIONS):
        raise InputError(f"expected one of {sorted(FORMULATIONS)}, got {model!r}", "model")
    if scr_min is not None:
        if not (isinstance(scr_min, (int, float, np.integer, np.floating)) and not isinstance(scr_min, bool)
                and np.isfinite(scr_min) and scr_min > 0):
            raise InputError(f"expected a finite ratio > 0, got {scr_min!r}", "scr_min")
        scr_min = float(scr_min)
    if not isinstance(repair, (bool, np.bool_)):
        raise InputError(f"expected True or False, got {repair!r}", "repair")
    return model, scr_min, bool(repair)


_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def solve_opf(feeder: Feeder, snapshot: Snapshot, model: str = "socp", objective="losses",
              scr_min: float | None = None, repair: bool = True) -> OPFResult:
    """Centralized snapshot OPF (see :class:`SnapshotOPF`; built once per feeder, model,
    objective and options and cached, so repeated snapshots only update parameters).

    Farivar & Low, IEEE Trans. Power Systems 28(3), 2013 (SOCP); Baran & Wu, IEEE Trans. Power
    Delivery 4(2), 1989 (LinDistFlow).

    Args:
        feeder: The network.
        snapshot: The snapshot.
        model: "socp" or "lindistflow".
        objective: "losses", "paperB", OPFWeights or a dict of its fields.
        scr_min: Minimum short-circuit ratio (paper B), None = off.
        repair: Repair AC-infeasible relaxation results.

    Returns:
        :class:`OPFResult`.

    Raises:
        InputError: ``feeder`` is not a Feeder; bad model, objective, options or snapshot (a
        wrong type included). Not thread-safe (the cache shares solver state): threads should
        each build a :class:`SnapshotOPF`.
    """
    check_feeder(feeder)
    model, scr_min, repair = check_options(model, scr_min, repair)
    weights = resolve_weights(objective)
    key = (model, OPFProgram.key(weights), scr_min, bool(repair))
    per = _CACHE.setdefault(feeder, {})
    if key not in per:
        per[key] = SnapshotOPF(feeder, model=model, objective=weights, scr_min=scr_min, repair=repair)
    return per[key].solve(snapshot)


class OPFController(Controller):
    """The snapshot OPF as a controller; falls back to :class:`NoControl` when the OPF has no
    solution (the status of the last call is in ``last_result``).

    Args:
        feeder: The network.
        **kw: Options of :class:`SnapshotOPF`.
    """

    name = "snapshot_opf"

    def __init__(self, feeder: Feeder, **kw):
        super().__init__(feeder)
        self.opf = SnapshotOPF(feeder, **kw)
        self.last_result: OPFResult | None = None

    def act(self, snapshot: Snapshot) -> Action:
        """The OPF's set-points (no control when it has none).

        Raises:
            InputError: the snapshot is not a Snapshot or does not fit the feeder.
        """
        self.last_result = self.opf.solve(snapshot)
        if self.last_result.action is None:
            return NoControl(self.feeder).act(snapshot)
        return self.last_result.action
