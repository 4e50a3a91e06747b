"""Conversion between pandapower nets and :class:`Feeder` (the only module that touches pandas).

``from_pandapower`` reads a radial pandapower net with one ext_grid and builds the network that
pandapower's ``runpp`` solves on it, so that ``run_powerflow`` on the feeder (with
:func:`injection_from_pandapower`'s injections) matches ``runpp`` on the *original* net to
1e-6 pu and 1e-6 MW (tests/network/test_conversion.py, benchmarks/fidelity.py):

* **Every element table is accounted for.** Each in-service row of every table of the net that
  names a bus (pandapower's element tables, and any table we never heard of) is converted or
  rejected with a :class:`NetworkDataError` naming the table, index and name
  (``net.gen[0] 'Gen 1': ...``); nothing is dropped silently. Rows out of service are ignored;
  rows whose buses are all out of service or unsupplied are ignored with a note (pandapower
  ignores them too). Converted: ``ext_grid`` (the slack), ``line``, ``trafo``, ``load``,
  ``motor`` (as the constant P/Q pandapower computes from its rating), ``sgen``, ``storage``,
  ``shunt``, ``ward`` (PQ part as a load, impedance part as a bus shunt). Rejected: ``gen``,
  ``xward`` (voltage control), ``trafo3w``, ``impedance``, ``dcline``, ``svc``, ``tcsc``,
  ``ssc``, ``vsc``, DC-grid tables, ``asymmetric_load``/``asymmetric_sgen`` (unbalanced),
  voltage-dependent (ZIP) loads, storage without power or energy limits, and unknown tables.
* **Topology as pandapower builds it.** Closed bus-bus switches (``z_ohm`` 0) fuse buses
  (tighter voltage limits win). An open line or transformer switch disconnects that end of the
  branch, but pandapower keeps the branch attached at its other end (an auxiliary bus), so the
  closed end still sees the branch's shunt: ``y/2 + 1 / (z + 1 / (y/2))`` for a pi model with
  series ``z`` and total shunt ``y``. That admittance becomes a fixed bus shunt
  (``BusTable.shunt_p_mw``/``shunt_q_mvar``) at the closed end; the branch itself stays in the
  feeder out of service (closing it again with ``Feeder.replace`` would count that shunt twice).
  Lines at an out-of-service bus are treated the same way (pandapower does); transformers at an
  out-of-service bus are out of service. Buses that no in-service path connects to the ext_grid
  (behind open switches, out-of-service branches or buses) are **dropped** with a note, as
  pandapower shows them as NaN (``unsupplied="raise"`` raises instead, naming them). The
  remaining in-service branches must form a tree: a branch closing a loop is named in the error.
  Parallel in-service branches between the same two buses are merged exactly (pi models in
  parallel: admittances add).
* **Lines**: pi model with ``parallel``; ``df`` scales the rating. Both ends must have the same
  ``vn_kv``.
* **Two-winding transformers** as pandapower models them with ``trafo_model="t"`` (its
  default): the series impedance (``vk_percent``, ``vkr_percent``) split in two halves around the
  magnetizing admittance (``pfe_kw`` iron losses, ``i0_percent`` no-load current; susceptance
  inductive, ``b_us < 0``), converted exactly to the equivalent symmetric pi (pandapower's
  ``_wye_delta``): a slightly modified series impedance and half the magnetizing admittance at
  each end. ``trafo_model="pi"`` (or a net last solved with it) puts the magnetizing admittance
  directly in the pi. ``parallel`` is applied; the rating is ``sn_mva * parallel`` at the LV
  side. Taps are read as pandapower reads them (a tap without ``tap_changer_type`` is ignored, as
  pandapower ignores it; "Ideal" taps only shift the angle); an off-nominal voltage ratio (tap
  position, or rated voltages whose ratio differs from the buses' ``vn_kv`` ratio) is
  **rejected**, naming the transformer. Rated voltages that differ from the buses' but keep the
  ratio nominal are modelled exactly. The **phase shift** (``shift_degree``) is not modelled: in
  a radial network it rotates every angle below the transformer by the same amount and changes
  no magnitude, current or power.
* **Loads** (constant power only) with ``scaling``; **sgens** become PV inverters when their
  type says PV (see ``pv_types``/``is_pv``), rated by ``sn_mva`` with peak ``max_p_mw`` (clipped
  to the rating) or else ``sn_mva`` (never the current output); other sgens are fixed
  generation at ``p_mw * scaling``. **Shunts** with ``p_mw == 0`` become switchable capacitor
  banks (``-q_mvar`` per step at the bus's ``vn_kv``, ``max_step`` steps); shunts with losses
  (``p_mw != 0``) or marked ``controllable = False`` are fixed bus shunts at their present step.
  **Storage** needs power (``max_p_mw``/``min_p_mw`` or ``sn_mva``) and energy (``max_e_mwh``)
  limits.
* Bus limits from ``min_vm_pu``/``max_vm_pu`` (0.95/1.05 when absent, NaN, or pandapower's
  "no limit" fill values 0.0/2.0).

What was converted, ignored, fused, merged, dropped and how each sgen was classified is in the
feeder's ``notes`` (for people) and in a :class:`ConversionReport`
(``from_pandapower(net, report=True)`` or :func:`conversion_report`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np

from safedispatch.errors import InputError, NetworkDataError, SafeDispatchError, finite_vector
from safedispatch.network.feeder import BranchTable, BusTable, CapTable, ESSTable, Feeder, GenTable, LoadTable, PVTable

__all__ = ["ConversionReport", "conversion_report", "from_pandapower", "injection_from_pandapower", "to_pandapower",
           "write_setpoints_to_pandapower"]

#: a DataFrame of the net with one of these columns is an element table (it names buses)
BUS_COLUMNS = ("bus", "hv_bus", "mv_bus", "lv_bus", "from_bus", "to_bus", "bus_dc", "from_bus_dc", "to_bus_dc",
               "bus_dc_plus", "bus_dc_minus")
#: element tables this module converts (``switch`` is topology, read with the branches)
CONVERTED_TABLES = ("ext_grid", "line", "trafo", "load", "motor", "sgen", "storage", "shunt", "ward")
#: why the other known element tables are rejected; an unknown table is rejected too
UNSUPPORTED_TABLES = {
    "gen": "a voltage-controlled generator (PV bus) cannot be a PQ injection of a radial feeder; model it as an "
           "sgen (fixed P and Q) or as the ext_grid",
    "xward": "an extended ward holds its bus voltage with an internal voltage source (a PV node)",
    "trafo3w": "three-winding transformers are not supported (replace by two-winding transformers)",
    "impedance": "impedance elements (possibly non-reciprocal) are not supported; use a line or a transformer",
    "dcline": "DC lines are not supported",
    "svc": "static VAR compensators control voltage and are not supported",
    "tcsc": "thyristor-controlled series capacitors are not supported",
    "ssc": "static synchronous compensators (STATCOM) control voltage and are not supported",
    "vsc": "voltage-source converters (AC/DC) are not supported",
    "vsc_stacked": "voltage-source converters (AC/DC) are not supported",
    "vsc_bipolar": "voltage-source converters (AC/DC) are not supported",
    "line_dc": "DC-grid elements are not supported",
    "source_dc": "DC-grid elements are not supported",
    "load_dc": "DC-grid elements are not supported",
    "asymmetric_load": "unbalanced (per-phase) loads are not supported: safedispatch is a balanced "
                       "positive-sequence model",
    "asymmetric_sgen": "unbalanced (per-phase) generators are not supported: safedispatch is a balanced "
                       "positive-sequence model",
}
#: off-nominal transformer ratios (relative) below this count as nominal
RATIO_TOL = 1e-9
_ZIP_COLUMNS = ("const_z_percent", "const_i_percent", "const_z_p_percent", "const_i_p_percent", "const_z_q_percent",
                "const_i_q_percent")


# ----------------------------------------------------------------------------- report


@dataclass(frozen=True, eq=False)
class ConversionReport:
    """What :func:`from_pandapower` did with each element of a pandapower net.

    Immutable, hence thread-safe. ``str(report)`` is the human-readable summary that also goes
    into ``feeder.notes``.

    Attributes:
        tables: ``{table: {"converted": n, "ignored": n, "rejected": n}}`` for every element
            table of the net with rows (ignored: out of service, or on dropped buses).
        rejected: ``((table, index, name, reason), ...)``: elements that cannot be converted
            (``from_pandapower`` raises on any).
        notes: Human-readable notes: ignored elements and why, modelling choices applied.
        bus_map: ``{pandapower bus: feeder bus}`` for every kept bus (fused buses share one).
        dropped_buses: pandapower buses not in the feeder (out of service or unsupplied).
        fused_buses: Groups of pandapower buses fused into one feeder bus by closed bus-bus
            switches.
        merged_branches: Names of feeder branches that merge parallel elements.
        pv_sgens, fixed_sgens: sgen indices classified as inverters / fixed generation.
        half_connected: Names of branches connected at one end only, modelled as a bus shunt
            at that end (and of in-service lines joining two fused buses: a shunt too).
        branch_shunt_p_mw, branch_shunt_q_mvar: ``(n_bus,)`` the part of the feeder's
            ``bus.shunt_p_mw``/``shunt_q_mvar`` that comes from ``half_connected`` branches
            (consumption at 1 pu). pandapower counts it as branch losses (``res_line.pl_mw``),
            so a loss comparison adds ``branch_shunt_p_mw * vm_pu**2`` to ``p_loss_mw``.
        sources: ``{"load"|"gen"|"pv"|"cap"|"ess": ((pandapower table, index), ...)}``, the
            origin of each row of the feeder's device tables (wards and motors are loads).
        trafo_model: The transformer model used ("t" or "pi").
        n_bus: Number of feeder buses (0 when the conversion failed).
        error: Why the net cannot be converted (only from :func:`conversion_report`), else None.
    """

    tables: dict
    rejected: tuple
    notes: tuple
    bus_map: dict
    dropped_buses: tuple
    fused_buses: tuple
    merged_branches: tuple
    pv_sgens: tuple
    fixed_sgens: tuple
    half_connected: tuple
    branch_shunt_p_mw: np.ndarray
    branch_shunt_q_mvar: np.ndarray
    sources: dict
    trafo_model: str
    n_bus: int
    error: str | None = None

    @property
    def ok(self) -> bool:
        """True when the net converts (no rejected element, no error)."""
        return self.error is None and not self.rejected

    def __str__(self) -> str:
        lines = [f"pandapower conversion ({self.trafo_model} transformer model): {self.n_bus} buses"
                 + (f", {len(self.fused_buses)} fused groups" if self.fused_buses else "")
                 + (f", {len(self.dropped_buses)} pandapower buses dropped" if self.dropped_buses else "")
                 + (f", {len(self.merged_branches)} merged branches" if self.merged_branches else "")
                 + (f", {len(self.half_connected)} half-connected branches as shunts" if self.half_connected else "")]
        if self.tables:
            parts = []
            for t, c in self.tables.items():
                bits = [f"{c[k]} {k}" for k in ("converted", "ignored", "rejected") if c.get(k)]
                parts.append(f"{t}: {', '.join(bits) or 'empty'}")
            lines.append("tables: " + "; ".join(parts))
        if self.pv_sgens or self.fixed_sgens:
            lines.append(f"sgens: {len(self.pv_sgens)} PV inverters, {len(self.fixed_sgens)} fixed generation")
        if self.error:
            lines.append(f"error: {self.error}")
        lines += [f"- {n}" for n in self.notes]
        return "\n".join(lines)


class _Acc:
    """Mutable bookkeeping while converting; frozen into a ConversionReport at the end."""

    def __init__(self):
        self.tables: dict = {}
        self.rejected: list = []
        self.fields: list = []
        self.notes: list = []
        self.merged: list = []
        self.half: list = []
        self.pv: list = []
        self.fixed: list = []
        self.sources = {k: [] for k in ("load", "gen", "pv", "cap", "ess")}

    def count(self, table, what, n=1):
        c = self.tables.setdefault(table, {"converted": 0, "ignored": 0, "rejected": 0})
        c[what] += n

    def reject(self, table, idx, name, reason, fld=None):
        self.rejected.append((table, idx, name, reason))
        self.fields.append(fld or f"net.{table}")
        self.count(table, "rejected")

    def freeze(self, *, bus_map, dropped, fused, n_bus, bsp, bsq, trafo_model, error=None):
        return ConversionReport(
            tables={k: dict(v) for k, v in self.tables.items()}, rejected=tuple(self.rejected),
            notes=tuple(self.notes), bus_map=dict(bus_map), dropped_buses=tuple(dropped), fused_buses=tuple(fused),
            merged_branches=tuple(self.merged), pv_sgens=tuple(self.pv), fixed_sgens=tuple(self.fixed),
            half_connected=tuple(self.half), branch_shunt_p_mw=_ro(bsp), branch_shunt_q_mvar=_ro(bsq),
            sources={k: tuple(v) for k, v in self.sources.items()}, trafo_model=trafo_model, n_bus=n_bus,
            error=error)


def _ro(a):
    a = np.array(a, dtype=float)
    a.setflags(write=False)
    return a


# ----------------------------------------------------------------------------- small helpers


def _num(v, default=np.nan) -> float:
    """A float from a table cell; None, NaN and pandas' NA read as ``default``."""
    if v is None:
        return default
    try:
        x = float(v)
    except (TypeError, ValueError):
        return default
    return default if math.isnan(x) else x


