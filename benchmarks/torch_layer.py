"""Benchmark: throughput of the batched torch safety layer against cvxpylayers and the CPU layer.

Projections per second of ``sd.TorchSafetyLayer(feeder)`` at batch sizes 1, 64, 1 024 and 65 536,
forward (with the autograd graph, as in training) and backward (``safe.backward(g)``) timed
separately, median of repeats (on CPU tensors the layer's default backend solves the batch with
the numba structured QP over threads; the batched torch solver, ``backend="torch"``, is timed
beside it, forward); next to them, in the same process on the same instances:

* **cvxpylayers**: the same projection QP (the layer's LinDistFlow rows with the per-sample
  right-hand sides as parameters, exact disks and branch cones) as a ``CvxpyLayer`` with its
  default solver, forward and backward. It is slow, so each cell times at most ``CVX_CAP``
  samples of the batch (a sub-batch, said in the table) and reports samples per second of that.
* **CPU loop**: ``SafetyLayer.project`` called sample by sample (at most ``CPU_CAP`` samples).

Agreement of the three on the timed instances is reported (largest absolute difference, MW/MVAr).
The targets of the issue are printed with PASS/FAIL: at batch 1 024 at least 100x cvxpylayers'
throughput (forward and backward, both sizes), and at batch 65 536 at least 200 000
projections/s for 4 inverters with 2 threads.

Each thread count runs in its own subprocess (``torch.set_num_threads`` and the thread variables
set before import); the first (1) is the headline, the others stand beside it. Results go to
``torch_layer.json`` and ``torch_layer.md`` (atomic writes). When CUDA is present the torch layer
is also timed on the GPU; the report says which devices were used.

Usage::

    python benchmarks/torch_layer.py                # 1 and 2 threads, both cases
    python benchmarks/torch_layer.py --quick        # smoke test: small batches only
    python benchmarks/torch_layer.py --threads 2 --cases ieee33-paperB-4

Exits 0 whether or not the targets are met; non-zero on an error, 130 when interrupted (earlier
result files are then left untouched).
"""

from __future__ import annotations

import sys
import time
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _harness  # noqa: E402

DEFAULT_CASES = ("ieee33-paperB-4", "ieee33-paperB")
VERSION_OF = ("safedispatch", "torch", "numpy", "cvxpy", "cvxpylayers", "diffcp")
BATCHES = (1, 64, 1024, 65536)
BATCHES_QUICK = (1, 64)
#: repeats per cell (median)
REPEATS = {1: 20, 64: 10, 1024: 5, 65536: 5}
#: untimed forward + backward calls before a cell's repeats (their times are kept in the JSON as
#: ``first_calls_s``): the layer's workspace allocation and first-touch page faults
WARM_CALLS = 2
#: cvxpylayers times at most this many samples per cell (it solves them one by one)
CVX_CAP = {"ieee33-paperB-4": 256, "ieee33-paperB": 64}
#: the CPU layer's per-sample loop times at most this many samples
CPU_CAP = 200
LOAD_RANGE, PV_RANGE, P_RAW_MAX = (0.2, 1.2), (0.0, 1.0), 1.2


def _instances(f, B, rng):
    import numpy as np
    import torch

    import safedispatch as sd

    snap = sd.Snapshot.nominal(f, load=1.0)
    scale = rng.uniform(*LOAD_RANGE, (B, 1))
    lp = np.asarray(snap.load_p_mw)[None] * scale
    lq = np.asarray(snap.load_q_mvar)[None] * scale
    av = f.pv.p_max_mw * rng.uniform(*PV_RANGE, (B, f.n_pv))
    s = f.pv.s_mva
    raw = np.c_[s * rng.uniform(0, P_RAW_MAX, (B, f.n_pv)), s * rng.uniform(-1, 1, (B, f.n_pv))]
    return tuple(torch.tensor(a) for a in (raw, lp, lq, av))


