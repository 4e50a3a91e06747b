"""Benchmark: per-call latency of the safety layer's projection against CVXPY written by hand.

Measures the wall time of one ``layer.project(action, snapshot)`` call of
``sd.SafetyLayer(feeder, model="lindistflow")`` and, in the same process on the same random
instances, of the same projection written as a user would in CVXPY (dense LinDistFlow, see
:func:`_dense_network` and :func:`_dense_problem`) and solved with Clarabel:

* **naive**: the problem built from scratch and solved on every call;
* **DPP**: a parametrized (DPP) problem built once; each call writes the parameters and re-solves.

On every instance the three answers are compared (objective to ``OBJ_RTOL`` relative); a
mismatch is reported loudly, since the three solve the same convex problem. The three methods
alternate call by call; ours is also timed alone (its calls back to back), and the latency
targets of the issue are printed beside the measurements (PASS / FAIL, exit status 0 either way).

**Infeasible snapshots** (no set-point satisfies the limits; :func:`_infeasible_instances`):
loads x5 to x20 (undervoltage and overloads nobody can fix) and a substation at 1.06 pu above
the 1.05 pu limit with full sun and 5 % load (overvoltage reactive power cannot fix). Ours:
``layer.project`` (the least-violating point, INFEASIBLE); against it, the least-violation
problem written by hand in CVXPY (:func:`_dense_violation_problem`: the same measure, the sum of
the squared excesses, dense LinDistFlow), a DPP problem built once and solved by Clarabel in the
same process; the minimised violations are compared (``V_RTOL``). Also timed: the first
infeasible call of a fresh layer (cold), calls with ``certify_ac=True``, and a
``TorchSafetyLayer`` batch of 64 such snapshots (the 33-bus cases).

Each thread count runs in its own subprocess, because OMP_NUM_THREADS, MKL_NUM_THREADS,
OPENBLAS_NUM_THREADS and NUMBA_NUM_THREADS are read only when numpy and numba are first
imported. The parent collects the children's rows, prints one table (the first thread count,
1 by default, is the headline; the others stand beside it in parentheses) and writes
``solver_latency.json`` and ``solver_latency.md`` atomically to the output folder.

Usage::

    python benchmarks/solver_latency.py                  # 1 and 2 threads, all cases
    python benchmarks/solver_latency.py --threads 1      # single-thread only
    python benchmarks/solver_latency.py --quick          # smoke test: fewer instances and calls
    python benchmarks/solver_latency.py --cases ieee33-paperB-4 --out /tmp/bench

The script exits 0 whether or not the latency targets are met; it exits non-zero only on an
error (and 130 when interrupted, leaving earlier result files untouched).
"""

from __future__ import annotations

import gc
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from rich.console import Console

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _harness  # noqa: E402

#: cases measured on both paths; the infeasible-only cases (capacitor banks; sheddable loads and
#: storage) are measured on infeasible snapshots only, without the CVXPY comparison (the
#: hand-written problems model neither capacitor banks nor storage nor shedding)
FULL_CASES = ("ieee33-paperB-4", "ieee33-paperB", "ieee33x30")
INFEASIBLE_ONLY_CASES = ("ieee33-paperC", "ieee33-zones")
DEFAULT_CASES = FULL_CASES + INFEASIBLE_ONLY_CASES
VERSION_OF = ("safedispatch", "numpy", "scipy", "numba", "cvxpy", "clarabel")
METHODS = ("ours", "dpp", "naive")

#: per case, (full, quick): distinct random instances, timed passes over them for ours and DPP,
#: and instances that also get a naive CVXPY call (one each, in the first pass: a naive call
#: rebuilds the problem, tens of ms on ieee33 and about 0.1 s on the 991-bus feeder)
PLAN = {
    "ieee33-paperB-4": {"instances": (300, 40), "rounds": (5, 2), "naive": (100, 20)},
    "ieee33-paperB": {"instances": (300, 40), "rounds": (5, 2), "naive": (100, 20)},
    "ieee33x30": {"instances": (100, 10), "rounds": (5, 2), "naive": (20, 3)},
}
PLAN_DEFAULT = {"instances": (100, 20), "rounds": (3, 1), "naive": (20, 5)}

#: random instances: one load scale per snapshot (times the nominal load of every bus), a PV
#: availability fraction of ``pv.p_max_mw`` per inverter, and raw set-points p in
#: [0, P_RAW_MAX] x s_mva and q in [-1, 1] x s_mva (so most raw actions need a projection)
LOAD_RANGE = (0.2, 1.2)
PV_RANGE = (0.0, 1.0)
P_RAW_MAX = 1.2

#: the objectives (squared distance, MW^2) must agree to this relative tolerance ...
OBJ_RTOL = 1e-5
#: ... of at least this magnitude: below it the comparison is absolute to OBJ_RTOL * OBJ_FLOOR =
#: 1e-8 MW^2, Clarabel's default absolute gap tolerance (the hand-written problems use Clarabel's
#: defaults, as a user would), so solver noise on a near-zero distance is not called a mismatch
OBJ_FLOOR = 1e-3

#: infeasible snapshots per case, (full, quick): instances (half heavy load, half overvoltage),
#: certified calls among them, TorchSafetyLayer batches of 64 (33-bus cases only)
PLAN_INFEASIBLE = {"instances": (40, 8), "certify": (10, 3), "torch_batches": (3, 1)}
PLAN_INFEASIBLE_LARGE = {"instances": (16, 4), "certify": (4, 2), "torch_batches": (0, 0)}
#: the least violations (ours and CVXPY's) must agree to this relative tolerance
V_RTOL = 1e-5
#: the issue's targets for infeasible snapshots: per-call median and maximum without
#: certification, maximum with it, and a batch of 64 in the torch layer
TARGETS_INFEASIBLE = {"median_s": 5e-3, "max_s": 1.0, "certify_max_s": 2.0, "torch_batch_s": 1.0}

#: the issue's latency targets, judged on ours' median per call over the compared instances
TARGETS = (
    {"case": "ieee33-paperB-4", "label": "4 inverters", "median_s": 50e-6, "op": "<="},
    {"case": "ieee33-paperB", "label": "48 inverters", "median_s": 300e-6, "op": "<="},
    {"case": "ieee33x30", "label": "~1000-bus feeder, ~100 inverters", "median_s": 10e-3, "op": "<"},
)


# ----------------------------------------------------------------------------- child process