def _flag(v) -> bool:
    """A boolean cell: None / NaN / NA are False."""
    if v is None:
        return False
    try:
        if isinstance(v, float) and math.isnan(v):
            return False
        return bool(v)
    except (TypeError, ValueError):
        return False


def _in_service(df) -> np.ndarray:
    if "in_service" not in df.columns:
        return np.ones(len(df), dtype=bool)
    return np.array([_flag(v) for v in df["in_service"].to_numpy()], dtype=bool)


def _name(df, idx) -> str | None:
    if "name" not in df.columns:
        return None
    v = df.at[idx, "name"]
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return None
    s = str(v)
    return s if s and s.lower() not in ("nan", "none") else None


def _label(table, idx, name) -> str:
    return f"net.{table}[{idx}]" + (f" {name!r}" if name else "")


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
        return ra != rb


def _element_tables(net) -> list[str]:
    """Names of the net's element tables: DataFrames with a bus column (the switch table is
    topology and not in the list)."""
    import pandas as pd

    out = []
    for key in list(net.keys()):
        if not isinstance(key, str) or key.startswith("_") or key.startswith("res_") or key == "switch":
            continue
        v = net[key]
        if isinstance(v, pd.DataFrame) and any(c in v.columns for c in BUS_COLUMNS):
            out.append(key)
    return out


def _default_is_pv(sgen_type) -> bool:
    """Default inverter test on an sgen's ``type``: contains "PV" (any case), or is SimBench's
    ``lv_RES`` (the aggregated rooftop PV of the LV grids below an MV node: every SimBench LV
    grid's generators are PV)."""
    if not isinstance(sgen_type, str):
        return False
    t = sgen_type.strip().upper()
    return "PV" in t or t == "LV_RES"


def _pv_classifier(pv_types, is_pv):
    """A function ``(sgen_df, idx) -> bool`` from the caller's choice."""
    if pv_types is not None and is_pv is not None:
        raise InputError("give pv_types or is_pv, not both", "is_pv")
    if is_pv is not None:
        if not callable(is_pv):
            raise InputError(f"expected a callable taking an sgen row, got {type(is_pv).__name__}", "is_pv")

        def call(df, i):
            try:
                return bool(is_pv(df.loc[i]))
            except Exception as exc:  # a user's predicate: say where it failed
                raise InputError(f"raised {exc!r} on {_label('sgen', i, _name(df, i))}", "is_pv") from exc

        return call
    if pv_types is not None:
        if isinstance(pv_types, str):
            pv_types = [pv_types]
        try:
            types = {str(t).strip().upper() for t in pv_types}
        except TypeError:
            raise InputError(f"expected a collection of type strings, got {pv_types!r}", "pv_types") from None
        return lambda df, i: isinstance(df.at[i, "type"] if "type" in df.columns else None, str) and \
            df.at[i, "type"].strip().upper() in types
    return lambda df, i: _default_is_pv(df.at[i, "type"] if "type" in df.columns else None)


# ----------------------------------------------------------------------------- transformers


