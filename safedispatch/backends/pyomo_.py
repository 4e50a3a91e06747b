"""Pyomo backend: the same modelling algebra as :mod:`~safedispatch.backends.cvxpy_`, on Pyomo,
solved with HiGHS (LP, convex QP, MILP).

HiGHS has no cones, so a two-dimensional cone ``||(a, b)|| <= t`` (inverter disks, branch
apparent-power limits) becomes an **inner** regular polygon with ``polygon_sides`` sides:
every point it admits is inside the disk (no inverter can exceed its rating), at the price of
``1 - cos(pi / sides)`` of the radius in the directions between vertices (0.48 % for 32
sides). The rotated cone of the SOCP model has no linear counterpart here: asking for it
raises :class:`~safedispatch.errors.BackendUnavailableError`.

HiGHS runs silent (``tee=False``) inside :func:`~safedispatch.backends.result.captured_output`:
whatever it or Pyomo prints anyway is in ``SolveResult.info["solver_output"]``, not on the
user's terminal.
"""

from __future__ import annotations

import time

import numpy as np

from safedispatch.backends.result import SolveResult, SolveStatus, captured_output
from safedispatch.errors import BackendUnavailableError

__all__ = ["PVec", "PyomoAlgebra", "solve"]


class PVec:
    """A vector of Pyomo expressions with the arithmetic the formulation templates use."""

    def __init__(self, items):
        self.items = list(items)

    @property
    def shape(self):
        return (len(self.items),)

    def __len__(self):
        return len(self.items)

    def __getitem__(self, idx):
        if isinstance(idx, (int, np.integer)):
            return self.items[int(idx)]
        return PVec(self.items[int(i)] for i in np.arange(len(self.items))[idx])

    @staticmethod
    def _other(o, n):
        if isinstance(o, PVec):
            return o.items
        a = np.asarray(o) if not hasattr(o, "is_expression_type") else None
        if a is None or a.ndim == 0:
            return [o if a is None else float(a)] * n
        return [float(v) for v in a]

    def __add__(self, o):
        return PVec(x + y for x, y in zip(self.items, self._other(o, len(self))))

    __radd__ = __add__

    def __sub__(self, o):
        return PVec(x - y for x, y in zip(self.items, self._other(o, len(self))))

    def __rsub__(self, o):
        return PVec(y - x for x, y in zip(self.items, self._other(o, len(self))))

    def __neg__(self):
        return PVec(-x for x in self.items)

    def __mul__(self, o):
        return PVec(x * y for x, y in zip(self.items, self._other(o, len(self))))

    __rmul__ = __mul__