def _dense_network(feeder) -> dict:
    """Dense LinDistFlow data of the feeder, in MW / MVAr and squared-voltage pu.

    With ``D[i, k] = 1`` iff non-root bus ``i`` lies on the root path of bus ``k`` (``k``
    included), the squared voltages are ``w = v0^2 + R p_inj + X q_inj`` with
    ``R = 2 D^T diag(r) D`` (``R[j, k]`` = 2 x the resistance shared by the root paths of ``j``
    and ``k``; ``r = r_ohm / vn_kv^2``, base 1 MVA, so injections in MW need no per-unit
    conversion), and the flow into bus ``i`` from its parent is ``P_i = -(D p_inj)_i``.

    Args:
        feeder: The feeder.

    Returns:
        ``{"R", "X"}``: ``(m, m)`` over the ``m`` non-root buses (``"bus"``, sorted);
        ``"D"``: ``(n_rated, m)`` rows of the branches with a finite rating; ``"s_max"``:
        ``(n_rated,)`` their ratings ``sqrt(3) vn_kv i_max_ka`` (MVA); ``"wmin"``, ``"wmax"``:
        ``(m,)`` squared voltage limits; ``"Bpv"``: ``(m, n_pv)`` 0/1 placement of the inverters;
        ``"line_charging_us"``: the largest ``|b_us|`` (ignored here, so the comparison is exact
        only when it is 0).
    """
    import numpy as np

    rs, br, vn = feeder.radial, feeder.branch, feeder.bus.vn_kv
    bus = np.array([b for b in range(feeder.n_bus) if rs.parent[b] >= 0], dtype=np.int64)
    m = bus.size
    pos = np.full(feeder.n_bus, -1, dtype=np.int64)
    pos[bus] = np.arange(m)
    D = np.zeros((m, m))
    for k in bus:
        i = k
        while rs.parent[i] >= 0:
            D[pos[i], pos[k]] = 1.0
            i = rs.parent[i]
    brn = rs.parent_branch[bus]
    r = br.r_ohm[brn] / vn[bus] ** 2
    x = br.x_ohm[brn] / vn[bus] ** 2
    s_max = np.sqrt(3.0) * vn[bus] * br.i_max_ka[brn]
    rated = np.isfinite(s_max)
    Bpv = np.zeros((m, feeder.n_pv))
    on = pos[feeder.pv.bus] >= 0  # an inverter at the root bus injects into the slack: no effect
    Bpv[pos[feeder.pv.bus[on]], np.flatnonzero(on)] = 1.0
    return {"bus": bus, "R": 2.0 * D.T @ (r[:, None] * D), "X": 2.0 * D.T @ (x[:, None] * D),
            "D": D[rated], "s_max": s_max[rated], "wmin": feeder.bus.vm_min_pu[bus] ** 2,
            "wmax": feeder.bus.vm_max_pu[bus] ** 2, "Bpv": Bpv, "s_pv": np.asarray(feeder.pv.s_mva, float),
            "line_charging_us": float(np.abs(br.b_us[br.in_service]).max(initial=0.0))}


def _dense_problem(net: dict, load_p, load_q, avail, raw_p, raw_q, w0):
    """The projection in CVXPY: the nearest inverter set-points that satisfy dense LinDistFlow.

    The data arguments are numpy arrays (naive: a fresh problem per call) or ``cp.Parameter``
    objects of the same shapes (DPP: built once), so both variants are literally the same model.

    Args:
        net: :func:`_dense_network`.
        load_p, load_q: ``(m,)`` consumption at the non-root buses (MW, MVAr).
        avail: ``(n_pv,)`` available PV power (MW).
        raw_p, raw_q: ``(n_pv,)`` raw set-points (MW, MVAr).
        w0: Squared root voltage (pu).

    Returns:
        ``(problem, p, q)``: the problem and its set-point variables.
    """
    import cvxpy as cp

    n_pv = net["Bpv"].shape[1]
    p, q = cp.Variable(n_pv, name="p"), cp.Variable(n_pv, name="q")
    p_inj = net["Bpv"] @ p - load_p
    q_inj = net["Bpv"] @ q - load_q
    w = w0 + net["R"] @ p_inj + net["X"] @ q_inj
    P, Q = -net["D"] @ p_inj, -net["D"] @ q_inj
    cons = [w >= net["wmin"], w <= net["wmax"], p >= 0, p <= avail,
            cp.norm(cp.vstack([p, q]), 2, axis=0) <= net["s_pv"]]
    if net["s_max"].size:
        cons.append(cp.norm(cp.vstack([P, Q]), 2, axis=0) <= net["s_max"])
    problem = cp.Problem(cp.Minimize(cp.sum_squares(p - raw_p) + cp.sum_squares(q - raw_q)), cons)
    return problem, p, q


def _model_violation(net: dict, load_p, load_q, avail, w0, p, q) -> float:
    """Largest violation of the dense model's constraints at set-points ``p, q`` (squared
    voltage pu, MVA, MW), an independent check of the layer's output."""
    import numpy as np

    pi, qi = net["Bpv"] @ p - load_p, net["Bpv"] @ q - load_q
    w = w0 + net["R"] @ pi + net["X"] @ qi
    s = np.hypot(net["D"] @ pi, net["D"] @ qi)
    parts = [w - net["wmax"], net["wmin"] - w, s - net["s_max"], -p, p - avail, np.hypot(p, q) - net["s_pv"]]
    return float(max(np.max(v, initial=0.0) for v in parts))


def _instances(feeder, net: dict, n: int, seed: int) -> list[dict]:
    """Seeded random snapshots and raw actions (see ``LOAD_RANGE``, ``PV_RANGE``, ``P_RAW_MAX``).

    Returns:
        One dict per instance: the public-API ``snapshot`` and ``action``, and the same numbers as
        plain arrays for the hand-written problems (``load_p``, ``load_q`` at the non-root buses,
        ``avail``, ``raw_p``, ``raw_q``, ``w0``).
    """
    import numpy as np

    import safedispatch as sd

    rng = np.random.default_rng(seed)
    s = feeder.pv.s_mva
    out = []
    for _ in range(n):
        snap = sd.Snapshot.nominal(feeder, load=float(rng.uniform(*LOAD_RANGE)), pv=0.0)
        snap = snap.replace(pv_avail_mw=rng.uniform(*PV_RANGE, feeder.n_pv) * feeder.pv.p_max_mw)
        act = sd.Action(pv_p_mw=rng.uniform(0.0, P_RAW_MAX, feeder.n_pv) * s,
                        pv_q_mvar=rng.uniform(-1.0, 1.0, feeder.n_pv) * s)
        out.append({"snapshot": snap, "action": act,
                    "load_p": np.asarray(snap.load_p_mw, float)[net["bus"]],
                    "load_q": np.asarray(snap.load_q_mvar, float)[net["bus"]],
                    "avail": np.asarray(snap.pv_avail_mw, float), "raw_p": np.asarray(act.pv_p_mw, float),
                    "raw_q": np.asarray(act.pv_q_mvar, float), "w0": float(snap.checked(feeder).v_root_pu) ** 2})
    return out


def _dense_violation_problem(net: dict, load_p, load_q, avail, w0):
    """The least-violation problem in CVXPY: the device-feasible inverter set-points that minimise
    the sum of the squared excesses of the dense LinDistFlow model's limits (squared voltage pu
    and MVA), the measure the safety layer documents for INFEASIBLE snapshots. Data arguments as
    for :func:`_dense_problem` (numpy arrays or ``cp.Parameter`` objects).

    Returns:
        The problem (its value is the least violation).
    """
    import cvxpy as cp

    n_pv = net["Bpv"].shape[1]
    p, q = cp.Variable(n_pv, name="p"), cp.Variable(n_pv, name="q")
    p_inj = net["Bpv"] @ p - load_p
    q_inj = net["Bpv"] @ q - load_q
    w = w0 + net["R"] @ p_inj + net["X"] @ q_inj
    viol = cp.sum_squares(cp.pos(w - net["wmax"])) + cp.sum_squares(cp.pos(net["wmin"] - w))
    if net["s_max"].size:
        P, Q = -net["D"] @ p_inj, -net["D"] @ q_inj
        viol = viol + cp.sum_squares(cp.pos(cp.norm(cp.vstack([P, Q]), 2, axis=0) - net["s_max"]))
    cons = [p >= 0, p <= avail, cp.norm(cp.vstack([p, q]), 2, axis=0) <= net["s_pv"]]
    return cp.Problem(cp.Minimize(viol), cons)