def _tapped_voltages(t) -> tuple[float, float, str | None]:
    """The transformer's rated voltages after its taps, as pandapower 3 computes them
    (``build_branch._calc_tap_from_dataframe`` without characteristic tables).

    Returns:
        ``(vn_hv_kv, vn_lv_kv, problem)``; ``problem`` says why the taps cannot be read.
    """
    vnh, vnl = _num(t.get("vn_hv_kv")), _num(t.get("vn_lv_kv"))
    for s in ("", "2"):
        pos = _num(t.get(f"tap{s}_pos"))
        if not math.isfinite(pos):
            continue
        if _flag(t.get(f"tap{s}_dependency_table", False)):
            return vnh, vnl, f"tap{s}_dependency_table: tap-dependent characteristics are not modelled"
        if f"tap{s}_changer_type" in t.index:
            kind = t.get(f"tap{s}_changer_type")
            kind = kind if isinstance(kind, str) else ""
            if kind not in ("Ratio", "Symmetrical"):
                continue  # pandapower ignores a tap without a changer type; "Ideal" only shifts the angle
        elif _flag(t.get(f"tap{s}_phase_shifter", False)):
            continue  # pandapower < 3: an ideal phase shifter
        diff = pos - _num(t.get(f"tap{s}_neutral"))
        steps = _num(t.get(f"tap{s}_step_percent")) * diff / 100
        steps = 0.0 if math.isnan(steps) else steps
        ang = math.radians(_num(t.get(f"tap{s}_step_degree"), 0.0))
        side = t.get(f"tap{s}_side")
        if side not in ("hv", "lv"):
            continue
        u1 = vnh if side == "hv" else vnl
        du = u1 * steps
        u = math.hypot(u1 + du * math.cos(ang), du * math.sin(ang))
        if side == "hv":
            vnh = u
        else:
            vnl = u
    return vnh, vnl, None


def _trafo_pi(t, vn_hv_bus, vn_lv_bus, trafo_model):
    """Pi model of a two-winding transformer at its LV side, as pandapower builds it.

    Args:
        t: The trafo row (pandas Series).
        vn_hv_bus, vn_lv_bus: The buses' ``vn_kv``.
        trafo_model: "t" (pandapower's default) or "pi".

    Returns:
        ``(z_ohm, y_s, i_max_ka, None)``: complex series impedance (ohm) and total shunt
        admittance (siemens, half at each end) referred to the LV bus, and the LV rating; or
        ``(None, None, None, (reason, field))`` when the transformer cannot be modelled.
    """
    sn, vk, vkr = _num(t.get("sn_mva")), _num(t.get("vk_percent")), _num(t.get("vkr_percent"))
    pfe, i0 = _num(t.get("pfe_kw"), 0.0), _num(t.get("i0_percent"), 0.0)
    par = _num(t.get("parallel"), 1.0)
    vnh, vnl, problem = _tapped_voltages(t)
    if problem:
        return None, None, None, (problem, "net.trafo." + problem.split(":")[0])
    checks = (
        (math.isfinite(sn) and sn > 0, f"sn_mva {sn}: expected finite > 0", "sn_mva"),
        (math.isfinite(vk) and vk > 0, f"vk_percent {vk}: expected finite > 0", "vk_percent"),
        (math.isfinite(vkr) and 0 <= vkr <= vk, f"vkr_percent {vkr}: expected 0 <= vkr_percent <= vk_percent",
         "vkr_percent"),
        (math.isfinite(pfe) and pfe >= 0, f"pfe_kw {pfe}: expected finite >= 0", "pfe_kw"),
        (math.isfinite(i0) and i0 >= 0, f"i0_percent {i0}: expected finite >= 0", "i0_percent"),
        (math.isfinite(par) and par >= 1, f"parallel {par}: expected >= 1", "parallel"),
        (math.isfinite(vnh) and vnh > 0 and math.isfinite(vnl) and vnl > 0,
         f"rated voltages {vnh}/{vnl} kV: expected finite > 0", "vn_hv_kv"),
    )
    for ok, why, col in checks:
        if not ok:
            return None, None, None, (why, f"net.trafo.{col}")
    ratio = (vnh / vnl) / (vn_hv_bus / vn_lv_bus)
    if abs(ratio - 1.0) > RATIO_TOL:
        tapped = (vnh, vnl) != (_num(t.get("vn_hv_kv")), _num(t.get("vn_lv_kv")))
        why = (f"off-nominal voltage ratio {ratio:.6g} (rated {vnh:g}/{vnl:g} kV"
               + (" after the tap position" if tapped else "")
               + f", buses {vn_hv_bus:g}/{vn_lv_bus:g} kV) is not modelled; move the tap to neutral and set the "
               "slack voltage instead, or make the buses' vn_kv match the rated voltages")
        return None, None, None, (why, "net.trafo.tap_pos" if tapped else "net.trafo.vn_hv_kv")
    # pandapower's _calc_r_x_from_dataframe / _calc_y_from_dataframe in physical units at the LV side
    u2 = vnl * vnl
    zk = vk / 100 * u2 / sn / par
    rk = vkr / 100 * u2 / sn / par
    z = complex(rk, math.sqrt(max(zk * zk - rk * rk, 0.0)))
    pfe_mw = pfe * 1e-3
    ym = i0 / 100 * sn
    y = complex(pfe_mw, -math.sqrt(max(ym * ym - pfe_mw * pfe_mw, 0.0))) * par / u2
    if trafo_model == "t" and y != 0:
        rr = _num(t.get("leakage_resistance_ratio_hv"), 0.5)
        xr = _num(t.get("leakage_reactance_ratio_hv"), 0.5)
        if rr != 0.5 or xr != 0.5:
            return None, None, None, (f"leakage split {rr}/{xr} (not 0.5) gives an asymmetric pi, which is not "
                                      "modelled", "net.trafo.leakage_resistance_ratio_hv")
        # pandapower's _wye_delta: the T (z/2, 1/y, z/2) as the equivalent (symmetric) pi
        za = zb = z / 2
        zc = 1 / y
        zsum = za * zb + za * zc + zb * zc
        z, y = zsum / zc, 2 * zb / zsum
    i_max = sn * par / (math.sqrt(3) * _num(t.get("vn_lv_kv")))
    return z, y, i_max, None


def _end_shunt(z_pu: complex, y_pu: complex, both: bool = False) -> complex:
    """Admittance seen at the closed end of a symmetric pi (series ``z_pu``, total shunt
    ``y_pu``) whose other end is open: ``y/2 + 1 / (z + 1 / (y/2))``; with ``both`` (a branch
    whose ends are one bus), the whole shunt ``y``."""
    h = y_pu / 2
    if both:
        return y_pu
    if h == 0:
        return 0j
    return h + 1 / (z_pu + 1 / h)


# ----------------------------------------------------------------------------- conversion


def _trafo_model(trafo_model, net) -> str:
    if trafo_model is None:
        opts = net.get("_options") or {}
        trafo_model = opts.get("trafo_model", "t") if isinstance(opts, dict) else "t"
    if trafo_model not in ("t", "pi"):
        raise InputError(f"expected 't' or 'pi' (pandapower's trafo_model), got {trafo_model!r}", "trafo_model")
    return trafo_model


