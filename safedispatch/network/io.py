"""Conversion between pandapower nets and :class:`Feeder` (the only module that touches pandas).

``from_pandapower`` reads any radial pandapower net with one ext_grid:

* buses joined by closed bus-bus switches are fused into one bus;
* lines (pi model, ``parallel`` and ``df`` applied) that are in service and not opened by a
  line switch; parallel lines between the same two buses are merged into one equivalent
  branch (impedances in parallel, ratings added);
* two-winding transformers as a **series impedance** referred to the low-voltage side
  (``vk_percent``/``vkr_percent``); the magnetizing branch (``pfe_kw``, ``i0_percent``) and the
  phase shift are neglected (voltage magnitudes are unaffected by the shift; the magnetizing
  current, typically < 0.1 % of rating, is the approximation). Off-nominal taps or rated
  voltages that differ from the buses' ``vn_kv`` are rejected with a clear error;
* loads (constant power only) with ``scaling``; sgens of type containing "PV" become
  inverters (rating ``sn_mva``, peak ``max_p_mw`` or ``p_mw`` when absent); other sgens are
  uncontrolled generation; shunts become capacitor banks (``-q_mvar`` per step,
  ``max_step`` steps); storage units become storage;
* bus limits from ``min_vm_pu``/``max_vm_pu`` (0.95/1.05 when absent, NaN, or pandapower's
  "no limit" fill values 0.0/2.0).
"""

from __future__ import annotations

import numpy as np

from safedispatch.errors import InputError, NetworkDataError, finite_vector
from safedispatch.network.feeder import BranchTable, BusTable, CapTable, ESSTable, Feeder, GenTable, LoadTable, PVTable

__all__ = ["from_pandapower", "to_pandapower"]


def _col(df, name, default):
    if name in df.columns:
        v = df[name].to_numpy(dtype=float, na_value=np.nan)
        return np.where(np.isnan(v), default, v)
    return np.full(len(df), default, dtype=float)


def _names(df, prefix):
    if "name" in df.columns:
        return tuple(str(x) if x is not None and x == x else f"{prefix}{i}" for i, x in zip(df.index, df["name"]))
    return tuple(f"{prefix}{i}" for i in df.index)


class _UnionFind:
    def __init__(self, items):
        self.p = {i: i for i in items}

    def find(self, i):
        while self.p[i] != i:
            self.p[i] = self.p[self.p[i]]
            i = self.p[i]
        return i

    def union(self, a, b):
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.p[max(ra, rb)] = min(ra, rb)


