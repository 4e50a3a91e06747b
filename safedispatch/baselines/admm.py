"""Distributed snapshot OPF: consensus ADMM over zones.

Each zone solves the snapshot OPF of its own subtree (:func:`~safedispatch.problems.zones.
model_network` and :class:`~safedispatch.problems.opf.OPFProgram` with ``open_boundary=True``:
the same network model and objective as the centralized :func:`~safedispatch.baselines.
solve_opf`, with the zone's boundary values as variables). The zones agree on the values at
every boundary branch, the squared voltage of its upstream bus and the active and reactive
flow it carries, by general-form consensus ADMM (Boyd et al., "Distributed optimization and
statistical learning via the alternating direction method of multipliers", Foundations and
Trends in Machine Learning 3(1), 2011, sections 3 and 7.2)::

    x_k  = argmin f_k(x_k) + rho/2 ||y_k(x_k) - z_k + u_k||^2     (every zone, in parallel)
    z    = mean over the two copies of (y_k + u_k)                (per boundary entry)
    u_k += y_k - z_k

with scaled duals ``u``, primal residual ``r = ||y - z||`` and dual residual
``s = rho ||z - z_prev||`` (over all copies), the stopping rule of Boyd et al. section 3.3.1
and residual balancing (section 3.4.1; He, Yang & Wang, JOTA 106(2), 2000): ``rho`` is
multiplied by ``tau`` when ``r > mu s`` and divided by it when ``s > mu r``, the scaled duals
rescaled accordingly. Because the objective and the constraints separate by zone, the ADMM
fixed point is the centralized optimum.

Zone solves run through a :class:`ZoneExecutor`: a small protocol (start stateful workers from
picklable :class:`ZoneSpec`, call a method on all of them, close) that a thread pool
(:class:`ThreadExecutor`, the default), a serial loop or a distributed engine (Ray actors)
implements without touching the algorithm.
"""

from __future__ import annotations

import os
import time
import weakref
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Protocol, runtime_checkable

import numpy as np

from safedispatch.backends import cvxpy_
from safedispatch.baselines.controller import hold_cap_step
from safedispatch.baselines.mip import _options_key
from safedispatch.baselines.opf import check_options, solve_opf_problem
from safedispatch.errors import InputError, NetworkDataError
from safedispatch.network.feeder import Feeder
from safedispatch.powerflow import run_powerflow
from safedispatch.problems.opf import BoundaryLayout, OPFProgram, OPFWeights, resolve_weights
from safedispatch.problems.types import Action, Snapshot, check_feeder, check_snapshot, net_injection
from safedispatch.problems.zones import model_network

__all__ = ["ADMMResult", "ADMMStatus", "SerialExecutor", "ThreadExecutor", "ZonalADMM", "ZoneExecutor", "ZoneReply",
           "ZoneSpec", "ZoneWorker", "solve_admm", "subtree_zones"]


class ADMMStatus(IntEnum):
    """CONVERGED: both residuals below their tolerances. MAX_ITER: the iteration limit came
    first (the last iterate is returned, flagged). INFEASIBLE: a zone's model has no feasible
    point. SOLVER_FAILED: a zone's solver gave no usable answer."""

    CONVERGED = 0
    MAX_ITER = 1
    INFEASIBLE = 2
    SOLVER_FAILED = 3


# ----------------------------------------------------------------------------------------
# zone workers and executors
@dataclass(frozen=True, eq=False)
class ZoneSpec:
    """Everything needed to build one zone's worker (picklable: a remote executor ships it).

    Attributes:
        feeder: The feeder (with the zones in ``feeder.zones``).
        zone: Index into ``feeder.zones``.
        model: "lindistflow" or "socp".
        weights: OPF objective weights.
        scr_min: Minimum short-circuit ratio (None: off).
        solvers: CVXPY solver chain.
    """

    feeder: Feeder
    zone: int
    model: str
    weights: OPFWeights
    scr_min: float | None = None
    solvers: tuple = cvxpy_.DEFAULT_SOLVERS