def _convert(net, *, name, zones, pv_types, is_pv, trafo_model, unsupplied):
    """The conversion; returns ``(feeder, report)`` or raises NetworkDataError with a report
    attached as ``exc.report``."""
    if unsupplied not in ("drop", "raise"):
        raise InputError(f"expected 'drop' or 'raise', got {unsupplied!r}", "unsupplied")
    model = _trafo_model(trafo_model, net)
    classify = _pv_classifier(pv_types, is_pv)
    opts = net.get("_options") or {}
    neglect_open = bool(opts.get("neglect_open_switch_branches", False)) if isinstance(opts, dict) else False
    acc = _Acc()
    state = {"bus_map": {}, "dropped": (), "fused": ()}  # what the report can say when the conversion fails

    def fail(msg, fld):
        exc = NetworkDataError(msg, fld)
        exc.report = acc.freeze(bus_map=state["bus_map"], dropped=state["dropped"], fused=state["fused"],
                                n_bus=0, bsp=np.zeros(0), bsq=np.zeros(0), trafo_model=model, error=str(exc))
        return exc

    # ---- buses -------------------------------------------------------------------------------
    bus_df = net.bus
    bus_on = dict(zip((int(i) for i in bus_df.index), _in_service(bus_df)))
    vn_of = dict(zip((int(i) for i in bus_df.index), bus_df.vn_kv.to_numpy(dtype=float, na_value=np.nan)))
    for b, on in bus_on.items():
        if on and not (math.isfinite(vn_of[b]) and vn_of[b] > 0):
            raise fail(f"{_label('bus', b, _name(bus_df, b))}: vn_kv {vn_of[b]}: expected finite > 0 kV",
                       "net.bus.vn_kv")
    live = [b for b, on in bus_on.items() if on]
    live_set = set(live)
    uf = _UnionFind(live)
    sw = net.switch if "switch" in net and len(net.switch) else None
    open_ends: dict = {}  # (table, index) -> set of buses where an open switch cuts the branch
    if sw is not None:
        closed = np.array([_flag(v) for v in sw.closed.to_numpy()], dtype=bool)
        z_sw = _col(sw, "z_ohm", 0.0)
        for k, (i, b1, el, et) in enumerate(zip(sw.index, sw.bus, sw.element, sw.et)):
            b1, el = int(b1), int(el)
            if et == "b" and closed[k]:
                if z_sw[k] > 0:
                    acc.reject("switch", int(i), _name(sw, i), f"closed bus-bus switch with z_ohm {z_sw[k]}: "
                               "switch impedances are not modelled (set z_ohm to 0 to fuse the buses)",
                               "net.switch.z_ohm")
                elif b1 in live_set and el in live_set:
                    uf.union(b1, el)
            elif et in ("l", "t") and not closed[k]:
                open_ends.setdefault(("line" if et == "l" else "trafo", el), set()).add(b1)

    for b in live:
        r = uf.find(b)
        if abs(vn_of[b] - vn_of[r]) > 1e-9 * vn_of[r]:
            raise fail(f"a closed bus-bus switch joins {_label('bus', r, _name(bus_df, r))} ({vn_of[r]} kV) and "
                       f"{_label('bus', b, _name(bus_df, b))} ({vn_of[b]} kV)", "net.switch")

    # ---- ext_grid ----------------------------------------------------------------------------
    eg = net.ext_grid
    eg_on = _in_service(eg)
    slack = []
    for k, i in enumerate(eg.index):
        if not eg_on[k]:
            continue
        b = int(eg.at[i, "bus"])
        if b not in bus_on:
            raise fail(f"{_label('ext_grid', i, _name(eg, i))} is on bus {b}, which does not exist", "net.ext_grid")
        if not bus_on[b]:
            acc.notes.append(f"{_label('ext_grid', i, _name(eg, i))} ignored: its bus {b} is out of service")
            acc.count("ext_grid", "ignored")
            continue
        slack.append(i)
    if len(slack) != 1:
        raise fail(f"expected exactly one in-service ext_grid on an in-service bus, got {len(slack)}"
                   + (f" ({', '.join(_label('ext_grid', i, _name(eg, i)) for i in slack[:5])}); a radial feeder "
                      "has one slack: split the net per substation" if slack else ""), "net.ext_grid")
    root_pp = int(eg.at[slack[0], "bus"])
    root_vm = _num(eg.at[slack[0], "vm_pu"])
    if not (math.isfinite(root_vm) and root_vm > 0):
        raise fail(f"{_label('ext_grid', slack[0], _name(eg, slack[0]))}: vm_pu {root_vm}: expected finite > 0",
                   "net.ext_grid.vm_pu")
    acc.count("ext_grid", "converted")
    acc.count("ext_grid", "ignored", int((~eg_on).sum()))

    # ---- branch candidates -------------------------------------------------------------------
    # each: dict(table, idx, lbl, ends=(a, b) pandapower buses, z=ohm, y=S at the level of ends[1],
    #            imax, kind: "connect" | "off" | "dangle", closed_end)
    cands = []
    unrated = []  # lines without max_i_ka: unrated, as case33bw's 99999 kA
    f_hz = _num(net.get("f_hz", 50.0), 50.0)
    ln = net.line
    ln_on = _in_service(ln)
    if len(ln):
        cols = {c: _col(ln, c, d) for c, d in (("length_km", np.nan), ("r_ohm_per_km", np.nan),
                                               ("x_ohm_per_km", np.nan), ("c_nf_per_km", 0.0),
                                               ("g_us_per_km", 0.0), ("max_i_ka", np.nan), ("parallel", 1.0),
                                               ("df", 1.0))}
    for k, i in enumerate(ln.index):
        i = int(i)
        on = bool(ln_on[k])
        nm = _name(ln, i)
        lbl = _label("line", i, nm)
        fb, tb = int(ln.at[i, "from_bus"]), int(ln.at[i, "to_bus"])
        if fb not in bus_on or tb not in bus_on:
            if on:
                acc.reject("line", i, nm, f"connects bus {fb} and {tb}, one of which does not exist")
            else:
                acc.count("line", "ignored")
            continue
        length, par = cols["length_km"][k], cols["parallel"][k]
        r, x = cols["r_ohm_per_km"][k] * length / par, cols["x_ohm_per_km"][k] * length / par
        b_s = 2 * math.pi * f_hz * cols["c_nf_per_km"][k] * 1e-9 * length * par
        g_s = cols["g_us_per_km"][k] * 1e-6 * length * par
        imax = cols["max_i_ka"][k] * cols["df"][k] * par
        problems = [
            (math.isfinite(length) and length > 0, f"length_km {length}: expected finite > 0", "length_km"),
            (math.isfinite(par) and par >= 1, f"parallel {par}: expected >= 1", "parallel"),
            (math.isfinite(r) and r >= 0, f"r_ohm_per_km {cols['r_ohm_per_km'][k]}: expected finite >= 0",
             "r_ohm_per_km"),
            (math.isfinite(x), f"x_ohm_per_km {cols['x_ohm_per_km'][k]}: expected finite", "x_ohm_per_km"),
            (r > 0 or x != 0, "r_ohm_per_km and x_ohm_per_km are both 0: a zero impedance (use a bus-bus switch)",
             "x_ohm_per_km"),
            (math.isfinite(b_s), f"c_nf_per_km {cols['c_nf_per_km'][k]}: expected finite", "c_nf_per_km"),
            (math.isfinite(g_s) and g_s >= 0, f"g_us_per_km {cols['g_us_per_km'][k]}: expected finite >= 0",
             "g_us_per_km"),
            (math.isnan(imax) or imax > 0, f"max_i_ka {cols['max_i_ka'][k]} (x df x parallel): expected > 0",
             "max_i_ka"),
            (not (bus_on[fb] and bus_on[tb]) or abs(vn_of[fb] - vn_of[tb]) <= 1e-9 * vn_of[fb],
             f"joins buses of {vn_of[fb]} and {vn_of[tb]} kV: a line needs equal vn_kv at both ends", "from_bus"),
        ]
        bad = next(((why, col) for ok, why, col in problems if not ok), None)
        if bad:
            if on:
                acc.reject("line", i, nm, bad[0], f"net.line.{bad[1]}")
            else:
                acc.count("line", "ignored")
                acc.notes.append(f"{lbl} (out of service) left out: {bad[0]}")
            continue
        if math.isnan(imax):
            unrated.append(i)
            imax = np.inf
        cut = set(open_ends.get(("line", i), ())) & {fb, tb}
        switch_cut = bool(cut)
        cut |= {b for b in (fb, tb) if not bus_on[b]}  # pandapower keeps lines at out-of-service buses dangling
        base = dict(table="line", idx=i, lbl=lbl, ends=(fb, tb), z=complex(r, x), y=complex(g_s, b_s),
                    imax=float(imax), name=f"line {i}", vn=vn_of[tb])
        if not on or len(cut) == 2 or (switch_cut and neglect_open):
            cands.append({**base, "kind": "off"})
        elif cut:
            closed_end = tb if fb in cut else fb
            cands.append({**base, "kind": "dangle", "closed_end": closed_end,
                          "why": "an open switch" if switch_cut else "an out-of-service bus"})
        else:
            cands.append({**base, "kind": "connect"})
    if unrated:
        acc.notes.append(f"{len(unrated)} lines without max_i_ka are unrated (i_max_ka = inf): "
                         f"{unrated[:20]}{' ...' if len(unrated) > 20 else ''}")
    tr = net.trafo
    tr_on = _in_service(tr)
    for k, i in enumerate(tr.index):
        i = int(i)
        nm = _name(tr, i)
        lbl = _label("trafo", i, nm)
        if not tr_on[k]:
            acc.count("trafo", "ignored")
            continue
        t = tr.loc[i]
        hv, lv = int(t.hv_bus), int(t.lv_bus)
        if hv not in bus_on or lv not in bus_on:
            acc.reject("trafo", i, nm, f"connects bus {hv} and {lv}, one of which does not exist")
            continue
        if not (bus_on[hv] and bus_on[lv]):
            acc.count("trafo", "ignored")
            acc.notes.append(f"{lbl} ignored: it is at an out-of-service bus (pandapower takes it out of service)")
            continue
        z, y, imax, bad = _trafo_pi(t, vn_of[hv], vn_of[lv], model)
        if bad:
            acc.reject("trafo", i, nm, bad[0], bad[1])
            continue
        cut = set(open_ends.get(("trafo", i), ())) & {hv, lv}
        base = dict(table="trafo", idx=i, lbl=lbl, ends=(hv, lv), z=z, y=y, imax=imax, name=f"trafo {i}",
                    vn=vn_of[lv])
        if len(cut) == 2 or (cut and neglect_open):
            acc.count("trafo", "ignored")
            acc.notes.append(f"{lbl} ignored: open switches at " + ("both ends" if len(cut) == 2 else "one end"))
        elif cut:
            cands.append({**base, "kind": "dangle", "closed_end": lv if hv in cut else hv, "why": "an open switch"})
        else:
            cands.append({**base, "kind": "connect"})

    # ---- supplied buses: breadth-first from the slack over connecting branches --------------------
    adj: dict = {}
    for c in cands:
        if c["kind"] == "connect":
            a, b = uf.find(c["ends"][0]), uf.find(c["ends"][1])
            adj.setdefault(a, set()).add(b)
            adj.setdefault(b, set()).add(a)
    root_g = uf.find(root_pp)
    seen = {root_g}
    todo = [root_g]
    while todo:
        g = todo.pop()
        for h in adj.get(g, ()):
            if h not in seen:
                seen.add(h)
                todo.append(h)
    supplied = [b for b in live if uf.find(b) in seen]
    lost = [b for b in live if uf.find(b) not in seen]
    oos = [b for b, on in bus_on.items() if not on]
    if lost and unsupplied == "raise":
        names = ", ".join(_label("bus", b, _name(bus_df, b)) for b in lost[:10])
        raise fail(f"{len(lost)} in-service buses are not connected to the ext_grid (behind open switches or "
                   f"out-of-service branches): {names}{' ...' if len(lost) > 10 else ''}", "net.bus")
    if lost:
        acc.notes.append(f"{len(lost)} unsupplied buses dropped (pandapower shows them as NaN): "
                         f"{lost[:20]}{' ...' if len(lost) > 20 else ''}")
    if oos:
        acc.notes.append(f"{len(oos)} out-of-service buses left out: {oos[:20]}{' ...' if len(oos) > 20 else ''}")
    groups = sorted({uf.find(b) for b in supplied})
    pos = {g: k for k, g in enumerate(groups)}
    bus_map = {b: pos[uf.find(b)] for b in supplied}
    kept = set(bus_map)
    n = len(groups)
    members: dict = {}
    for b in supplied:
        members.setdefault(uf.find(b), []).append(b)
    fused = tuple(tuple(sorted(m)) for g, m in sorted(members.items()) if len(m) > 1)
    state.update(bus_map=bus_map, dropped=tuple(sorted(lost + oos)), fused=fused)

    # ---- branches ---------------------------------------------------------------------------------
    rows = []  # [from, to, r_ohm, x_ohm, b_us, g_us, imax, on, name, [(table, idx, lbl)]]
    bsh = np.zeros(n, dtype=complex)  # branch shunts as bus admittance, pu of 1 MVA
    for c in cands:
        a, b = c["ends"]
        if c["kind"] == "dangle":
            e = c["closed_end"]
            acc.count(c["table"], "converted" if e in kept else "ignored")
            if e not in kept:
                continue
            zbase = c["vn"] ** 2  # pu of 1 MVA at the branch's impedance level
            bsh[bus_map[e]] += _end_shunt(c["z"] / zbase, c["y"] * zbase)
            acc.half.append(c["name"])
            acc.notes.append(f"{c['lbl']} is connected at bus {e} only ({c['why']} at the other end): its shunt is "
                             f"a fixed bus shunt there")
            if a in kept and b in kept and bus_map[a] != bus_map[b]:  # kept out of service, for reconfiguration
                rows.append([bus_map[a], bus_map[b], c["z"].real, c["z"].imag, c["y"].imag * 1e6, c["y"].real * 1e6,
                             c["imax"], False, c["name"], [(c["table"], c["idx"], c["lbl"])]])
            continue
        if a not in kept or b not in kept:
            acc.count(c["table"], "ignored")
            continue
        ga, gb = bus_map[a], bus_map[b]
        on = c["kind"] == "connect"
        if ga == gb:
            acc.count(c["table"], "converted" if on else "ignored")
            if on:
                bsh[ga] += _end_shunt(0j, c["y"] * c["vn"] ** 2, both=True)
                acc.half.append(c["name"])
                acc.notes.append(f"{c['lbl']} joins two buses fused by a bus-bus switch: its shunt is a bus shunt")
            continue
        acc.count(c["table"], "converted" if on else "ignored")
        rows.append([ga, gb, c["z"].real, c["z"].imag, c["y"].imag * 1e6, c["y"].real * 1e6, c["imax"], on,
                     c["name"], [(c["table"], c["idx"], c["lbl"])]])
    merged: dict = {}
    out_rows = []
    for row in rows:
        if not row[7]:
            out_rows.append(row)
            continue
        key = (min(row[0], row[1]), max(row[0], row[1]))
        if key in merged:
            m = merged[key]
            # admittances of pi models in parallel add; the impedance is referred to m's to_bus,
            # which has the same vn_kv as row's (same bus pair, so a row's ends have m's levels)
            z1, z2 = complex(m[2], m[3]), complex(row[2], row[3])
            zp = z1 * z2 / (z1 + z2)
            m[2], m[3] = zp.real, zp.imag
            m[4] += row[4]
            m[5] += row[5]
            m[6] += row[6]
            m[8] += f" || {row[8]}"
            m[9] += row[9]
        else:
            merged[key] = row
            out_rows.append(row)
    # a tree needs n - 1 in-service branches; name the element that closes a loop
    loop_uf = _UnionFind(range(n))
    for row in out_rows:
        if row[7] and not loop_uf.union(row[0], row[1]):
            table, idx, lbl = row[9][0]
            acc.reject(table, idx, _name(net[table], idx), "closes a loop: the in-service network is meshed (a radial "
                       "feeder needs it open: an open switch or in_service=False)")
    acc.merged = [r[8] for r in out_rows if "||" in r[8]]
    br = np.array([r[:8] for r in out_rows], dtype=float).reshape(-1, 8)
    branch = BranchTable(from_bus=br[:, 0].astype(np.int64), to_bus=br[:, 1].astype(np.int64), r_ohm=br[:, 2],
                         x_ohm=br[:, 3], b_us=br[:, 4], g_us=br[:, 5], i_max_ka=_rating(br[:, 6]),
                         in_service=br[:, 7].astype(bool), name=tuple(r[8] for r in out_rows))

    # ---- element tables ---------------------------------------------------------------------------
    dev = {"load": [], "gen": [], "pv": [], "cap": [], "ess": []}
    on_dropped: dict = {}
    shunt_p = np.zeros(n)
    shunt_q = np.zeros(n)
    for table in _element_tables(net):
        if table in ("ext_grid", "line", "trafo"):
            continue
        df = net[table]
        if not len(df):
            continue
        on = _in_service(df)
        bcols = [c for c in BUS_COLUMNS if c in df.columns]
        for k, i in enumerate(df.index):
            if not on[k]:
                acc.count(table, "ignored")
                continue
            nm = _name(df, i)
            lbl = _label(table, i, nm)
            buses = []
            for c in bcols:
                v = _num(df.at[i, c])
                if math.isfinite(v):
                    buses.append((c, int(v)))
            ac = [b for c, b in buses if not c.endswith("_dc") and "dc_" not in c]
            unknown = [b for b in ac if b not in bus_on]
            if unknown:
                acc.reject(table, i, nm, f"is on bus {unknown[0]}, which does not exist")
                continue
            if ac and not any(b in kept for b in ac):
                acc.count(table, "ignored")
                on_dropped.setdefault(table, []).append(int(i))
                continue
            if table not in CONVERTED_TABLES:
                reason = UNSUPPORTED_TABLES.get(table, f"element table {table!r} is not understood by safedispatch "
                                                "(convert or drop it first)")
                acc.reject(table, i, nm, reason)
                continue
            _convert_element(acc, table, df, i, nm, lbl, bus_map[ac[0]], vn_of[ac[0]], classify, dev, shunt_p,
                             shunt_q)

    for table, idx in on_dropped.items():
        acc.notes.append(f"net.{table}: {len(idx)} in-service element(s) on out-of-service or unsupplied buses "
                         f"ignored (as pandapower does): {idx[:20]}{' ...' if len(idx) > 20 else ''}")
    if acc.rejected:
        shown = "; ".join(f"{_label(t, i, nm)}: {why}" for t, i, nm, why in acc.rejected[:8])
        more = f" (and {len(acc.rejected) - 8} more)" if len(acc.rejected) > 8 else ""
        raise fail(f"cannot convert {len(acc.rejected)} element(s): {shown}{more}", acc.fields[0])

    # ---- buses ------------------------------------------------------------------------------------
    vn = np.array([vn_of[g] for g in groups], dtype=float)
    vmin = np.full(n, -np.inf)
    vmax = np.full(n, np.inf)
    # pandapower fills 0.0 / 2.0 where a bus in a net with limit columns has none: read as absent
    lim = bus_df.loc[supplied] if supplied else bus_df.iloc[:0]
    bmin = _col(lim, "min_vm_pu", 0.95)
    bmin = np.where(bmin > 0, bmin, 0.95)
    bmax = _col(lim, "max_vm_pu", 1.05)
    bmax = np.where(bmax < 2.0, bmax, 1.05)
    for k, b in enumerate(supplied):
        g = bus_map[b]
        vmin[g] = max(vmin[g], bmin[k])  # fused buses take the tighter limits
        vmax[g] = min(vmax[g], bmax[k])
    bad = np.flatnonzero(vmax < vmin)
    if bad.size:
        g = int(bad[0])
        raise fail(f"fused buses {members[groups[g]]} have disjoint voltage limits", "net.bus.max_vm_pu")
    bsp, bsq = bsh.real.copy(), -bsh.imag.copy()  # consumption at 1 pu, sn = 1 MVA
    shunt_p += bsp
    shunt_q += bsq
    report = acc.freeze(bus_map=bus_map, dropped=state["dropped"], fused=fused, n_bus=n, bsp=bsp, bsq=bsq,
                        trafo_model=model)

    def table_of(key, cls, **extra):
        rows_ = dev[key]
        if not rows_:
            return None
        cols_ = {c: [r[c] for r in rows_] for c in rows_[0] if c != "src"}
        return cls(**cols_, **extra)

    if zones is not None:
        try:
            zl = [list(z) for z in zones]
        except TypeError:
            raise fail(f"expected a list of bus collections, got {type(zones).__name__}", "zones") from None
        out_z = []
        for k, z in enumerate(zl):
            fb = []
            for b in z:
                b = int(b)
                if b not in bus_on:
                    raise fail(f"zone {k} names bus {b}, which does not exist", "zones")
                if b in bus_map:
                    fb.append(bus_map[b])
            if fb:
                out_z.append(np.unique(fb))
        zones = out_z
    feeder = Feeder(
        name=name or (getattr(net, "name", "") or "pandapower"),
        bus=BusTable(vn_kv=vn, vm_min_pu=vmin, vm_max_pu=vmax, name=tuple(str(g) for g in groups),
                     shunt_p_mw=shunt_p, shunt_q_mvar=shunt_q),
        branch=branch, root_bus=bus_map[root_pp], root_vm_pu=root_vm, load=table_of("load", LoadTable),
        gen=table_of("gen", GenTable), pv=table_of("pv", PVTable), cap=table_of("cap", CapTable),
        ess=table_of("ess", ESSTable), zones=zones, sn_mva=1.0, notes="converted from pandapower\n" + str(report))
    return feeder, report