def _infeasible_instances(feeder, net: dict, n: int, seed: int) -> list[dict]:
    """Seeded snapshots no set-point can fix, alternately: loads x5 to x20 of nominal with PV at a
    random fraction (undervoltage and overloads), and a substation at 1.06 pu (above the
    1.05 pu limit) with 5 % load and PV at 80-100 % of peak (overvoltage that absorbing reactive
    power cannot undo); raw set-points uniform in the inverters' boxes.

    Returns:
        One dict per instance, as :func:`_instances` (plus ``"kind"``).
    """
    import numpy as np

    import safedispatch as sd

    rng = np.random.default_rng(seed)
    s = feeder.pv.s_mva
    out = []
    for k in range(n):
        if k % 2 == 0:
            kind = "heavy load"
            snap = sd.Snapshot.nominal(feeder, load=float(rng.uniform(5, 20)), pv=float(rng.uniform(0, 1)))
        else:
            kind = "overvoltage"
            snap = sd.Snapshot.nominal(feeder, load=0.05, pv=1.0, v_root_pu=1.06)
            snap = snap.replace(pv_avail_mw=feeder.pv.p_max_mw * rng.uniform(0.8, 1.0, feeder.n_pv))
        act = sd.Action(pv_p_mw=rng.uniform(0, 1, feeder.n_pv) * s, pv_q_mvar=rng.uniform(-1, 1, feeder.n_pv) * s)
        out.append({"kind": kind, "snapshot": snap, "action": act,
                    "load_p": np.asarray(snap.load_p_mw, float)[net["bus"]],
                    "load_q": np.asarray(snap.load_q_mvar, float)[net["bus"]],
                    "avail": np.asarray(snap.pv_avail_mw, float), "w0": float(snap.checked(feeder).v_root_pu) ** 2})
    return out


def _bench_infeasible(name: str, feeder, net: dict, quick: bool, seed: int, console: Console,
                      compare: bool = True, torch_batches: bool = True) -> dict:
    """Infeasible snapshots: ours (a fresh layer: its first call is the cold one) against the
    hand-written CVXPY least-violation problem (DPP, Clarabel), alternating call by call; then
    certified calls and TorchSafetyLayer batches of 64.

    Args:
        compare: Time and compare the hand-written CVXPY problem (False: ours only).
        torch_batches: Time TorchSafetyLayer batches (33-bus feeders of the plan only).

    Returns:
        The case's ``"infeasible"`` entry: latency statistics (ours, CVXPY, certified, torch
        batch), the cold first call, the median ratio CVXPY / ours, the status counts and the
        agreement of the least violations.
    """
    import cvxpy as cp
    import numpy as np

    import safedispatch as sd

    PS = sd.ProjectionStatus
    plan = PLAN_INFEASIBLE if feeder.n_bus < 100 else PLAN_INFEASIBLE_LARGE
    n_inst, n_cert, n_torch = (plan[k][int(quick)] for k in ("instances", "certify", "torch_batches"))
    n_torch = n_torch if torch_batches else 0
    inst = _infeasible_instances(feeder, net, n_inst + 1, seed + 1)
    cold_inst = inst.pop()
    m, n_pv = net["bus"].size, feeder.n_pv
    par = {"load_p": cp.Parameter(m), "load_q": cp.Parameter(m), "avail": cp.Parameter(n_pv), "w0": cp.Parameter()}
    with console.status(f"{name}: infeasible snapshots: set-up (layer, first call, DPP least-violation problem)"):
        layer = sd.SafetyLayer(feeder, model="lindistflow")
        t0 = time.perf_counter()
        layer.project(cold_inst["action"], cold_inst["snapshot"])
        cold = time.perf_counter() - t0
        t0 = time.perf_counter()
        prob = _dense_violation_problem(net, par["load_p"], par["load_q"], par["avail"], par["w0"])
        if not prob.is_dpp():
            raise RuntimeError(f"{name}: the least-violation problem is not DPP")

        def call_cvx(d):
            for k, v in par.items():
                v.value = d[k]
            prob.solve(solver=cp.CLARABEL)
            return prob.status, prob.value

        if compare:
            call_cvx(cold_inst)
        cvx_setup = time.perf_counter() - t0 if compare else None
    t_ours, t_cvx, counts, solvers, devs, nearest_not_solved = [], [], {}, {}, [], 0
    by_kind = {}
    with console.status(f"{name}: infeasible snapshots") as spin:
        for i, d in enumerate(inst):
            spin.update(f"{name}: infeasible snapshots, instance {i + 1}/{n_inst}")
            st = val = None
            for meth in (("ours", "cvx") if i % 2 == 0 else ("cvx", "ours")) if compare else ("ours",):
                gc.collect(1)
                t0 = time.perf_counter()
                if meth == "ours":
                    res = layer.project(d["action"], d["snapshot"])
                    dt = time.perf_counter() - t0
                    t_ours.append(dt)
                    by_kind.setdefault(d["kind"], []).append(dt)
                else:
                    st, val = call_cvx(d)
                    t_cvx.append(time.perf_counter() - t0)
            counts[res.status.name] = counts.get(res.status.name, 0) + 1
            solvers[res.solver or "(none)"] = solvers.get(res.solver or "(none)", 0) + 1
            nearest_not_solved += "least_violation_nearest" in res.info
            if res.status == PS.INFEASIBLE and st in (cp.OPTIMAL, cp.OPTIMAL_INACCURATE):
                ours_v = float(res.info["violation_sq"])
                devs.append(abs(ours_v - float(val)) / max(abs(float(val)), 1e-12))
        t_cert, cert_rounds = [], []
        for i, d in enumerate(inst[:n_cert]):
            spin.update(f"{name}: infeasible snapshots, certified, instance {i + 1}/{n_cert}")
            gc.collect(1)
            t0 = time.perf_counter()
            res = layer.project(d["action"], d["snapshot"], certify_ac=True)
            t_cert.append(time.perf_counter() - t0)
            cert_rounds.append(res.rounds)
        t_torch = []
        if n_torch:
            import torch

            tl = sd.TorchSafetyLayer(feeder)
            rng = np.random.default_rng(seed + 2)
            p0, q0 = feeder.nominal_injection()

            def batch(B):
                sc = rng.uniform(5, 20, (B, 1))
                raw = np.hstack([feeder.pv.s_mva * rng.uniform(0, 1, (B, n_pv)),
                                 feeder.pv.s_mva * rng.uniform(-1, 1, (B, n_pv))])
                return (torch.tensor(raw), torch.tensor(-p0[None] * sc), torch.tensor(-q0[None] * sc),
                        torch.tensor(feeder.pv.p_max_mw[None] * rng.uniform(0, 1, (B, n_pv))))

            tl(*batch(4))  # the torch layer's own set-up
            for b in range(n_torch):
                spin.update(f"{name}: TorchSafetyLayer batch of 64 infeasible snapshots, {b + 1}/{n_torch}")
                args = batch(64)
                gc.collect(1)
                t0 = time.perf_counter()
                _, status = tl(*args, return_status=True)
                t_torch.append(time.perf_counter() - t0)
                counts["torch_INFEASIBLE"] = counts.get("torch_INFEASIBLE", 0) + int((status == PS.INFEASIBLE).sum())
    lat = {"ours": _stats(t_ours), "cvxpy_dpp": _stats(t_cvx), "certify": _stats(t_cert),
           "torch_batch64": _stats(t_torch), **{f"ours_{k}": _stats(v) for k, v in by_kind.items()}}
    ratio = lat["cvxpy_dpp"]["median_s"] / lat["ours"]["median_s"] if lat["ours"] and lat["cvxpy_dpp"] else None
    out = {"instances": n_inst, "status_counts": counts, "ours_solver": solvers, "latency": lat,
           "cold_first_call_s": cold, "cvxpy_setup_s": cvx_setup, "ratio_median_cvxpy": ratio,
           "max_rel_dev_violation": float(max(devs, default=0.0)), "n_compared": len(devs),
           "n_violation_mismatch": int(sum(x > V_RTOL for x in devs)),
           "certify_rounds_max": max(cert_rounds, default=0), "nearest_stage_not_solved": nearest_not_solved}
    ms = lambda x: f"{x * 1e3:.2f} ms" if x is not None else "-"  # noqa: E731
    console.log(f"{name}: infeasible: median ours {ms(lat['ours'] and lat['ours']['median_s'])} (max "
                f"{ms(lat['ours'] and lat['ours']['max_s'])}, cold {ms(cold)}), CVXPY "
                f"{ms(lat['cvxpy_dpp'] and lat['cvxpy_dpp']['median_s'])}; certified max "
                f"{ms(lat['certify'] and lat['certify']['max_s'])}; torch batch of 64 "
                f"{ms(lat['torch_batch64'] and lat['torch_batch64']['median_s'])}; max rel. dev. of the least "
                f"violation {out['max_rel_dev_violation']:.1e}")
    return out


