"""Benchmark: time per snapshot of every baseline next to pandapower's AC OPF (runopp).

On the same seeded snapshots of each case, in one process per thread count, times one call of:

* **socp**: ``SnapshotOPF(feeder, "socp", objective="losses").solve(snap)`` (built once; each
  call updates DPP parameters, solves with Clarabel and checks the set-points by AC power flow);
* **lindistflow**: the same with ``model="lindistflow"``;
* **mip**: ``SnapshotMIP(feeder).solve(snap)`` (paper B's snapshot MIP; its build time, once per
  feeder, is reported separately);
* **admm**: ``ZonalADMM(feeder, zones, executor=SerialExecutor(), warm_start=False).solve(snap)``
  (LinDistFlow, losses; zones from ``subtree_zones(feeder, 8)`` when the case has one zone);
* **droop**: ``VoltVarDroop(feeder).act(snap)`` (IEEE 1547-2018 category B at its AC equilibrium);
* **none**: ``NoControl(feeder).act(snap)``;
* **runopp**: ``pandapower.runopp`` on a net built once (the build is not timed): each call
  writes the snapshot's loads and PV availability into the net first, with the same
  controllable inverters and limits as the OPF tests (P in [0, avail], |Q| <= s, voltage and
  line limits, cost = slack import + PV = loads + losses) and ``PDIPM_COSTTOL=1e-9`` as the tests.

Objectives are compared per snapshot: the SOCP OPF's AC losses at its set-points against
runopp's losses (same or better: ours <= runopp x (1 + SAME_RTOL)). Targets of the issue,
printed PASS / FAIL (exit 0 either way): SOCP OPF median at least 50x faster than runopp on
every case with the same or better objective; snapshot MIP solve median under 10 ms.

Usage::

    python benchmarks/snapshot_solvers.py               # 1 and 2 threads, three ieee33 variants
    python benchmarks/snapshot_solvers.py --quick       # smoke test: 4 snapshots per case
    python benchmarks/snapshot_solvers.py --threads 1 --cases ieee33-paperB-4

Each thread count runs in its own subprocess (see ``_harness.py``); results go atomically to
``benchmarks/results/snapshot_solvers.{json,md}``; Ctrl-C leaves earlier results untouched.
"""

from __future__ import annotations

import sys
import time
import warnings
from datetime import datetime, timezone
from pathlib import Path

from rich.console import Console
from rich.progress import Progress

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _harness  # noqa: E402

STEM = "snapshot_solvers"
DEFAULT_CASES = ("ieee33-paperB-4", "ieee33-paperC", "ieee33-paperB")
VERSION_OF = ("safedispatch", "numpy", "scipy", "numba", "cvxpy", "clarabel", "pyomo", "highspy", "pandapower")
METHODS = ("socp", "lindistflow", "mip", "admm", "droop", "none", "runopp")
#: snapshots per case (full, quick)
N_SNAP = (15, 4)
LOAD_RANGE = (0.4, 1.1)
PV_RANGE = (0.3, 1.0)
#: "same" objective: ours within this relative margin above runopp's
SAME_RTOL = 1e-5
SPEEDUP_TARGET = 50.0
MIP_TARGET_S = 10e-3


# ----------------------------------------------------------------------------- child process


def _runopp_net(feeder, snap):
    """The pandapower OPF net of the tests (built once per case)."""
    import pandapower as pp

    import safedispatch as sd

    snap = snap.checked(feeder)
    shunt = feeder.cap_shunt_q_mvar(feeder.cap.step_init) if feeder.n_cap else None
    p, q = feeder.nominal_injection()
    net = sd.to_pandapower(feeder, p, q, shunt_q_mvar=shunt)
    net.line["max_loading_percent"] = 100.0
    for k in range(feeder.n_pv):
        s = float(feeder.pv.s_mva[k])
        pp.create_sgen(net, int(feeder.pv.bus[k]), p_mw=0.0, q_mvar=0.0, controllable=True, max_p_mw=0.0,
                       min_p_mw=0.0, max_q_mvar=s, min_q_mvar=-s)
    pp.create_poly_cost(net, 0, "ext_grid", cp1_eur_per_mw=1.0)
    for k in range(feeder.n_pv):
        pp.create_poly_cost(net, k, "sgen", cp1_eur_per_mw=1.0)
    return net


