"""Built-in cases: ``load_case(name)``.

All ieee33 variants start from pandapower's ``case33bw`` (Baran & Wu 1989, 12.66 kV, 3.715 MW /
2.3 MVAr; losses 202.68 kW, minimum voltage 0.91309 pu at bus 18). Bus numbers in this file
are the papers' **1-based** numbers, converted by :func:`_b` in one place.

Choices documented here (the papers leave them open):

* **Voltage limits** 0.95-1.05 pu at every bus (all three papers; case33bw itself says
  0.9-1.1).
* **Thermal ratings** (case33bw has none): 100 A on every branch (paper B), except the trunk
  branches 1-2, 2-3, 3-4, 4-5 and 5-6, which carry 125-210 A at base load and would make the
  base case infeasible at 100 A; they get **300 A** (1.43x the 210 A of branch 1-2 at peak load;
  a common rating of the 336 kcmil-class overhead conductor on 12.47 kV trunks is 400-530 A, so
  300 A is a deliberately binding choice for reverse flow from 12 MW of PV). The five tie lines
  are out of service and rated 100 A.
* ``ieee33-paperB``: 48 inverters of 0.25 MVA (12 MVA): 14 at bus 6 (3.5 MW, near the
  substation where the grid is strongest), 12 at bus 13 (3.0 MW), 10 at the weak end bus 18
  (2.5 MW) and 12 at bus 30 (3.0 MW), each cluster within the paper's 2.5-5 MW. Ramp limits
  0.15 pu/min (P) and 0.10 pu/min (Q) of the rating. Bus 18's short-circuit capacity is
  2.8 x 2.5 MW = 7.0 MVA (the paper's SCR 2.8 for the cluster there); elsewhere unspecified.
* ``ieee33-paperB-4``: the same four clusters as one inverter each (3.5, 3.0, 2.5, 3.0 MVA).
* ``ieee33-paperC``: PV inverters of 3 MVA at buses 8 and 13; capacitor banks of 1 MVAr at
  buses 6 and 32, **one step each** (on/off, as the paper's binary action), switching cost 1
  per operation (the environment weights it).
* ``ieee33-zones`` (paper A): four zones, each with one PV (1.5 MVA) and one storage unit
  (0.5 MW / 2 MWh), every load sheddable as a last resort:
  zone 0 = buses 1-5, 19-25 (substation, both early laterals), PV 25, storage 24;
  zone 1 = buses 6-12, PV 12, storage 10; zone 2 = buses 13-18, PV 18, storage 16;
  zone 3 = buses 26-33, PV 33, storage 30.
* ``ieee33x30``: a synthetic 991-bus feeder for scale tests: 30 copies of ``ieee33`` (ratings as
  above), each fed from one substation busbar through a 0.05+0.05j ohm link rated 600 A, with
  load scaled per copy by a seeded factor in [0.6, 1.0] and the four paper-B clusters at half
  size (1.75, 1.5, 1.25, 1.5 MVA): 120 inverters.
* ``simbench-mv-{rural,semiurb,urban,comm}``: SimBench MV grids ``1-MV-*--0-sw`` (real German
  MV topologies with line ratings; needs the optional ``simbench`` package). The HV/MV
  transformers' on-load tap changer holds the MV busbar at its set-point (``autoTapSetp``,
  1.025 pu), so the slack sits at the MV busbar and the HV side is dropped (where two
  transformers feed separate busbar sections, both sections are that one slack node); open
  ring switches stay open. SimBench's ``lv_RES`` (aggregated renewables of the underlying LV grids, rooftop
  PV) and ``PV_MV`` plants are PV inverters; wind, hydro and biomass are uncontrolled
  generation. SimBench data: CC BY 4.0 / ODbL, simbench.de.
"""

from __future__ import annotations

from functools import cache

import numpy as np

from safedispatch.errors import BackendUnavailableError, NetworkDataError
from safedispatch.network.feeder import BranchTable, BusTable, CapTable, ESSTable, Feeder, LoadTable, PVTable

__all__ = ["load_case", "list_cases"]

TRUNK_RATING_KA = 0.300
LATERAL_RATING_KA = 0.100
PAPER_B_CLUSTERS = {6: 3.5, 13: 3.0, 18: 2.5, 30: 3.0}  # 1-based bus -> MW


def _b(bus_1based):
    """The one place where the papers' 1-based bus numbers become 0-based indices."""
    return np.asarray(bus_1based, dtype=np.int64) - 1