def from_pandapower(net, name: str | None = None, zones=None) -> Feeder:
    """Build a :class:`Feeder` from a radial pandapower net with one ext_grid.

    Args:
        net: pandapower net.
        name: Feeder name (default: ``net.name`` or "pandapower").
        zones: Optional partition of the *pandapower* bus indices into connected sets.

    Returns:
        The feeder; ``feeder.bus.name`` holds the pandapower bus index of each bus (the first
        one for fused buses).

    Raises:
        NetworkDataError: no or several in-service ext_grids; meshed or islanded network;
            an element on an unknown or out-of-service bus; voltage-dependent loads;
            transformers with off-nominal taps or three-winding transformers; impedances or
            ratings that are NaN or negative.
    """
    bus_df = net.bus[net.bus.in_service.astype(bool)]
    pp_buses = [int(i) for i in bus_df.index]
    uf = _UnionFind(pp_buses)
    known = set(pp_buses)

    def check_bus(table, idx):
        for i, b in zip(table.index, table["bus"] if "bus" in table else []):
            if int(b) not in known:
                raise NetworkDataError(f"element {i} is on bus {b}, which is unknown or out of service", "net")

    sw = net.switch if "switch" in net and len(net.switch) else None
    if sw is not None:
        bb = sw[(sw.et == "b") & sw.closed.astype(bool)]
        for b1, b2 in zip(bb.bus, bb.element):
            if int(b1) in known and int(b2) in known:
                uf.union(int(b1), int(b2))
    groups = sorted({uf.find(b) for b in pp_buses})
    pos = {g: k for k, g in enumerate(groups)}
    bus_pos = {b: pos[uf.find(b)] for b in pp_buses}
    vn = np.zeros(len(groups))
    vmin = np.full(len(groups), -np.inf)
    vmax = np.full(len(groups), np.inf)
    # pandapower fills 0.0 / 2.0 where a bus in a net with limit columns has none: read as absent
    bmin = _col(bus_df, "min_vm_pu", 0.95)
    bmin = np.where(bmin > 0, bmin, 0.95)
    bmax = _col(bus_df, "max_vm_pu", 1.05)
    bmax = np.where(bmax < 2.0, bmax, 1.05)
    for k, b in enumerate(pp_buses):
        g = bus_pos[b]
        if vn[g] and abs(vn[g] - bus_df.vn_kv.iloc[k]) > 1e-9:
            raise NetworkDataError(f"bus-bus switch joins buses of {vn[g]} kV and {bus_df.vn_kv.iloc[k]} kV",
                                   "net.switch")
        vn[g] = bus_df.vn_kv.iloc[k]
        vmin[g] = max(vmin[g], bmin[k])  # fused buses take the tighter limits
        vmax[g] = min(vmax[g], bmax[k])

    eg = net.ext_grid[net.ext_grid.in_service.astype(bool)]
    if len(eg) != 1:
        raise NetworkDataError(f"expected exactly one in-service ext_grid, got {len(eg)}", "net.ext_grid")
    if int(eg.bus.iloc[0]) not in known:
        raise NetworkDataError(f"ext_grid bus {eg.bus.iloc[0]} is unknown or out of service", "net.ext_grid")
    root = bus_pos[int(eg.bus.iloc[0])]
    root_vm = float(eg.vm_pu.iloc[0])

    # ---- branches: lines then transformers, keyed by bus pair to merge parallel ones ------
    open_lines = set()
    if sw is not None:
        ls = sw[(sw.et == "l") & ~sw.closed.astype(bool)]
        open_lines = {int(e) for e in ls.element}
    rows = []  # (from, to, r, x, b_us, g_us, imax, in_service, name)
    ln = net.line
    if len(ln):
        par = _col(ln, "parallel", 1.0)
        df = _col(ln, "df", 1.0)
        length = ln.length_km.to_numpy(dtype=float)
        r = ln.r_ohm_per_km.to_numpy(dtype=float) * length / par
        x = ln.x_ohm_per_km.to_numpy(dtype=float) * length / par
        f_hz = float(getattr(net, "f_hz", 50.0))
        bsh = 2 * np.pi * f_hz * _col(ln, "c_nf_per_km", 0.0) * 1e-3 * length * par  # microsiemens
        gsh = _col(ln, "g_us_per_km", 0.0) * length * par
        imax = ln.max_i_ka.to_numpy(dtype=float) * df * par
        for k, (i, fb, tb) in enumerate(zip(ln.index, ln.from_bus, ln.to_bus)):
            fb, tb = int(fb), int(tb)
            on = bool(ln.in_service.iloc[k]) and int(i) not in open_lines
            if fb not in known or tb not in known:
                if on:
                    raise NetworkDataError(f"line {i} connects bus {fb}-{tb}, unknown or out of service", "net.line")
                continue
            if bus_pos[fb] == bus_pos[tb]:
                if on:
                    raise NetworkDataError(f"line {i} connects two buses fused by a bus-bus switch", "net.line")
                continue
            rows.append([bus_pos[fb], bus_pos[tb], r[k], x[k], bsh[k], gsh[k], imax[k], on, f"line {i}"])
    tr = net.trafo
    for i in tr.index:
        t = tr.loc[i]
        if not bool(t.in_service):
            continue
        hv, lv = int(t.hv_bus), int(t.lv_bus)
        if hv not in known or lv not in known:
            raise NetworkDataError(f"trafo {i} is on an unknown or out-of-service bus", "net.trafo")
        tap_pos = float(t.get("tap_pos", np.nan))
        tap_neutral = float(t.get("tap_neutral", np.nan))
        tap_step = float(t.get("tap_step_percent", np.nan))
        if np.isfinite(tap_pos) and np.isfinite(tap_neutral) and tap_pos != tap_neutral and tap_step != 0:
            raise NetworkDataError(
                f"trafo {i}: tap_pos {tap_pos} differs from tap_neutral {tap_neutral}; off-nominal ratios are not "
                "modelled (move the tap to neutral and adjust the slack voltage instead)", "net.trafo.tap_pos")
        for side, b in (("hv", hv), ("lv", lv)):
            if abs(float(t[f"vn_{side}_kv"]) - vn[bus_pos[b]]) > 1e-6 * vn[bus_pos[b]]:
                raise NetworkDataError(
                    f"trafo {i}: rated vn_{side}_kv {t[f'vn_{side}_kv']} differs from its bus's vn_kv "
                    f"{vn[bus_pos[b]]}; off-nominal ratios are not modelled", f"net.trafo.vn_{side}_kv")
        npar = float(t.get("parallel", 1) or 1)
        zbase = float(t.vn_lv_kv) ** 2 / float(t.sn_mva)
        zk = float(t.vk_percent) / 100 * zbase / npar
        rk = float(t.vkr_percent) / 100 * zbase / npar
        xk = np.sqrt(max(zk**2 - rk**2, 0.0))
        imax = float(t.sn_mva) * npar / (np.sqrt(3) * float(t.vn_lv_kv))
        rows.append([bus_pos[hv], bus_pos[lv], rk, xk, 0.0, 0.0, imax, True, f"trafo {i}"])
    if "trafo3w" in net and len(net.trafo3w) and net.trafo3w.in_service.any():
        raise NetworkDataError("three-winding transformers are not supported", "net.trafo3w")

    merged = {}
    out_rows = []
    for row in rows:
        if not row[7]:
            out_rows.append(row)
            continue
        key = (min(row[0], row[1]), max(row[0], row[1]))
        if key in merged:
            m = merged[key]
            z1, z2 = complex(m[2], m[3]), complex(row[2], row[3])
            zp = z1 * z2 / (z1 + z2)
            m[2], m[3] = zp.real, zp.imag
            m[4] += row[4]
            m[5] += row[5]
            m[6] += row[6]
            m[8] += f" || {row[8]}"
        else:
            merged[key] = list(row)
            out_rows.append(merged[key])
    br = np.array([r[:8] for r in out_rows], dtype=float).reshape(-1, 8)
    branch = BranchTable(from_bus=br[:, 0].astype(np.int64), to_bus=br[:, 1].astype(np.int64), r_ohm=br[:, 2],
                         x_ohm=br[:, 3], b_us=br[:, 4], g_us=br[:, 5], i_max_ka=_rating(br[:, 6]),
                         in_service=br[:, 7].astype(bool), name=tuple(r[8] for r in out_rows))

    # ---- devices --------------------------------------------------------------------------
    ld = net.load[net.load.in_service.astype(bool)]
    check_bus(ld, None)
    for c in ("const_z_percent", "const_i_percent", "const_z_p_percent", "const_i_p_percent", "const_z_q_percent",
              "const_i_q_percent"):
        if c in ld.columns and np.any(_col(ld, c, 0.0) != 0):
            raise NetworkDataError("voltage-dependent (ZIP) loads are not supported; only constant power",
                                   f"net.load.{c}")
    sc = _col(ld, "scaling", 1.0)
    load = LoadTable(bus=[bus_pos[int(b)] for b in ld.bus], p_mw=ld.p_mw.to_numpy(float) * sc,
                     q_mvar=ld.q_mvar.to_numpy(float) * sc, name=_names(ld, "load "))

    sg = net.sgen[net.sgen.in_service.astype(bool)]
    check_bus(sg, None)
    is_pv = np.array([isinstance(t, str) and "PV" in t.upper() for t in sg.get("type", [None] * len(sg))],
                     dtype=bool)
    sgp = sg[is_pv]
    ssc = _col(sgp, "scaling", 1.0)
    p_now = sgp.p_mw.to_numpy(float) * ssc
    s_rated = _col(sgp, "sn_mva", np.nan)
    s_rated = np.where(np.isfinite(s_rated) & (s_rated > 0), s_rated, np.abs(p_now))
    p_peak = np.minimum(_col(sgp, "max_p_mw", np.nan), s_rated)
    p_peak = np.where(np.isfinite(p_peak), p_peak, np.minimum(p_now, s_rated))
    pv = PVTable(bus=[bus_pos[int(b)] for b in sgp.bus], s_mva=s_rated, p_max_mw=p_peak, name=_names(sgp, "sgen "))
    sgo = sg[~is_pv]
    gsc = _col(sgo, "scaling", 1.0)
    gen = GenTable(bus=[bus_pos[int(b)] for b in sgo.bus], p_mw=sgo.p_mw.to_numpy(float) * gsc,
                   q_mvar=sgo.q_mvar.to_numpy(float) * gsc, name=_names(sgo, "sgen "))

    sh = net.shunt[net.shunt.in_service.astype(bool)] if "shunt" in net else net.shunt
    check_bus(sh, None)
    if len(sh) and np.any(_col(sh, "p_mw", 0.0) != 0):
        raise NetworkDataError("shunts with p_mw != 0 are not supported (capacitor banks are lossless)",
                               "net.shunt.p_mw")
    max_step = _col(sh, "max_step", 1.0).astype(np.int64)
    step = _col(sh, "step", 1.0).astype(np.int64)
    cap = CapTable(bus=[bus_pos[int(b)] for b in sh.bus], q_step_mvar=-sh.q_mvar.to_numpy(float), n_steps=max_step,
                   step_init=step, name=_names(sh, "shunt "))

    st = net.storage[net.storage.in_service.astype(bool)]
    check_bus(st, None)
    emax = _col(st, "max_e_mwh", np.nan)
    pmax = np.maximum(np.abs(_col(st, "max_p_mw", np.nan)), np.abs(_col(st, "min_p_mw", np.nan)))
    pmax = np.where(np.isfinite(pmax), pmax, _col(st, "sn_mva", np.nan))
    emin = _col(st, "min_e_mwh", 0.0)
    soc = _col(st, "soc_percent", 50.0) / 100
    with np.errstate(invalid="ignore", divide="ignore"):
        ess = ESSTable(bus=[bus_pos[int(b)] for b in st.bus], p_max_mw=pmax, e_max_mwh=emax,
                       soc_min=np.where(emax > 0, emin / emax, 0.0), soc_max=np.ones(len(st)),
                       soc_init=soc, name=_names(st, "storage "))

    if zones is not None:
        zones = [np.unique([bus_pos[int(b)] for b in z]) for z in zones]
    return Feeder(name=name or (getattr(net, "name", "") or "pandapower"),
                  bus=BusTable(vn_kv=vn, vm_min_pu=vmin, vm_max_pu=vmax, name=tuple(str(g) for g in groups)),
                  branch=branch, root_bus=root, root_vm_pu=root_vm, load=load, gen=gen, pv=pv, cap=cap, ess=ess,
                  zones=zones, sn_mva=1.0, notes="converted from pandapower")


