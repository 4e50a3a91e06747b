"""Benchmark: environment steps per second of safedispatch's envs against a pandapower-in-the-loop step.

Measured in one process per thread count, on the same case and random actions:

* **single**: ``DispatchEnv`` (one feeder, numba AC power flow per step);
* **wrapped**: ``SafetyWrapper(DispatchEnv)`` with AC certification (every action projected by
  the ``SafetyLayer`` and checked with the AC power flow), and without certification;
* **vector**: ``VectorDispatchEnv`` with ``num_envs`` = 1 024 (batched torch power flow), without
  and with the batched ``TorchSafetyLayer``; a step advances all 1 024 envs and counts 1 024 env steps;
* **pandapower**: the step of a MAPDN-style env: write loads and PV set-points into a pandapower
  net built once, ``pp.runpp``, read the voltages and losses, compute the same reward.

Each figure is the median of ``REPEATS`` timed runs (a run: ``STEPS`` steps of random actions in
``[-1, 1]``, after a warm-up step). The target of the issue: the vector env with the safety layer at
least 10 000 env steps/s on 2 cores (``ieee33-paperB``, 48 agents each).

Usage::

    python benchmarks/env_throughput.py                 # 1 and 2 threads
    python benchmarks/env_throughput.py --quick         # smoke test
    python benchmarks/env_throughput.py --threads 2 --cases ieee33-paperB-4

Results go to ``benchmarks/results/env_throughput.{json,md}``, written atomically; Ctrl-C leaves the
previous files intact and exits 130.
"""

from __future__ import annotations

import statistics
import sys
import time
import warnings
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _harness  # noqa: E402

DEFAULT_CASES = ("ieee33-paperB",)
VERSION_OF = ("safedispatch", "numpy", "numba", "torch", "pandapower", "gymnasium", "pettingzoo")
BATCH = 1024
#: per method: (steps per timed run, full / quick)
STEPS = {"single": (400, 50), "wrapped_certified": (100, 20), "wrapped": (200, 30), "vector": (10, 2),
         "vector_safe": (5, 1), "pandapower": (40, 10)}
REPEATS = (5, 2)
TARGET = {"method": "vector_safe", "case": "ieee33-paperB", "steps_per_s": 10_000, "threads": 2}
METHODS = ("single", "wrapped_certified", "wrapped", "vector", "vector_safe", "pandapower")
LABELS = {"single": "DispatchEnv", "wrapped_certified": "SafetyWrapper (AC-certified)",
          "wrapped": "SafetyWrapper (no AC check)", "vector": f"VectorDispatchEnv x{BATCH}",
          "vector_safe": f"VectorDispatchEnv x{BATCH} + TorchSafetyLayer", "pandapower": "pandapower step"}


def _pandapower_env(cfg):
    """A MAPDN-style step: set the net's loads and sgens, runpp, read voltages and losses."""
    import numpy as np
    import pandapower as pp

    import safedispatch as sd
    from safedispatch.scenarios import case_profiles

    f = sd.load_case(cfg.case)
    net = sd.to_pandapower(f)
    net.load.drop(net.load.index, inplace=True)
    net.sgen.drop(net.sgen.index, inplace=True)
    loads = [pp.create_load(net, b, p_mw=0.0, q_mvar=0.0) for b in range(f.n_bus) if b != f.root_bus]
    sgens = [pp.create_sgen(net, int(b), p_mw=0.0, q_mvar=0.0) for b in f.pv.bus]
    prof = case_profiles(f, [int(cfg.days[0]) if cfg.days else 180])
    nonroot = np.array([b for b in range(f.n_bus) if b != f.root_bus])
    state = {"t": 0}

    def step(a):
        t = state["t"] % 96
        state["t"] += 1
        net.load.loc[loads, "p_mw"] = prof.load_p_mw[t, nonroot]
        net.load.loc[loads, "q_mvar"] = prof.load_q_mvar[t, nonroot]
        s = f.pv.s_mva
        p = np.minimum((a[:f.n_pv] + 1) / 2 * s, prof.pv_avail_mw[t])
        q = np.clip(a[f.n_pv:2 * f.n_pv] * s, -np.sqrt(s**2 - p**2), np.sqrt(s**2 - p**2))
        net.sgen.loc[sgens, "p_mw"] = p
        net.sgen.loc[sgens, "q_mvar"] = q
        try:
            pp.runpp(net)
        except pp.LoadflowNotConverged:
            return 0.0
        v = net.res_bus.vm_pu.to_numpy()[nonroot]
        loss = float(net.res_line.pl_mw.sum())
        return -(cfg.w_voltage * float(((v - 1.0) ** 2).sum()) + cfg.w_loss * loss)

    return step


def _time_runs(fn, n_steps: int, repeats: int) -> dict:
    fn(1)  # warm-up (compilation, caches)
    rates = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        count = fn(n_steps)
        rates.append(count / (time.perf_counter() - t0))
    return {"steps_per_s": statistics.median(rates), "runs": rates}