def _ieee33(name: str, notes: str) -> Feeder:
    import pandapower.networks as pn

    from safedispatch.network.io import from_pandapower

    net = pn.case33bw()
    net.bus["min_vm_pu"] = 0.95
    net.bus["max_vm_pu"] = 1.05
    net.line["max_i_ka"] = LATERAL_RATING_KA
    net.line.loc[net.line.index[:5], "max_i_ka"] = TRUNK_RATING_KA  # branches 1-2 .. 5-6
    f = from_pandapower(net, name=name)
    return f.replace(notes=notes)


def _paper_b(n_per_cluster: dict) -> PVTable:
    buses, s, names = [], [], []
    for bus, n in n_per_cluster.items():
        buses += [bus] * len(n)
        s += list(n)
        names += [f"pv{bus}.{k}" for k in range(len(n))]
    return PVTable(bus=_b(buses), s_mva=s, p_max_mw=s, ramp_p_pu_per_min=0.15, ramp_q_pu_per_min=0.10,
                   name=tuple(names))


def _weak_bus_18(f: Feeder) -> BusTable:
    s_sc = np.full(f.n_bus, np.inf)
    s_sc[_b(18)] = 2.8 * PAPER_B_CLUSTERS[18]
    return BusTable(vn_kv=f.bus.vn_kv, vm_min_pu=f.bus.vm_min_pu, vm_max_pu=f.bus.vm_max_pu, s_sc_mva=s_sc,
                    shunt_p_mw=f.bus.shunt_p_mw, shunt_q_mvar=f.bus.shunt_q_mvar, name=f.bus.name)


def _case_ieee33():
    return _ieee33("ieee33", "Baran-Wu case33bw; ratings and limits: see safedispatch.network.cases")


def _case_paper_b():
    f = _ieee33("ieee33-paperB", "Paper B (Wang et al. 2026): 48 x 0.25 MVA inverters; see safedispatch.network.cases")
    pv = _paper_b({bus: [0.25] * int(round(mw / 0.25)) for bus, mw in PAPER_B_CLUSTERS.items()})
    return f.replace(pv=pv, bus=_weak_bus_18(f))


def _case_paper_b4():
    f = _ieee33("ieee33-paperB-4", "Paper B's four clusters as four inverters; see safedispatch.network.cases")
    pv = _paper_b({bus: [mw] for bus, mw in PAPER_B_CLUSTERS.items()})
    return f.replace(pv=pv, bus=_weak_bus_18(f))


def _case_paper_c():
    f = _ieee33("ieee33-paperC", "Paper C (Zhang et al. 2025): PV 8, 13; capacitors 6, 32")
    pv = PVTable(bus=_b([8, 13]), s_mva=[3.0, 3.0], p_max_mw=[3.0, 3.0], name=("pv8", "pv13"))
    cap = CapTable(bus=_b([6, 32]), q_step_mvar=[1.0, 1.0], n_steps=[1, 1], switch_cost=[1.0, 1.0],
                   step_init=[0, 0], name=("cap6", "cap32"))
    return f.replace(pv=pv, cap=cap)


ZONES_1BASED = (
    [1, 2, 3, 4, 5, 19, 20, 21, 22, 23, 24, 25],
    list(range(6, 13)),
    list(range(13, 19)),
    list(range(26, 34)),
)


def _case_zones():
    f = _ieee33("ieee33-zones", "Paper A (Zhai et al. 2025) zonal set-up; see safedispatch.network.cases")
    pv = PVTable(bus=_b([25, 12, 18, 33]), s_mva=[1.5] * 4, p_max_mw=[1.5] * 4,
                 name=("pv25", "pv12", "pv18", "pv33"))
    ess = ESSTable(bus=_b([24, 10, 16, 30]), p_max_mw=[0.5] * 4, e_max_mwh=[2.0] * 4,
                   name=("ess24", "ess10", "ess16", "ess30"))
    load = LoadTable(bus=f.load.bus, p_mw=f.load.p_mw, q_mvar=f.load.q_mvar, sheddable=True, name=f.load.name)
    return f.replace(pv=pv, ess=ess, load=load, zones=tuple(_b(z) for z in ZONES_1BASED))


