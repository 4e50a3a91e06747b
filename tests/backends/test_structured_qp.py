"""StructuredQP against an independent CVXPY + Clarabel model on LinDistFlow feeder instances.

The instances are built here from the built-in cases (the library's own problem builder is
written elsewhere): LinDistFlow voltage rows ``vmin^2 <= w <= vmax^2`` expressed in the
inverters' set-points (``x = [p | q | e]``) with the uncontrolled load in ``h``, and branch
thermal limits ``||(P_b, Q_b)|| <= sqrt(3) vn_kv i_max_ka`` as second-order-cone rows.
"""

from __future__ import annotations

import math
import warnings
import zlib

import cvxpy as cp
import numpy as np
import pytest

import safedispatch as sd
from safedispatch.backends.structured_qp import QPStatus, StructuredQP, WarmStart
from safedispatch.errors import InputError

#: Clarabel's defaults stop at ~1e-8 relative gap, which leaves ~1e-5 in x on these problems;
#: tighter settings make the reference accurate enough to compare solutions at 1e-4
CLARABEL = {"tol_gap_abs": 1e-10, "tol_gap_rel": 1e-10, "tol_feas": 1e-10, "tol_ktratio": 1e-8, "max_iter": 400}
OBJ_REL, OBJ_ABS, X_TOL, FEAS_TOL = 1e-5, 1e-9, 1e-4, 1e-6


# =============================================================================================
# instance builder (a test helper)
# =============================================================================================
class FeederInstances:
    """Static LinDistFlow data of one feeder and a generator of random dynamic data.

    ``x = [p (n_pv) | q (n_pv) | e (n_sc)]`` in MW / MVAr; ``e`` are storage powers at random
    buses (the cases have none), injected like the PV active power.
    """

    def __init__(self, case: str, n_sc: int = 0, seed: int = 0):
        f = sd.load_case(case)
        rng = np.random.default_rng(seed)
        rad = f.radial
        nb = f.n_bus
        vn = f.bus.vn_kv
        nonroot = np.flatnonzero(rad.parent >= 0)
        pb = rad.parent_branch[nonroot]
        # per unit on 1 MVA: z_base = vn_kv^2; the branch above bus i is indexed by i
        r_child = np.zeros(nb)
        x_child = np.zeros(nb)
        r_child[nonroot] = f.branch.r_ohm[pb] / vn[nonroot] ** 2
        x_child[nonroot] = f.branch.x_ohm[pb] / vn[nonroot] ** 2
        sub = rad.subtree.toarray()  # sub[i, j] = 1 iff j in subtree(i)
        # R[j, k] = sum of r over the branches shared by the root paths of j and k
        self.R = sub.T @ (r_child[:, None] * sub)
        self.X = sub.T @ (x_child[:, None] * sub)
        n_pv = f.n_pv
        n = 2 * n_pv + n_sc
        cp_ = np.zeros((nb, n))
        cq_ = np.zeros((nb, n))
        cp_[f.pv.bus, np.arange(n_pv)] = 1.0
        cq_[f.pv.bus, n_pv + np.arange(n_pv)] = 1.0
        ess_bus = rng.choice(nonroot, n_sc, replace=False) if n_sc else np.zeros(0, dtype=int)
        cp_[ess_bus, 2 * n_pv + np.arange(n_sc)] = 1.0
        dw = 2.0 * (self.R @ cp_ + self.X @ cq_)          # w = w_load + dw x
        self.G = np.vstack([dw[nonroot], -dw[nonroot]])  # w <= vmax^2 ; -w <= -vmin^2
        # flow into the subtree of each non-root bus: P_b = -sum of the subtree's injections
        self.sub_nr = sub[nonroot]
        self.A = np.stack([-(self.sub_nr @ cp_), -(self.sub_nr @ cq_)], axis=1)
        self.S = math.sqrt(3.0) * vn[nonroot] * f.branch.i_max_ka[pb]
        self.f, self.n_pv, self.n_sc, self.n = f, n_pv, n_sc, n
        self.nonroot = nonroot

    def instance(self, rng, load=(0.3, 1.8), mode="mixed", pf=False, qbox=False, load_scale=1.0, avail=None):
        """Random dynamic data as a dict of :meth:`StructuredQP.solve` keyword arguments."""
        f, n_pv, n_sc = self.f, self.n_pv, self.n_sc
        p0, q0 = f.nominal_injection()
        k = load_scale * rng.uniform(*load, f.n_bus)
        pl, ql = p0 * k, q0 * k
        w_load = f.root_vm_pu ** 2 + 2.0 * (self.R @ pl + self.X @ ql)
        vmin = f.bus.vm_min_pu[self.nonroot]
        vmax = f.bus.vm_max_pu[self.nonroot]
        h = np.concatenate([vmax ** 2 - w_load[self.nonroot], w_load[self.nonroot] - vmin ** 2])
        c = np.stack([-(self.sub_nr @ pl), -(self.sub_nr @ ql)], axis=1)
        s = f.pv.s_mva.astype(float).copy()
        av = rng.uniform(0.0, 1.0, n_pv) * f.pv.p_max_mw if avail is None else np.asarray(avail, float)
        q_lo, q_hi = -s.copy(), s.copy()
        if qbox:
            q_lo = -s * rng.uniform(0.2, 1.2, n_pv)
            q_hi = s * rng.uniform(0.2, 1.2, n_pv)
        t = np.full(n_pv, np.inf)
        if pf:
            t = np.tan(np.arccos(rng.uniform(0.8, 0.99, n_pv)))
            t[rng.uniform(size=n_pv) < 0.3] = np.inf
        if mode == "over":     # full output plus reactive injection: overvoltage at light load
            rp = av * rng.uniform(0.9, 1.3, n_pv)
            rq = s * rng.uniform(0.0, 0.8, n_pv)
        elif mode == "wild":   # far outside the disks
            rp = s * rng.uniform(-0.5, 1.5, n_pv)
            rq = s * rng.uniform(-1.5, 1.5, n_pv)
        else:
            rp = s * rng.uniform(-0.2, 1.2, n_pv)
            rq = s * rng.uniform(-1.0, 1.0, n_pv)
        e_max = 0.4
        return dict(rp=rp, rq=rq, re=rng.uniform(-1.0, 1.0, n_sc) * 0.5, wp=rng.uniform(0.5, 2.0, n_pv),
                    we=rng.uniform(0.5, 2.0, n_sc), p_lo=np.zeros(n_pv), p_hi=av, q_lo=q_lo, q_hi=q_hi, s=s, t=t,
                    e_lo=np.full(n_sc, -e_max), e_hi=np.full(n_sc, e_max), h=h, c=c, S=self.S.copy())