def _bench_case(name: str, quick: bool, seed: int, console) -> list[dict]:
    import numpy as np
    import torch

    from safedispatch.envs import DispatchEnv, EnvConfig, SafetyWrapper, VectorDispatchEnv

    q = int(quick)
    cfg = EnvConfig(case=name, split="test")
    rng = np.random.default_rng(seed)
    rows = []

    def gym_runner(env):
        env.reset(seed=seed)
        n_act = env.action_space.shape[0]

        def run(n):
            for _ in range(n):
                _, _, _, trunc, _ = env.step(rng.uniform(-1, 1, n_act).astype(np.float32))
                if trunc:
                    env.reset()
            return n
        return run

    def vector_runner(venv):
        venv.reset(seed=seed)
        n_act = venv.single_action_space.shape[0]

        def run(n):
            for _ in range(n):
                if venv._step >= 96:
                    venv.reset()
                venv.step(torch.rand(BATCH, n_act, dtype=torch.float64) * 2 - 1)
            return n * BATCH
        return run

    def pp_runner():
        step = _pandapower_env(cfg)
        from safedispatch.envs import DispatchEnv as _D
        n_act = _D(cfg).action_space.shape[0]

        def run(n):
            for _ in range(n):
                step(rng.uniform(-1, 1, n_act))
            return n
        return run

    makers = {
        "single": lambda: gym_runner(DispatchEnv(cfg)),
        "wrapped_certified": lambda: gym_runner(SafetyWrapper(DispatchEnv(cfg), certify_ac=True)),
        "wrapped": lambda: gym_runner(SafetyWrapper(DispatchEnv(cfg), certify_ac=False)),
        "vector": lambda: vector_runner(VectorDispatchEnv(cfg, num_envs=BATCH)),
        "vector_safe": lambda: vector_runner(VectorDispatchEnv(cfg, num_envs=BATCH, safety=True)),
        "pandapower": pp_runner,
    }
    res = {}
    for m in METHODS:
        with console.status(f"{name}: {LABELS[m]}"), warnings.catch_warnings():
            warnings.simplefilter("ignore", category=FutureWarning)  # pandas' chained-assignment notes
            res[m] = _time_runs(makers[m](), STEPS[m][q], REPEATS[q])
        console.log(f"{name}: {LABELS[m]}: {res[m]['steps_per_s']:,.0f} env steps/s")
    pp_rate = res["pandapower"]["steps_per_s"]
    rows.append({"case": name, "results": res,
                 "ratio_vs_pandapower": {m: res[m]["steps_per_s"] / pp_rate for m in METHODS}})
    return rows


def _child(args) -> int:
    import torch

    torch.set_num_threads(args.threads[0])
    return _harness.run_child(args, lambda name, console: _bench_case(name, args.quick, args.seed, console),
                              extra=lambda: {"torch_threads": torch.get_num_threads()})


def _fmt_rate(x: float) -> str:
    return f"{x:,.0f}"


def main(argv=None) -> int:
    args = _harness.parse_args(__doc__, argv, quick_help="fewer steps and repeats (smoke test)",
                               default_cases=DEFAULT_CASES, stem="env_throughput",
                               seed_help="seed of the random actions (default: 0)")
    out = _harness.parent_or_child(__file__, args, _child, VERSION_OF, width=160)
    if isinstance(out, int):
        return out
    console, t_start, machine, threads, runs = out
    head = ["case", "method", "env steps/s", "vs pandapower"]
    table = []
    for row in runs[0]["rows"]:
        same = [next((r for r in run["rows"] if r["case"] == row["case"]), None) for run in runs]
        for m in METHODS:
            table.append([row["case"], LABELS[m],
                          _harness.cells([None if r is None else r["results"][m]["steps_per_s"] for r in same],
                                         _fmt_rate),
                          _harness.cells([None if r is None else r["ratio_vs_pandapower"][m] for r in same],
                                         _harness.fmt_ratio)])
    verdicts = []
    for run in runs:
        row = next((r for r in run["rows"] if r["case"] == TARGET["case"]), None)
        if row is None:
            continue
        rate = row["results"][TARGET["method"]]["steps_per_s"]
        verdicts.append(f"{run['threads']} thread{'s' if run['threads'] != 1 else ''}: {rate:,.0f} env steps/s "
                        f"{'PASS' if rate >= TARGET['steps_per_s'] else 'FAIL'}")
    tline = (f"Target: {LABELS[TARGET['method']]} on {TARGET['case']} >= {TARGET['steps_per_s']:,} env steps/s on "
             f"{TARGET['threads']} cores. " + ("; ".join(verdicts) if verdicts else "not measured"))
    notes = []
    for run in runs:
        fc = run.get("foreign_cpu_share")
        if fc is not None and fc >= _harness.FOREIGN_CPU_NOTE:
            notes.append(f"{run['threads']}-thread run: other processes used {fc:.0%} of the machine's CPU time "
                         "meanwhile, so its figures may be low and noisy (torch's thread pool suffers most)")
    report = {"benchmark": "env_throughput", "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "wall_s": time.perf_counter() - t_start, "machine": machine,
              "settings": {"mode": "quick" if args.quick else "full", "threads": threads, "cases": args.cases,
                           "batch": BATCH, "steps": STEPS, "repeats": REPEATS[int(args.quick)], "seed": args.seed},
              "target": TARGET, "target_line": tline, "notes": notes, "runs": runs}
    _harness.print_table(console, "Env steps per second: " + _harness.threads_title(threads), head, table)
    console.print(f"[bold]{tline}[/bold]")
    for n in notes:
        console.print(f"[yellow]note: {n}[/yellow]")
    _harness.print_warnings(console, runs)
    md = _harness.md_intro(report, "Environment throughput: safedispatch envs vs a pandapower-in-the-loop step")
    md += [f"Env steps per second, median of {REPEATS[int(args.quick)]} runs of random actions. Each cell: "
           f"{_harness.md_threads(threads)}. A vector step advances {BATCH} envs and counts {BATCH} env steps. "
           "See the script's docstring for what each method runs.", "", _harness.md_table(head, table), "",
           f"**{tline}**", ""]
    md += _harness.md_notes(report)
    _harness.write_results(console, args.out, "env_throughput", report, "\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