def _cvx_layer(tl):
    """The projection as a CvxpyLayer over the layer's own rows (parameters: raw, p_hi, h, c)."""
    import cvxpy as cp
    from cvxpylayers.torch import CvxpyLayer

    N = tl.n_pv
    G, A, S, s = tl._G, tl._A, tl._S, tl._s
    x = cp.Variable(2 * N)
    r, phi = cp.Parameter(2 * N), cp.Parameter(N)
    h, c = cp.Parameter(G.shape[0]), cp.Parameter(2 * A.shape[0])
    flows = A.reshape(-1, 2 * N) @ x + c  # [P_0, Q_0, P_1, Q_1, ...]
    cons = [x[:N] >= 0, x[:N] <= phi, cp.norm(cp.vstack([x[:N], x[N:]]), axis=0) <= s, G @ x <= h,
            cp.norm(cp.reshape(flows, (A.shape[0], 2), order="C"), axis=1) <= S]
    prob = cp.Problem(cp.Minimize(0.5 * cp.sum_squares(x - r)), cons)
    assert prob.is_dpp()
    return CvxpyLayer(prob, parameters=[r, phi, h, c], variables=[x])


def _median_time(fn, repeats, budget_s=60.0):
    import numpy as np

    ts = []
    t_end = time.perf_counter() + budget_s
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
        if time.perf_counter() > t_end:
            break
    return float(np.median(ts)), len(ts)