def solve_reference(G, A, n_pv, n_sc, d):
    """The same problem written plainly in CVXPY and solved by Clarabel.

    Returns (cvxpy status, optimal value, x).
    """
    n = 2 * n_pv + n_sc
    x = cp.Variable(n)
    p, q, e = x[:n_pv], x[n_pv:2 * n_pv], x[2 * n_pv:]
    obj = 0.5 * cp.sum(cp.multiply(d["wp"], cp.square(p - d["rp"]) + cp.square(q - d["rq"])))
    cons = [cp.SOC(d["s"], cp.vstack([p, q]), axis=0)]
    for var, key, sense in ((p, "p_lo", 1), (p, "p_hi", -1), (q, "q_lo", 1), (q, "q_hi", -1)):
        fin = np.flatnonzero(np.isfinite(d[key]))
        if fin.size:
            cons.append(sense * var[fin] >= sense * d[key][fin])
    fin = np.flatnonzero(np.isfinite(d["t"]))
    if fin.size:
        cons += [q[fin] <= cp.multiply(d["t"][fin], p[fin]), -q[fin] <= cp.multiply(d["t"][fin], p[fin])]
    if n_sc:
        obj = obj + 0.5 * cp.sum(cp.multiply(d["we"], cp.square(e - d["re"])))
        cons += [e >= d["e_lo"], e <= d["e_hi"]]
    if G.shape[0]:
        cons.append(G @ x <= d["h"])
    if A.shape[0]:
        flows = cp.vstack([A[:, 0, :] @ x + d["c"][:, 0], A[:, 1, :] @ x + d["c"][:, 1]])
        cons.append(cp.SOC(d["S"], flows, axis=0))
    prob = cp.Problem(cp.Minimize(obj), cons)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "Solution may be inaccurate": handled below
        prob.solve(solver=cp.CLARABEL, **CLARABEL)
    if prob.status == "optimal_inaccurate":
        # the tight settings occasionally stall just short of them: Clarabel's defaults, and an
        # inaccurate answer only when its point is feasible anyway
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            prob.solve(solver=cp.CLARABEL)
        if prob.status == "optimal_inaccurate" and max_violation(G, A, n_pv, d, np.asarray(x.value)) <= 1e-7:
            return "optimal", prob.value, np.asarray(x.value)
    return prob.status, prob.value, (None if x.value is None else np.asarray(x.value))


def objective(d, x, n_pv):
    p, q, e = x[:n_pv], x[n_pv:2 * n_pv], x[2 * n_pv:]
    return 0.5 * (np.sum(d["wp"] * ((p - d["rp"]) ** 2 + (q - d["rq"]) ** 2)) + np.sum(d["we"] * (e - d["re"]) ** 2))


def max_violation(G, A, n_pv, d, x):
    """Largest violation of any constraint, each in its own units (MW, MVA, pu^2)."""
    p, q, e = x[:n_pv], x[n_pv:2 * n_pv], x[2 * n_pv:]
    v = [0.0, np.max(d["p_lo"] - p, initial=0), np.max(p - d["p_hi"], initial=0), np.max(d["q_lo"] - q, initial=0),
         np.max(q - d["q_hi"], initial=0), np.max(np.hypot(p, q) - d["s"], initial=0),
         np.max(d["e_lo"] - e, initial=0), np.max(e - d["e_hi"], initial=0)]
    fin = np.isfinite(d["t"])
    v.append(np.max(np.abs(q[fin]) - d["t"][fin] * p[fin], initial=0))
    if G.shape[0]:
        v.append(np.max(G @ x - d["h"]))
    if A.shape[0]:
        v.append(np.max(np.hypot(A[:, 0] @ x + d["c"][:, 0], A[:, 1] @ x + d["c"][:, 1]) - d["S"]))
    return float(max(v))


def check_against_reference(qp, G, A, n_pv, n_sc, d, stats=None):
    """Solve with both; assert matching status, objective, solution and feasibility."""
    res = qp.solve(**d)
    assert np.all(np.isfinite(res.x))
    status, value, x_ref = solve_reference(G, A, n_pv, n_sc, d)
    if status == "infeasible":
        assert res.status == QPStatus.INFEASIBLE, (res, res.message)
        return res
    assert status == "optimal", status
    assert res.status == QPStatus.OPTIMAL, (res, res.message, res.kkt)
    dobj = abs(res.objective - value)
    dx = float(np.max(np.abs(res.x - x_ref)))
    viol = max_violation(G, A, n_pv, d, res.x)
    assert res.objective == pytest.approx(objective(d, res.x, n_pv), rel=1e-12, abs=1e-15)
    assert dobj <= OBJ_ABS + OBJ_REL * abs(value), (res.objective, value)
    assert dx <= X_TOL, dx
    assert viol <= FEAS_TOL, viol
    # the thermal rows must hold to 1e-9 relative, the KKT report must be clean
    if A.shape[0]:
        rel = np.hypot(A[:, 0] @ res.x + d["c"][:, 0], A[:, 1] @ res.x + d["c"][:, 1]) / d["S"] - 1.0
        assert rel.max() <= 1e-9
    assert res.kkt["stationarity"] <= 1e-7 and res.kkt["gap_rel"] <= 1e-7
    assert np.all(res.lam_lin >= 0) and np.all(res.lam_soc >= 0)
    if stats is not None:
        stats["obj_rel"] = max(stats.get("obj_rel", 0.0), dobj / max(abs(value), 1e-300))
        stats["dx"] = max(stats.get("dx", 0.0), dx)
        stats["viol"] = max(stats.get("viol", 0.0), viol)
        stats["n"] = stats.get("n", 0) + 1
    return res