def _case_ieee33x30(n_copies: int = 30, seed: int = 0):
    base = _ieee33("ieee33", "")
    n = base.n_bus
    rng = np.random.default_rng(seed)
    scale = rng.uniform(0.6, 1.0, n_copies)
    off = lambda c: 1 + c * n  # noqa: E731  (bus 0 is the substation busbar)
    br, ld, pvb, pvs, names = base.branch, base.load, [], [], []
    fb, tb, r, x, imax, on = [], [], [], [], [], []
    for c in range(n_copies):
        fb += [0, *(br.from_bus + off(c))]
        tb += [off(c), *(br.to_bus + off(c))]
        r += [0.05, *br.r_ohm]
        x += [0.05, *br.x_ohm]
        imax += [0.6, *br.i_max_ka]
        on += [True, *br.in_service]
        for bus, mw in PAPER_B_CLUSTERS.items():
            pvb.append(_b(bus) + off(c))
            pvs.append(mw / 2)
            names.append(f"pv{bus}.c{c}")
    bus = BusTable(vn_kv=np.full(1 + n_copies * n, base.bus.vn_kv[0]),
                   vm_min_pu=np.r_[1.0, np.tile(base.bus.vm_min_pu, n_copies)],
                   vm_max_pu=np.r_[1.05, np.tile(base.bus.vm_max_pu, n_copies)])
    load = LoadTable(bus=np.concatenate([ld.bus + off(c) for c in range(n_copies)]),
                     p_mw=np.concatenate([ld.p_mw * scale[c] for c in range(n_copies)]),
                     q_mvar=np.concatenate([ld.q_mvar * scale[c] for c in range(n_copies)]))
    pv = PVTable(bus=pvb, s_mva=pvs, p_max_mw=pvs, ramp_p_pu_per_min=0.15, ramp_q_pu_per_min=0.10, name=tuple(names))
    return Feeder(name="ieee33x30", bus=bus,
                  branch=BranchTable(from_bus=fb, to_bus=tb, r_ohm=r, x_ohm=x, i_max_ka=imax, in_service=on),
                  root_bus=0, load=load, pv=pv,
                  notes="synthetic: 30 ieee33 copies on one busbar; see safedispatch.network.cases")


SIMBENCH_CODES = {
    "simbench-mv-rural": "1-MV-rural--0-sw",
    "simbench-mv-semiurb": "1-MV-semiurb--0-sw",
    "simbench-mv-urban": "1-MV-urban--0-sw",
    "simbench-mv-comm": "1-MV-comm--0-sw",
}


def _case_simbench(name: str):
    try:
        import simbench
    except ImportError:
        raise BackendUnavailableError(
            f"case {name!r} needs the optional package simbench: pip install 'safedispatch[data]'",
            "simbench") from None
    import pandapower as pp
    import pandapower.toolbox as tb

    from safedispatch.network.io import from_pandapower

    net = simbench.get_simbench_net(SIMBENCH_CODES[name])
    vm = float(net.trafo.autoTapSetp.iloc[0]) if "autoTapSetp" in net.trafo.columns else 1.0
    lv = [int(b) for b in net.trafo.lv_bus.unique()]
    tb.drop_buses(net, net.trafo.hv_bus.unique())  # drops the trafos, HV switches and ext_grid
    # every transformer's busbar is held at the same set-point from the same HV bus: one slack
    for other in lv[1:]:
        pp.create_switch(net, lv[0], other, et="b", closed=True)
    pp.create_ext_grid(net, lv[0], vm_pu=vm)
    f = from_pandapower(net, name=name)
    return f.replace(notes=f"SimBench {SIMBENCH_CODES[name]} (CC BY 4.0), MV level with slack at the busbar; "
                           "see safedispatch.network.cases")


_BUILDERS = {
    "ieee33": _case_ieee33,
    "ieee33-paperB": _case_paper_b,
    "ieee33-paperB-4": _case_paper_b4,
    "ieee33-paperC": _case_paper_c,
    "ieee33-zones": _case_zones,
    "ieee33x30": _case_ieee33x30,
    **{k: (lambda k=k: _case_simbench(k)) for k in SIMBENCH_CODES},
}


def list_cases() -> list[str]:
    """Names accepted by :func:`load_case`."""
    return list(_BUILDERS)


def load_case(name: str) -> Feeder:
    """A built-in case by name (see the module docstring for each case's data and choices).
    Feeders are immutable, so each case is built once per process and shared.

    Raises:
        NetworkDataError: unknown name (the message lists the known ones).
        BackendUnavailableError: a SimBench case without the ``simbench`` package.
    """
    if not isinstance(name, str) or name not in _BUILDERS:
        raise NetworkDataError(f"unknown case {name!r}; known cases: {', '.join(_BUILDERS)}", "name")
    return _load_case(name)


@cache
def _load_case(name: str) -> Feeder:
    return _BUILDERS[name]()