@dataclass
class ZoneReply:
    """One zone's answer to :meth:`ZoneWorker.solve`.

    Attributes:
        ok: A usable solution (statuses OPTIMAL or OPTIMAL_INACCURATE).
        status: The backend's status name.
        y: ``(layout.size,)`` boundary values (pu^2 and pu), empty without a solution.
        objective: The zone's OPF objective without the proximal term (cost units).
        pv_p_mw, pv_q_mvar, ess_p_mw: Set-points of the zone's devices (``mn.pv``, ``mn.ess``).
        w_pu: ``(n-1,)`` squared voltages of the zone's buses (model nodes 1..n-1).
        solve_time_s: Solver wall time (s).
    """

    ok: bool
    status: str
    y: np.ndarray
    objective: float
    pv_p_mw: np.ndarray
    pv_q_mvar: np.ndarray
    ess_p_mw: np.ndarray
    w_pu: np.ndarray
    solve_time_s: float


class ZoneWorker:
    """One zone's OPF with an open boundary and a proximal term, built once (DPP), solved per
    ADMM iteration. Stateful: one worker per zone, driven by one thread at a time.

    Args:
        spec: The zone.
    """

    def __init__(self, spec: ZoneSpec):
        self.spec = spec
        self.mn = model_network(spec.feeder, spec.zone)
        self.alg = cvxpy_.CvxpyAlgebra()
        self.prog = OPFProgram(self.alg, spec.feeder, self.mn, spec.model, spec.weights, spec.scr_min,
                               open_boundary=True)
        self.layout: BoundaryLayout = self.prog.boundary

    def set_snapshot(self, snapshot: Snapshot, cap_step) -> None:
        """Write the snapshot's parameters (``snapshot`` validated for the feeder)."""
        self.prog.set_snapshot(self.spec.feeder, snapshot, cap_step)

    def solve(self, scale, target) -> ZoneReply:
        """Solve with the proximal term ``0.5 ||scale * y - target||^2``.

        Args:
            scale, target: ``(layout.size,)`` arrays.
        """
        scale, target = np.asarray(scale, float), np.asarray(target, float)
        if self.layout.size:
            self.prog.set_proximal(scale, target)
        r = solve_opf_problem(self.prog.problem, self.spec.solvers)
        mn = self.mn
        if not r.status.has_solution:
            e = np.zeros(0)
            return ZoneReply(ok=False, status=r.status.name, y=e, objective=float("inf"), pv_p_mw=e, pv_q_mvar=e,
                             ess_p_mw=e, w_pu=e, solve_time_s=r.solve_time_s)
        y = self.layout.values(r.x)
        prox = 0.5 * float(np.sum((scale * y - target) ** 2)) if y.size else 0.0
        return ZoneReply(ok=True, status=r.status.name, y=y, objective=r.objective - prox,
                         pv_p_mw=r.x["pv_p"] if mn.pv.size else np.zeros(0),
                         pv_q_mvar=r.x["pv_q"] if mn.pv.size else np.zeros(0),
                         ess_p_mw=r.x["ess_p"] if mn.ess.size else np.zeros(0), w_pu=r.x["w"],
                         solve_time_s=r.solve_time_s)


@runtime_checkable
class ZoneExecutor(Protocol):
    """Runs one stateful :class:`ZoneWorker` per zone, wherever it likes.

    A Ray implementation would start one actor per spec in :meth:`start` and, in
    :meth:`call`, ``ray.get([a.<method>.remote(*args) ...])``; the algorithm only sees this
    protocol.
    """

    def start(self, specs: Sequence[ZoneSpec]) -> None:
        """Build one worker per spec (in order)."""

    def call(self, method: str, args: Sequence[tuple]) -> list:
        """``[workers[i].<method>(*args[i]) for i]``, run concurrently; results in order."""

    def close(self) -> None:
        """Release the workers."""