@pytest.fixture(scope="module")
def feeders():
    cache = {}

    def get(case, n_sc=0, seed=0):
        key = (case, n_sc, seed)
        if key not in cache:
            fi = FeederInstances(case, n_sc=n_sc, seed=seed)
            cache[key] = (fi, StructuredQP(fi.n_pv, n_sc, fi.G, fi.A))
        return cache[key]

    return get


# =============================================================================================
# agreement with Clarabel on random feeder instances
# =============================================================================================
@pytest.mark.parametrize("case,n_sc,count", [
    ("ieee33-paperB-4", 0, 160), ("ieee33-paperB-4", 2, 100),
    ("ieee33-paperB", 0, 70), ("ieee33-paperB", 3, 40),
    ("ieee33x30", 0, 16), ("ieee33x30", 2, 8),
])
def test_matches_clarabel(feeders, case, n_sc, count):
    fi, qp = feeders(case, n_sc)
    rng = np.random.default_rng(zlib.crc32(f"{case}/{n_sc}".encode()))
    stats = {}
    statuses = []
    for k in range(count):
        d = fi.instance(rng, mode=("mixed", "over", "wild")[k % 3], pf=k % 2 == 1, qbox=k % 4 == 3)
        statuses.append(check_against_reference(qp, fi.G, fi.A, fi.n_pv, n_sc, d, stats).status)
    # the instances must exercise the network rows, not only the device sets
    assert statuses.count(QPStatus.OPTIMAL) >= count // 2
    print(f"\n{case} n_sc={n_sc}: {stats}")


def test_device_sets_exact_including_degenerate():
    """No network rows: the solution is the projection on each 2-D set, for many random sets,
    including segments, points, power-factor cones with t = 0, and corners on the circle."""
    rng = np.random.default_rng(7)
    n_pv = 400
    s = rng.uniform(0.1, 2.0, n_pv)
    p_lo = rng.uniform(-1.0, 0.5, n_pv) * s
    p_hi = p_lo + rng.uniform(0.0, 1.5, n_pv) * s
    q_lo = rng.uniform(-1.2, 0.3, n_pv) * s
    q_hi = q_lo + rng.uniform(0.0, 1.5, n_pv) * s
    t = np.where(rng.uniform(size=n_pv) < 0.5, np.tan(np.arccos(rng.uniform(0.5, 1.0, n_pv))), np.inf)
    p_lo = np.minimum(p_lo, 0.9 * s)
    kind = rng.integers(0, 6, n_pv)
    p_hi[kind == 1] = p_lo[kind == 1]                          # p fixed: a vertical segment
    t[kind == 2] = 0.0                                          # q forced to 0
    s[kind == 3] = 1e-6                                         # tiny disk
    p_lo[kind == 3], p_hi[kind == 3] = -1.0, 1.0
    q_lo[kind == 3], q_hi[kind == 3] = -1.0, 1.0
    corner = kind == 4                                          # box corner exactly on the circle
    p_hi[corner] = s[corner] * 0.6
    q_hi[corner] = s[corner] * 0.8
    p_lo[corner] = -s[corner]
    q_lo[corner] = -s[corner]
    p_lo[kind == 5], q_hi[kind == 5] = -np.inf, np.inf          # infinite bounds
    # keep the sets that are certainly non-empty: the box point nearest the origin lies in the
    # disk and the cone
    cen_p = np.clip(0.0, p_lo, p_hi)
    cen_q = np.clip(0.0, q_lo, q_hi)
    t_fin = np.where(np.isfinite(t), t, 0.0)
    ok = (np.hypot(cen_p, cen_q) <= s) & ((~np.isfinite(t)) | (np.abs(cen_q) <= t_fin * cen_p))
    sel = np.flatnonzero(ok)
    n_pv = sel.size
    assert n_pv > 100
    d = dict(rp=rng.uniform(-2.5, 2.5, n_pv) * s[sel], rq=rng.uniform(-2.5, 2.5, n_pv) * s[sel],
             re=np.zeros(0), wp=rng.uniform(0.5, 2, n_pv), we=np.zeros(0), p_lo=p_lo[sel], p_hi=p_hi[sel],
             q_lo=q_lo[sel], q_hi=q_hi[sel], s=s[sel], t=t[sel], e_lo=np.zeros(0), e_hi=np.zeros(0), h=np.zeros(0),
             c=np.zeros((0, 2)), S=np.zeros(0))
    d["rp"][:10] = 0.0  # raw point at the disk centre
    d["rq"][:10] = 0.0
    qp = StructuredQP(n_pv, 0, np.zeros((0, 2 * n_pv)), np.zeros((0, 2, 2 * n_pv)))
    res = qp.solve(**d)
    assert res.status == QPStatus.OPTIMAL and res.iterations == 0
    status, value, x_ref = solve_reference(np.zeros((0, 2 * n_pv)), np.zeros((0, 2, 2 * n_pv)), n_pv, 0, d)
    assert status == "optimal"
    assert abs(res.objective - value) <= OBJ_ABS + OBJ_REL * value
    assert np.max(np.abs(res.x - x_ref)) <= X_TOL
    assert max_violation(np.zeros((0, 2 * n_pv)), np.zeros((0, 2, 2 * n_pv)), n_pv, d, res.x) <= 1e-10
    # each device's point is the nearest point of its set: no feasible point of the set is
    # closer (checked on a dense sample of the boundary and interior)
    p, q = res.x[:n_pv], res.x[n_pv:]
    dist = np.hypot(p - d["rp"], q - d["rq"])
    ang = np.linspace(0, 2 * np.pi, 721)
    for rad in (1.0, 0.999, 0.7, 0.3, 0.0):
        cp_ = d["s"][:, None] * rad * np.cos(ang)
        cq_ = d["s"][:, None] * rad * np.sin(ang)
        cp_ = np.clip(cp_, d["p_lo"][:, None], d["p_hi"][:, None])
        cq_ = np.clip(cq_, d["q_lo"][:, None], d["q_hi"][:, None])
        t_fin = np.where(np.isfinite(d["t"]), d["t"], 0.0)[:, None]
        feas = (np.hypot(cp_, cq_) <= d["s"][:, None] * (1 + 1e-12)) & (
            ~np.isfinite(d["t"][:, None]) | (np.abs(cq_) <= t_fin * cp_ + 1e-12))
        dd = np.hypot(cp_ - d["rp"][:, None], cq_ - d["rq"][:, None])
        assert np.all(np.where(feas, dd, np.inf).min(axis=1) >= dist - 1e-9)


