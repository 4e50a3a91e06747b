"""CVXPY backend: the modelling algebra the formulations are written against, and a solve
call with an explicit solver fallback chain that never lets a solver's exception escape and
never lets a solver print: solvers run with ``verbose=False`` inside
:func:`~safedispatch.backends.result.captured_output`, and whatever they print anyway (SCS's
"ERROR: could not determine problem status", compiled solvers' messages on failures) is in
``SolveResult.info["solver_output"]``."""

from __future__ import annotations

import time
import warnings
import weakref

import cvxpy as cp
import numpy as np

from safedispatch.backends.result import SolveResult, SolveStatus, captured_output
from safedispatch.errors import InputError

__all__ = ["CvxpyAlgebra", "DEFAULT_SOLVERS", "DEFAULT_OPTIONS", "RETRY_OPTIONS", "check_solvers", "solve"]

#: explicit default: Clarabel (interior point, exact cones), then ECOS, then SCS
DEFAULT_SOLVERS = ("CLARABEL", "ECOS", "SCS")

#: tighter than the solvers' defaults: a projection's distance is tiny next to its objective
#: scale, and with default gap tolerances a variable sitting at a bound can be off by 1e-4
DEFAULT_OPTIONS = {
    "CLARABEL": dict(tol_gap_abs=1e-10, tol_gap_rel=1e-10, tol_feas=1e-10, tol_ktratio=1e-8),
    "ECOS": dict(abstol=1e-10, reltol=1e-10, feastol=1e-10),
    "SCS": dict(eps_abs=1e-9, eps_rel=1e-9),
}

#: ``retry=`` options for :func:`solve`: when an interior-point solver stops OPTIMAL_INACCURATE at
#: the tight tolerances (Clarabel does on the safety layer's soft problems, e.g. the nearest point
#: under a violation cap 1e-6 above the least violation), it is re-run at these, in order, before
#: the chain moves on to a first-order solver. SCS there needs its 100 000 iterations (3-5 s) and
#: its answer is further from the optimum (4e-5 relative, measured) than Clarabel's at 1e-8.
RETRY_OPTIONS = {
    "CLARABEL": (dict(tol_gap_abs=1e-9, tol_gap_rel=1e-9, tol_feas=1e-9),
                 dict(tol_gap_abs=1e-8, tol_gap_rel=1e-8, tol_feas=1e-8)),
}

#: first-order solvers: tried only after the retries above
FIRST_ORDER = frozenset({"SCS", "OSQP"})

_STATUS = {
    cp.OPTIMAL: SolveStatus.OPTIMAL,
    cp.OPTIMAL_INACCURATE: SolveStatus.OPTIMAL_INACCURATE,
    cp.INFEASIBLE: SolveStatus.INFEASIBLE,
    cp.INFEASIBLE_INACCURATE: SolveStatus.INFEASIBLE,
    cp.UNBOUNDED: SolveStatus.UNBOUNDED,
    cp.UNBOUNDED_INACCURATE: SolveStatus.UNBOUNDED,
    cp.USER_LIMIT: SolveStatus.LIMIT_REACHED,
}


def check_solvers(solvers) -> tuple:
    """A solver chain as a non-empty tuple of CVXPY solver names (e.g. ``("CLARABEL", "ECOS")``).

    Raises:
        InputError: not a non-empty sequence of strings (field ``solvers``).
    """
    if isinstance(solvers, str):
        solvers = (solvers,)
    try:
        out = tuple(solvers)
    except TypeError:
        raise InputError(f"expected a sequence of solver names, got {type(solvers).__name__}", "solvers") from None
    if not out or not all(isinstance(n, str) for n in out):
        raise InputError(f"expected a non-empty sequence of solver names, got {solvers!r}", "solvers")
    return out