def _convert_element(acc, table, df, i, nm, lbl, fbus, vn_kv, classify, dev, shunt_p, shunt_q):
    """Convert one in-service row of a converted element table at feeder bus ``fbus``."""

    def num(c, d=np.nan):
        return _num(df.at[i, c], d) if c in df.columns else d

    def reject(why, col=None):
        acc.reject(table, i, nm, why, f"net.{table}.{col}" if col else None)

    src = (table, int(i))
    label = nm or f"{table} {i}"
    if table == "load":
        zip_cols = [c for c in _ZIP_COLUMNS if c in df.columns and num(c, 0.0) != 0]
        if zip_cols:
            return reject(f"voltage-dependent (ZIP) load ({zip_cols[0]} = {num(zip_cols[0])}): only constant power "
                          "is modelled", zip_cols[0])
        sc = num("scaling", 1.0)
        p, q = num("p_mw") * sc, num("q_mvar") * sc
        if not (math.isfinite(p) and math.isfinite(q)):
            return reject(f"p_mw/q_mvar/scaling {num('p_mw')}/{num('q_mvar')}/{sc}: expected finite", "p_mw")
        dev["load"].append(dict(bus=fbus, p_mw=p, q_mvar=q, name=label))
        acc.sources["load"].append(src)
    elif table == "motor":
        p, q = _motor_pq(df, i)
        if not (math.isfinite(p) and math.isfinite(q)):
            return reject("pn_mech_mw, cos_phi, efficiency_percent, loading_percent, scaling: expected finite, "
                          "0 < cos_phi <= 1, efficiency_percent > 0", "cos_phi")
        dev["load"].append(dict(bus=fbus, p_mw=p, q_mvar=q, name=label))
        acc.sources["load"].append(src)
        acc.notes.append(f"{lbl}: a constant load of {p:.6g} MW / {q:.6g} MVAr (pandapower's motor model)")
    elif table == "ward":
        ps, qs, pz, qz = num("ps_mw", 0.0), num("qs_mvar", 0.0), num("pz_mw", 0.0), num("qz_mvar", 0.0)
        if not all(math.isfinite(v) for v in (ps, qs, pz, qz)):
            return reject("ps_mw, qs_mvar, pz_mw, qz_mvar: expected finite", "ps_mw")
        if ps or qs:
            dev["load"].append(dict(bus=fbus, p_mw=ps, q_mvar=qs, name=label))
            acc.sources["load"].append(src)
        shunt_p[fbus] += pz
        shunt_q[fbus] += qz
    elif table == "sgen":
        sc = num("scaling", 1.0)
        p, q = num("p_mw") * sc, num("q_mvar", 0.0) * sc
        if not (math.isfinite(p) and math.isfinite(q)):
            return reject(f"p_mw/q_mvar/scaling {num('p_mw')}/{num('q_mvar')}/{sc}: expected finite", "p_mw")
        if classify(df, i):
            s, pmax = num("sn_mva"), num("max_p_mw")
            s = s if s > 0 else np.nan
            if not math.isfinite(s) and not (math.isfinite(pmax) and pmax > 0):
                return reject("an inverter (PV) needs a rating: set sn_mva (and max_p_mw for a peak below it); the "
                              "present output is never used as the rating", "sn_mva")
            if not math.isfinite(s):
                s = pmax
                acc.notes.append(f"{lbl}: no sn_mva, rated at max_p_mw {pmax:g}")
            if math.isfinite(pmax) and pmax < 0:
                return reject(f"max_p_mw {pmax}: expected >= 0", "max_p_mw")
            peak = min(pmax, s) if math.isfinite(pmax) else s
            dev["pv"].append(dict(bus=fbus, s_mva=s, p_max_mw=peak, name=label))
            acc.sources["pv"].append(src)
            acc.pv.append(int(i))
        else:
            dev["gen"].append(dict(bus=fbus, p_mw=p, q_mvar=q, name=label))
            acc.sources["gen"].append(src)
            acc.fixed.append(int(i))
    elif table == "storage":
        emax = num("max_e_mwh")
        pmax = max(abs(num("max_p_mw", 0.0)), abs(num("min_p_mw", 0.0)))
        if not pmax > 0:
            pmax = num("sn_mva")
        if not (math.isfinite(pmax) and pmax > 0 and math.isfinite(emax) and emax > 0):
            return reject("storage needs power limits (max_p_mw / min_p_mw, or sn_mva) and an energy capacity "
                          f"(max_e_mwh) > 0, got {pmax} MW / {emax} MWh", "max_e_mwh")
        emin = num("min_e_mwh", 0.0)
        soc = num("soc_percent", 50.0) / 100
        smin = emin / emax
        if not (0 <= smin <= 1 and smin <= soc <= 1):
            return reject(f"soc_percent {soc * 100:g} with min_e_mwh {emin} / max_e_mwh {emax}: expected "
                          "min_e_mwh / max_e_mwh <= soc <= 1", "soc_percent")
        dev["ess"].append(dict(bus=fbus, p_max_mw=pmax, e_max_mwh=emax, soc_min=smin, soc_max=1.0, soc_init=soc,
                               name=label))
        acc.sources["ess"].append(src)
    elif table == "shunt":
        if _flag(df.at[i, "step_dependency_table"]) if "step_dependency_table" in df.columns else False:
            return reject("step-dependent shunt characteristics are not modelled", "step_dependency_table")
        p, q, step = num("p_mw", 0.0), num("q_mvar", 0.0), num("step", 1.0)
        vr = num("vn_kv", vn_kv)
        if not (all(math.isfinite(v) for v in (p, q, step)) and vr > 0):
            return reject("p_mw, q_mvar, step, vn_kv: expected finite (vn_kv > 0)", "q_mvar")
        ratio = (vn_kv / vr) ** 2
        fixed = p != 0 or ("controllable" in df.columns and df.at[i, "controllable"] is not None
                           and _num(df.at[i, "controllable"], 1.0) == 0.0)
        if fixed:
            shunt_p[fbus] += p * step * ratio
            shunt_q[fbus] += q * step * ratio
            acc.notes.append(f"{lbl}: a fixed bus shunt at step {step:g}"
                             + (" (p_mw != 0: not a lossless capacitor bank)" if p else " (controllable False)"))
        elif q == 0:
            acc.count(table, "ignored")
            acc.notes.append(f"{lbl} ignored: q_mvar and p_mw are 0")
            return None
        else:
            max_step = num("max_step", 1.0)
            if not (step == round(step) and max_step == round(max_step) and 0 <= step <= max_step and max_step >= 1):
                return reject(f"step {step} / max_step {max_step}: expected integers, 0 <= step <= max_step",
                              "step")
            dev["cap"].append(dict(bus=fbus, q_step_mvar=-q * ratio, n_steps=int(max_step), step_init=int(step),
                                   name=label))
            acc.sources["cap"].append(src)
    acc.count(table, "converted")
    return None