# =============================================================================================
# feasible input unchanged, idempotence
# =============================================================================================
@pytest.mark.parametrize("case", ["ieee33-paperB-4", "ieee33-paperB"])
def test_feasible_raw_point_is_returned_unchanged(feeders, case):
    fi, qp = feeders(case, 2)
    rng = np.random.default_rng(3)
    n_unchanged = 0
    for k in range(30):
        d = fi.instance(rng, mode=("mixed", "over", "wild")[k % 3])
        res = qp.solve(**d)
        if res.status != QPStatus.OPTIMAL:
            continue
        # the solution fed back as the raw point: returned bit for bit, no iteration
        d2 = dict(d, rp=res.x[:fi.n_pv].copy(), rq=res.x[fi.n_pv:2 * fi.n_pv].copy(), re=res.x[2 * fi.n_pv:].copy())
        res2 = qp.solve(**d2)
        assert res2.status == QPStatus.OPTIMAL
        assert np.max(np.abs(res2.x - res.x)) <= 1e-12
        assert res2.iterations == 0
        # a raw point inside every set (here: half the solution, when that is feasible) is
        # returned exactly
        x_in = 0.5 * res.x
        d3 = dict(d, rp=x_in[:fi.n_pv], rq=x_in[fi.n_pv:2 * fi.n_pv], re=x_in[2 * fi.n_pv:])
        if max_violation(fi.G, fi.A, fi.n_pv, d3, x_in) <= 0.0:
            res3 = qp.solve(**d3)
            assert np.array_equal(res3.x, x_in)
            assert res3.objective == 0.0 and res3.iterations == 0
            assert not res3.active_lin.any() and not res3.active_soc.any()
            n_unchanged += 1
    assert n_unchanged >= 5


def test_projection_is_idempotent_on_warm_calls(feeders):
    fi, qp = feeders("ieee33-paperB-4")
    rng = np.random.default_rng(11)
    for _ in range(20):
        d = fi.instance(rng, mode="over")
        res = qp.solve(**d)
        if res.status != QPStatus.OPTIMAL:
            continue
        d2 = dict(d, rp=res.x[:fi.n_pv].copy(), rq=res.x[fi.n_pv:].copy())
        res2 = qp.solve(**d2, warm=res.warm)
        assert res2.status == QPStatus.OPTIMAL
        assert np.max(np.abs(res2.x - res.x)) <= 1e-12


# =============================================================================================
# infeasible problems
# =============================================================================================
@pytest.mark.parametrize("case", ["ieee33-paperB-4", "ieee33-paperB", "ieee33x30"])
@pytest.mark.parametrize("thermal", [False, True])
def test_heavy_load_is_infeasible(feeders, case, thermal):
    """At night (no PV active power) with loads several times nominal no reactive set-point
    lifts the voltage to vmin: INFEASIBLE, quickly, with a finite x, and Clarabel agrees.

    Without the thermal rows the proof is the dual bound (weak duality); with them, branches
    without inverters downstream can be overloaded by the load alone (a constant row)."""
    fi, qp_full = feeders(case)
    A = fi.A if thermal else np.zeros((0, 2, fi.n))
    qp = qp_full if thermal else StructuredQP(fi.n_pv, 0, fi.G, A)
    rng = np.random.default_rng(5)
    for k in range(3):
        d = fi.instance(rng, load=(0.9, 1.1), load_scale=3.0 + k, avail=np.zeros(fi.n_pv))
        if not thermal:
            d.update(c=np.zeros((0, 2)), S=np.zeros(0))
        res = qp.solve(**d)
        assert res.status == QPStatus.INFEASIBLE, (res, res.message)
        assert np.all(np.isfinite(res.x)) and np.isfinite(res.objective)
        assert res.iterations <= 60
        assert res.message
        if not thermal:
            assert "weak duality" in res.message
        status, _, _ = solve_reference(fi.G, A, fi.n_pv, 0, d)
        assert status == "infeasible"


def test_empty_device_set_is_reported(feeders):
    fi, qp = feeders("ieee33-paperB-4")
    d = fi.instance(np.random.default_rng(0))
    d["p_lo"] = d["p_lo"].copy()
    d["p_hi"] = d["p_hi"].copy()
    d["p_lo"][2] = d["s"][2] * 1.1  # the box lies outside the disk
    d["p_hi"][2] = d["s"][2] * 1.2
    res = qp.solve(**d)
    assert res.status == QPStatus.INFEASIBLE
    assert "inverter 2" in res.message
    assert np.all(np.isfinite(res.x))


def test_constant_row_violated_is_infeasible():
    G = np.array([[1.0, 0.0], [0.0, 0.0]])
    qp = StructuredQP(1, 0, G, None)
    base = dict(rp=[0.5], rq=[0.1], re=[], wp=[1.0], we=[], p_lo=[0.0], p_hi=[1.0], q_lo=[-1.0], q_hi=[1.0], s=[1.0],
                t=[np.inf], e_lo=[], e_hi=[], c=None, S=None)
    assert qp.solve(**base, h=[1.0, 0.0]).status == QPStatus.OPTIMAL
    res = qp.solve(**base, h=[1.0, -1.0])
    assert res.status == QPStatus.INFEASIBLE and "row 1" in res.message