class PyomoAlgebra:
    """Modelling algebra on a Pyomo ``ConcreteModel`` (linear cones: inner polygons).

    Args:
        polygon_sides: Sides of the inner polygon that replaces each 2-D cone.
    """

    exact_cones = False

    def __init__(self, polygon_sides: int = 32):
        import pyomo.environ as pyo

        self.pyo = pyo
        self.model = pyo.ConcreteModel()
        self.polygon_sides = int(polygon_sides)
        self.vars: dict = {}
        self.params: dict = {}
        self._shapes: dict = {}

    def _add(self, name, comp):
        self.model.add_component(name, comp)
        return comp

    def var(self, name: str, n: int, lb=None, ub=None, integer: bool = False):
        pyo = self.pyo
        dom = pyo.Integers if integer else pyo.Reals
        v = self._add(name, pyo.Var(range(n), domain=dom, bounds=(lb, ub)))
        self.vars[name] = v
        return PVec(v[i] for i in range(n))

    def param(self, name: str, value, nonneg: bool = False):
        pyo = self.pyo
        value = np.asarray(value, dtype=float)
        self._shapes[name] = value.shape
        if value.ndim == 0:
            p = self._add(f"par_{name}", pyo.Param(initialize=float(value), mutable=True))
            self.params[name] = p
            return p
        idx = list(np.ndindex(*value.shape))
        init = {i if len(i) > 1 else i[0]: float(value[i]) for i in idx}
        p = self._add(f"par_{name}", pyo.Param(list(init), initialize=init, mutable=True))
        self.params[name] = p
        if value.ndim == 1:
            return PVec(p[i] for i in range(value.shape[0]))
        return _PMat(p, value.shape)

    def set(self, name: str, value) -> None:
        p = self.params[name]
        shape = self._shapes[name]
        value = np.asarray(value, dtype=float).reshape(shape)
        if value.ndim == 0:
            p.set_value(float(value))
            return
        for i in np.ndindex(*shape):
            p[i if len(i) > 1 else i[0]].set_value(float(value[i]))

    def _constraint_list(self, name, exprs):
        pyo = self.pyo
        con = self._add(f"con_{name}", pyo.ConstraintList())  # one namespace in Pyomo: prefix
        for e in exprs:
            if isinstance(e, (bool, np.bool_)):
                if not e:
                    raise BackendUnavailableError(f"constraint {name} is trivially infeasible", name)
                continue
            con.add(e)

    @staticmethod
    def matvec(M, x):
        M = M.tocsr() if hasattr(M, "tocsr") else M
        if hasattr(M, "indptr"):
            out = []
            for r in range(M.shape[0]):
                lo, hi = M.indptr[r], M.indptr[r + 1]
                out.append(sum(float(M.data[k]) * x.items[M.indices[k]] for k in range(lo, hi)) if hi > lo else 0.0)
            return PVec(out)
        M = np.asarray(M)
        return PVec(sum(float(M[r, c]) * x.items[c] for c in np.flatnonzero(M[r])) if M[r].any() else 0.0
                    for r in range(M.shape[0]))

    @staticmethod
    def matvec_param(M, x):
        return M.matvec(x)

    @staticmethod
    def mul(c, x):
        if isinstance(x, PVec):
            return x * c
        return PVec(float(ci) * x for ci in np.asarray(c, float))  # vector of constants times a scalar

    @staticmethod
    def total(x):
        return sum(x.items) if isinstance(x, PVec) else x

    def eq(self, name, lhs, rhs) -> None:
        n = len(lhs) if isinstance(lhs, PVec) else len(rhs)
        lhs_i = PVec._other(lhs, n)
        rhs_i = PVec._other(rhs, n)
        self._constraint_list(name, (a == b for a, b in zip(lhs_i, rhs_i)))

    def le(self, name, lhs, rhs) -> None:
        n = len(lhs) if isinstance(lhs, PVec) else len(rhs) if isinstance(rhs, PVec) else 1
        lhs_i = PVec._other(lhs, n)
        rhs_i = PVec._other(rhs, n)
        self._constraint_list(name, (a <= b for a, b in zip(lhs_i, rhs_i)))

    def soc(self, name, t, *xs) -> None:
        """Inner polygon of ``||(xs[0][k], xs[1][k])|| <= t[k]`` (2-D cones only)."""
        if len(xs) != 2:
            raise BackendUnavailableError(f"{name}: only 2-D cones have a polygon form", name)
        K = self.polygon_sides
        n = len(xs[0])
        ts = PVec._other(t, n)
        cos_half = np.cos(np.pi / K)
        exprs = []
        for k in range(K):
            c, s = np.cos(2 * np.pi * k / K), np.sin(2 * np.pi * k / K)
            for a, b, tt in zip(xs[0].items, xs[1].items, ts):
                exprs.append(c * a + s * b <= cos_half * tt)
        self._constraint_list(name, exprs)

    def rotated_cone(self, name, *args) -> None:
        raise BackendUnavailableError("the SOCP branch flow model needs a conic backend (CVXPY); Pyomo/HiGHS "
                                      "here is linear", name)

    @staticmethod
    def sum_squares(x):
        return sum(v * v for v in x.items)

    def problem(self, objective):
        pyo = self.pyo
        if hasattr(self.model, "objective"):
            self.model.del_component("objective")
        self.model.objective = pyo.Objective(expr=objective, sense=pyo.minimize)
        return self.model