def _motor_pq(df, i) -> tuple[float, float]:
    """pandapower's motor model (``build_bus._get_motor_pq``): constant P and Q."""
    def num(c, d=np.nan):
        return _num(df.at[i, c], d) if c in df.columns else d

    eff, cos = num("efficiency_percent", 100.0), num("cos_phi")
    if not (eff > 0 and 0 < cos <= 1):
        return np.nan, np.nan
    p = num("pn_mech_mw") / eff * 100 * num("loading_percent", 100.0) / 100 * num("scaling", 1.0)
    return p, math.sqrt(max((p / cos) ** 2 - p * p, 0.0))


# ----------------------------------------------------------------------------- public API


def from_pandapower(net, name: str | None = None, zones=None, *, pv_types: Iterable[str] | None = None,
                    is_pv: Callable | None = None, trafo_model: str | None = None, unsupplied: str = "drop",
                    report: bool = False):
    """Build a :class:`Feeder` from a radial pandapower net with one ext_grid.

    The feeder is the network pandapower's ``runpp`` solves on ``net`` (see the module
    docstring for every rule): ``run_powerflow`` on it with :func:`injection_from_pandapower`'s
    injections reproduces ``runpp`` on the original net (voltage magnitudes of every bus
    pandapower solves, branch losses).

    Args:
        net: pandapower net (not modified).
        name: Feeder name (default: ``net.name`` or "pandapower").
        zones: Optional partition of the *pandapower* bus indices into connected sets (dropped
            buses are skipped; fused buses share a feeder bus).
        pv_types: sgen ``type`` strings (any case) that are PV inverters; the others are fixed
            generation. Default: types containing "PV" (any case), and SimBench's ``lv_RES``
            (the aggregated rooftop PV of the LV grids below an MV node).
        is_pv: Instead of ``pv_types``, a predicate on the sgen row (a pandas Series).
        trafo_model: "t" (pandapower's default) or "pi"; default: the model of the net's last
            ``runpp`` if it has one, else "t".
        unsupplied: "drop" (default) leaves out buses that no in-service path connects to the
            ext_grid, with a note (pandapower shows them as NaN); "raise" raises instead.
        report: Also return the :class:`ConversionReport`.

    Returns:
        The feeder (``feeder.bus.name`` holds the pandapower bus index of each bus, the smallest
        one for fused buses; ``feeder.notes`` the conversion summary), or ``(feeder, report)``.

    Raises:
        NetworkDataError: no or several in-service ext_grids; a meshed network (naming the
            branch that closes the loop); unsupplied buses with ``unsupplied="raise"``; any
            element that cannot be converted (all of them listed, each as ``net.<table>[<index>]
            '<name>'``, ``field`` naming the first one's table or column): unsupported tables,
            ZIP loads, off-nominal transformer ratios, inverters without a rating, storage
            without limits, NaN or negative impedances or ratings, elements on buses that do
            not exist. The error carries the partial report as ``exc.report``.
            Tables that cannot be read at all (text in numeric columns, missing columns) are a
            NetworkDataError on field ``net`` too.
        InputError: ``net`` is not a pandapower net; bad ``pv_types``, ``is_pv``,
            ``trafo_model`` or ``unsupplied``.
    """
    if not (isinstance(net, dict) and all(hasattr(net.get(t), "index") for t in ("bus", "ext_grid", "line"))):
        raise InputError(f"expected a pandapower net (pandapowerNet with bus, line and ext_grid tables), got "
                         f"{type(net).__name__}", "net")
    try:
        feeder, rep = _convert(net, name=name, zones=zones, pv_types=pv_types, is_pv=is_pv,
                               trafo_model=trafo_model, unsupplied=unsupplied)
    except SafeDispatchError:
        raise
    except (TypeError, ValueError, KeyError, AttributeError, IndexError, OverflowError) as exc:
        # malformed tables (strings or objects in numeric columns, missing columns): the net's
        # data is bad input, never a crash from inside pandas
        raise NetworkDataError(f"cannot read the net's tables: {type(exc).__name__}: {exc}", "net") from None
    return (feeder, rep) if report else feeder