# =============================================================================================
# warm start
# =============================================================================================
@pytest.mark.parametrize("case,n_sc", [("ieee33-paperB-4", 0), ("ieee33-paperB", 2), ("ieee33x30", 0)])
def test_warm_start_saves_iterations(feeders, case, n_sc):
    """A day-like sequence: slowly varying load, PV availability and raw actions."""
    fi, qp = feeders(case, n_sc)
    rng = np.random.default_rng(21)
    base = fi.instance(rng, mode="over", load=(0.4, 0.6))
    p0, q0 = fi.f.nominal_injection()
    cold_it, warm_it = [], []
    warm = None
    n_active = 0
    for k in range(25):
        phase = 0.08 * k
        d = dict(base)
        scale = 0.5 + 0.1 * math.sin(phase)
        pl, ql = p0 * scale, q0 * scale
        w_load = fi.f.root_vm_pu ** 2 + 2.0 * (fi.R @ pl + fi.X @ ql)
        nr = fi.nonroot
        d["h"] = np.concatenate([fi.f.bus.vm_max_pu[nr] ** 2 - w_load[nr], w_load[nr] - fi.f.bus.vm_min_pu[nr] ** 2])
        d["c"] = np.stack([-(fi.sub_nr @ pl), -(fi.sub_nr @ ql)], axis=1)
        d["p_hi"] = base["p_hi"] * (0.9 + 0.1 * math.cos(phase))
        d["rp"] = base["rp"] * (1.0 + 0.03 * math.sin(2 * phase))
        d["rq"] = base["rq"] * (1.0 + 0.03 * math.cos(2 * phase))
        cold = qp.solve(**d)
        hot = qp.solve(**d, warm=warm)
        warm = hot.warm
        assert cold.status == hot.status == QPStatus.OPTIMAL
        assert np.max(np.abs(cold.x - hot.x)) <= 1e-7
        cold_it.append(cold.iterations)
        warm_it.append(hot.iterations)
        n_active += int(cold.active_lin.any() or cold.active_soc.any())
    assert n_active >= 20  # the sequence keeps network rows active
    assert sum(warm_it[1:]) < 0.6 * sum(cold_it[1:]), (cold_it, warm_it)


def test_warm_start_from_far_away_still_exact(feeders):
    """A warm start from an unrelated instance must not change the answer."""
    fi, qp = feeders("ieee33-paperB")
    rng = np.random.default_rng(4)
    d1 = fi.instance(rng, mode="wild")
    d2 = fi.instance(rng, mode="over")
    r1 = qp.solve(**d1)
    cold = qp.solve(**d2)
    hot = qp.solve(**d2, warm=r1.warm)
    assert cold.status == hot.status
    if cold.status == QPStatus.OPTIMAL:
        assert np.max(np.abs(cold.x - hot.x)) <= 1e-7


def test_unrelated_warm_start_costs_no_more_than_cold(feeders):
    """Warm duals from unrelated instances are used only when their dual value beats z = 0, so
    on a shuffled sequence they cost (almost) no extra iterations; answers are unchanged."""
    fi, qp = feeders("ieee33-paperB-4")
    rng = np.random.default_rng(5)
    warm, it_warm, it_cold = None, 0, 0
    for _ in range(60):
        d = fi.instance(rng, mode="wild")
        cold = qp.solve(**d)
        hot = qp.solve(**d, warm=warm)
        assert cold.status == hot.status
        if cold.status == QPStatus.OPTIMAL:
            assert np.max(np.abs(cold.x - hot.x)) <= 1e-7
            warm = hot.warm
        it_cold += cold.iterations
        it_warm += hot.iterations
    assert it_warm <= 1.1 * it_cold, (it_warm, it_cold)


@pytest.mark.parametrize("case,n_sc", [("ieee33-paperB-4", 0), ("ieee33-paperB", 2)])
def test_solve_batch_equals_solve(feeders, case, n_sc):
    """The parallel batch gives each instance solve()'s status and answer (to the warm start's
    rounding), including infeasible instances inside the batch."""
    fi, qp = feeders(case, n_sc)
    rng = np.random.default_rng(7)
    inst = [fi.instance(rng, mode=("over", "wild", "mixed")[k % 3]) for k in range(40)]
    inst += [fi.instance(rng, load_scale=6.0) for _ in range(3)]  # heavy load: infeasible
    d0 = inst[0]
    keys = ("rp", "rq", "re", "p_lo", "p_hi", "q_lo", "q_hi", "e_lo", "e_hi", "h", "c")
    st = {k: np.stack([d[k] for d in inst]) for k in keys}
    X, code, iters, LL, LS = qp.solve_batch(st["rp"], st["rq"], st["re"], d0["wp"], d0["we"], st["p_lo"], st["p_hi"],
                                            st["q_lo"], st["q_hi"], d0["s"], d0["t"], st["e_lo"], st["e_hi"],
                                            st["h"], st["c"], d0["S"], n_chunks=3)
    seen = set()
    for b, d in enumerate(inst):
        ref = qp.solve(**{**d, "wp": d0["wp"], "we": d0["we"], "t": d0["t"]})
        assert code[b] == int(ref.status)
        seen.add(int(ref.status))
        if ref.status == QPStatus.OPTIMAL:
            assert np.max(np.abs(X[b] - ref.x)) <= 1e-7
            np.testing.assert_allclose(LL[b], ref.lam_lin, atol=1e-6 * max(1.0, np.abs(ref.lam_lin).max()))
    assert {int(QPStatus.OPTIMAL), int(QPStatus.INFEASIBLE)} <= seen
    with pytest.raises(InputError):
        qp.solve_batch(st["rp"][:, :1], st["rq"], st["re"], d0["wp"], d0["we"], st["p_lo"], st["p_hi"], st["q_lo"],
                       st["q_hi"], d0["s"], d0["t"], st["e_lo"], st["e_hi"], st["h"], st["c"], d0["S"])
    # into caller-owned arrays (longer than the batch: the first B rows are written)
    B = len(inst)
    args = (st["rp"], st["rq"], st["re"], d0["wp"], d0["we"], st["p_lo"], st["p_hi"], st["q_lo"], st["q_hi"], d0["s"],
            d0["t"], st["e_lo"], st["e_hi"], st["h"], st["c"], d0["S"])
    out = (np.full((B + 2, qp.n), np.nan), np.full(B + 2, -9), np.full(B + 2, -9), np.full((B + 2, qp.m), np.nan),
           np.full((B + 2, qp.m_soc), np.nan))
    got = qp.solve_batch(*args, n_chunks=3, out=out)
    for a, b, o in zip(got, (X, code, iters, LL, LS), out):
        assert np.shares_memory(a, o) and np.array_equal(a, b)
    bad = (out[0][:, :1],) + out[1:]
    with pytest.raises(InputError, match="x") as ei:
        qp.solve_batch(*args, out=bad)
    assert ei.value.field == "out"