class SerialExecutor:
    """All zones in the calling thread, one after another (the reference executor)."""

    def __init__(self):
        self.workers: list[ZoneWorker] = []

    def start(self, specs: Sequence[ZoneSpec]) -> None:
        self.workers = [ZoneWorker(s) for s in specs]

    def call(self, method: str, args: Sequence[tuple]) -> list:
        return [getattr(w, method)(*a) for w, a in zip(self.workers, args)]

    def close(self) -> None:
        self.workers = []


class ThreadExecutor(SerialExecutor):
    """Zones on a :class:`concurrent.futures.ThreadPoolExecutor` (the solvers release the GIL
    for their numerical work; model updates are Python and interleave).

    Args:
        max_workers: Threads (default: the number of CPUs, at most the number of zones).
    """

    def __init__(self, max_workers: int | None = None):
        super().__init__()
        if max_workers is not None and not (isinstance(max_workers, int) and max_workers >= 1):
            raise InputError(f"expected an integer >= 1 or None, got {max_workers!r}", "max_workers")
        self.max_workers = max_workers
        self._pool: ThreadPoolExecutor | None = None

    def start(self, specs: Sequence[ZoneSpec]) -> None:
        n = self.max_workers or max(1, min(len(specs), os.cpu_count() or 1))
        self._pool = ThreadPoolExecutor(max_workers=n, thread_name_prefix="admm-zone")
        self.workers = list(self._pool.map(ZoneWorker, specs))

    def call(self, method: str, args: Sequence[tuple]) -> list:
        if self._pool is None or self._pool._max_workers == 1:
            return super().call(method, args)
        return list(self._pool.map(lambda wa: getattr(wa[0], method)(*wa[1]), zip(self.workers, args)))

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        super().close()


# ----------------------------------------------------------------------------------------
@dataclass
class ADMMResult:
    """Result of :func:`solve_admm`.

    Attributes:
        action: Set-points assembled from the zones (None without a solution).
        status: :class:`ADMMStatus`.
        objective: Sum of the zones' OPF objectives at the last iterate (cost units; ``inf``
            without a solution), comparable with the centralized ``solve_opf(...).objective``.
        iterations: ADMM iterations run.
        solve_time_s: Wall time of the iterations (s), zone solves included.
        zone_time_s: Sum of the zones' solver times (s): the work a perfectly parallel
            executor would spread over the zones.
        primal_residual, dual_residual: ``(iterations,)`` histories ``||y - z||`` and
            ``rho ||z - z_prev||`` (pu).
        rho: ``(iterations,)`` penalty used at each iteration.
        boundary: ``(n_entries,)`` consensus values ``z`` (pu^2, pu), ordered as ``keys``.
        keys: ``(n_entries,)`` entry ids ``3 * branch + kind`` (0 voltage, 1 P, 2 Q).
        model_vm_pu: ``(n_bus,)`` voltages of the model (sqrt of the zones' squared voltages).
        vm_pu: ``(n_bus,)`` AC voltages at the set-points (None without an action).
        losses_mw: AC losses at the set-points (``inf`` without an action).
        info: Zone statuses and options.
    """

    action: Action | None
    status: ADMMStatus
    objective: float
    iterations: int
    solve_time_s: float
    zone_time_s: float
    primal_residual: np.ndarray
    dual_residual: np.ndarray
    rho: np.ndarray
    boundary: np.ndarray
    keys: np.ndarray
    model_vm_pu: np.ndarray | None = None
    vm_pu: np.ndarray | None = None
    losses_mw: float = float("inf")
    info: dict = field(default_factory=dict)