def _runopp(net, snap) -> tuple[float, bool]:
    """Write the snapshot into the net, run the AC OPF, return (losses MW, converged)."""
    import pandapower as pp
    from pandapower.optimal_powerflow import OPFNotConverged

    net.load["p_mw"] = snap.load_p_mw
    net.load["q_mvar"] = snap.load_q_mvar
    net.sgen["max_p_mw"] = snap.pv_avail_mw
    net.sgen["p_mw"] = snap.pv_avail_mw
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            pp.runopp(net, init="pf", calculate_voltage_angles=False, PDIPM_COSTTOL=1e-9)
        except OPFNotConverged:
            return float("inf"), False
    return float(net.res_line.pl_mw.sum()), bool(net.OPF_converged)


def _stats(t):
    import numpy as np

    t = np.asarray(t, float)
    return {"n": int(t.size), "median_s": float(np.median(t)), "p95_s": float(np.percentile(t, 95)),
            "min_s": float(t.min())}


def _bench_case(name: str, quick: bool, seed: int, console: Console) -> list[dict]:
    import numpy as np

    import safedispatch as sd
    from safedispatch.baselines import NoControl, SnapshotMIP, SnapshotOPF, VoltVarDroop
    from safedispatch.baselines.admm import SerialExecutor, ZonalADMM, subtree_zones

    f = sd.load_case(name)
    rng = np.random.default_rng(seed)
    n = N_SNAP[int(quick)]
    snaps = []
    for _ in range(n + 1):
        s = sd.Snapshot.nominal(f, load=float(rng.uniform(*LOAD_RANGE)))
        snaps.append(s.replace(pv_avail_mw=rng.uniform(*PV_RANGE, f.n_pv) * f.pv.p_max_mw).checked(f))
    warm = snaps.pop()
    build = {}
    t0 = time.perf_counter()
    socp = SnapshotOPF(f, "socp", objective="losses")
    build["socp"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    lin = SnapshotOPF(f, "lindistflow", objective="losses")
    build["lindistflow"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    mip = SnapshotMIP(f)
    build["mip"] = time.perf_counter() - t0
    zones = f.zones if len(f.zones) > 1 else subtree_zones(f, 8)
    t0 = time.perf_counter()
    admm = ZonalADMM(f, zones, objective="losses", warm_start=False, executor=SerialExecutor())
    build["admm"] = time.perf_counter() - t0
    droop, noc = VoltVarDroop(f), NoControl(f)
    t0 = time.perf_counter()
    net = _runopp_net(f, warm)
    build["runopp"] = time.perf_counter() - t0

    def ac_losses(act, snap):
        p, q, sh = sd.net_injection(f, snap, act.checked(f))
        return float(sd.run_powerflow(f, p, q, v_root_pu=snap.v_root_pu, shunt_q_mvar=sh).p_loss_mw)

    calls = {
        "socp": lambda s: (lambda r: (r.ac_objective, r.status.name))(socp.solve(s)),
        "lindistflow": lambda s: (lambda r: (r.losses_mw, r.status.name))(lin.solve(s)),
        "mip": lambda s: (lambda r: (r.objective, r.status.name))(mip.solve(s)),
        "admm": lambda s: (lambda r: (r.losses_mw, r.status.name, r.iterations))(admm.solve(s)),
        "droop": lambda s: (droop.act(s), "-"),
        "none": lambda s: (noc.act(s), "-"),
        "runopp": lambda s: (lambda r: (r[0], "OPTIMAL" if r[1] else "FAILED"))(_runopp(net, s)),
    }
    for m in METHODS:  # first calls compile / cache
        calls[m](warm)
    times = {m: [] for m in METHODS}
    out = {m: [] for m in METHODS}
    with Progress(console=console, transient=True) as prog:
        task = prog.add_task(f"{name}: {n} snapshots x {len(METHODS)} methods", total=n)
        for i, s in enumerate(snaps):
            order = METHODS if i % 2 == 0 else METHODS[::-1]  # a burst of foreign load hits all alike
            for m in order:
                t0 = time.perf_counter()
                r = calls[m](s)
                times[m].append(time.perf_counter() - t0)
                out[m].append(r)
            prog.advance(task)
    loss_pp = np.array([r[0] for r in out["runopp"]])
    loss_socp = np.array([r[0] for r in out["socp"]])
    ok = np.isfinite(loss_pp)
    rel = (loss_socp[ok] - loss_pp[ok]) / loss_pp[ok]
    row = {"case": name, "n_bus": f.n_bus, "n_pv": f.n_pv, "n_snapshots": n, "n_zones_admm": len(zones),
           "build_s": build, "stats": {m: _stats(times[m]) for m in METHODS},
           "status": {m: sorted({str(r[1]) for r in out[m]}) for m in METHODS},
           "admm_iterations_median": float(np.median([r[2] for r in out["admm"]])),
           "runopp_converged": int(ok.sum()),
           "socp_vs_runopp_losses_rel_max": float(rel.max()) if rel.size else None,
           "socp_vs_runopp_losses_rel_median": float(np.median(rel)) if rel.size else None,
           "lindistflow_ac_losses_vs_runopp_rel_median": float(np.median(
               (np.array([r[0] for r in out["lindistflow"]])[ok] - loss_pp[ok]) / loss_pp[ok])) if ok.any() else None,
           "admm_ac_losses_vs_runopp_rel_median": float(np.median(
               (np.array([r[0] for r in out["admm"]])[ok] - loss_pp[ok]) / loss_pp[ok])) if ok.any() else None,
           "droop_losses_mw_median": float(np.median([ac_losses(r[0], s) for r, s in zip(out["droop"], snaps)])),
           "none_losses_mw_median": float(np.median([ac_losses(r[0], s) for r, s in zip(out["none"], snaps)])),
           "runopp_losses_mw_median": float(np.median(loss_pp[ok])) if ok.any() else None}
    med = {m: row["stats"][m]["median_s"] * 1e3 for m in METHODS}
    console.log(f"{name}: socp {med['socp']:.2f} ms, runopp {med['runopp']:.1f} ms, mip {med['mip']:.1f} ms")
    return [row]


# ----------------------------------------------------------------------------- parent process


def _targets(rows_by_thread: list[list[dict]]) -> list[dict]:
    out = []
    for rows in rows_by_thread:
        for r in rows:
            st = r["stats"]
            speed = st["runopp"]["median_s"] / st["socp"]["median_s"]
            same = r["socp_vs_runopp_losses_rel_max"] is not None and r["socp_vs_runopp_losses_rel_max"] <= SAME_RTOL
            out.append({"case": r["case"], "target": f"SOCP OPF >= {SPEEDUP_TARGET:.0f}x faster than runopp, same "
                        "or better objective", "value": f"{speed:.1f}x, losses rel. diff max "
                        f"{r['socp_vs_runopp_losses_rel_max']:+.1e}", "pass": bool(speed >= SPEEDUP_TARGET and same)})
            mt = st["mip"]["median_s"]
            out.append({"case": r["case"], "target": "snapshot MIP solve < 10 ms", "value": f"{mt * 1e3:.1f} ms",
                        "pass": bool(mt < MIP_TARGET_S)})
    return out


def main(argv=None) -> int:
    args = _harness.parse_args(__doc__, argv, quick_help="smoke test: 4 snapshots per case",
                               default_cases=DEFAULT_CASES, stem=STEM, seed_help="seed of the snapshots")
    def child(a):
        return _harness.run_child(a, lambda name, console: _bench_case(name, a.quick, a.seed, console))

    out = _harness.parent_or_child(__file__, args, child, VERSION_OF, width=170)
    if isinstance(out, int):
        return out
    console, t_start, machine, threads, runs = out
    by_case = {}
    for run in runs:
        for r in run["rows"]:
            by_case.setdefault(r["case"], []).append(r)
    head = ["case", *[f"{m} (ms)" for m in METHODS], "runopp / socp", "MIP build (s)", "ADMM iters"]
    rows = []
    for case, rs in by_case.items():
        cells = [case]
        for m in METHODS:
            cells.append(_harness.cells([r["stats"][m]["median_s"] * 1e3 for r in rs], lambda v: f"{v:.2f}"))
        cells.append(_harness.cells([r["stats"]["runopp"]["median_s"] / r["stats"]["socp"]["median_s"] for r in rs],
                                    _harness.fmt_ratio))
        cells.append(f"{rs[0]['build_s']['mip']:.2f}")
        cells.append(f"{rs[0]['admm_iterations_median']:.0f}")
        rows.append(cells)
    title = f"median time per snapshot, {_harness.threads_title(threads)}"
    _harness.print_table(console, title, head, rows)
    obj_head = ["case", "runopp losses (MW)", "socp vs runopp (max rel)", "lindistflow vs runopp (median rel)",
                "admm vs runopp (median rel)", "droop losses (MW)", "no control losses (MW)"]
    obj_rows = [[r["case"], f"{r['runopp_losses_mw_median']:.5f}", f"{r['socp_vs_runopp_losses_rel_max']:+.1e}",
                 f"{r['lindistflow_ac_losses_vs_runopp_rel_median']:+.1e}",
                 f"{r['admm_ac_losses_vs_runopp_rel_median']:+.1e}", f"{r['droop_losses_mw_median']:.5f}",
                 f"{r['none_losses_mw_median']:.5f}"] for r in runs[0]["rows"]]
    _harness.print_table(console, "AC losses at the set-points (median over snapshots; headline run)", obj_head,
                         obj_rows)
    targets = _targets([run["rows"] for run in runs[:1]])
    for t in targets:
        console.print(f"{'[green]PASS' if t['pass'] else '[red]FAIL'}[/] {t['case']}: {t['target']}: {t['value']}")
    _harness.print_warnings(console, runs)
    notes = []
    for run in runs:
        fc = run.get("foreign_cpu_share")
        if fc is not None and fc > _harness.FOREIGN_CPU_NOTE:
            notes.append(f"{run['threads']} thread(s): other processes took {fc:.0%} of the machine's CPU time "
                         "during the run; the figures are disturbed.")
    report = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "wall_s": time.perf_counter() - t_start, "machine": machine,
              "settings": {"mode": "quick" if args.quick else "full", "threads": threads, "cases": args.cases,
                           "seed": args.seed, "n_snapshots": N_SNAP[int(args.quick)], "load_range": LOAD_RANGE,
                           "pv_range": PV_RANGE, "same_rtol": SAME_RTOL},
              "targets": targets, "notes": notes, "runs": runs}
    md = _harness.md_intro(report, "Time per snapshot: baselines vs pandapower runopp")
    md += [f"Each cell: median over {N_SNAP[int(args.quick)]} seeded snapshots, {_harness.md_threads(threads)}.", "",
           _harness.md_table(head, rows), "", "## Objectives (AC losses at the set-points, headline run)", "",
           _harness.md_table(obj_head, obj_rows), "", "## Targets (headline run)", ""]
    md += [f"- {'PASS' if t['pass'] else 'FAIL'} {t['case']}: {t['target']}: {t['value']}" for t in targets]
    md += [""] + _harness.md_notes(report)
    _harness.write_results(console, args.out, STEM, report, "\n".join(md) + "\n")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)