class CvxpyAlgebra:
    """Vector modelling algebra on CVXPY (exact cones).

    Every variable, parameter and constraint is registered by name so a problem is built
    once and re-solved after parameter updates (DPP).
    """

    exact_cones = True

    def __init__(self):
        self.vars: dict[str, cp.Variable] = {}
        self.params: dict[str, cp.Parameter] = {}
        self.constraints: dict[str, list] = {}

    def var(self, name: str, n: int, lb=None, ub=None, integer: bool = False):
        v = cp.Variable(n, name=name, integer=integer)
        self.vars[name] = v
        if lb is not None:
            self.add(f"{name}_lb", v >= lb)
        if ub is not None:
            self.add(f"{name}_ub", v <= ub)
        return v

    def param(self, name: str, value, nonneg: bool = False):
        value = np.asarray(value, dtype=float)
        p = cp.Parameter(value.shape, name=name, nonneg=nonneg)
        p.value = value
        self.params[name] = p
        return p

    def set(self, name: str, value) -> None:
        self.params[name].value = np.asarray(value, dtype=float).reshape(self.params[name].shape)

    def add(self, name: str, con) -> None:
        self.constraints.setdefault(name, []).append(con)

    @staticmethod
    def matvec(M, x):
        return M @ x

    @staticmethod
    def matvec_param(M, x):
        return M @ x

    @staticmethod
    def mul(c, x):
        return cp.multiply(c, x)

    @staticmethod
    def total(x):
        return cp.sum(x)

    def eq(self, name, lhs, rhs) -> None:
        self.add(name, lhs == rhs)

    def le(self, name, lhs, rhs) -> None:
        self.add(name, lhs <= rhs)

    def soc(self, name, t, *xs) -> None:
        """``||(xs[0][k], xs[1][k], ...)|| <= t[k]`` for every k."""
        self.add(name, cp.SOC(t, cp.vstack(list(xs)), axis=0))

    def rotated_cone(self, name, a, b, u, v) -> None:
        """``a^2 + b^2 <= u v`` with ``u, v >= 0`` elementwise."""
        self.add(name, cp.SOC(u + v, cp.vstack([2 * a, 2 * b, u - v]), axis=0))

    @staticmethod
    def sum_squares(x):
        return cp.sum_squares(x)

    def problem(self, objective, names=None) -> cp.Problem:
        """A minimisation problem over the registered constraints (or only ``names``)."""
        keys = self.constraints if names is None else names
        cons = [c for k in keys for c in self.constraints[k]]
        return cp.Problem(cp.Minimize(objective), cons)


