"""Snapshot mixed-integer optimization: paper B's centralized baseline, solved at every step
without look-ahead.

LinDistFlow network (Baran & Wu 1989) and the safety layer's device constraints (the same
:class:`~safedispatch.problems.projection.ProjectionProgram`, on the Pyomo algebra, so the
inverter disks are **inner** regular polygons: every set-point is inside its disk), plus:

* capacitor steps as integers ``0..n_steps`` with a switching cost per step changed
  (paper C: ``switch_cost * |c - c_prev|``, linearized with one auxiliary per bank);
* grid-forming/following mode binaries (paper B): ``p <= delta s + (1 - delta) eps`` with at
  least ``min_grid_forming`` inverters in forming mode (``delta = 0``, active power at most
  ``eps``: the headroom a grid-forming unit keeps);
* the short-circuit-ratio bound at weak buses (``scr_min``, as in the projection).

The objective is linear (HiGHS solves MILPs, not MIQPs): curtailment cost, switching cost and
paper C's voltage deviation ``sum |w - v_ref^2| / 2`` (~ ``sum |v - v_ref|``), each weighted.
Solved with HiGHS through Pyomo (:mod:`safedispatch.backends.pyomo_`); the model is built once
per feeder and options, each snapshot updates mutable parameters only: from the second snapshot
on directly in the persistent HiGHS model (row bounds and objective offset are affine in the
parameters; the map is measured once and checked, see :class:`_DirectHighs`), which skips
Pyomo's expression walk (about half of a snapshot's time). Build and solve times are reported
separately: the build, all in the first call, includes measuring that map (about 1-2 s on a
33-bus feeder: one Pyomo update per parameter), so every later call is a solve only.
"""

from __future__ import annotations

import time
import weakref
from dataclasses import dataclass, field
from enum import IntEnum

import numpy as np

from safedispatch.backends import pyomo_
from safedispatch.backends.result import SolveResult, SolveStatus, captured_output
from safedispatch.baselines.controller import available_p_mw, hold_cap_step
from safedispatch.errors import V_ROOT_RANGE_PU, InputError
from safedispatch.network.feeder import Feeder
from safedispatch.problems.projection import BIG, ProjectionProgram, device_bounds
from safedispatch.problems.types import Action, Snapshot, check_feeder, check_snapshot, real_vector
from safedispatch.problems.zones import model_network

__all__ = ["MIPResult", "MIPStatus", "SnapshotMIP", "solve_mip"]

#: largest objective weight accepted: weights are relative prices, and HiGHS loses accuracy on
#: coefficients far beyond this
MAX_WEIGHT = 1e6


def _real(v) -> bool:
    """A finite real number (not a bool)."""
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_)) \
        and bool(np.isfinite(v))