def _stats(times: list[float]) -> dict | None:
    """Median, p95 and friends of per-call times (s); None when there are none."""
    import numpy as np

    if not times:
        return None
    t = np.asarray(times)
    return {"n_calls": int(t.size), "median_s": float(np.median(t)), "p95_s": float(np.percentile(t, 95)),
            "mean_s": float(t.mean()), "min_s": float(t.min()), "max_s": float(t.max())}


def _rel_dev(a: float, b: float) -> float:
    return abs(a - b) / max(abs(a), abs(b), OBJ_FLOOR)


def _bench_case(name: str, quick: bool, seed: int, console: Console) -> dict:
    """Every measurement of one case: ours, DPP and naive per call, and the agreement checks.

    Pass 1 runs the three methods on every instance (naive on the first ``naive`` ones only) and
    compares them; passes 2.. time ours and DPP again on the comparable instances (status
    UNCHANGED or PROJECTED); then ours runs alone, the same number of passes back to back. Within
    a pass the instances are visited in turn, so no call repeats the previous call's data (the
    layer warm-starts from its previous solve), and the methods alternate their order per
    instance, so a burst of foreign load hits all of them alike.

    Returns:
        The case's row: sizes, the plan, status counts, per-method latency statistics over the
        comparable instances, ours alone and on INFEASIBLE ones, set-up times, ratios and checks.
    """
    import cvxpy as cp
    import numpy as np

    import safedispatch as sd

    PS = sd.ProjectionStatus
    feeder = sd.load_case(name)
    plan = PLAN.get(name, PLAN_DEFAULT)
    n_inst, rounds, n_naive = (plan[k][int(quick)] for k in ("instances", "rounds", "naive"))
    n_naive = min(n_naive, n_inst)

    with console.status(f"{name}: dense LinDistFlow data and {n_inst} instances"):
        net = _dense_network(feeder)
        inst = _instances(feeder, net, n_inst + 1, seed)
        warm = inst.pop()  # set-up calls use their own instance: no timed call repeats the previous data

    with console.status(f"{name}: set-up (SafetyLayer, DPP problem, first calls)"):
        t0 = time.perf_counter()
        layer = sd.SafetyLayer(feeder, model="lindistflow")
        setup_layer = time.perf_counter() - t0
        t0 = time.perf_counter()
        layer.project(warm["action"], warm["snapshot"])
        first_ours = time.perf_counter() - t0

        m, n_pv = net["bus"].size, feeder.n_pv
        par = {"load_p": cp.Parameter(m), "load_q": cp.Parameter(m), "avail": cp.Parameter(n_pv),
               "raw_p": cp.Parameter(n_pv), "raw_q": cp.Parameter(n_pv), "w0": cp.Parameter()}
        t0 = time.perf_counter()
        dpp, dp, dq = _dense_problem(net, par["load_p"], par["load_q"], par["avail"], par["raw_p"],
                                     par["raw_q"], par["w0"])
        if not dpp.is_dpp():
            raise RuntimeError(f"{name}: the parametrized problem is not DPP; CVXPY would recompile every call")
        setup_dpp = time.perf_counter() - t0

        def call_dpp(d):
            for k, v in par.items():
                v.value = d[k]
            dpp.solve(solver=cp.CLARABEL)
            return dpp.status, dpp.value, dp.value, dq.value

        def call_naive(d):
            prob, p, q = _dense_problem(net, d["load_p"], d["load_q"], d["avail"], d["raw_p"], d["raw_q"], d["w0"])
            prob.solve(solver=cp.CLARABEL)
            return prob.status, prob.value, p.value, q.value

        t0 = time.perf_counter()
        call_dpp(warm)  # the first solve compiles the parameter-to-data map
        first_dpp = time.perf_counter() - t0
        t0 = time.perf_counter()
        call_naive(warm)  # CVXPY's own lazy imports and caches, not what we time
        first_naive = time.perf_counter() - t0
    console.log(f"{name}: {feeder.n_bus} buses, {n_pv} inverters; set-up: layer {setup_layer:.2f} s + first call "
                f"{first_ours:.2f} s, DPP build {setup_dpp:.2f} s + first solve {first_dpp:.2f} s, naive first call "
                f"{first_naive:.2f} s")

    # Garbage collection must not bill one method for another's garbage: the heap built so far
    # (libraries, the layer, the DPP problem) is frozen once, so an automatic full collection does
    # not re-traverse it inside a timed call, and every timed call starts with empty young
    # generations (gc.collect(1), untimed), so it pays only for collections its own allocations set off
    gc.collect()
    gc.freeze()
    times = {k: [] for k in METHODS}
    times_infeasible, times_alone = [], []
    status, obj = [None] * n_inst, {k: [None] * n_inst for k in METHODS}
    cvx_status = {"dpp": {}, "naive": {}}
    solvers = {}  # res.solver of ours' pass-1 calls: which path answered
    checks = {"status_mismatch": [], "obj_mismatch": [], "max_rel_dev": {"dpp": 0.0, "naive": 0.0},
              "max_rel_dev_dpp_naive": 0.0, "max_violation_ours": 0.0, "max_objective_field_dev": 0.0,
              "max_repeat_dev": 0.0}

    def count(method, st):
        cvx_status[method][st] = cvx_status[method].get(st, 0) + 1

    with console.status(f"{name}: pass 1/{rounds}") as spin:
        for i, d in enumerate(inst):
            if i % 10 == 0:
                spin.update(f"{name}: pass 1/{rounds} (all three, compared), instance {i + 1}/{n_inst}")
            # ours first (its status decides whether naive runs), then the CVXPY pair in turn
            out = {}
            for meth in ("ours", *(("dpp", "naive") if i % 2 == 0 else ("naive", "dpp"))):
                if meth == "naive" and (i >= n_naive or status[i] not in (PS.UNCHANGED, PS.PROJECTED)):
                    continue
                gc.collect(1)
                t0 = time.perf_counter()
                if meth == "ours":
                    r = layer.project(d["action"], d["snapshot"])
                elif meth == "dpp":
                    r = call_dpp(d)
                else:
                    r = call_naive(d)
                out[meth] = (r, time.perf_counter() - t0)
                if meth == "ours":
                    status[i] = r.status

            res, t_ours = out["ours"]
            st = res.status
            solvers[res.solver or "(none)"] = solvers.get(res.solver or "(none)", 0) + 1
            feasible = st in (PS.UNCHANGED, PS.PROJECTED)
            pa, qa = np.asarray(res.action.pv_p_mw, float), np.asarray(res.action.pv_q_mvar, float)
            dist = float(np.sum((pa - d["raw_p"]) ** 2 + (qa - d["raw_q"]) ** 2))
            for meth in ("dpp", "naive"):
                if meth in out:
                    count(meth, out[meth][0][0])
                    cvx_ok = out[meth][0][0] in (cp.OPTIMAL, cp.OPTIMAL_INACCURATE)
                    if cvx_ok != feasible:
                        checks["status_mismatch"].append({"instance": i, "ours": st.name, meth: out[meth][0][0]})
            if not feasible:
                times_infeasible.append(t_ours)
                continue
            times["ours"].append(t_ours)
            obj["ours"][i] = dist
            checks["max_objective_field_dev"] = max(checks["max_objective_field_dev"], _rel_dev(res.objective, dist))
            checks["max_violation_ours"] = max(checks["max_violation_ours"], _model_violation(
                net, d["load_p"], d["load_q"], d["avail"], d["w0"], pa, qa))
            for meth in ("dpp", "naive"):
                if meth not in out:
                    continue
                (cst, cval, _, _), t = out[meth]
                times[meth].append(t)
                if cst not in (cp.OPTIMAL, cp.OPTIMAL_INACCURATE):
                    continue
                obj[meth][i] = float(cval)
                dev = _rel_dev(dist, float(cval))
                checks["max_rel_dev"][meth] = max(checks["max_rel_dev"][meth], dev)
                if dev > OBJ_RTOL:
                    checks["obj_mismatch"].append({"instance": i, "method": meth, "ours": dist, meth: float(cval),
                                                   "rel_dev": dev, "status": st.name})
            if obj["naive"][i] is not None and obj["dpp"][i] is not None:
                checks["max_rel_dev_dpp_naive"] = max(checks["max_rel_dev_dpp_naive"],
                                                      _rel_dev(obj["dpp"][i], obj["naive"][i]))

        comparable = [i for i in range(n_inst) if status[i] in (PS.UNCHANGED, PS.PROJECTED)]
        for rnd in range(1, rounds):
            for j, i in enumerate(comparable):
                if j % 10 == 0:
                    spin.update(f"{name}: pass {rnd + 1}/{rounds} (ours and DPP), instance {j + 1}/{len(comparable)}")
                d = inst[i]
                for meth in (("ours", "dpp") if (rnd + j) % 2 == 0 else ("dpp", "ours")):
                    gc.collect(1)
                    t0 = time.perf_counter()
                    r = layer.project(d["action"], d["snapshot"]) if meth == "ours" else call_dpp(d)
                    times[meth].append(time.perf_counter() - t0)
                    if meth == "ours":
                        pa, qa = np.asarray(r.action.pv_p_mw, float), np.asarray(r.action.pv_q_mvar, float)
                        again = float(np.sum((pa - d["raw_p"]) ** 2 + (qa - d["raw_q"]) ** 2))
                        checks["max_repeat_dev"] = max(checks["max_repeat_dev"], _rel_dev(again, obj["ours"][i]))
            if rnd == 1:  # ours' other code path (soft solves), once per instance that needs it
                for i in [i for i in range(n_inst) if status[i] not in (PS.UNCHANGED, PS.PROJECTED)]:
                    gc.collect(1)
                    t0 = time.perf_counter()
                    layer.project(inst[i]["action"], inst[i]["snapshot"])
                    times_infeasible.append(time.perf_counter() - t0)
        # ours alone: the same calls back to back, without CVXPY's work between them evicting the
        # layer's data from the caches (closer to a controller loop that only projects)
        for rnd in range(rounds):
            for j, i in enumerate(comparable):
                if j % 10 == 0:
                    spin.update(f"{name}: ours alone, pass {rnd + 1}/{rounds}, instance {j + 1}/{len(comparable)}")
                gc.collect(1)
                t0 = time.perf_counter()
                layer.project(inst[i]["action"], inst[i]["snapshot"])
                times_alone.append(time.perf_counter() - t0)

    gc.unfreeze()
    counts = {s.name: sum(1 for x in status if x == s) for s in PS}
    lat = {k: _stats(v) for k, v in times.items()}
    ratio = {k: (lat[k]["median_s"] / lat["ours"]["median_s"]) if lat[k] and lat["ours"] else None
             for k in ("dpp", "naive")}
    ratio_p95 = {k: (lat[k]["p95_s"] / lat["ours"]["p95_s"]) if lat[k] and lat["ours"] else None
                 for k in ("dpp", "naive")}
    checks["n_compared"] = {k: sum(1 for v in obj[k] if v is not None) for k in ("dpp", "naive")}
    checks["n_obj_mismatch"] = len(checks["obj_mismatch"])
    checks["n_status_mismatch"] = len(checks["status_mismatch"])
    checks["obj_mismatch"] = checks["obj_mismatch"][:20]
    checks["status_mismatch"] = checks["status_mismatch"][:20]
    checks["cvxpy_status"] = cvx_status
    objs = [v for v in obj["ours"] if v is not None]
    row = {
        "case": name, "n_bus": feeder.n_bus, "n_pv": n_pv, "instances": n_inst, "rounds": rounds,
        "naive_instances": n_naive, "status_counts": counts, "ours_solver": solvers, "latency": lat,
        "latency_ours_infeasible": _stats(times_infeasible), "latency_ours_alone": _stats(times_alone),
        "ratio_median": ratio, "ratio_p95": ratio_p95,
        "setup_s": {"layer_init": setup_layer, "layer_first_call": first_ours, "dpp_build": setup_dpp,
                    "dpp_first_solve": first_dpp, "naive_first_call": first_naive},
        "objective_mw2": {"median": float(np.median(objs)) if objs else None,
                          "min": float(np.min(objs)) if objs else None},
        "line_charging_us": net["line_charging_us"], "checks": checks,
        "infeasible": _bench_infeasible(name, feeder, net, quick, seed, console),
    }
    ms = lambda s: f"{s * 1e3:.3f} ms" if s is not None else "-"  # noqa: E731
    console.log(f"{name}: median ours {ms(lat['ours'] and lat['ours']['median_s'])}, DPP "
                f"{ms(lat['dpp'] and lat['dpp']['median_s'])}, naive {ms(lat['naive'] and lat['naive']['median_s'])}; "
                f"statuses {counts}; max rel. objective deviation DPP {checks['max_rel_dev']['dpp']:.1e}, "
                f"naive {checks['max_rel_dev']['naive']:.1e}")
    if checks["n_obj_mismatch"] or checks["n_status_mismatch"]:
        console.log(f"[bold red]{name}: THE LAYER DISAGREES WITH CVXPY: {checks['n_obj_mismatch']} objective and "
                    f"{checks['n_status_mismatch']} status mismatches[/bold red]")
    return row