def _bench_case(name, quick, seed, console):
    import numpy as np
    import torch

    import safedispatch as sd

    f = sd.load_case(name)
    tl = sd.TorchSafetyLayer(f)  # backend "auto": the numba batch solver for CPU tensors
    tl_torch = sd.TorchSafetyLayer(f, backend="torch")  # the batched torch solver, timed beside it on CPU
    rng = np.random.default_rng(seed)
    cvx = _cvx_layer(tl)
    cpu = tl.cpu
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    rows = []
    # warm-up: numba compile of the CPU fallback, cvxpylayers canonicalization
    tl(*_instances(f, 8, rng))
    tl_torch(*_instances(f, 8, rng))
    for B in (BATCHES_QUICK if quick else BATCHES):
        raw, lp, lq, av = _instances(f, B, rng)
        row = {"case": name, "n_pv": f.n_pv, "batch": B}
        for dev in devices:
            key = "ours" if dev.type == "cpu" else "ours_cuda"
            ins = [t.to(dev) for t in (raw, lp, lq, av)]
            g = torch.randn(B, 2 * f.n_pv, dtype=torch.float64, device=dev)
            holder = {}

            def fwd(ins=ins, holder=holder, dev=dev):
                r = ins[0].clone().requires_grad_(True)
                holder["safe"] = tl(r, *ins[1:])
                if dev.type == "cuda":
                    torch.cuda.synchronize()

            def bwd(holder=holder, g=g, dev=dev):
                holder["safe"].backward(g)
                if dev.type == "cuda":
                    torch.cuda.synchronize()

            # steady state, as in a training loop: the first WARM_CALLS calls of a new batch size
            # allocate the layer's workspaces (two alternate while the previous graph is alive),
            # and fresh pages cost as much as the solve at batch 65 536; they are kept apart
            pairs = []
            for _ in range(WARM_CALLS + (REPEATS[B] if not quick else 3)):
                t0 = time.perf_counter()
                fwd()
                t1 = time.perf_counter()
                bwd()
                pairs.append((t1 - t0, time.perf_counter() - t1))
            first = pairs[:WARM_CALLS]
            fts, bts = (list(col) for col in zip(*pairs[WARM_CALLS:]))
            st = tl.last_status
            row[key] = {"device": str(dev), "forward_s": float(np.median(fts)), "backward_s": float(np.median(bts)),
                        "repeats": len(fts), "forward_per_s": B / float(np.median(fts)),
                        "backward_per_s": B / float(np.median(bts)), "first_calls_s": [list(fb) for fb in first],
                        "status": {s.name: int((st == s).sum()) for s in sd.ProjectionStatus},
                        "info": dict(tl.last_info)}
        # the torch solver on CPU (forward with the autograd graph, as above)
        fts = []
        for _ in range(REPEATS[B] if not quick else 3):
            r_ = raw.clone().requires_grad_(True)
            t0 = time.perf_counter()
            safe_t = tl_torch(r_, lp, lq, av)
            fts.append(time.perf_counter() - t0)
        row["ours_torch_solver"] = {"forward_per_s": B / float(np.median(fts)), "repeats": len(fts),
                                    "info": dict(tl_torch.last_info)}
        with torch.no_grad():
            safe_ours = tl(raw, lp, lq, av)
        row["ours_torch_solver"]["max_abs_diff_vs_ours"] = float((safe_t.detach() - safe_ours).abs().max())
        # cvxpylayers on a sub-batch
        k = min(B, CVX_CAP.get(name, 64))
        st_ = tl._static(torch.device("cpu"))
        bnd, h, c = tl._data(st_, lp[:k], lq[:k], av[:k], None)
        params = [raw[:k].clone().requires_grad_(True), bnd[1].expand(k, f.n_pv).clone(), h, c.reshape(k, -1)]
        out = {}

        def cvx_fwd(params=params, out=out):
            out["x"], = cvx(*params)

        t_f, nf = _median_time(cvx_fwd, 3 if B <= 64 else 1)
        gk = torch.randn(k, 2 * f.n_pv, dtype=torch.float64)
        t0 = time.perf_counter()
        out["x"].backward(gk)
        t_b = time.perf_counter() - t0
        diff_cvx = float((out["x"].detach() - safe_ours[:k]).abs().max())
        row["cvxpylayers"] = {"samples": k, "forward_s": t_f, "backward_s": t_b, "forward_per_s": k / t_f,
                              "backward_per_s": k / t_b, "repeats": nf, "max_abs_diff_vs_ours": diff_cvx}
        # the CPU layer, sample by sample
        kc = min(B, CPU_CAP)
        R, LP, LQ, AV = (t[:kc].numpy() for t in (raw, lp, lq, av))
        N = f.n_pv
        safe_cpu = np.zeros((kc, 2 * N))
        t0 = time.perf_counter()
        for i in range(kc):
            snap = sd.Snapshot(load_p_mw=LP[i], load_q_mvar=LQ[i], pv_avail_mw=AV[i])
            res = cpu.project(sd.Action(pv_p_mw=R[i, :N], pv_q_mvar=R[i, N:]), snap)
            safe_cpu[i] = res.action.to_vector()[:2 * N]
        t_c = time.perf_counter() - t0
        row["cpu_loop"] = {"samples": kc, "time_s": t_c, "per_s": kc / t_c,
                           "max_abs_diff_vs_ours": float(np.abs(safe_cpu - safe_ours[:kc].numpy()).max())}
        o = row["ours"]
        cv = row["cvxpylayers"]
        console.log(f"{name} B={B}: ours fwd {o['forward_per_s']:,.0f}/s bwd {o['backward_per_s']:,.0f}/s "
                    f"(fallback {o['info'].get('fallback')}); cvxpylayers fwd {cv['forward_per_s']:,.0f}"
                    f"/s bwd {row['cvxpylayers']['backward_per_s']:,.0f}/s on {k}; CPU loop "
                    f"{row['cpu_loop']['per_s']:,.0f}/s; max diff vs cvxpylayers {diff_cvx:.1e}, vs CPU "
                    f"{row['cpu_loop']['max_abs_diff_vs_ours']:.1e}")
        rows.append(row)
    return rows


def _child(args) -> int:
    import torch

    torch.set_num_threads(args.threads[0])
    return _harness.run_child(args, lambda name, console: _bench_case(name, args.quick, args.seed, console),
                              extra=lambda: {"torch_threads": torch.get_num_threads(),
                                             "cuda": torch.cuda.is_available()})


# ----------------------------------------------------------------------------- parent process


def _fmt(x):
    return "-" if x is None else f"{x:,.0f}"