class _PMat:
    """A mutable 2-D Param as a matrix acting on a PVec."""

    def __init__(self, p, shape):
        self.p, self.shape = p, shape

    def matvec(self, x):
        m, k = self.shape
        return PVec(sum(self.p[r, c] * x.items[c] for c in range(k)) for r in range(m))


def persistent_highs():
    """A persistent HiGHS interface (Pyomo's ``contrib.solver`` Highs): pass it to :func:`solve`
    on every call for the same model, and each re-solve only pushes the changed mutable
    parameters to HiGHS instead of rebuilding the whole model from Pyomo expressions."""
    from pyomo.contrib.solver.solvers.highs import Highs

    return Highs()


def solve(model, time_limit_s: float | None = None, mip_gap: float = 1e-9, solver=None) -> SolveResult:
    """Solve a Pyomo model with HiGHS; never raises for solver outcomes.

    Args:
        model: The Pyomo model.
        time_limit_s: HiGHS time limit (None: none).
        mip_gap: Relative MIP gap.
        solver: A :func:`persistent_highs` instance kept by the caller for this model (None: a
            fresh one, which rebuilds the HiGHS model from the Pyomo expressions).

    Returns:
        SolveResult with variable values by component name (what HiGHS printed in
        ``info["solver_output"]``).
    """
    import pyomo.environ as pyo
    from pyomo.contrib.solver.common.results import SolutionStatus, TerminationCondition

    opt = persistent_highs() if solver is None else solver
    t0 = time.perf_counter()
    kw = {"load_solutions": False, "raise_exception_on_nonoptimal_result": False, "tee": False,
          "solver_options": {"mip_rel_gap": mip_gap, "output_flag": False}}
    if time_limit_s is not None:
        kw["time_limit"] = time_limit_s
    out = captured_output()
    try:
        with out:
            res = opt.solve(model, **kw)
    except Exception as exc:  # noqa: BLE001  (the solver's own exception must not escape)
        return SolveResult(status=SolveStatus.NUMERICAL_ERROR, solver="HIGHS", solve_time_s=time.perf_counter() - t0,
                           info={"errors": {"HIGHS": f"{type(exc).__name__}: {exc}"}, "solver_output": out.text})
    dt = time.perf_counter() - t0
    tc = res.termination_condition
    if tc == TerminationCondition.convergenceCriteriaSatisfied:
        status = SolveStatus.OPTIMAL
    elif tc in (TerminationCondition.provenInfeasible, TerminationCondition.locallyInfeasible,
                TerminationCondition.infeasibleOrUnbounded):
        status = SolveStatus.INFEASIBLE
    elif tc == TerminationCondition.unbounded:
        status = SolveStatus.UNBOUNDED
    elif tc in (TerminationCondition.maxTimeLimit, TerminationCondition.iterationLimit):
        status = SolveStatus.LIMIT_REACHED
    else:
        status = SolveStatus.NUMERICAL_ERROR
    x = {}
    if status == SolveStatus.LIMIT_REACHED and res.solution_status == SolutionStatus.feasible:
        status = SolveStatus.OPTIMAL_INACCURATE  # a feasible incumbent, not proven optimal
    if status.has_solution:
        try:
            res.solution_loader.load_vars()
            for v in model.component_objects(pyo.Var, active=True):
                x[v.name] = np.array([pyo.value(v[i]) for i in sorted(v.keys())], dtype=float)
        except Exception as exc:  # noqa: BLE001  (a solution Pyomo cannot load is no solution)
            return SolveResult(status=SolveStatus.NUMERICAL_ERROR, solver="HIGHS", solve_time_s=dt,
                               info={"termination": str(tc), "errors": {"HIGHS": f"{type(exc).__name__}: {exc}"},
                                     "solver_output": out.text})
        if not all(np.isfinite(a).all() for a in x.values()):
            status, x = SolveStatus.NUMERICAL_ERROR, {}
    obj = float(res.incumbent_objective) if status.has_solution and res.incumbent_objective is not None \
        else float("inf")
    return SolveResult(status=status, x=x, objective=obj, solver="HIGHS", solve_time_s=dt,
                       info={"termination": str(tc), "solver_output": out.text})