class ZonalADMM:
    """Consensus ADMM over a feeder's zones (see module docstring); zone models built once,
    each snapshot updates parameters only.

    Args:
        feeder: The network.
        zones: Partition of the buses into connected subtrees (default ``feeder.zones``).
        model: "lindistflow" (Baran & Wu 1989) or "socp" (Farivar & Low 2013).
        objective: "losses", "paperB", :class:`~safedispatch.problems.opf.OPFWeights` or a
            dict of its fields, as :func:`~safedispatch.baselines.solve_opf`.
        scr_min: Minimum short-circuit ratio at weak buses (None = off).
        rho: Initial penalty (cost units per pu^2).
        adaptive: Residual balancing on ``rho``.
        mu, tau: Residual balancing ratio and factor (Boyd et al. 2011, eq. 3.13).
        eps_abs, eps_rel: Stopping tolerances (Boyd et al. 2011, eq. 3.12).
        max_iter: Iteration limit.
        warm_start: Start each snapshot from the previous snapshot's ``z``, ``u`` and ``rho``.
        executor: A :class:`ZoneExecutor` (default :class:`ThreadExecutor`); started here.

    A feeder with nothing to control (no inverter, no storage) is solved like any other: the
    zone models then only check the snapshot.

    Raises:
        InputError: ``feeder`` is not a Feeder; bad model, objective or options.
        NetworkDataError: ``zones`` is not a partition of the buses into connected subtrees.
    """

    def __init__(self, feeder: Feeder, zones=None, model: str = "lindistflow", objective="losses",
                 scr_min: float | None = None, rho: float = 1.0, adaptive: bool = True, mu: float = 10.0,
                 tau: float = 2.0, eps_abs: float = 1e-6, eps_rel: float = 1e-5, max_iter: int = 500,
                 warm_start: bool = True, relaxation: float = 1.0, voltage_weight: float = 100.0,
                 executor: ZoneExecutor | None = None):
        check_feeder(feeder)
        model, scr_min, _ = check_options(model, scr_min)
        for name, v, lo, hi in (("rho", rho, 0.0, 1e12), ("mu", mu, 1.0, 1e12), ("tau", tau, 1.0, 1e6),
                                ("eps_abs", eps_abs, 0.0, 1.0), ("eps_rel", eps_rel, 0.0, 1.0),
                                ("relaxation", relaxation, 0.0, 2.0), ("voltage_weight", voltage_weight, 0.0, 1e12)):
            if not (isinstance(v, (int, float, np.floating, np.integer)) and not isinstance(v, (bool, np.bool_))
                    and np.isfinite(v) and lo < v <= hi):
                raise InputError(f"expected a finite number in ({lo:g}, {hi:g}], got {v!r}", name)
        if isinstance(max_iter, (bool, np.bool_)) or not (isinstance(max_iter, (int, np.integer)) and max_iter >= 1):
            raise InputError(f"expected an integer >= 1, got {max_iter!r}", "max_iter")
        for name, v in (("adaptive", adaptive), ("warm_start", warm_start)):
            if not isinstance(v, (bool, np.bool_)):
                raise InputError(f"expected True or False, got {v!r}", name)
        if executor is not None and not isinstance(executor, ZoneExecutor):
            raise InputError(f"expected a ZoneExecutor, got {type(executor).__name__}", "executor")
        if zones is not None:
            feeder = feeder.replace(zones=_zone_arrays(zones))
        if any(len(z) == 1 and z[0] == feeder.root_bus for z in feeder.zones):
            raise NetworkDataError("the root bus alone is not a zone (it has no branch to model): join it to a "
                                   "neighbouring subtree", "zones")
        self.feeder, self.model = feeder, model
        self.weights = resolve_weights(objective)
        self.rho0, self.adaptive, self.mu, self.tau = float(rho), bool(adaptive), float(mu), float(tau)
        self.eps_abs, self.eps_rel, self.max_iter, self.warm_start = float(eps_abs), float(eps_rel), int(max_iter), \
            bool(warm_start)
        K = len(feeder.zones)
        self.mns = [model_network(feeder, k) for k in range(K)]
        self.layouts = [BoundaryLayout.of(feeder, mn) for mn in self.mns]
        self.keys = np.unique(np.concatenate([lay.keys for lay in self.layouts]))
        self.index = [np.searchsorted(self.keys, lay.keys) for lay in self.layouts]
        count = np.zeros(self.keys.size)
        for idx in self.index:
            np.add.at(count, idx, 1.0)
        self.count = np.maximum(count, 1.0)
        self.relaxation = float(relaxation)
        self.scale = [np.where(self.keys[i] % 3 == 0, np.sqrt(voltage_weight), 1.0) for i in self.index]
        self.executor = ThreadExecutor() if executor is None else executor
        self.executor.start([ZoneSpec(feeder, k, model, self.weights, scr_min) for k in range(K)])
        self._state = None
        weakref.finalize(self, self.executor.close)

    def close(self) -> None:
        """Release the executor's workers."""
        self.executor.close()

    def _initial_boundary(self, snap: Snapshot) -> np.ndarray:
        """Flat start: squared root voltage and the lossless flow of each subtree's load (pu)."""
        f = self.feeder
        rs = f.radial
        lp = np.asarray(snap.load_p_mw, float) / f.sn_mva
        lq = np.asarray(snap.load_q_mvar, float) / f.sn_mva
        z = np.empty(self.keys.size)
        branch, kind = self.keys // 3, self.keys % 3
        child = rs.branch_child[branch]
        sub = rs.subtree[child]
        z[kind == 0] = snap.v_root_pu**2
        z[kind == 1] = (sub @ lp)[kind == 1]
        z[kind == 2] = (sub @ lq)[kind == 2]
        return z

    def solve(self, snapshot: Snapshot) -> ADMMResult:
        """Run ADMM on one snapshot (capacitors held at their previous steps, as the
        centralized OPF).

        Returns:
            :class:`ADMMResult`; non-convergence and zone failures are statuses.

        Raises:
            InputError: the snapshot is not a Snapshot or does not fit the feeder.
        """
        f = self.feeder
        snap = check_snapshot(snapshot, f)
        cap = hold_cap_step(f, snap)
        ex, K = self.executor, len(self.mns)
        t0 = time.perf_counter()
        ex.call("set_snapshot", [(snap, cap)] * K)
        if self.warm_start and self._state is not None:
            z, u, rho = self._state
            u = [ui.copy() for ui in u]
        else:
            z, u, rho = self._initial_boundary(snap), [np.zeros(i.size) for i in self.index], self.rho0
        hist_r, hist_s, hist_rho = [], [], []
        status, zone_time, replies = ADMMStatus.MAX_ITER, 0.0, None
        n_copies = sum(i.size for i in self.index)
        it = 0
        for it in range(1, self.max_iter + 1):  # noqa: B007  (the count is reported)
            sr = np.sqrt(rho)
            args = [(sr * sc, sr * sc * (z[i] - ui)) for i, ui, sc in zip(self.index, u, self.scale)]
            replies = ex.call("solve", args)
            zone_time += sum(r.solve_time_s for r in replies)
            bad = [k for k, r in enumerate(replies) if not r.ok]
            if bad:
                infeasible = any(replies[k].status == "INFEASIBLE" for k in bad)
                status = ADMMStatus.INFEASIBLE if infeasible else ADMMStatus.SOLVER_FAILED
                break
            z_old = z
            acc = np.zeros(self.keys.size)
            a = self.relaxation
            yh = [a * r.y + (1.0 - a) * z_old[i] for i, r in zip(self.index, replies)]
            for i, y, ui in zip(self.index, yh, u):
                np.add.at(acc, i, y + ui)
            z = acc / self.count
            r2 = s2 = ny2 = nz2 = nu2 = 0.0
            for k, (i, r) in enumerate(zip(self.index, replies)):
                u[k] = u[k] + yh[k] - z[i]
                d = r.y - z[i]
                r2 += float(d @ d)
                dz = z[i] - z_old[i]
                s2 += float(dz @ dz)
                ny2 += float(r.y @ r.y)
                nz2 += float(z[i] @ z[i])
                nu2 += float(u[k] @ u[k])
            r_norm, s_norm = np.sqrt(r2), rho * np.sqrt(s2)
            hist_r.append(r_norm)
            hist_s.append(s_norm)
            hist_rho.append(rho)
            eps_pri = np.sqrt(n_copies) * self.eps_abs + self.eps_rel * np.sqrt(max(ny2, nz2))
            eps_dual = np.sqrt(n_copies) * self.eps_abs + self.eps_rel * rho * np.sqrt(nu2)
            if r_norm <= eps_pri and s_norm <= eps_dual:
                status = ADMMStatus.CONVERGED
                break
            if self.adaptive:
                if r_norm > self.mu * s_norm:
                    rho *= self.tau
                    u = [ui / self.tau for ui in u]
                elif s_norm > self.mu * r_norm:
                    rho /= self.tau
                    u = [ui * self.tau for ui in u]
        wall = time.perf_counter() - t0
        info = {"zone_status": [r.status for r in replies] if replies else [], "n_zones": K,
                "n_boundary_entries": int(self.keys.size)}
        hist = dict(primal_residual=np.array(hist_r), dual_residual=np.array(hist_s), rho=np.array(hist_rho))
        if status in (ADMMStatus.INFEASIBLE, ADMMStatus.SOLVER_FAILED):
            self._state = None
            return ADMMResult(action=None, status=status, objective=float("inf"), iterations=it, solve_time_s=wall,
                              zone_time_s=zone_time, boundary=z, keys=self.keys.copy(), info=info, **hist)
        self._state = (z, u, rho)
        act, model_vm = self._assemble(snap, cap, replies)
        pi, qi, sh = net_injection(f, snap, act)
        pf = run_powerflow(f, pi, qi, v_root_pu=snap.v_root_pu, shunt_q_mvar=sh)
        return ADMMResult(action=act, status=status, objective=float(sum(r.objective for r in replies)),
                          iterations=it, solve_time_s=wall, zone_time_s=zone_time, boundary=z, keys=self.keys.copy(),
                          model_vm_pu=model_vm, vm_pu=np.asarray(pf.vm_pu, float),
                          losses_mw=float(pf.p_loss_mw) if pf.converged else float("inf"), info=info, **hist)

    def _assemble(self, snap: Snapshot, cap, replies) -> tuple[Action, np.ndarray]:
        f = self.feeder
        p, q, e = np.zeros(f.n_pv), np.zeros(f.n_pv), np.zeros(f.n_ess)
        vm = np.full(f.n_bus, float(snap.v_root_pu))
        for mn, r in zip(self.mns, replies):
            s = f.pv.s_mva[mn.pv]
            # solver tolerance can leave a point 1e-9 outside a disk: scale it back in
            scale = np.minimum(1.0, s / np.maximum(np.hypot(r.pv_p_mw, r.pv_q_mvar), 1e-300))
            p[mn.pv], q[mn.pv] = np.maximum(r.pv_p_mw * scale, 0.0), r.pv_q_mvar * scale
            e[mn.ess] = r.ess_p_mw
            vm[mn.tree.bus[1:]] = np.sqrt(np.maximum(r.w_pu, 0.0))
        return Action(pv_p_mw=p, pv_q_mvar=q, cap_step=np.asarray(cap, dtype=np.int64), ess_p_mw=e), vm