def _bench_infeasible_only(name: str, quick: bool, seed: int, console: Console) -> dict:
    """A case measured on infeasible snapshots only (see ``INFEASIBLE_ONLY_CASES``)."""
    import safedispatch as sd

    feeder = sd.load_case(name)
    net = _dense_network(feeder)
    return {"case": name, "n_bus": feeder.n_bus, "n_pv": feeder.n_pv, "infeasible_only": True,
            "infeasible": _bench_infeasible(name, feeder, net, quick, seed, console, compare=False,
                                            torch_batches=feeder.n_cap == 0 and not feeder.load.sheddable.any())}


def _child(args) -> int:
    """Measure every case at one thread count and write the rows as JSON to ``args.child_json``."""
    def one(name, console):
        if name in INFEASIBLE_ONLY_CASES:
            return [_bench_infeasible_only(name, args.quick, args.seed, console)]
        return [_bench_case(name, args.quick, args.seed, console)]

    return _harness.run_child(args, one)


def _full(rows: list[dict]) -> list[dict]:
    """The rows measured on both paths (not the infeasible-only cases)."""
    return [r for r in rows if not r.get("infeasible_only")]


# ----------------------------------------------------------------------------- parent process


def _fmt_time(s: float) -> str:
    if s < 1e-3:
        return f"{s * 1e6:.0f} us"
    if s < 1.0:
        return f"{s * 1e3:.2f} ms"
    return f"{s:.2f} s"