def _integer(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


class MIPStatus(IntEnum):
    """OPTIMAL (within the MIP gap), INFEASIBLE (no set-points satisfy the model),
    SOLVER_FAILED (time limit without an incumbent, numerical trouble)."""

    OPTIMAL = 0
    INFEASIBLE = 1
    SOLVER_FAILED = 2


@dataclass
class MIPResult:
    """Result of :func:`solve_mip`.

    Attributes:
        action: Set-points with integer capacitor steps (None unless OPTIMAL).
        status: :class:`MIPStatus`.
        objective: Optimal cost (``inf`` without a solution).
        mode: ``(n_pv,)`` 1 = grid-following, 0 = grid-forming (None without a solution).
        build_time_s: Time to build the Pyomo model and measure the direct path (the first
            call of a model; 0 afterwards).
        solve_time_s: Time of the parameter update and HiGHS call.
        info: Solver details.
    """

    action: Action | None
    status: MIPStatus
    objective: float
    mode: np.ndarray | None
    build_time_s: float
    solve_time_s: float
    info: dict = field(default_factory=dict)


class SnapshotMIP:
    """The snapshot MIP for one feeder (see module docstring); build once, solve per snapshot.

    Args:
        feeder: The network.
        curtailment: Cost per MW of curtailed PV.
        voltage: Cost per pu of ``sum |v - v_ref|`` over buses.
        v_ref_pu: Reference voltage.
        switch_weight: Multiplier of each bank's ``cap.switch_cost`` per step changed.
        min_grid_forming: Inverters required in grid-forming mode.
        eps_mw: Active power a grid-forming inverter may still inject (MW).
        scr_min: Minimum short-circuit ratio at weak buses (None = off).
        polygon_sides: Sides of the inner polygons replacing the disks.
        time_limit_s: HiGHS time limit per snapshot.
        direct: After the first snapshot, push each snapshot's numbers straight into the
            persistent HiGHS model (see :class:`_DirectHighs`) instead of through Pyomo's
            parameter update; identical model, identical answers (tested), several ms faster.
            Falls back to the Pyomo path by itself if the model turns out not to be affine in
            its parameters.

    A feeder with nothing to decide (no inverter, storage or capacitor bank) is solved like any
    other: the model then only checks the snapshot (OPTIMAL with an empty action, or
    INFEASIBLE).

    Raises:
        InputError: ``feeder`` is not a Feeder; negative or non-numeric weights, too many
            grid-forming inverters, bad ``scr_min``, ``v_ref_pu``, ``polygon_sides``,
            ``time_limit_s`` or ``direct``.
    """

    def __init__(self, feeder: Feeder, curtailment: float = 1.5, voltage: float = 1.0, v_ref_pu: float = 1.0,
                 switch_weight: float = 0.01, min_grid_forming: int = 0, eps_mw: float = 0.0,
                 scr_min: float | None = None, polygon_sides: int = 16, time_limit_s: float | None = 10.0,
                 direct: bool = True):
        check_feeder(feeder)
        for name, v in (("curtailment", curtailment), ("voltage", voltage), ("switch_weight", switch_weight),
                        ("eps_mw", eps_mw)):
            if not (_real(v) and 0 <= v <= MAX_WEIGHT):
                raise InputError(f"expected a finite value in [0, {MAX_WEIGHT:g}], got {v!r}", name)
        if not (_real(v_ref_pu) and V_ROOT_RANGE_PU[0] <= v_ref_pu <= V_ROOT_RANGE_PU[1]):
            raise InputError(f"expected a voltage in {list(V_ROOT_RANGE_PU)} pu, got {v_ref_pu!r}", "v_ref_pu")
        if not (_integer(min_grid_forming) and 0 <= min_grid_forming <= feeder.n_pv):
            raise InputError(f"expected an integer in 0..{feeder.n_pv}, got {min_grid_forming!r}", "min_grid_forming")
        if scr_min is not None and not (_real(scr_min) and scr_min > 0):
            raise InputError(f"expected a finite ratio > 0, got {scr_min!r}", "scr_min")
        if not (_integer(polygon_sides) and 4 <= polygon_sides <= 1024):
            raise InputError(f"expected an integer in 4..1024, got {polygon_sides!r}", "polygon_sides")
        if time_limit_s is not None and not (_real(time_limit_s) and time_limit_s > 0):
            raise InputError(f"expected None or a finite time > 0 (s), got {time_limit_s!r}", "time_limit_s")
        if not isinstance(direct, (bool, np.bool_)):
            raise InputError(f"expected True or False, got {direct!r}", "direct")
        min_grid_forming, polygon_sides = int(min_grid_forming), int(polygon_sides)
        t0 = time.perf_counter()
        self.feeder, self.time_limit_s = feeder, time_limit_s
        self.mn = mn = model_network(feeder)
        alg = pyomo_.PyomoAlgebra(polygon_sides=polygon_sides)
        self.alg = alg
        pyo = alg.pyo
        n_pv, n_cap = mn.pv.size, mn.cap.size
        prog = ProjectionProgram(alg, feeder, mn, "lindistflow", np.ones(feeder.n_pv), np.ones(feeder.n_ess), scr_min,
                                 caps_relaxed=True)
        self.prog = prog
        m = alg.model
        for i in range(n_cap):
            m.cap[i].domain = pyo.Integers
        # grid-forming / following (paper B): p <= delta s + (1 - delta) eps
        s = feeder.pv.s_mva[mn.pv]
        m.mode = pyo.Var(range(n_pv), domain=pyo.Binary)
        m.mode_p = pyo.Constraint(range(n_pv), rule=lambda m, i: m.pv_p[i] <= m.mode[i] * float(s[i])
                                  + (1 - m.mode[i]) * float(eps_mw))
        if min_grid_forming:
            m.mode_min = pyo.Constraint(expr=sum(1 - m.mode[i] for i in range(n_pv)) >= min_grid_forming)
        # switching: sw >= |c - c_prev|
        m.c_prev = pyo.Param(range(n_cap), initialize=0.0, mutable=True)
        m.sw = pyo.Var(range(n_cap), domain=pyo.NonNegativeReals)
        m.sw_up = pyo.Constraint(range(n_cap), rule=lambda m, i: m.sw[i] >= m.cap[i] - m.c_prev[i])
        m.sw_dn = pyo.Constraint(range(n_cap), rule=lambda m, i: m.sw[i] >= m.c_prev[i] - m.cap[i])
        # voltage deviation: dev >= |w - v_ref^2| / 2
        k = mn.tree.n - 1
        w = prog.net.w
        m.dev = pyo.Var(range(k), domain=pyo.NonNegativeReals)
        wref = float(v_ref_pu) ** 2
        m.dev_up = pyo.Constraint(range(k), rule=lambda m, j: 2 * m.dev[j] >= w.items[j] - wref)
        m.dev_dn = pyo.Constraint(range(k), rule=lambda m, j: 2 * m.dev[j] >= wref - w.items[j])
        m.avail = pyo.Param(range(n_pv), initialize=0.0, mutable=True)
        swc = switch_weight * feeder.cap.switch_cost[mn.cap]
        obj = (curtailment * sum(m.avail[i] - m.pv_p[i] for i in range(n_pv))
               + sum(float(swc[i]) * m.sw[i] for i in range(n_cap)) + voltage * sum(m.dev[j] for j in range(k)))
        alg.problem(obj)
        # persistent: later snapshots push only the changed parameters to HiGHS
        self._highs = pyomo_.persistent_highs()
        self.direct = bool(direct)
        self._direct = None
        self.build_time_s = time.perf_counter() - t0
        self._fresh = True
        self._measured_s = 0.0  # time of this call spent measuring the direct path (build, not solve)

    def solve(self, snapshot: Snapshot) -> MIPResult:
        """Solve the MIP of one snapshot.

        Returns:
            :class:`MIPResult`; infeasibility and solver failures are statuses.

        Raises:
            InputError: the snapshot is not a Snapshot or does not fit the feeder.
        """
        f, mn, alg = self.feeder, self.mn, self.alg
        snap = check_snapshot(snapshot, f)
        t0 = time.perf_counter()
        tree = mn.tree
        m = alg.model
        b = device_bounds(f, mn, snap)
        zp = np.zeros(mn.pv.size)
        self.prog.set_snapshot(f, snap, b, zp, zp, np.zeros(mn.ess.size), np.zeros(tree.n - 1),
                               tree.vm_min_pu[1:] ** 2, tree.vm_max_pu[1:] ** 2, np.minimum(tree.s_max_pu[1:], BIG))
        prev = hold_cap_step(f, snap)[mn.cap]
        alg.set("c_lo", np.zeros(mn.cap.size))
        alg.set("c_hi", f.cap.n_steps[mn.cap].astype(float))
        alg.set("rc", np.zeros(mn.cap.size))
        avail = available_p_mw(f, snap)[mn.pv]
        for i in range(mn.cap.size):
            m.c_prev[i].set_value(float(prev[i]))
        for i in range(mn.pv.size):
            m.avail[i].set_value(float(avail[i]))
        return self._finish(self._fixed_solve(), t0, snap)

    def _fixed_solve(self):
        self._measured_s = 0.0
        if self._direct is not None:
            return self._direct.solve(time_limit_s=self.time_limit_s)
        r = pyomo_.solve(self.alg.model, time_limit_s=self.time_limit_s, solver=self._highs)
        if self.direct and self._fresh:
            # the first solve has built the persistent HiGHS model: measure the direct path's map
            # now, as part of the build (reported in build_time_s), not in a later call
            t0 = time.perf_counter()
            try:
                with captured_output():
                    self._direct = _DirectHighs(self._highs, self.alg.model)
            except Exception:  # noqa: BLE001  (_NotAffine, or HiGHS refusing: the Pyomo path works)
                self.direct = False
            self._measured_s = time.perf_counter() - t0
            self.build_time_s += self._measured_s
        return r

    def _finish(self, r, t0, snap) -> MIPResult:
        f, mn = self.feeder, self.mn
        build = self.build_time_s if self._fresh else 0.0
        self._fresh = False
        info = {"termination": r.info.get("termination"), "errors": r.info.get("errors", {}),
                "solver_output": r.info.get("solver_output", "")}
        if r.status != SolveStatus.OPTIMAL:
            st = MIPStatus.INFEASIBLE if r.status == SolveStatus.INFEASIBLE else MIPStatus.SOLVER_FAILED
            return MIPResult(action=None, status=st, objective=float("inf"), mode=None, build_time_s=build,
                             solve_time_s=time.perf_counter() - t0 - self._measured_s, info=info)
        x = r.x
        p, q, e = np.zeros(f.n_pv), np.zeros(f.n_pv), np.zeros(f.n_ess)
        p[mn.pv], q[mn.pv] = np.maximum(x["pv_p"], 0.0), x["pv_q"]
        if mn.ess.size:
            e[mn.ess] = x["ess_p"]
        cap = hold_cap_step(f, snap)
        cap[mn.cap] = np.round(x["cap"]).astype(np.int64)
        mode = np.ones(f.n_pv, dtype=np.int64)
        mode[mn.pv] = np.round(x["mode"]).astype(np.int64)
        return MIPResult(action=Action(pv_p_mw=p, pv_q_mvar=q, cap_step=cap, ess_p_mw=e), status=MIPStatus.OPTIMAL,
                         objective=r.objective, mode=mode, build_time_s=build,
                         solve_time_s=time.perf_counter() - t0 - self._measured_s,
                         info=info)

    def solve_fixed_caps(self, snapshot: Snapshot, cap_step) -> MIPResult:
        """The same problem with the capacitor steps fixed (the continuous solve a brute-force
        enumeration over steps evaluates).

        Raises:
            InputError: steps outside 0..n_steps; the snapshot is not a Snapshot or does not
                fit the feeder.
        """
        f, mn, alg = self.feeder, self.mn, self.alg
        c = real_vector(cap_step, f.n_cap, "cap_step", max_abs=None)
        if np.any(c < 0) or np.any(c > f.cap.n_steps) or np.any(c != np.round(c)):
            raise InputError(f"expected ({f.n_cap},) integers in 0..n_steps", "cap_step")
        snap = check_snapshot(snapshot, f)
        self.solve(snap)  # writes the snapshot's parameters
        t0 = time.perf_counter()
        alg.set("c_lo", c[mn.cap])
        alg.set("c_hi", c[mn.cap])
        out = self._finish(self._fixed_solve(), t0, snap)
        alg.set("c_lo", np.zeros(mn.cap.size))
        alg.set("c_hi", f.cap.n_steps[mn.cap].astype(float))
        return out


class _NotAffine(Exception):
    """The HiGHS model's data are not affine in the Pyomo parameters (the direct path is off)."""


class _DirectHighs:
    """Pushes a snapshot into the persistent HiGHS model without Pyomo's parameter update.

    The mutable Pyomo parameters enter the MIP only through constants (row bounds, column
    bounds, the objective's offset), affinely: the HiGHS data are ``d(theta) = d0 + J (theta -
    theta0)``. ``J`` is measured once, one parameter at a time (each perturbation pushed through
    Pyomo's own update and read back from HiGHS); the matrix and costs must not move and two
    random parameter vectors must be reproduced exactly, otherwise :class:`_NotAffine`. A solve
    then reads the parameter values (set by the same code as the Pyomo path), computes ``d``,
    writes the changed bounds to HiGHS and runs it, and reads the solution by column.
    """

    def __init__(self, opt, model):
        import pyomo.environ as pyo
        import scipy.sparse as sp

        self.opt, self.hs = opt, opt._solver_model
        self.model = model
        self.params = [q for comp in model.component_objects(pyo.Param, active=True) if comp.mutable
                       for q in comp.values()]
        self.theta0 = self._theta()
        opt.update()
        d0, a0, c0 = self._read()
        cols = []
        for q in self.params:
            v = q.value
            q.set_value(v + 1.0)
            opt.update()
            d, a, c = self._read()
            q.set_value(v)
            if not (np.array_equal(a, a0) and np.array_equal(c, c0)):
                raise _NotAffine(f"parameter {q.name} changes a coefficient")
            cols.append(self._diff(d, d0))
        opt.update()
        self.d0 = d0
        self.J = sp.csc_matrix(np.stack(cols, axis=1)) if cols else sp.csc_matrix((d0.size, 0))
        self.n_row, self.n_col = self.hs.getNumRow(), self.hs.getNumCol()
        # check: two random parameter vectors reproduce Pyomo's own update exactly
        rng = np.random.default_rng(0)
        for _ in range(2):
            saved = [q.value for q in self.params]
            for q, v in zip(self.params, saved):
                q.set_value(v + float(rng.uniform(-0.5, 0.5)))
            opt.update()
            d, _, _ = self._read()
            pred = self._predict(self._theta())
            for q, v in zip(self.params, saved):
                q.set_value(v)
            fin = np.isfinite(d)
            if not (np.array_equal(fin, np.isfinite(pred)) and np.allclose(pred[fin], d[fin], rtol=1e-12,
                                                                             atol=1e-12)):
                raise _NotAffine("the parameters do not enter affinely")
        opt.update()
        vmap = opt._pyomo_var_to_solver_var_map
        self.var_cols = {}
        for v in model.component_objects(pyo.Var, active=True):
            self.var_cols[v.name] = np.array([vmap[id(v[i])] for i in sorted(v.keys())], dtype=np.int64)

    def _theta(self) -> np.ndarray:
        return np.array([float(q.value) for q in self.params])

    def _read(self):
        import highspy

        lp = self.hs.getLp()
        inf = highspy.kHighsInf
        d = np.concatenate([lp.row_lower_, lp.row_upper_, lp.col_lower_, lp.col_upper_, [lp.offset_]])
        d[np.abs(d) >= inf] = np.sign(d[np.abs(d) >= inf]) * np.inf
        return d, np.asarray(lp.a_matrix_.value_, float), np.asarray(lp.col_cost_, float)

    @staticmethod
    def _diff(d, d0):
        fin = np.isfinite(d0)
        if not np.array_equal(fin, np.isfinite(d)):
            raise _NotAffine("a bound turns infinite")
        out = np.zeros_like(d0)
        out[fin] = d[fin] - d0[fin]
        return out

    def _predict(self, theta):
        return self.d0 + self.J @ (theta - self.theta0)

    def solve(self, time_limit_s=None, mip_gap: float = 1e-9):
        """Solve for the model's current parameter values; a :class:`SolveResult` like
        :func:`safedispatch.backends.pyomo_.solve`."""
        import highspy

        t0 = time.perf_counter()
        hs, nr, nc = self.hs, self.n_row, self.n_col
        d = self._predict(self._theta())
        inf = highspy.kHighsInf
        off = ~np.isfinite(d)
        d[off] = np.sign(d[off]) * inf
        hs.changeRowsBounds(nr, np.arange(nr, dtype=np.int32), d[:nr], d[nr:2 * nr])
        hs.changeColsBounds(nc, np.arange(nc, dtype=np.int32), d[2 * nr:2 * nr + nc], d[2 * nr + nc:2 * nr + 2 * nc])
        hs.changeObjectiveOffset(float(d[-1]))
        hs.setOptionValue("output_flag", False)
        hs.setOptionValue("mip_rel_gap", mip_gap)
        hs.setOptionValue("time_limit", float(time_limit_s) if time_limit_s is not None else inf)
        out = captured_output()
        try:
            with out:
                hs.run()
            status = hs.getModelStatus()
            info = hs.getInfo()
        except Exception as exc:  # noqa: BLE001  (HiGHS's own exception must not escape)
            return SolveResult(status=SolveStatus.NUMERICAL_ERROR, solver="HIGHS",
                               solve_time_s=time.perf_counter() - t0,
                               info={"errors": {"HIGHS": f"{type(exc).__name__}: {exc}"}, "path": "direct",
                                     "solver_output": out.text})
        dt = time.perf_counter() - t0
        S = highspy.HighsModelStatus
        if status == S.kOptimal:
            st = SolveStatus.OPTIMAL
        elif status in (S.kInfeasible, S.kUnboundedOrInfeasible):
            st = SolveStatus.INFEASIBLE
        elif status == S.kUnbounded:
            st = SolveStatus.UNBOUNDED
        elif status in (S.kTimeLimit, S.kIterationLimit):
            st = SolveStatus.OPTIMAL_INACCURATE if info.primal_solution_status == 2 else SolveStatus.LIMIT_REACHED
        else:
            st = SolveStatus.NUMERICAL_ERROR
        x = {}
        obj = float("inf")
        if st.has_solution:
            col = np.asarray(hs.getSolution().col_value, float)
            x = {name: col[idx] for name, idx in self.var_cols.items()}
            obj = float(info.objective_function_value)
            if not (np.isfinite(col).all() and np.isfinite(obj)):
                st, x, obj = SolveStatus.NUMERICAL_ERROR, {}, float("inf")
        return SolveResult(status=st, x=x, objective=obj, solver="HIGHS", solve_time_s=dt,
                           info={"termination": str(status), "path": "direct", "solver_output": out.text})


_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def solve_mip(feeder: Feeder, snapshot: Snapshot, **options) -> MIPResult:
    """Snapshot MIP (paper B's centralized baseline; see :class:`SnapshotMIP` for the model
    and options). The model is built once per feeder and options and cached.

    Raises:
        InputError: ``feeder`` is not a Feeder; unknown or bad options; the snapshot is not a
        Snapshot or does not fit the feeder. Not thread-safe (the cache shares the model).
    """
    check_feeder(feeder)
    key = _options_key(options, _MIP_OPTIONS)
    per = _CACHE.setdefault(feeder, {})
    if key not in per:
        per[key] = SnapshotMIP(feeder, **options)
    return per[key].solve(snapshot)


_MIP_OPTIONS = frozenset(("curtailment", "voltage", "v_ref_pu", "switch_weight", "min_grid_forming", "eps_mw",
                          "scr_min", "polygon_sides", "time_limit_s", "direct"))


def _options_key(options: dict, known) -> tuple:
    """A hashable cache key of keyword options; InputError for unknown names or values that are
    not plain (hashable) scalars."""
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise InputError(f"unknown option(s) {unknown}; expected some of {sorted(known)}", "options")
    key = tuple(sorted(options.items()))
    try:
        hash(key)
    except TypeError:
        bad = [k for k, v in options.items() if not _hashable(v)]
        raise InputError(f"expected plain values, got unhashable {[type(options[k]).__name__ for k in bad]}",
                         bad[0] if bad else "options") from None
    return key


def _hashable(v) -> bool:
    try:
        hash(v)
    except TypeError:
        return False
    return True