def solve(problem: cp.Problem, solvers=DEFAULT_SOLVERS, options=None, retry=None) -> SolveResult:
    """Solve with the first solver that returns a usable status, falling back along ``solvers``.

    Solver exceptions (any exception raised inside CVXPY or a solver) are caught and recorded
    in ``info["errors"]``; what the solvers print is in ``info["solver_output"]`` (see the
    module docstring); a result without a solution has status INFEASIBLE, UNBOUNDED,
    LIMIT_REACHED or NUMERICAL_ERROR. Before the chain reaches a first-order solver
    (:data:`FIRST_ORDER`) or its end, every solver that stopped OPTIMAL_INACCURATE and has
    ``retry`` options is re-run with each of them in turn until one gives a definite answer
    (listed as ``"NAME(retry k)"`` in ``info["tried"]``). When the chain ends without an
    answer, the latest OPTIMAL_INACCURATE point found on the way is returned (with that
    solver's name and status) rather than none.

    Args:
        problem: The CVXPY problem.
        solvers: Fallback chain, tried in order.
        options: Per-solver keyword options (default :data:`DEFAULT_OPTIONS`).
        retry: Per-solver sequences of options for the re-runs (e.g. :data:`RETRY_OPTIONS`);
            default none.
    """
    options = DEFAULT_OPTIONS if options is None else options
    retry = {} if retry is None else retry
    definite = (SolveStatus.OPTIMAL, SolveStatus.INFEASIBLE, SolveStatus.UNBOUNDED)
    errors, tried, used, inaccurate, printed = {}, [], [], [], []
    last_inaccurate = []  # (solver, (x, objective), raw status, iterations) of the latest inexact answer
    t0 = time.perf_counter()
    status = SolveStatus.NOT_SOLVED

    last = [None]  # the problem object of the latest attempt that returned (None: it raised)

    def attempt(name, label, opts):
        nonlocal status
        tried.append(label)
        used.append(name)
        prob = _for_solver(problem, name)
        last[0] = None
        out = captured_output()
        try:
            with out, warnings.catch_warnings():  # inaccuracy is reported as a status, not a warning
                warnings.simplefilter("ignore", UserWarning)
                prob.solve(solver=name, **{"verbose": False, **opts})
        except Exception as exc:  # noqa: BLE001  (no solver's own exception escapes, whatever its type)
            errors[label] = f"{type(exc).__name__}: {exc}"
            status = SolveStatus.NUMERICAL_ERROR
            return False
        finally:
            if out.text:
                printed.append(f"[{label}]\n{out.text}")
        last[0] = prob
        status = _STATUS.get(prob.status, SolveStatus.NUMERICAL_ERROR)
        if status == SolveStatus.OPTIMAL_INACCURATE:
            if name in retry and label == name:
                inaccurate.append(name)
            point = _point(prob)
            if point is not None:
                last_inaccurate[:] = [(name, point, prob.status, _iterations(prob))]
        return status in definite  # a definite answer: no fallback needed

    def retries():
        while inaccurate:
            name = inaccurate.pop(0)
            for k, opts in enumerate(retry[name]):
                if attempt(name, f"{name}(retry {k + 1})", opts):
                    return True
        return False

    for name in solvers:
        if (name in FIRST_ORDER and retries()) or attempt(name, name, options.get(name, {})):
            break
    else:
        retries()
    dt = time.perf_counter() - t0
    prob = last[0]
    point = _point(prob) if prob is not None and status.has_solution else None
    solver, raw, iters = used[-1], None, 0
    if prob is not None:
        raw, iters = prob.status, _iterations(prob)
    if point is None and last_inaccurate and status not in definite:
        # the chain ended without an answer (a later solver or retry raised or failed): an
        # earlier inexact answer beats none (a definite INFEASIBLE or UNBOUNDED still wins)
        solver, point, raw, iters = last_inaccurate[0]
    if point is None:
        status = SolveStatus.NUMERICAL_ERROR if status.has_solution else status
        x, obj = {}, float("inf")
    else:
        status = _STATUS.get(raw, SolveStatus.NUMERICAL_ERROR)
        x, obj = point
    return SolveResult(status=status, x=x, objective=obj, solver=solver, solve_time_s=dt, iterations=iters,
                       info={"tried": tried, "errors": errors, "raw_status": raw,
                             "solver_output": "".join(printed)})


#: per caller problem: (the solver that uses the caller's object, {other solver: its own Problem})
_TWINS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _for_solver(problem: cp.Problem, name: str) -> cp.Problem:
    """The Problem object that solver ``name`` solves ``problem`` through.

    CVXPY keeps one compiled form per Problem, for the last solver used, and recompiles when the
    solver changes. A chain that alternates solvers (Clarabel, ECOS, a Clarabel retry) on a
    parametrized problem would re-canonicalize on every switch (~0.1 s for a 33-bus soft
    projection, against ~5 ms for a re-solve with new parameter values). So each further solver
    gets its own Problem over the same objective, constraints, variables and parameters.
    """
    entry = _TWINS.get(problem)
    if entry is None:
        entry = _TWINS[problem] = (name, {})
    owner, twins = entry
    if name == owner:
        return problem
    twin = twins.get(name)
    if twin is None:
        twin = twins[name] = cp.Problem(problem.objective, problem.constraints)
    return twin


def _point(problem: cp.Problem):
    """``(x, objective)`` of the problem's current solution, or None when it is not finite."""
    x = {v.name(): np.array(v.value, dtype=float) for v in problem.variables()}
    if not all(np.isfinite(a).all() for a in x.values()) or problem.value is None:
        return None
    return x, float(problem.value)


def _iterations(problem: cp.Problem) -> int:
    stats = problem.solver_stats
    return int(getattr(stats, "num_iters", 0) or 0) if stats else 0