def _get(r: dict, *path):
    for k in path:
        if r is None:
            return None
        r = r.get(k)
    return r


def _tables(runs: list[dict]) -> tuple[list, list, list, list]:
    """Rows of the latency table and of the checks table, keyed on the headline run's cases."""
    by_thread = [{r["case"]: r for r in _full(run["rows"])} for run in runs]
    lat_head = ["case", "buses", "inverters", "calls (ours/DPP/naive)", "ours median (interleaved)", "ours p95",
                "DPP median", "DPP p95", "naive median", "naive p95", "naive / ours", "DPP / ours",
                "ours median back to back"]
    check_head = ["case", "UNCHANGED / PROJECTED / INFEASIBLE", "ours answered by", "compared (DPP/naive)",
                  "max rel dev DPP", "max rel dev naive", "mismatches (objective/status)", "max model violation ours",
                  "ours on INFEASIBLE (median)", "set-up: layer + 1st call / DPP build + 1st solve"]
    lat, checks = [], []
    for case, row in by_thread[0].items():
        same = [bt.get(case) for bt in by_thread]

        def col(*path, same=same):
            return [_get(r, *path) for r in same]

        n_calls = "/".join(str(_get(row, "latency", k, "n_calls") or 0) for k in METHODS)
        lat.append([case, str(row["n_bus"]), str(row["n_pv"]), n_calls,
                    _harness.cells(col("latency", "ours", "median_s"), _fmt_time),
                    _harness.cells(col("latency", "ours", "p95_s"), _fmt_time),
                    _harness.cells(col("latency", "dpp", "median_s"), _fmt_time),
                    _harness.cells(col("latency", "dpp", "p95_s"), _fmt_time),
                    _harness.cells(col("latency", "naive", "median_s"), _fmt_time),
                    _harness.cells(col("latency", "naive", "p95_s"), _fmt_time),
                    _harness.cells(col("ratio_median", "naive"), _harness.fmt_ratio),
                    _harness.cells(col("ratio_median", "dpp"), _harness.fmt_ratio),
                    _harness.cells(col("latency_ours_alone", "median_s"), _fmt_time)])
        present = [r for r in same if r is not None]
        c = row["status_counts"]
        n = max(1, row["instances"])
        shares = " / ".join(f"{c.get(k, 0) / n:.0%}" for k in ("UNCHANGED", "PROJECTED", "INFEASIBLE"))
        if c.get("SOLVER_FAILED"):
            shares += f" (+{c['SOLVER_FAILED'] / n:.0%} SOLVER_FAILED)"
        mism = (sum(r["checks"]["n_obj_mismatch"] for r in present),
                sum(r["checks"]["n_status_mismatch"] for r in present))
        s = row["setup_s"]
        by = ", ".join(f"{k} {v / n:.0%}" for k, v in sorted(row["ours_solver"].items(), key=lambda kv: -kv[1]))
        checks.append([case, shares, by,
                       f"{row['checks']['n_compared']['dpp']}/{row['checks']['n_compared']['naive']}",
                       f"{max(r['checks']['max_rel_dev']['dpp'] for r in present):.1e}",
                       f"{max(r['checks']['max_rel_dev']['naive'] for r in present):.1e}",
                       f"{mism[0]}/{mism[1]}" + (" MISMATCH" if any(mism) else ""),
                       f"{max(r['checks']['max_violation_ours'] for r in present):.1e}",
                       _fmt_time(row["latency_ours_infeasible"]["median_s"]) if row["latency_ours_infeasible"]
                       else "-",
                       f"{s['layer_init'] + s['layer_first_call']:.2f} s / "
                       f"{s['dpp_build'] + s['dpp_first_solve']:.2f} s"])
    return lat_head, lat, check_head, checks


def _infeasible_table(runs: list[dict]) -> tuple[list, list]:
    """Rows of the infeasible-snapshot table, keyed on the headline run's cases."""
    by_thread = [{r["case"]: r for r in run["rows"]} for run in runs]
    head = ["case", "instances: statuses (answered by)", "ours median", "ours median: heavy load / overvoltage",
            "ours p95", "ours max", "ours cold first call", "CVXPY least violation (DPP) median", "CVXPY / ours",
            "max rel dev of the least violation", "certified median / max (rounds at most)",
            "TorchSafetyLayer batch of 64"]
    rows = []
    for case in by_thread[0]:
        same = [bt.get(case) for bt in by_thread]
        inf = [_get(r, "infeasible") for r in same]
        if inf[0] is None:
            continue

        def col(*path, inf=inf):
            return [_get(r, *path) for r in inf]

        kinds = []
        for r in inf:
            a, b = _get(r, "latency", "ours_heavy load", "median_s"), _get(r, "latency", "ours_overvoltage", "median_s")
            kinds.append(None if a is None or b is None else f"{_fmt_time(a)} / {_fmt_time(b)}")
        head_inf = inf[0]
        st = ", ".join(f"{k} {v}" for k, v in sorted(head_inf["status_counts"].items()) if not k.startswith("torch"))
        by = ", ".join(f"{k} {v}" for k, v in sorted(head_inf["ours_solver"].items(), key=lambda kv: -kv[1]))
        present = [r for r in inf if r is not None]
        cert = []
        for r in inf:
            c = _get(r, "latency", "certify")
            cert.append(None if c is None else f"{_fmt_time(c['median_s'])} / {_fmt_time(c['max_s'])} "
                                               f"({r['certify_rounds_max']})")
        rows.append([case, f"{head_inf['instances']}: {st} ({by})",
                     _harness.cells(col("latency", "ours", "median_s"), _fmt_time),
                     _harness.cells(kinds, str),
                     _harness.cells(col("latency", "ours", "p95_s"), _fmt_time),
                     _harness.cells(col("latency", "ours", "max_s"), _fmt_time),
                     _harness.cells(col("cold_first_call_s"), _fmt_time),
                     _harness.cells(col("latency", "cvxpy_dpp", "median_s"), _fmt_time),
                     _harness.cells(col("ratio_median_cvxpy"), _harness.fmt_ratio),
                     (f"{max(r['max_rel_dev_violation'] for r in present):.1e}"
                      + (" MISMATCH" if any(r["n_violation_mismatch"] for r in present) else ""))
                     if any(r["n_compared"] for r in present) else "-",
                     _harness.cells(cert, str),
                     _harness.cells(col("latency", "torch_batch64", "median_s"), _fmt_time)])
    return head, rows