def _tables(runs):
    by = [{(r["case"], r["batch"]): r for r in run["rows"]} for run in runs]
    head = ["case", "batch", "ours fwd /s", "ours bwd /s", "torch solver fwd /s", "cvxpylayers fwd /s",
            "cvxpylayers bwd /s", "cvx samples", "CPU loop /s", "fwd ratio", "bwd ratio", "status U/P/I/F",
            "numba-certified / fallback", "max diff vs cvx / CPU / torch solver"]
    rows = []
    for key, r in by[0].items():
        same = [b.get(key) for b in by]

        def col(*path, same=same):
            out = []
            for x in same:
                for p in path:
                    x = None if x is None else x.get(p)
                out.append(x)
            return out

        fr = [None if a is None else a["ours"]["forward_per_s"] / a["cvxpylayers"]["forward_per_s"] for a in same]
        br = [None if a is None else a["ours"]["backward_per_s"] / a["cvxpylayers"]["backward_per_s"] for a in same]
        s = r["ours"]["status"]
        rows.append([r["case"], str(r["batch"]), _harness.cells(col("ours", "forward_per_s"), _fmt),
                     _harness.cells(col("ours", "backward_per_s"), _fmt),
                     _harness.cells(col("ours_torch_solver", "forward_per_s"), _fmt),
                     _harness.cells(col("cvxpylayers", "forward_per_s"), _fmt),
                     _harness.cells(col("cvxpylayers", "backward_per_s"), _fmt), str(r["cvxpylayers"]["samples"]),
                     _harness.cells(col("cpu_loop", "per_s"), _fmt), _harness.cells(fr, _harness.fmt_ratio),
                     _harness.cells(br, _harness.fmt_ratio),
                     "/".join(str(s.get(k, 0)) for k in ("UNCHANGED", "PROJECTED", "INFEASIBLE", "SOLVER_FAILED")),
                     f"{r['ours']['info'].get('numba_optimal')} / {r['ours']['info'].get('fallback')}",
                     f"{r['cvxpylayers']['max_abs_diff_vs_ours']:.1e} / {r['cpu_loop']['max_abs_diff_vs_ours']:.1e}"
                     f" / {r['ours_torch_solver']['max_abs_diff_vs_ours']:.1e}"])
    return head, rows


def _targets(runs):
    out = []
    for run in runs:
        for r in run["rows"]:
            if r["batch"] == 1024:
                for d in ("forward", "backward"):
                    ratio = r["ours"][f"{d}_per_s"] / r["cvxpylayers"][f"{d}_per_s"]
                    out.append({"target": f"{r['case']} batch 1024 {d}: >= 100x cvxpylayers", "threads": run["threads"],
                                "value": ratio, "verdict": "PASS" if ratio >= 100 else "FAIL"})
            if r["batch"] == 65536 and r["case"] == "ieee33-paperB-4" and run["threads"] == 2:
                v = r["ours"]["forward_per_s"]
                out.append({"target": "ieee33-paperB-4 batch 65536 forward, 2 threads: >= 200,000 proj/s",
                            "threads": 2, "value": v, "verdict": "PASS" if v >= 2e5 else "FAIL"})
    return out


#: the issue's figure for cvxpylayers on its machine: forward, batch 1 024, 4 inverters
ISSUE_CVX_PER_S = 1300.0


def _machine_notes(runs):
    """How fast this machine is in the issue's own yardstick (an estimate; the verdicts above stay
    absolute): the issue quotes cvxpylayers at ~1 300 projections/s (forward, batch 1 024, 4
    inverters), and the 200 000/s target was set on that machine."""
    by = {(run["threads"], r["case"], r["batch"]): r for run in runs for r in run["rows"]}
    cvx = by.get((1, "ieee33-paperB-4", 1024))
    big = by.get((2, "ieee33-paperB-4", 65536))
    if cvx is None or big is None:
        return []
    k = ISSUE_CVX_PER_S / cvx["cvxpylayers"]["forward_per_s"]
    ours = big["ours"]["forward_per_s"]
    return [f"machine speed: cvxpylayers did {cvx['cvxpylayers']['forward_per_s']:,.0f} projections/s here "
            f"(forward, batch 1 024, 4 inverters, 1 thread) against the issue's ~{ISSUE_CVX_PER_S:,.0f}/s: this "
            f"machine is ~{k:.1f}x slower in that measure; scaled by it, the 200 000/s target would read "
            f"{2e5 / k:,.0f}/s here (ours at batch 65 536, 2 threads: {ours:,.0f}/s). An estimate only: the verdict "
            "above is the absolute figure."]