def conversion_report(net, **kwargs) -> ConversionReport:
    """The :class:`ConversionReport` of ``from_pandapower(net, **kwargs)``, without raising when
    the net cannot be converted: then ``report.ok`` is False and ``report.error`` /
    ``report.rejected`` say why.

    Raises:
        InputError: bad keyword arguments (as :func:`from_pandapower`).
    """
    kwargs.pop("report", None)
    try:
        return from_pandapower(net, report=True, **kwargs)[1]
    except NetworkDataError as exc:
        rep = getattr(exc, "report", None)
        if rep is None:  # raised by Feeder validation: a check the converter did not anticipate
            rep = _Acc().freeze(bus_map={}, dropped=(), fused=(), n_bus=0, bsp=np.zeros(0), bsq=np.zeros(0),
                                trafo_model=_trafo_model(kwargs.get("trafo_model"), net), error=str(exc))
        return rep


def injection_from_pandapower(net, report: ConversionReport) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The ``run_powerflow`` inputs that reproduce ``runpp`` on ``net`` at its present values.

    Reads the present ``p_mw``, ``q_mvar`` and ``scaling`` of the elements the feeder's device
    tables came from (``report.sources``): loads, motors and wards' PQ part (consumption),
    sgens (generation, PV included at their present output), storage (``p_mw > 0`` charges), and
    the capacitor banks at their present ``step``. Change those values in ``net`` (time series,
    random scalings) and call again; the topology must be the one converted.

    Args:
        net: The pandapower net the report was made from.
        report: ``from_pandapower(net, report=True)[1]``.

    Returns:
        ``(p_mw, q_mvar, shunt_q_mvar)``, each ``(n_bus,)``: net injection per feeder bus
        (positive into the network) and the capacitor banks' reactive injection at 1 pu.

    Raises:
        InputError: the report is not a successful conversion report, or does not match ``net``.
    """
    if not isinstance(report, ConversionReport) or not report.ok:
        raise InputError("expected the ConversionReport of a successful from_pandapower(net, report=True)", "report")
    n = report.n_bus
    p, q, sh = np.zeros(n), np.zeros(n), np.zeros(n)

    def row(table, i):
        df = net[table]
        if i not in df.index:
            raise InputError(f"net.{table}[{i}] is not in the net: the report belongs to another net", "report")
        b = report.bus_map.get(int(df.at[i, "bus"]))
        if b is None:
            raise InputError(f"net.{table}[{i}] is on a bus the feeder does not have", "report")
        return df, b

    for table, i in report.sources["load"] + report.sources["ess"]:
        df, b = row(table, i)
        if table == "motor":
            pm, qm = _motor_pq(df, i)
        elif table == "ward":
            pm, qm = _num(df.at[i, "ps_mw"], 0.0), _num(df.at[i, "qs_mvar"], 0.0)
        else:
            sc = _num(df.at[i, "scaling"], 1.0) if "scaling" in df.columns else 1.0
            pm, qm = _num(df.at[i, "p_mw"], 0.0) * sc, _num(df.at[i, "q_mvar"], 0.0) * sc
        p[b] -= pm
        q[b] -= qm
    for table, i in report.sources["gen"] + report.sources["pv"]:
        df, b = row(table, i)
        sc = _num(df.at[i, "scaling"], 1.0) if "scaling" in df.columns else 1.0
        p[b] += _num(df.at[i, "p_mw"], 0.0) * sc
        q[b] += _num(df.at[i, "q_mvar"], 0.0) * sc
    for table, i in report.sources["cap"]:
        df, b = row(table, i)
        vn_bus = float(net.bus.at[int(df.at[i, "bus"]), "vn_kv"])
        vr = _num(df.at[i, "vn_kv"], vn_bus) if "vn_kv" in df.columns else vn_bus
        sh[b] -= _num(df.at[i, "q_mvar"], 0.0) * _num(df.at[i, "step"], 1.0) * (vn_bus / vr) ** 2
    for name, a in (("p_mw", p), ("q_mvar", q), ("shunt_q_mvar", sh)):
        if not np.isfinite(a).all():
            raise InputError(f"the net's present values give a non-finite {name}", "net")
    return p, q, sh


def write_setpoints_to_pandapower(net, report: ConversionReport, pv_p_mw, pv_q_mvar, ess_p_mw=None,
                                  cap_step=None) -> None:
    """Write device set-points into the rows of ``net`` the feeder's devices came from, so that
    ``pandapower.runpp(net)`` judges them on the user's own network model (the meaning of
    "certified", see :mod:`safedispatch.safety.certify`).

    PV sgens get ``p_mw``/``q_mvar`` with ``scaling = 1``; storage units get ``p_mw = -ess_p_mw``
    (pandapower's storage consumes positive power, safedispatch's injects) with ``scaling = 1``;
    capacitor banks (shunts) get ``step``. Loads and fixed generation are left as they are.
    ``net`` is changed in place: pass a copy to keep the original.

    Args:
        net: The pandapower net the report was made from.
        report: ``from_pandapower(net, report=True)[1]``.
        pv_p_mw, pv_q_mvar: ``(n_pv,)`` inverter set-points (e.g. ``result.action.pv_p_mw``).
        ess_p_mw: ``(n_ess,)`` storage set-points, positive = discharge (None: leave as is).
        cap_step: ``(n_cap,)`` capacitor steps (None: leave as is).

    Raises:
        InputError: the report is not a successful conversion report or does not match ``net``;
            a set-point vector of the wrong length or with non-finite entries.
    """
    if not isinstance(report, ConversionReport) or not report.ok:
        raise InputError("expected the ConversionReport of a successful from_pandapower(net, report=True)", "report")
    src = report.sources
    p = finite_vector(pv_p_mw, len(src["pv"]), "pv_p_mw")
    q = finite_vector(pv_q_mvar, len(src["pv"]), "pv_q_mvar")
    groups = [(src["pv"], {"p_mw": p, "q_mvar": q, "scaling": np.ones(p.size)})]
    if ess_p_mw is not None:
        e = finite_vector(ess_p_mw, len(src["ess"]), "ess_p_mw")
        groups.append((src["ess"], {"p_mw": -e, "scaling": np.ones(e.size)}))
    if cap_step is not None:
        groups.append((src["cap"], {"step": finite_vector(cap_step, len(src["cap"]), "cap_step", integer=True)}))
    for rows, cols in groups:
        for k, (table, i) in enumerate(rows):
            if i not in net[table].index:
                raise InputError(f"net.{table}[{i}] is not in the net: the report belongs to another net", "report")
            for col, vals in cols.items():
                net[table].at[i, col] = vals[k]


def _rating(imax: np.ndarray) -> np.ndarray:
    """pandapower marks unrated lines with huge max_i_ka (case33bw: 99999 kA): read as inf."""
    return np.where(imax >= 1e4, np.inf, imax)


def _pi_to_t(z: complex, y: complex):
    """The symmetric T (series ``z_t`` split in halves around the shunt ``y_t``) equivalent to a
    symmetric pi (series ``z``, total shunt ``y``): the inverse of pandapower's ``_wye_delta``.

    Returns:
        ``(z_t, y_t)``; ``y_t`` is 0 when ``y`` is.
    """
    if y == 0:
        return z, 0j
    ze = 2 / y  # each end's shunt impedance
    s = z + 2 * ze
    za = z * ze / s
    zc = ze * ze / s
    return 2 * za, 1 / zc


def to_pandapower(feeder: Feeder, p_mw=None, q_mvar=None, shunt_q_mvar=None):
    """Build a pandapower net of the feeder, for cross-checks with pandapower.

    Branches between buses of equal ``vn_kv`` become lines of 1 km (pi model with the branch's
    charging); others become two-winding transformers (HV to LV, no phase shift) whose
    parameters reproduce the branch's pi model under pandapower's default ``trafo_model="t"``:
    ``vk_percent``/``vkr_percent`` and ``pfe_kw``/``i0_percent`` of the equivalent T. When the pi
    has no such T (a capacitive or active-power-producing shunt, a negative series reactance),
    the transformer carries the series impedance alone and the branch's shunt halves become
    fixed shunts at its ends. The feeder's fixed bus shunts (``bus.shunt_p_mw``/
    ``shunt_q_mvar``) become shunts with ``controllable = False`` (so ``from_pandapower`` reads
    them back as fixed shunts, not capacitor banks). The net is built for ``runpp`` with
    ``trafo_model="t"``.

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

    if (p_mw is None) != (q_mvar is None):
        raise InputError("p_mw and q_mvar are given together or not at all", "q_mvar" if q_mvar is None else "p_mw")
    n = feeder.n_bus
    if p_mw is not None:
        p = finite_vector(p_mw, n, "p_mw")
        q = finite_vector(q_mvar, n, "q_mvar")
    bq = finite_vector(shunt_q_mvar, n, "shunt_q_mvar") if shunt_q_mvar is not None else None
    # pandapower's vectorized create_* functions: one call per table instead of one per element
    # (element by element took ~1.2 s for a 33-bus feeder here, mostly pandas bookkeeping)
    net = _empty_net(feeder.sn_mva)
    net.name = feeder.name
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
    fixed_p = np.asarray(feeder.bus.shunt_p_mw, dtype=float).copy()
    fixed_q = np.asarray(feeder.bus.shunt_q_mvar, dtype=float).copy()
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
        sn = np.where(rated[k], np.sqrt(3) * vlv * imax[k], 100.0)
        vk, vkr, pfe, i0 = (np.zeros(k.size) for _ in range(4))
        for m, kb in enumerate(k):
            # the pi in ohm / siemens referred to the LV side (the branch is referred to to_bus)
            a2 = (vlv[m] / vto[m]) ** 2
            z = complex(br.r_ohm[kb], br.x_ohm[kb]) * a2
            y = complex(br.g_us[kb], br.b_us[kb]) * 1e-6 / a2
            zt, yt = _pi_to_t(z, y)
            if zt.real < 0 or zt.imag < 0 or yt.real < 0 or yt.imag > 0:
                # no T with pandapower's signs: series impedance alone, the shunt halves as bus shunts
                zt, yt = z, 0j
                half = y / 2 * vlv[m] ** 2  # consumption at 1 pu = conj(Y) V^2 (MW, MVAr)
                for end in (fb[kb], tb[kb]):
                    fixed_p[end] += half.real
                    fixed_q[end] -= half.imag
            zbase = vlv[m] ** 2 / sn[m]
            vk[m] = abs(zt) / zbase * 100
            vkr[m] = zt.real / zbase * 100
            pfe[m] = yt.real * vlv[m] ** 2 * 1e3
            i0[m] = abs(yt) * vlv[m] ** 2 / sn[m] * 100
        pp.create_transformers_from_parameters(
            net, hv, lv, sn_mva=sn, vn_hv_kv=vn[hv], vn_lv_kv=vlv, vkr_percent=vkr, vk_percent=vk, pfe_kw=pfe,
            i0_percent=i0, shift_degree=np.zeros(k.size), in_service=br.in_service[k].astype(bool),
            name=list(names[k]))
    if p_mw is not None:
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
                             max_step=cap.n_steps.astype(int), name=list(cap.name), controllable=True)
        if feeder.n_ess:
            e = feeder.ess
            pp.create_storages(net, e.bus.astype(int), p_mw=np.zeros(feeder.n_ess), max_e_mwh=e.e_max_mwh.astype(float),
                               min_e_mwh=(e.soc_min * e.e_max_mwh).astype(float),
                               soc_percent=(e.soc_init * 100).astype(float), max_p_mw=e.p_max_mw.astype(float),
                               min_p_mw=-e.p_max_mw.astype(float), name=list(e.name))
    if bq is not None:
        nz = np.flatnonzero(bq)
        if nz.size:
            pp.create_shunts(net, nz, q_mvar=-bq[nz], p_mw=np.zeros(nz.size), controllable=True)
    nz = np.flatnonzero((fixed_p != 0) | (fixed_q != 0))
    if nz.size:
        pp.create_shunts(net, nz, q_mvar=fixed_q[nz], p_mw=fixed_p[nz], name=[f"bus shunt {b}" for b in nz],
                         controllable=False)
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
