"""``safedispatch`` command line.

Sub-commands:
    demo        load a built-in case, run the AC power flow at a few operating points,
                cross-check one against pandapower, and make a violating action safe
    cases       list the built-in cases
    powerflow   power flow of one case at nominal load (optionally with PV output)
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
from rich.console import Console
from rich.table import Table

import safedispatch as sd


def _injection(feeder, pv_frac: float, load_frac: float):
    p, q = feeder.nominal_injection()
    p, q = p * load_frac, q * load_frac
    np.add.at(p, feeder.pv.bus, pv_frac * feeder.pv.p_max_mw)
    return p, q


def _report(console: Console, feeder, title: str, points) -> None:
    table = Table(title=title)
    for col in ("load", "PV", "min V (pu) @bus", "max V (pu) @bus", "max loading", "losses (kW)", "sweeps",
                "limits"):
        table.add_column(col, justify="right")
    for load_frac, pv_frac in points:
        p, q = _injection(feeder, pv_frac, load_frac)
        r = sd.run_powerflow(feeder, p, q)
        vmin, vmax = feeder.bus.vm_min_pu, feeder.bus.vm_max_pu
        ok = (r.vm_pu >= vmin - 1e-9).all() and (r.vm_pu <= vmax + 1e-9).all() and (r.loading <= 1 + 1e-9).all()
        table.add_row(f"{load_frac:.0%}", f"{pv_frac:.0%}", f"{r.vm_pu.min():.5f} @{r.vm_pu.argmin() + 1}",
                      f"{r.vm_pu.max():.5f} @{r.vm_pu.argmax() + 1}", f"{r.loading.max():.0%}",
                      f"{1000 * r.p_loss_mw:.2f}", str(int(r.iterations)),
                      "[green]ok[/green]" if ok else "[red]violated[/red]")
    console.print(table)


def cmd_demo(args) -> int:
    console = Console()
    feeder = sd.load_case(args.case)
    console.print(f"[bold]{feeder!r}[/bold]\n{feeder.notes}")
    _report(console, feeder, f"AC power flow on {args.case} (bus numbers 1-based)",
            [(1.0, 0.0), (0.5, 0.5), (0.3, 1.0)])

    # one cross-check against pandapower's Newton-Raphson, and a batched run
    import pandapower as pp

    p, q = _injection(feeder, 1.0, 0.3)
    net = sd.to_pandapower(feeder, p, q)
    pp.runpp(net)
    r = sd.run_powerflow(feeder, p, q)
    dv = np.abs(r.vm_pu - net.res_bus.vm_pu.to_numpy()).max()
    console.print(f"pandapower runpp at 30 % load, 100 % PV: max |dV| = {dv:.2e} pu")
    rng = np.random.default_rng(0)
    K = 10_000
    P = p * rng.uniform(0.5, 1.5, (K, feeder.n_bus))
    Q = q * rng.uniform(0.5, 1.5, (K, feeder.n_bus))
    sd.run_powerflow(feeder, P[:64], Q[:64])  # compile
    t = time.perf_counter()
    rb = sd.run_powerflow(feeder, P, Q)
    dt = time.perf_counter() - t
    console.print(f"batched: {K} power flows in {dt * 1000:.1f} ms ({K / dt:,.0f} flows/s), "
                  f"{int(rb.converged.sum())} converged, min V {rb.vm_pu.min():.4f} pu")

    # the safety layer on the violated operating point: a greedy raw action made safe
    if feeder.n_pv:
        snap = sd.Snapshot.nominal(feeder, load=0.3, pv=1.0)
        raw = sd.Action(pv_p_mw=snap.pv_avail_mw, pv_q_mvar=np.zeros(feeder.n_pv))
        layer = sd.SafetyLayer(feeder)
        res = layer.project(raw, snap, certify_ac=True)
        console.print(f"safety layer at 30 % load, 100 % PV: {res.status.name}, PV "
                      f"{raw.pv_p_mw.sum():.2f} -> {res.action.pv_p_mw.sum():.2f} MW, AC max V "
                      f"{res.ac_vm_pu.max():.4f} pu, max loading {res.ac_loading.max():.0%}, "
                      f"certified={res.certified} after {res.rounds} correction rounds")
    return 0


def cmd_cases(args) -> int:
    console = Console()
    table = Table(title="built-in cases")
    for col in ("name", "buses", "branches", "loads", "PV", "caps", "storage", "zones"):
        table.add_column(col)
    for name in sd.list_cases():
        try:
            f = sd.load_case(name)
        except sd.BackendUnavailableError as exc:
            table.add_row(name, f"[yellow]{exc}[/yellow]", "", "", "", "", "", "")
            continue
        table.add_row(name, str(f.n_bus), str(int(f.branch.in_service.sum())), str(len(f.load)), str(f.n_pv),
                      str(f.n_cap), str(f.n_ess), str(len(f.zones)))
    console.print(table)
    return 0


def cmd_powerflow(args) -> int:
    feeder = sd.load_case(args.case)
    _report(Console(), feeder, f"AC power flow on {args.case}", [(args.load, args.pv)])
    return 0


def _fraction(lo: float, hi: float):
    """An argparse type: a finite number in ``[lo, hi]`` (argparse reports anything else as a
    usage error naming the option, exit status 2)."""

    def parse(text: str) -> float:
        try:
            v = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not (np.isfinite(v) and lo <= v <= hi):
            raise argparse.ArgumentTypeError(f"expected a finite number in [{lo:g}, {hi:g}], got {text!r}")
        return v

    return parse


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="safedispatch", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("demo", help="power flow tour of a built-in case")
    p.add_argument("--case", default="ieee33-paperB")
    p.set_defaults(fn=cmd_demo)
    p = sub.add_parser("cases", help="list the built-in cases")
    p.set_defaults(fn=cmd_cases)
    p = sub.add_parser("powerflow", help="power flow of one case")
    p.add_argument("--case", default="ieee33")
    p.add_argument("--load", type=_fraction(0.0, 10.0), default=1.0, help="load as a fraction of nominal (0 to 10)")
    p.add_argument("--pv", type=_fraction(0.0, 1.0), default=0.0, help="PV output as a fraction of peak (0 to 1)")
    p.set_defaults(fn=cmd_powerflow)
    args = parser.parse_args(argv)
    try:
        return args.fn(args)
    except sd.SafeDispatchError as exc:
        print(f"safedispatch: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