def _first_call_notes(runs):
    """The cold calls of the largest batch (workspace allocation, first-touch pages)."""
    out = []
    for run in runs:
        for r in run["rows"]:
            first = r["ours"].get("first_calls_s")
            if r["batch"] == max(BATCHES) and first:
                rates = ", ".join(f"{r['batch'] / f:,.0f}/s" for f, _ in first)
                out.append(f"{r['case']} batch {r['batch']}, {run['threads']} thread(s): the untimed first forward "
                           f"calls ran at {rates} (against {r['ours']['forward_per_s']:,.0f}/s in steady state).")
    return out


def _target_line(t):
    v = f"{t['value']:,.0f}/s" if "proj/s" in t["target"] else f"{t['value']:.1f}x"
    return f"{t['verdict']}: {t['target']} ({t['threads']} thread{'s' if t['threads'] != 1 else ''}): {v}"


def main(argv=None) -> int:
    """Run the benchmark (or, with the internal ``--child-json``, one thread count of it)."""
    args = _harness.parse_args(__doc__, argv, quick_help="batches 1 and 64 only (smoke test)",
                               default_cases=DEFAULT_CASES, stem="torch_layer",
                               seed_help="seed of the random instances (default: 0)")
    out = _harness.parent_or_child(__file__, args, _child, VERSION_OF, width=240)
    if isinstance(out, int):
        return out
    console, t_start, machine, threads, runs = out
    head, rows = _tables(runs)
    targets = _targets(runs)
    devs = sorted({r["ours_cuda"]["device"] for run in runs for r in run["rows"] if "ours_cuda" in r})
    notes = [f"torch layer devices: cpu{', ' + ', '.join(devs) if devs else ' (no CUDA device present)'}",
             f"cvxpylayers times a sub-batch of at most {CVX_CAP} samples per cell (its default solver); its rate is "
             "samples per second of that sub-batch.",
             f"the CPU loop times at most {CPU_CAP} samples of each batch, one `SafetyLayer.project` call each.",
             "ours: float64 inputs, forward with the autograd graph; repeats per batch "
             f"{REPEATS} (median), after {WARM_CALLS} untimed forward + backward calls per cell (steady state "
             "of a training loop: the layer's workspaces are allocated by then).",
             "instances: load scale U(0.2, 1.2) x nominal, PV availability U(0, 1) x p_max, raw p U(0, 1.2) x s, "
             "raw q U(-1, 1) x s; no previous set-points."]
    notes += _machine_notes(runs) + _first_call_notes(runs)
    for run in runs:
        foreign = run.get("foreign_cpu_share")
        if foreign is not None and foreign >= _harness.FOREIGN_CPU_NOTE:
            notes.append(f"{run['threads']}-thread run: other processes used {foreign:.0%} of the machine's CPU time "
                         "meanwhile; its figures may be low and noisy.")
    report = {"benchmark": "torch_layer", "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "wall_s": time.perf_counter() - t_start, "machine": machine,
              "settings": {"mode": "quick" if args.quick else "full", "threads": threads, "cases": args.cases,
                           "seed": args.seed, "batches": list(BATCHES_QUICK if args.quick else BATCHES),
                           "cvx_cap": CVX_CAP, "cpu_cap": CPU_CAP, "repeats": REPEATS},
              "targets": targets, "notes": notes, "runs": runs}
    _harness.print_table(console, "Projections per second: " + _harness.threads_title(threads), head, rows)
    for t in targets:
        console.print(f"[bold]{_target_line(t)}[/bold]")
    for n in notes:
        console.print(f"[yellow]note: {n}[/yellow]")
    _harness.print_warnings(console, runs)
    md = _harness.md_intro(report, "Batched torch safety layer vs cvxpylayers and the CPU layer")
    md += [f"Projections per second. Each cell: {_harness.md_threads(threads)}. Ratios: ours / cvxpylayers.", "",
           _harness.md_table(head, rows), "", "## Targets", ""]
    md += [f"- **{_target_line(t)}**" for t in targets] + [""]
    md += _harness.md_notes(report)
    _harness.write_results(console, args.out, "torch_layer", report, "\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