def _infeasible_target_lines(runs: list[dict]) -> tuple[list[str], list[dict]]:
    """The issue's targets for infeasible snapshots, per case and thread count: PASS or FAIL."""
    t = TARGETS_INFEASIBLE
    lines, out = [], []
    for case in [r["case"] for r in runs[0]["rows"] if r.get("infeasible")]:
        parts, res = [], []
        for run in runs:
            inf = _get(next((r for r in run["rows"] if r["case"] == case), None), "infeasible")
            if inf is None:
                continue
            lat = inf["latency"]
            checks = {"median": (lat["ours"]["median_s"], t["median_s"]), "max": (lat["ours"]["max_s"], t["max_s"]),
                      "certified max": (_get(lat, "certify", "max_s"), t["certify_max_s"]),
                      "torch batch of 64": (_get(lat, "torch_batch64", "max_s"), t["torch_batch_s"])}
            verdicts = {k: None if v is None else ("PASS" if v <= lim else "FAIL") for k, (v, lim) in checks.items()}
            res.append({"threads": run["threads"], **{k: {"value_s": v, "limit_s": lim, "verdict": verdicts[k]}
                                                       for k, (v, lim) in checks.items()}})
            parts.append(f"{run['threads']} thread{'s' if run['threads'] != 1 else ''}: " + ", ".join(
                f"{k} {_fmt_time(v)} {verdicts[k]}" for k, (v, _lim) in checks.items() if v is not None))
        out.append({"case": case, "results": res})
        lines.append(f"Infeasible snapshots, {case} (median <= {_fmt_time(t['median_s'])}, max <= "
                     f"{_fmt_time(t['max_s'])}, certified <= {_fmt_time(t['certify_max_s'])}, torch batch of 64 <= "
                     f"{_fmt_time(t['torch_batch_s'])}): " + "; ".join(parts))
    return lines, out


def _targets(runs: list[dict]) -> list[dict]:
    """Each latency target per thread count: PASS, FAIL or not measured."""
    out = []
    for t in TARGETS:
        per = []
        for run in runs:
            row = next((r for r in run["rows"] if r["case"] == t["case"]), None)
            med = _get(row, "latency", "ours", "median_s")
            p95 = _get(row, "latency", "ours", "p95_s")
            alone = _get(row, "latency_ours_alone", "median_s")

            def meets(x, t=t):
                return x <= t["median_s"] if t["op"] == "<=" else x < t["median_s"]

            per.append({"threads": run["threads"], "median_s": med, "p95_s": p95, "alone_median_s": alone,
                        "verdict": "not measured" if med is None else ("PASS" if meets(med) else "FAIL"),
                        "verdict_alone": None if alone is None else ("PASS" if meets(alone) else "FAIL")})
        out.append({**t, "results": per})
    return out


def _target_lines(targets: list[dict]) -> list[str]:
    lines = []
    for t in targets:
        parts = []
        for r in t["results"]:
            head = f"{r['threads']} thread{'s' if r['threads'] != 1 else ''}: "
            if r["median_s"] is None:
                parts.append(head + r["verdict"])
                continue
            alone = "" if r["alone_median_s"] is None else (f"back to back {_fmt_time(r['alone_median_s'])}"
                                                            f" {r['verdict_alone']}, ")
            parts.append(head + alone + f"interleaved with CVXPY {_fmt_time(r['median_s'])} (p95 "
                         f"{_fmt_time(r['p95_s'])}) {r['verdict']}")
        lines.append(f"Target: {t['label']} ({t['case']}): median {t['op']} {_fmt_time(t['median_s'])}. "
                     + "; ".join(parts))
    return lines


def _notes(runs: list[dict]) -> list[str]:
    """Things a reader of the table should know: disagreements (loudly), a busy machine, line
    charging the hand-written model ignores, cells with few calls."""
    notes = []
    for run in runs:
        n = run["threads"]
        for r in _full(run["rows"]):
            c = r["checks"]
            if c["n_obj_mismatch"]:
                worst = max(c["obj_mismatch"], key=lambda e: e["rel_dev"])
                notes.append(f"MISMATCH ({n}-thread run, {r['case']}): on {c['n_obj_mismatch']} instances the layer's "
                             f"distance differs from CVXPY's by more than {OBJ_RTOL:g} relative (worst: instance "
                             f"{worst['instance']}, ours {worst['ours']:.8g} vs {worst['method']} "
                             f"{worst[worst['method']]:.8g} MW^2, status {worst['status']}). That is a bug in the "
                             "layer (or in this script's model): see checks.obj_mismatch in the JSON.")
            if c["n_status_mismatch"]:
                notes.append(f"MISMATCH ({n}-thread run, {r['case']}): on {c['n_status_mismatch']} solves the layer's "
                             "feasibility verdict differs from CVXPY's: see checks.status_mismatch in the JSON.")
            if c["max_objective_field_dev"] > OBJ_RTOL:
                notes.append(f"{n}-thread run, {r['case']}: res.objective differs from the squared distance of "
                             f"res.action to the raw action by up to {c['max_objective_field_dev']:.1e} relative.")
            if c["max_repeat_dev"] > OBJ_RTOL:
                notes.append(f"{n}-thread run, {r['case']}: projecting the same instance again gave a distance "
                             f"{c['max_repeat_dev']:.1e} (relative) away from the first answer.")
            if c["max_violation_ours"] > 1e-6:
                notes.append(f"{n}-thread run, {r['case']}: the layer's actions violate the hand-written dense "
                             f"LinDistFlow model by up to {c['max_violation_ours']:.1e} (pu / MVA / MW).")
        foreign = run.get("foreign_cpu_share")
        if foreign is not None and foreign >= _harness.FOREIGN_CPU_NOTE:
            notes.append(f"{n}-thread run: other processes used {foreign:.0%} of the machine's CPU time meanwhile, "
                         "so its figures may be high and noisy (p95 most of all).")
    for run in runs[1:]:
        for r in _full(run["rows"]):
            head = next((h for h in runs[0]["rows"] if h["case"] == r["case"]), None)
            a, b = _get(head, "latency", "ours", "median_s"), _get(r, "latency", "ours", "median_s")
            if a and b and b > 1.5 * a:
                notes.append(f"{r['case']}: ours is {b / a:.1f}x slower with {run['threads']} threads than with "
                             f"{runs[0]['threads']}: more threads only add contention here (BLAS threads on a busy or "
                             "small machine wait for each other).")
    for run in runs:
        for r in run["rows"]:
            inf = r.get("infeasible") or {}
            if inf.get("n_violation_mismatch"):
                notes.append(f"MISMATCH ({run['threads']}-thread run, {r['case']}): on {inf['n_violation_mismatch']} "
                             f"infeasible snapshots the layer's least violation differs from CVXPY's by more than "
                             f"{V_RTOL:g} relative (up to {inf['max_rel_dev_violation']:.1e}).")
            if inf.get("nearest_stage_not_solved"):
                notes.append(f"{run['threads']}-thread run, {r['case']}: on {inf['nearest_stage_not_solved']} of "
                             f"{inf['instances']} infeasible snapshots the nearest-point stage did not converge; the "
                             "layer returned its least-violating point (same least violation, not the nearest).")
    for r in _full(runs[0]["rows"]) if runs else []:
        if r["line_charging_us"] > 0:
            notes.append(f"{r['case']} has line charging (up to {r['line_charging_us']:g} uS), which the hand-written "
                         "model ignores: objective deviations there are expected.")
        n_naive = _get(r, "latency", "naive", "n_calls") or 0
        if n_naive < 20:
            notes.append(f"{r['case']}: naive CVXPY timed over {n_naive} calls only (it rebuilds the problem each "
                         "call), so its p95 is rough.")
    return notes