@pytest.mark.parametrize("path", ["dense", "sparse"])
def test_batch_solve_does_not_depend_on_the_other_instances(feeders, monkeypatch, path):
    """An instance's iterates do not depend on what was solved before it with the same work
    arrays: solving a batch in one chunk gives every instance the iterations and the answer it
    gets alone. Both row paths: the dense one (small feeders: dense rows and a Gram matrix for
    the working-set choice) and the sparse one (large feeders), which also agree with each other.
    (The sparse path once leaked the last round's picked rows into the next solve.)"""
    import safedispatch.backends.structured_qp as sq

    fi, qp_default = feeders("ieee33-paperB-4", 0)
    assert qp_default._dense[1].size > 0  # 4 inverters: the dense path is the default
    if path == "sparse":
        monkeypatch.setattr(sq, "_GRAM_MAX", 0)
        monkeypatch.setattr(sq, "_DENSE_N_MAX", 0)
    qp = StructuredQP(fi.n_pv, 0, fi.G, fi.A)
    assert (qp._dense[0].size > 0) == (path == "dense") and (qp._dense[1].size > 0) == (path == "dense")
    rng = np.random.default_rng(11)
    inst = [fi.instance(rng, mode=("over", "wild", "mixed")[k % 3], pf=k % 2 == 1) for k in range(60)]
    d0 = inst[0]
    keys = ("rp", "rq", "re", "p_lo", "p_hi", "q_lo", "q_hi", "e_lo", "e_hi", "h", "c")
    st = {k: np.stack([d[k] for d in inst]) for k in keys}
    args = (st["rp"], st["rq"], st["re"], d0["wp"], d0["we"], st["p_lo"], st["p_hi"], st["q_lo"], st["q_hi"],
            d0["s"], d0["t"], st["e_lo"], st["e_hi"], st["h"], st["c"], d0["S"])
    X, code, iters, _, _ = qp.solve_batch(*args, n_chunks=1)
    assert (code == 0).sum() >= 50 and iters.max() >= 3  # real projections, not feasible raw points
    for b in range(len(inst)):
        Xb, cb, ib, _, _ = qp.solve_batch(*args, index=[b])
        assert (cb[0], ib[0]) == (code[b], iters[b]), b
        np.testing.assert_array_equal(Xb[0], X[b])
    Xd, cd, _, _, _ = qp_default.solve_batch(*args)
    ok = (cd == 0) & (code == 0)
    assert ok.sum() >= 50
    assert np.max(np.abs(Xd[ok] - X[ok])) <= 1e-7


def test_stalled_solve_is_restarted_and_exact(feeders):
    """About 1 in 10 000 random 4-inverter instances stalls in the damping adaptation until the
    iteration limit; the solver restarts those once with less damping (the first attempt has 150
    of the 200 iterations, so more than 150 means a restart). The restarted solves must be
    OPTIMAL and agree with Clarabel, in the batch and in solve()."""
    fi, qp = feeders("ieee33-paperB-4", 0)
    rng = np.random.default_rng(5)
    inst = [fi.instance(rng, mode=("over", "wild", "mixed")[k % 3]) for k in range(30000)]
    d0 = inst[0]
    keys = ("rp", "rq", "re", "p_lo", "p_hi", "q_lo", "q_hi", "e_lo", "e_hi", "h", "c")
    st = {k: np.stack([d[k] for d in inst]) for k in keys}
    _, code, iters, _, _ = qp.solve_batch(st["rp"], st["rq"], st["re"], d0["wp"], d0["we"], st["p_lo"], st["p_hi"],
                                          st["q_lo"], st["q_hi"], d0["s"], d0["t"], st["e_lo"], st["e_hi"], st["h"],
                                          st["c"], d0["S"])
    restarted = np.flatnonzero(iters > 150)
    assert restarted.size >= 1  # the set exercises the restart
    assert np.all(code[restarted] == int(QPStatus.OPTIMAL))
    for b in restarted:
        d = {**inst[b], "wp": d0["wp"], "we": d0["we"], "t": d0["t"]}
        res = check_against_reference(qp, fi.G, fi.A, fi.n_pv, 0, d)
        assert res.iterations > 150


def test_solve_unchecked_equals_solve(feeders):
    """The hot-path entry returns solve()'s answer, carries the duals in the caller's z, and
    reports invalid values as -1 instead of raising."""
    fi, qp = feeders("ieee33-paperB", 2)
    rng = np.random.default_rng(6)
    z = np.zeros(qp.n_rows)
    warm = None
    for k in range(20):
        d = fi.instance(rng)
        ref = qp.solve(**d, warm=warm)
        args = [np.ascontiguousarray(d[key], dtype=float) for key in
                ("rp", "rq", "re", "wp", "we", "p_lo", "p_hi", "q_lo", "q_hi", "s", "t", "e_lo", "e_hi", "h", "c", "S")]
        code, x, iters = qp.solve_unchecked(*args, z, k > 0)
        assert code == int(ref.status) and iters == ref.iterations
        np.testing.assert_array_equal(x, ref.x)
        np.testing.assert_array_equal(z, ref.warm.z)
        warm = ref.warm
    args[0] = args[0].copy()
    args[0][1] = np.nan
    assert qp.solve_unchecked(*args, z, False)[0] == -1