def _zone_arrays(zones) -> tuple[np.ndarray, ...]:
    """``zones`` as a tuple of int64 bus-index arrays; InputError when it is not a sequence of
    integer sequences (their validity as a partition is the feeder's check)."""
    if isinstance(zones, (str, bytes, dict)) or not hasattr(zones, "__iter__"):
        raise InputError(f"expected a sequence of bus-index arrays, got {type(zones).__name__}", "zones")
    out = []
    for k, z in enumerate(zones):
        try:
            a = np.asarray(z)
            if a.dtype == bool or not (np.issubdtype(a.dtype, np.integer) or (
                    np.issubdtype(a.dtype, np.floating) and np.isfinite(a).all() and np.all(a == np.round(a)))):
                raise TypeError(f"dtype {a.dtype}")
            out.append(np.atleast_1d(a).astype(np.int64).ravel())
        except Exception as exc:  # noqa: BLE001  (any conversion failure is bad input)
            raise InputError(f"expected integer bus indices in zone {k}: {exc}", "zones") from None
    return tuple(out)


def subtree_zones(feeder: Feeder, target_buses: int) -> tuple[np.ndarray, ...]:
    """Split a feeder into connected subtrees of about ``target_buses`` buses.

    Bottom-up: a bus whose not-yet-assigned subtree reaches ``target_buses`` heads a zone;
    the root's remainder is the last zone (joined to the root's children if it is the root
    alone).

    Args:
        feeder: The network.
        target_buses: Wanted zone size (>= 2).

    Returns:
        Tuple of sorted bus-index arrays, usable as ``zones=`` or in ``feeder.replace``.

    Raises:
        InputError: ``feeder`` is not a Feeder or ``target_buses`` is not an integer >= 2.
    """
    check_feeder(feeder)
    if isinstance(target_buses, (bool, np.bool_)) or not (isinstance(target_buses, (int, np.integer))
                                                          and target_buses >= 2):
        raise InputError(f"expected an integer >= 2, got {target_buses!r}", "target_buses")
    rs = feeder.radial
    size = np.ones(feeder.n_bus, dtype=np.int64)
    head = np.zeros(feeder.n_bus, dtype=bool)
    head[rs.root] = True
    for b in rs.order[::-1]:
        if b == rs.root:
            continue
        if size[b] >= target_buses:
            head[b] = True
        else:
            size[rs.parent[b]] += size[b]
    if size[rs.root] == 1:  # the root alone: it takes its first child's zone
        kids = np.flatnonzero(rs.parent == rs.root)
        if kids.size:
            head[kids[0]] = False
    owner = np.empty(feeder.n_bus, dtype=np.int64)
    for b in rs.order:
        owner[b] = b if head[b] else owner[rs.parent[b]]
    return tuple(np.flatnonzero(owner == h) for h in rs.order if head[h])