def _markdown(report: dict, lat_head, lat, check_head, checks, target_lines: list[str], inf_head=None, inf_rows=None,
              inf_lines=()) -> str:
    md = _harness.md_intro(report, "Projection latency: `SafetyLayer.project` vs hand-written CVXPY (Clarabel)")
    md += [
        f"Wall time per call over the instances all three can answer (status UNCHANGED or PROJECTED). Each cell: "
        f"{_harness.md_threads(report['settings']['threads'])}"
        ". ours: `layer.project(action, snapshot)` of `sd.SafetyLayer(feeder, model=\"lindistflow\")`; DPP: a "
        "parametrized CVXPY problem built once, parameters written and re-solved per call; naive: the CVXPY problem "
        "built and solved per call. Both CVXPY variants: dense LinDistFlow, Clarabel with default settings. The "
        "three alternate call by call; \"ours alone\" repeats ours' calls back to back, without CVXPY's work "
        "between them (\"ours median back to back\").", "",
        _harness.md_table(lat_head, lat), "",
    ]
    md += ["Each target is judged on two medians, both stated: back to back (ours' calls one after another, the "
           "steady-state per-call latency that timeit reports) and interleaved (each of ours' calls follows a CVXPY "
           "solve, whose milliseconds of Python work evict caches and branch history, so the call starts cold). "
           "The ratios against CVXPY use the interleaved figures of both sides.", ""]
    md += [f"**{ln}**" + "  " for ln in target_lines] + [""]
    if inf_rows:
        md += ["## Infeasible snapshots", "",
               "Snapshots no set-point can fix (half with loads x5 to x20, half with the substation at 1.06 pu above "
               "the 1.05 pu limit, 5 % load and full sun): ours returns the least-violating point (status INFEASIBLE; "
               "the measure is the sum of the squared excesses of the model's limits). Against it, the same "
               "least-violation problem written by hand in CVXPY (dense LinDistFlow, a DPP problem built once, "
               "Clarabel with default settings), alternating call by call; the least violations are compared. "
               "\"cold first call\": the first infeasible call of a fresh layer (numba kernels loaded from their "
               "cache). Certified: `certify_ac=True` on the first instances. TorchSafetyLayer: batches of 64 "
               "heavy-load snapshots (33-bus cases). Each cell: "
               + _harness.md_threads(report["settings"]["threads"]) + ".", "",
               _harness.md_table(inf_head, inf_rows), ""]
        md += [f"**{ln}**" + "  " for ln in inf_lines] + [""]
    md += ["## Checks", "",
           f"Objectives are the squared distance (MW^2) between the raw and the safe set-points; deviations are "
           f"relative, |a - b| / max(|a|, |b|, {OBJ_FLOOR:g}), and a deviation above {OBJ_RTOL:g} is a mismatch. "
           "\"max model violation ours\" is the largest violation of the hand-written model's constraints at the "
           "layer's action. Status shares are over all instances; the latency table skips INFEASIBLE ones.", "",
           _harness.md_table(check_head, checks), ""]
    md += _harness.md_notes(report)
    return "\n".join(md)


def _parse(argv):
    return _harness.parse_args(__doc__, argv, quick_help="fewer instances and calls (smoke test)",
                               default_cases=DEFAULT_CASES, stem="solver_latency",
                               seed_help="seed of the random instances (default: 0)")


def main(argv=None) -> int:
    """Run the benchmark (or, with the internal ``--child-json``, one thread count of it)."""
    args = _parse(argv)
    out = _harness.parent_or_child(__file__, args, _child, VERSION_OF, width=240)
    if isinstance(out, int):
        return out
    console, t_start, machine, threads, runs = out

    targets = _targets(runs)
    tlines = _target_lines(targets)
    lat_head, lat, check_head, checks = _tables(runs)
    inf_head, inf_rows = _infeasible_table(runs)
    inf_lines, inf_targets = _infeasible_target_lines(runs)
    quick = int(args.quick)
    report = {
        "benchmark": "solver_latency",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "wall_s": time.perf_counter() - t_start,
        "machine": machine,
        "settings": {"mode": "quick" if args.quick else "full", "threads": threads, "cases": args.cases,
                     "seed": args.seed, "plan": {c: {k: v[quick] for k, v in PLAN.get(c, PLAN_DEFAULT).items()}
                                                 for c in args.cases},
                     "load_scale_range": LOAD_RANGE, "pv_fraction_range": PV_RANGE, "p_raw_max_x_s_mva": P_RAW_MAX,
                     "obj_rtol": OBJ_RTOL, "obj_floor_mw2": OBJ_FLOOR, "cvxpy_solver": "CLARABEL (default settings)",
                     "infeasible": {"plan": {k: v[quick] for k, v in PLAN_INFEASIBLE.items()},
                                    "plan_large_feeders": {k: v[quick] for k, v in PLAN_INFEASIBLE_LARGE.items()},
                                    "v_rtol": V_RTOL, "targets": TARGETS_INFEASIBLE},
                     "thread_env_vars": _harness.THREAD_VARS},
        "targets": targets,
        "targets_infeasible": inf_targets,
        "notes": _notes(runs),
        "runs": runs,
    }

    _harness.print_table(console, "Latency per projection call: " + _harness.threads_title(threads), lat_head, lat)
    for ln in tlines:
        console.print(f"[bold]{ln}[/bold]")
    _harness.print_table(console, "Infeasible snapshots (least-violating point): " + _harness.threads_title(threads),
                         inf_head, inf_rows)
    for ln in inf_lines:
        console.print(f"[bold]{ln}[/bold]")
    _harness.print_table(console, "Checks (objective = squared distance raw -> safe, MW^2)", check_head, checks)
    for note in report["notes"]:
        style = "bold red" if note.startswith("MISMATCH") else "yellow"
        console.print(f"[{style}]note: {note}[/{style}]")
    _harness.print_warnings(console, runs)

    md = _markdown(report, lat_head, lat, check_head, checks, tlines, inf_head, inf_rows, inf_lines)
    _harness.write_results(console, args.out, "solver_latency", report, md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