# =============================================================================================
# degenerate cases
# =============================================================================================
def _degenerate(fi, rng, which):
    d = fi.instance(rng, mode=("over", "wild", "mixed")[rng.integers(3)], pf=which == "t_zero")
    n_pv = fi.n_pv
    sel = rng.uniform(size=n_pv) < 0.5
    sel[0] = True
    if which == "p_fixed":
        d["p_lo"] = np.where(sel, d["p_hi"], d["p_lo"])
    elif which == "tiny_s":
        d["s"] = np.where(sel, 1e-7, d["s"])
        d["p_hi"] = np.minimum(d["p_hi"], d["s"])
    elif which == "t_zero":
        d["t"] = np.where(sel, 0.0, d["t"])
    elif which == "raw_at_center":
        d["rp"] = np.where(sel, 0.0, d["rp"])
        d["rq"] = np.where(sel, 0.0, d["rq"])
        d["p_lo"] = np.where(rng.uniform(size=n_pv) < 0.3, 0.1 * d["p_hi"], d["p_lo"])
    return d


@pytest.mark.parametrize("which", ["p_fixed", "tiny_s", "t_zero", "raw_at_center"])
@pytest.mark.parametrize("case", ["ieee33-paperB-4", "ieee33-paperB"])
def test_degenerate_device_data(feeders, case, which):
    fi, qp = feeders(case)
    rng = np.random.default_rng(zlib.crc32(f"{case}/{which}".encode()))
    for _ in range(15):
        check_against_reference(qp, fi.G, fi.A, fi.n_pv, 0, _degenerate(fi, rng, which))


def test_duplicate_rows(feeders):
    """Identical rows (same and looser right-hand side) make the dual Newton system singular."""
    fi, _ = feeders("ieee33-paperB-4")
    m = fi.G.shape[0]
    dup = np.arange(0, m, 3)
    G = np.vstack([fi.G, fi.G[dup], 2.0 * fi.G[dup]])
    A = np.concatenate([fi.A, fi.A[::4]])
    qp = StructuredQP(fi.n_pv, 0, G, A)
    rng = np.random.default_rng(8)
    n_opt = 0
    for k in range(40):
        d = fi.instance(rng, mode=("over", "wild", "mixed")[k % 3])
        extra = np.where(rng.uniform(size=dup.size) < 0.5, 0.0, 1e-3)
        d["h"] = np.concatenate([d["h"], d["h"][dup] + extra, 2.0 * d["h"][dup]])
        d["c"] = np.concatenate([d["c"], d["c"][::4]])
        d["S"] = np.concatenate([d["S"], d["S"][::4]])
        res = check_against_reference(qp, G, A, fi.n_pv, 0, d)
        n_opt += res.status == QPStatus.OPTIMAL and res.active_lin.any()
    assert n_opt >= 5


def test_scalar_devices_only_known_solution():
    qp = StructuredQP(0, 3, np.array([[1.0, 1.0, 1.0]]), None)
    args = ([], [], [1.0, 2.0, 3.0], [], [1.0, 1.0, 2.0], [], [], [], [], [], [])
    # weighted projection on sum(e) <= 3: e = clip(re - mu / we, lo, hi)
    res = qp.solve(*args, [-5, -5, -5], [5, 5, 5], [3.0], None, None)
    assert res.status == QPStatus.OPTIMAL
    mu = (6.0 - 3.0) / (1 + 1 + 0.5)
    np.testing.assert_allclose(res.x, [1 - mu, 2 - mu, 3 - mu / 2], atol=1e-12)
    np.testing.assert_allclose(res.lam_lin, [mu], rtol=1e-9)
    # with e >= 0 the first device stops at its bound and the others share the rest
    res = qp.solve(*args, [0, 0, 0], [5, 5, 5], [3.0], None, None)
    mu = 4.0 / 3.0
    np.testing.assert_allclose(res.x, [0.0, 2 - mu, 3 - mu / 2], atol=1e-12)
    np.testing.assert_allclose(res.lam_lin, [mu], rtol=1e-9)


def test_failed_kkt_check_is_never_optimal(feeders):
    """White-box: corrupt the instance's internal row scaling by 0.1 %. The solver then converges
    on a slightly different internal problem; only the final KKT check, made with the caller's
    own G and A, can see it, and the status must not be OPTIMAL."""
    fi, _ = feeders("ieee33-paperB-4")
    qp = StructuredQP(fi.n_pv, 0, fi.G, fi.A)
    rng = np.random.default_rng(31)
    n_checked = 0
    for k in range(30):
        d = fi.instance(rng, mode=("over", "mixed")[k % 2])
        res = qp.solve(**d)
        if res.status != QPStatus.OPTIMAL or not (res.active_lin.any() or res.active_soc.any()):
            continue
        good = qp._bnorm
        qp._bnorm = good * 1.001
        try:
            bad = qp.solve(**d)
        finally:
            qp._bnorm = good
        assert bad.status == QPStatus.NUMERICAL, bad.kkt
        assert np.all(np.isfinite(bad.x)) and bad.message
        assert qp.solve(**d).status == QPStatus.OPTIMAL
        n_checked += 1
    assert n_checked >= 5


def test_max_iter_gives_finite_best_point(feeders):
    fi, qp = feeders("ieee33-paperB")
    rng = np.random.default_rng(2)
    for _ in range(10):
        d = fi.instance(rng, mode="over")
        res = qp.solve(**d, max_iter=1)
        assert res.status in (QPStatus.MAX_ITER, QPStatus.OPTIMAL, QPStatus.INFEASIBLE)
        assert np.all(np.isfinite(res.x)) and np.isfinite(res.objective)
        if res.status == QPStatus.MAX_ITER:
            assert res.message
            # the iterate stays in the device sets
            assert max_violation(np.zeros((0, fi.n)), np.zeros((0, 2, fi.n)), fi.n_pv, d, res.x) <= 1e-10


# =============================================================================================
# bad input
# =============================================================================================
@pytest.fixture
def small():
    fi = FeederInstances("ieee33-paperB-4", n_sc=1)
    return fi, StructuredQP(fi.n_pv, 1, fi.G, fi.A), fi.instance(np.random.default_rng(0))