_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_ADMM_OPTIONS = frozenset(("scr_min", "rho", "adaptive", "mu", "tau", "eps_abs", "eps_rel", "max_iter", "warm_start",
                           "relaxation", "voltage_weight"))


def solve_admm(feeder: Feeder, snapshot: Snapshot, zones=None, model: str = "lindistflow", objective="losses",
               executor: ZoneExecutor | None = None, **options) -> ADMMResult:
    """Distributed snapshot OPF by consensus ADMM over zones (see :class:`ZonalADMM`).

    Boyd, Parikh, Chu, Peleato & Eckstein, Foundations and Trends in Machine Learning 3(1),
    2011. Without an ``executor`` the zone models are built once per feeder, zones, model,
    objective and options and cached (a thread pool per cached instance).

    Args:
        feeder: The network.
        snapshot: The snapshot.
        zones: Bus-index arrays partitioning the feeder into subtrees (default ``feeder.zones``;
            :func:`subtree_zones` makes some).
        model: "lindistflow" or "socp".
        objective: As :func:`~safedispatch.baselines.solve_opf`.
        executor: A :class:`ZoneExecutor` (then nothing is cached).
        **options: Options of :class:`ZonalADMM` (``rho``, ``max_iter``, ``eps_abs``, ...).

    Returns:
        :class:`ADMMResult` with iterations, time and residual histories.

    Raises:
        InputError: ``feeder`` is not a Feeder; bad or unknown options; the snapshot is not a
        Snapshot or does not fit the feeder. NetworkDataError: bad zones. Not thread-safe.
    """
    check_feeder(feeder)
    if executor is not None:
        return ZonalADMM(feeder, zones, model, objective, executor=executor, **options).solve(snapshot)
    model, _, _ = check_options(model, None)
    weights = resolve_weights(objective)
    zkey = None if zones is None else tuple(tuple(int(b) for b in z) for z in _zone_arrays(zones))
    key = (zkey, model, OPFProgram.key(weights), _options_key(options, _ADMM_OPTIONS))
    per = _CACHE.setdefault(feeder, {})
    if key not in per:
        per[key] = ZonalADMM(feeder, zones, model, weights, **options)
    return per[key].solve(snapshot)