def _rating(imax: np.ndarray) -> np.ndarray:
    """pandapower marks unrated lines with huge max_i_ka (case33bw: 99999 kA): read as inf."""
    return np.where(imax >= 1e4, np.inf, imax)


def to_pandapower(feeder: Feeder, p_mw=None, q_mvar=None, shunt_q_mvar=None):
    """Build a pandapower net of the feeder, for cross-checks with pandapower.

    Branches between buses of equal ``vn_kv`` become lines of 1 km; others become
    transformers with the same series impedance (no magnetizing branch, no phase shift).

    Args:
        feeder: The feeder.
        p_mw, q_mvar: Optional net injection per bus, ``(n_bus,)``, positive into the network.
            When given, the net holds one load per bus carrying ``-p_mw, -q_mvar`` instead of
            the feeder's devices, so ``runpp`` solves exactly what ``run_powerflow`` solves.
            When omitted, the feeder's loads, fixed generation, PV (type "PV", at 0 MW),
            capacitor banks (shunts at ``step_init``) and storage are written at nominal values.
        shunt_q_mvar: Optional reactive injection at 1 pu per bus (constant admittance), written
            as shunts.

    Returns:
        A pandapower net with the feeder's bus order (pandapower bus ``i`` is feeder bus ``i``).

    Raises:
        InputError: an injection that is not a finite ``(n_bus,)`` vector, or only one of
            ``p_mw`` and ``q_mvar``.
    """
    import pandapower as pp

    # pandapower's vectorized create_* functions: one call per table instead of one per element
    # (element by element took ~1.2 s for a 33-bus feeder here, mostly pandas bookkeeping)
    net = _empty_net(feeder.sn_mva)
    net.name = feeder.name
    n = feeder.n_bus
    pp.create_buses(net, n, vn_kv=np.asarray(feeder.bus.vn_kv, dtype=float), index=np.arange(n),
                    name=list(feeder.bus.name), min_vm_pu=np.asarray(feeder.bus.vm_min_pu, dtype=float),
                    max_vm_pu=np.asarray(feeder.bus.vm_max_pu, dtype=float))
    pp.create_ext_grid(net, bus=feeder.root_bus, vm_pu=feeder.root_vm_pu, va_degree=0.0)
    br = feeder.branch
    f_hz = float(net.f_hz)
    fb, tb = br.from_bus.astype(int), br.to_bus.astype(int)
    vn = np.asarray(feeder.bus.vn_kv, dtype=float)
    rated = np.isfinite(br.i_max_ka)
    imax = np.where(rated, br.i_max_ka, 99999.0)
    is_line = np.abs(vn[fb] - vn[tb]) < 1e-9
    names = np.array(br.name, dtype=object)
    k = np.flatnonzero(is_line)  # each table keeps the branch order of its own elements
    if k.size:
        pp.create_lines_from_parameters(
            net, fb[k], tb[k], length_km=np.ones(k.size), r_ohm_per_km=br.r_ohm[k].astype(float),
            x_ohm_per_km=br.x_ohm[k].astype(float), c_nf_per_km=br.b_us[k].astype(float) / (2 * np.pi * f_hz) * 1e3,
            g_us_per_km=br.g_us[k].astype(float), max_i_ka=imax[k].astype(float),
            in_service=br.in_service[k].astype(bool), name=list(names[k]))
    k = np.flatnonzero(~is_line)
    if k.size:
        hv = np.where(vn[fb[k]] > vn[tb[k]], fb[k], tb[k])
        lv = np.where(vn[fb[k]] > vn[tb[k]], tb[k], fb[k])
        vlv, vto = vn[lv], vn[tb[k]]
        z = (br.r_ohm[k] + 1j * br.x_ohm[k]) * (vlv / vto) ** 2  # refer to the LV side
        sn = np.where(rated[k], np.sqrt(3) * vlv * imax[k], 100.0)
        zbase = vlv**2 / sn
        pp.create_transformers_from_parameters(
            net, hv, lv, sn_mva=sn, vn_hv_kv=vn[hv], vn_lv_kv=vlv, vkr_percent=z.real / zbase * 100,
            vk_percent=np.abs(z) / zbase * 100, pfe_kw=np.zeros(k.size), i0_percent=np.zeros(k.size),
            shift_degree=np.zeros(k.size), in_service=br.in_service[k].astype(bool), name=list(names[k]))
    if (p_mw is None) != (q_mvar is None):
        raise InputError("p_mw and q_mvar are given together or not at all", "q_mvar" if q_mvar is None else "p_mw")
    if p_mw is not None:
        p = finite_vector(p_mw, n, "p_mw")
        q = finite_vector(q_mvar, n, "q_mvar")
        pp.create_loads(net, np.arange(n), p_mw=-p, q_mvar=-q)
    else:
        if len(feeder.load):
            pp.create_loads(net, feeder.load.bus.astype(int), p_mw=feeder.load.p_mw.astype(float),
                            q_mvar=feeder.load.q_mvar.astype(float), name=list(feeder.load.name))
        if len(feeder.gen):
            pp.create_sgens(net, feeder.gen.bus.astype(int), p_mw=feeder.gen.p_mw.astype(float),
                            q_mvar=feeder.gen.q_mvar.astype(float), name=list(feeder.gen.name))
        if feeder.n_pv:
            pv = feeder.pv
            pp.create_sgens(net, pv.bus.astype(int), p_mw=np.zeros(feeder.n_pv), q_mvar=np.zeros(feeder.n_pv),
                            sn_mva=pv.s_mva.astype(float), max_p_mw=pv.p_max_mw.astype(float), type="PV",
                            name=list(pv.name))
        if feeder.n_cap:
            cap = feeder.cap
            pp.create_shunts(net, cap.bus.astype(int), q_mvar=-cap.q_step_mvar.astype(float),
                             p_mw=np.zeros(feeder.n_cap), step=cap.step_init.astype(int),
                             max_step=cap.n_steps.astype(int), name=list(cap.name))
        if feeder.n_ess:
            e = feeder.ess
            pp.create_storages(net, e.bus.astype(int), p_mw=np.zeros(feeder.n_ess), max_e_mwh=e.e_max_mwh.astype(float),
                               min_e_mwh=(e.soc_min * e.e_max_mwh).astype(float),
                               soc_percent=(e.soc_init * 100).astype(float), max_p_mw=e.p_max_mw.astype(float),
                               min_p_mw=-e.p_max_mw.astype(float), name=list(e.name))
    if shunt_q_mvar is not None:
        bq = finite_vector(shunt_q_mvar, n, "shunt_q_mvar")
        nz = np.flatnonzero(bq)
        if nz.size:
            pp.create_shunts(net, nz, q_mvar=-bq[nz], p_mw=np.zeros(nz.size))
    return net


_EMPTY_NETS: dict = {}


def _empty_net(sn_mva: float):
    """A fresh empty pandapower net: a copy of a cached one (``create_empty_network`` builds
    every table from scratch, ~0.5 s here)."""
    import copy

    import pandapower as pp

    key = float(sn_mva)
    if key not in _EMPTY_NETS:
        _EMPTY_NETS[key] = pp.create_empty_network(sn_mva=key)
    return copy.deepcopy(_EMPTY_NETS[key])