@pytest.mark.parametrize("field,bad", [
    ("rp", np.zeros(3)), ("rq", "abc"), ("re", np.zeros(2)), ("h", np.zeros(5)), ("c", np.zeros((32, 3))),
    ("S", np.zeros((2, 2))),
    ("rp", [np.nan, 0, 0, 0]), ("rq", [np.inf, 0, 0, 0]), ("re", [np.nan]), ("wp", [1, 0, 1, 1]), ("we", [-1.0]),
    ("p_lo", [np.nan, 0, 0, 0]), ("p_hi", [-np.inf, 1, 1, 1]), ("q_lo", [np.inf, 0, 0, 0]), ("s", [1, np.inf, 1, 1]),
    ("s", [1, -1, 1, 1]), ("t", [np.nan, 1, 1, 1]), ("t", [-0.1, 1, 1, 1]), ("e_lo", [np.nan]), ("e_hi", [-np.inf]),
])
def test_bad_dynamic_input_names_the_field(small, field, bad):
    fi, qp, d = small
    d = dict(d)
    d[field] = bad
    with pytest.raises(InputError) as ei:
        qp.solve(**d)
    assert ei.value.field == field
    assert isinstance(ei.value, ValueError)


@pytest.mark.parametrize("field,mutate", [
    ("p_lo", lambda d: d.update(p_lo=d["p_hi"] + 0.1)),
    ("q_lo", lambda d: d.update(q_lo=np.full(4, 1.0), q_hi=np.full(4, 0.5))),
    ("e_lo", lambda d: d.update(e_lo=np.array([1.0]), e_hi=np.array([0.0]))),
    ("h", lambda d: d.update(h=np.where(np.arange(d["h"].size) == 3, np.nan, d["h"]))),
    ("c", lambda d: d.update(c=np.where(np.arange(64).reshape(32, 2) == 5, np.inf, d["c"]))),
    ("S", lambda d: d.update(S=np.where(np.arange(32) == 0, 0.0, d["S"]))),
])
def test_inconsistent_input_names_the_field(small, field, mutate):
    fi, qp, d = small
    d = {k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in d.items()}
    mutate(d)
    with pytest.raises(InputError) as ei:
        qp.solve(**d)
    assert ei.value.field == field


def test_bad_setup_and_options(small):
    fi, qp, d = small
    n = fi.n
    with pytest.raises(InputError) as ei:
        StructuredQP(fi.n_pv, 1, fi.G[:, :-1], fi.A)
    assert ei.value.field == "G"
    with pytest.raises(InputError) as ei:
        StructuredQP(fi.n_pv, 1, fi.G, fi.A[:, :1])
    assert ei.value.field == "A"
    G = fi.G.copy()
    G[0, 0] = np.nan
    with pytest.raises(InputError) as ei:
        StructuredQP(fi.n_pv, 1, G, fi.A)
    assert ei.value.field == "G"
    with pytest.raises(InputError) as ei:
        StructuredQP(-1, 1, np.zeros((0, n)), None)
    assert ei.value.field == "n_pv"
    with pytest.raises(InputError) as ei:
        qp.solve(**d, tol=0.0)
    assert ei.value.field == "tol"
    with pytest.raises(InputError) as ei:
        qp.solve(**d, max_iter=-1)
    assert ei.value.field == "max_iter"
    other = StructuredQP(fi.n_pv, 1, fi.G, fi.A)
    with pytest.raises(InputError) as ei:
        qp.solve(**d, warm=other.solve(**d).warm)
    assert ei.value.field == "warm"
    with pytest.raises(InputError) as ei:
        qp.solve(**d, warm=WarmStart(np.zeros(3), 0))
    assert ei.value.field == "warm"


def test_identical_rows_are_one_row(feeders):
    """Rows repeated in G (8 voltage rows copied with other limits, some tighter, some looser)
    are one internal row whose smallest right-hand side binds. Reference: the same problem with
    each repeated row kept once at that smallest limit. x agrees; per set of identical rows the
    multipliers sum to the reference's, and sit on one copy, one with the binding limit; on some
    instances x also agrees with CVXPY (Clarabel) on the problem with every copy."""
    fi, qp = feeders("ieee33-paperB-4")
    G2 = np.vstack([fi.G, fi.G[:8]])
    qp2 = StructuredQP(fi.n_pv, 0, G2, fi.A)
    _, grp = np.unique(G2, axis=0, return_inverse=True)
    grp = grp.reshape(-1)
    rng = np.random.default_rng(5)
    n_active = 0
    for k in range(30):
        d = fi.instance(rng, mode=("over", "mixed")[k % 2])
        h = d["h"]
        h2 = np.concatenate([h, h[:8] + np.where(np.arange(8) % 2 == 0, -0.02, 0.02) * (np.abs(h[:8]) + 1e-3)])
        h_ref = h.copy()
        h_ref[:8] = np.minimum(h[:8], h2[-8:])
        r1 = qp.solve(**{**d, "h": h_ref})
        r2 = qp2.solve(**{**d, "h": h2})
        assert r1.status == r2.status == QPStatus.OPTIMAL, (r1.message, r2.message)
        assert np.abs(r1.x - r2.x).max() <= 1e-8
        if k % 6 == 0:  # and the problem with every copy, written plainly in CVXPY (Clarabel)
            status, value, x_ref = solve_reference(G2, fi.A, fi.n_pv, 0, {**d, "h": h2})
            assert status == "optimal"
            assert np.max(np.abs(r2.x - x_ref)) <= X_TOL
        lam1 = np.concatenate([r1.lam_lin, np.zeros(8)])
        for gi in np.unique(grp):
            rows = np.flatnonzero(grp == gi)
            tot1, tot2 = lam1[rows].sum(), r2.lam_lin[rows].sum()
            assert abs(tot1 - tot2) <= 1e-6 * max(1.0, tot1)
            on = rows[r2.lam_lin[rows] > 0]
            assert on.size <= 1
            if on.size:
                assert h2[on[0]] == h2[rows].min()
                n_active += 1
    assert n_active >= 10
