"""Feeder data model: frozen dataclasses of read-only numpy arrays.

A :class:`Feeder` is one radial distribution network with its devices. Buses are numbered
0..n_bus-1 (pandapower's habit); the papers' 1-based numbers appear only in case
definitions. Every table validates itself on construction and the feeder validates the
cross-references (unknown buses, radiality, zones), so a ``Feeder`` that exists is valid.

Units are in the field names: ``p_mw``, ``q_mvar``, ``vm_pu``, ``r_ohm``, ``i_max_ka``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import scipy.sparse as sp

from safedispatch.errors import NetworkDataError

__all__ = [
    "BusTable",
    "BranchTable",
    "LoadTable",
    "GenTable",
    "PVTable",
    "CapTable",
    "ESSTable",
    "RadialStructure",
    "Feeder",
]


def _arr(table: str, name: str, value, dtype, n: int | None) -> np.ndarray:
    """Copy ``value`` to a read-only 1-D array of ``dtype`` and length ``n``."""
    try:
        a = np.array(value, dtype=dtype, copy=True)
    except (TypeError, ValueError) as exc:
        raise NetworkDataError(f"cannot convert to {np.dtype(dtype).name}: {exc}", f"{table}.{name}") from None
    if a.ndim == 0 and n is not None:
        a = np.full(n, a, dtype=dtype)
    if a.ndim != 1:
        raise NetworkDataError(f"expected a 1-D array, got shape {a.shape}", f"{table}.{name}")
    if n is not None and a.shape[0] != n:
        raise NetworkDataError(f"expected length {n}, got {a.shape[0]}", f"{table}.{name}")
    if a.dtype.kind == "f" and np.isnan(a).any():
        raise NetworkDataError(f"contains NaN at positions {np.flatnonzero(np.isnan(a))[:5].tolist()}",
                               f"{table}.{name}")
    a.setflags(write=False)
    return a


def _check(table: str, name: str, a: np.ndarray, ok: np.ndarray, expected: str) -> None:
    bad = np.flatnonzero(~ok)
    if bad.size:
        raise NetworkDataError(
            f"expected {expected}, got {a[bad[:5]].tolist()} at positions {bad[:5].tolist()}",
            f"{table}.{name}",
        )


class _Table:
    """Shared construction: every field is turned into a read-only array of its dtype.

    Subclasses declare ``_dtypes`` (field -> dtype) and ``_defaults`` (field -> scalar used
    when the field is omitted); ``name`` is a tuple of strings.
    """

    _dtypes: dict = {}
    _defaults: dict = {}

    def __post_init__(self) -> None:
        table = type(self).__name__.removesuffix("Table").lower()
        first = next(iter(self._dtypes))
        n = len(np.atleast_1d(getattr(self, first)))
        for fname, dtype in self._dtypes.items():
            value = getattr(self, fname)
            if value is None:
                value = self._defaults[fname]
            object.__setattr__(self, fname, _arr(table, fname, value, dtype, n))
        names = self.name if self.name is not None else tuple(str(i) for i in range(n))
        names = tuple(str(s) for s in names)
        if len(names) != n:
            raise NetworkDataError(f"expected {n} names, got {len(names)}", f"{table}.name")
        object.__setattr__(self, "name", names)
        self._validate(table)

    def _validate(self, table: str) -> None:  # pragma: no cover - overridden
        pass

    def __len__(self) -> int:
        return len(self.name)


@dataclass(frozen=True, eq=False)
class BusTable(_Table):
    """Buses. All arrays are ``(n_bus,)``.

    Attributes:
        vn_kv: Nominal line-to-line voltage (kV).
        vm_min_pu, vm_max_pu: Operational voltage limits (pu).
        s_sc_mva: Short-circuit capacity at the bus (MVA); ``inf`` where not specified.
            Used by the short-circuit-ratio bound at weak buses (paper B).
        name: Bus names.
        shunt_p_mw, shunt_q_mvar: Fixed constant-admittance shunt per bus, as **consumption at
            1 pu** (pandapower's shunt convention: a capacitor has ``shunt_q_mvar < 0``); at
            voltage ``V`` the shunt draws ``shunt_p_mw * V^2`` and ``shunt_q_mvar * V^2``. Any
            finite value (default 0). ``from_pandapower`` puts here fixed shunts, the impedance
            part of wards, and the charging / magnetizing admittance of branches connected at
            one end only (behind an open switch). Switchable capacitor banks are a
            :class:`CapTable`, not this.
    """

    vn_kv: np.ndarray
    vm_min_pu: np.ndarray | None = None
    vm_max_pu: np.ndarray | None = None
    s_sc_mva: np.ndarray | None = None
    name: tuple | None = None
    shunt_p_mw: np.ndarray | None = None
    shunt_q_mvar: np.ndarray | None = None

    _dtypes = {"vn_kv": float, "vm_min_pu": float, "vm_max_pu": float, "s_sc_mva": float, "shunt_p_mw": float,
               "shunt_q_mvar": float}
    _defaults = {"vm_min_pu": 0.95, "vm_max_pu": 1.05, "s_sc_mva": np.inf, "shunt_p_mw": 0.0, "shunt_q_mvar": 0.0}

    def _validate(self, table):
        _check(table, "vn_kv", self.vn_kv, np.isfinite(self.vn_kv) & (self.vn_kv > 0), "finite > 0 kV")
        _check(table, "vm_min_pu", self.vm_min_pu, np.isfinite(self.vm_min_pu) & (self.vm_min_pu > 0),
               "finite > 0 pu")
        _check(table, "vm_max_pu", self.vm_max_pu, np.isfinite(self.vm_max_pu) & (self.vm_max_pu >= self.vm_min_pu),
               "finite and >= vm_min_pu")
        _check(table, "s_sc_mva", self.s_sc_mva, self.s_sc_mva > 0, "> 0 MVA (inf when unknown)")
        _check(table, "shunt_p_mw", self.shunt_p_mw, np.isfinite(self.shunt_p_mw), "finite MW at 1 pu")
        _check(table, "shunt_q_mvar", self.shunt_q_mvar, np.isfinite(self.shunt_q_mvar), "finite MVAr at 1 pu")


@dataclass(frozen=True, eq=False)
class BranchTable(_Table):
    """Lines and two-winding transformers as symmetric pi models. All arrays are ``(n_branch,)``.

    Impedances and admittances are in ohm and microsiemens referred to the voltage level of
    ``to_bus`` (for a line both ends have the same level). The shunt admittance (``b_us``,
    ``g_us``, total for the branch) is split half at each end (pi model, as pandapower). A
    line's shunt is its charging (``b_us > 0``); a transformer's is its magnetizing branch
    (iron losses ``g_us > 0``, magnetizing susceptance ``b_us < 0``), see
    :func:`~safedispatch.network.io.from_pandapower`.

    Attributes:
        from_bus, to_bus: 0-based bus indices.
        r_ohm, x_ohm: Series resistance and reactance (ohm).
        b_us, g_us: Total shunt susceptance (any finite value) and conductance (>= 0)
            (microsiemens).
        i_max_ka: Thermal rating (kA); ``inf`` for unrated branches.
        in_service: False for open switches and out-of-service branches (e.g. tie lines).
        name: Branch names.
    """

    from_bus: np.ndarray
    to_bus: np.ndarray | None = None
    r_ohm: np.ndarray | None = None
    x_ohm: np.ndarray | None = None
    b_us: np.ndarray | None = None
    g_us: np.ndarray | None = None
    i_max_ka: np.ndarray | None = None
    in_service: np.ndarray | None = None
    name: tuple | None = None

    _dtypes = {"from_bus": np.int64, "to_bus": np.int64, "r_ohm": float, "x_ohm": float, "b_us": float,
               "g_us": float, "i_max_ka": float, "in_service": bool}
    _defaults = {"b_us": 0.0, "g_us": 0.0, "i_max_ka": np.inf, "in_service": True}

    def _validate(self, table):
        for f in ("to_bus", "r_ohm", "x_ohm"):
            if getattr(self, f) is None:
                raise NetworkDataError("is required", f"{table}.{f}")
        _check(table, "r_ohm", self.r_ohm, np.isfinite(self.r_ohm) & (self.r_ohm >= 0), "finite >= 0 ohm")
        _check(table, "x_ohm", self.x_ohm, np.isfinite(self.x_ohm), "finite ohm")
        z = np.hypot(self.r_ohm, self.x_ohm)
        _check(table, "x_ohm", self.x_ohm, (z > 0) | ~self.in_service, "r_ohm + j x_ohm != 0 on in-service branches")
        _check(table, "b_us", self.b_us, np.isfinite(self.b_us), "finite microsiemens")
        _check(table, "g_us", self.g_us, np.isfinite(self.g_us) & (self.g_us >= 0), "finite >= 0 microsiemens")
        _check(table, "i_max_ka", self.i_max_ka, self.i_max_ka > 0, "> 0 kA (inf when unrated)")
        _check(table, "to_bus", self.to_bus, self.to_bus != self.from_bus, "to_bus != from_bus")


@dataclass(frozen=True, eq=False)
class LoadTable(_Table):
    """Loads at nominal (peak) value, positive consumption. Arrays are ``(n_load,)``.

    Attributes:
        bus: Bus index.
        p_mw, q_mvar: Nominal consumption (reactive may be negative).
        sheddable: True where the load may be shed as a last resort (paper A).
    """

    bus: np.ndarray
    p_mw: np.ndarray | None = None
    q_mvar: np.ndarray | None = None
    sheddable: np.ndarray | None = None
    name: tuple | None = None

    _dtypes = {"bus": np.int64, "p_mw": float, "q_mvar": float, "sheddable": bool}
    _defaults = {"p_mw": 0.0, "q_mvar": 0.0, "sheddable": False}

    def _validate(self, table):
        _check(table, "p_mw", self.p_mw, np.isfinite(self.p_mw), "finite MW")
        _check(table, "q_mvar", self.q_mvar, np.isfinite(self.q_mvar), "finite MVAr")


@dataclass(frozen=True, eq=False)
class GenTable(_Table):
    """Uncontrolled generation (wind, hydro, biomass): fixed injection. ``(n_gen,)`` arrays."""

    bus: np.ndarray
    p_mw: np.ndarray | None = None
    q_mvar: np.ndarray | None = None
    name: tuple | None = None

    _dtypes = {"bus": np.int64, "p_mw": float, "q_mvar": float}
    _defaults = {"p_mw": 0.0, "q_mvar": 0.0}

    def _validate(self, table):
        _check(table, "p_mw", self.p_mw, np.isfinite(self.p_mw), "finite MW")
        _check(table, "q_mvar", self.q_mvar, np.isfinite(self.q_mvar), "finite MVAr")


@dataclass(frozen=True, eq=False)
class PVTable(_Table):
    """PV inverters. Arrays are ``(n_pv,)``.

    Attributes:
        bus: Bus index.
        s_mva: Inverter apparent-power rating (MVA): P^2 + Q^2 <= s_mva^2.
        p_max_mw: Peak available active power (MW), <= s_mva; availability at a time step
            is a fraction of it.
        pf_min: Minimum power factor (0 = no limit).
        ramp_p_pu_per_min, ramp_q_pu_per_min: Ramp limits in pu of ``s_mva`` per minute
            (``inf`` = none).
    """

    bus: np.ndarray
    s_mva: np.ndarray | None = None
    p_max_mw: np.ndarray | None = None
    pf_min: np.ndarray | None = None
    ramp_p_pu_per_min: np.ndarray | None = None
    ramp_q_pu_per_min: np.ndarray | None = None
    name: tuple | None = None

    _dtypes = {"bus": np.int64, "s_mva": float, "p_max_mw": float, "pf_min": float, "ramp_p_pu_per_min": float,
               "ramp_q_pu_per_min": float}
    _defaults = {"pf_min": 0.0, "ramp_p_pu_per_min": np.inf, "ramp_q_pu_per_min": np.inf}

    def __post_init__(self):
        if self.p_max_mw is None:
            object.__setattr__(self, "p_max_mw", self.s_mva)
        super().__post_init__()

    def _validate(self, table):
        _check(table, "s_mva", self.s_mva, np.isfinite(self.s_mva) & (self.s_mva > 0), "finite > 0 MVA")
        _check(table, "p_max_mw", self.p_max_mw, (self.p_max_mw >= 0) & (self.p_max_mw <= self.s_mva * (1 + 1e-12)),
               "0 <= p_max_mw <= s_mva")
        _check(table, "pf_min", self.pf_min, (self.pf_min >= 0) & (self.pf_min <= 1), "a power factor in [0, 1]")
        for f in ("ramp_p_pu_per_min", "ramp_q_pu_per_min"):
            _check(table, f, getattr(self, f), getattr(self, f) > 0, "> 0 pu/min (inf = no limit)")


@dataclass(frozen=True, eq=False)
class CapTable(_Table):
    """Switched capacitor banks: ``step`` in 0..n_steps injects ``step * q_step_mvar`` at 1 pu
    (constant admittance in the AC power flow). Arrays are ``(n_cap,)``.

    Attributes:
        bus: Bus index.
        q_step_mvar: Reactive injection per step at 1 pu (MVAr, > 0 for capacitors).
        n_steps: Number of steps (1 = on/off).
        switch_cost: Cost per step change (paper C's switching cost, arbitrary units).
        step_init: Step at the start of an episode.
    """

    bus: np.ndarray
    q_step_mvar: np.ndarray | None = None
    n_steps: np.ndarray | None = None
    switch_cost: np.ndarray | None = None
    step_init: np.ndarray | None = None
    name: tuple | None = None

    _dtypes = {"bus": np.int64, "q_step_mvar": float, "n_steps": np.int64, "switch_cost": float,
               "step_init": np.int64}
    _defaults = {"n_steps": 1, "switch_cost": 0.0, "step_init": 0}

    def _validate(self, table):
        _check(table, "q_step_mvar", self.q_step_mvar, np.isfinite(self.q_step_mvar) & (self.q_step_mvar != 0),
               "finite non-zero MVAr")
        _check(table, "n_steps", self.n_steps, self.n_steps >= 1, ">= 1")
        _check(table, "switch_cost", self.switch_cost, np.isfinite(self.switch_cost) & (self.switch_cost >= 0),
               "finite >= 0")
        _check(table, "step_init", self.step_init, (self.step_init >= 0) & (self.step_init <= self.n_steps),
               "0 <= step_init <= n_steps")


@dataclass(frozen=True, eq=False)
class ESSTable(_Table):
    """Energy storage. Arrays are ``(n_ess,)``. Positive ``p_mw`` discharges (injects).

    Attributes:
        bus: Bus index.
        p_max_mw: Charge and discharge power limit (MW).
        e_max_mwh: Energy capacity (MWh).
        soc_min, soc_max, soc_init: State-of-charge limits and initial value (fractions).
        eta_charge, eta_discharge: One-way efficiencies in (0, 1].
    """

    bus: np.ndarray
    p_max_mw: np.ndarray | None = None
    e_max_mwh: np.ndarray | None = None
    soc_min: np.ndarray | None = None
    soc_max: np.ndarray | None = None
    soc_init: np.ndarray | None = None
    eta_charge: np.ndarray | None = None
    eta_discharge: np.ndarray | None = None
    name: tuple | None = None

    _dtypes = {"bus": np.int64, "p_max_mw": float, "e_max_mwh": float, "soc_min": float, "soc_max": float,
               "soc_init": float, "eta_charge": float, "eta_discharge": float}
    _defaults = {"soc_min": 0.1, "soc_max": 0.9, "soc_init": 0.5, "eta_charge": 0.95, "eta_discharge": 0.95}

    def _validate(self, table):
        _check(table, "p_max_mw", self.p_max_mw, np.isfinite(self.p_max_mw) & (self.p_max_mw > 0), "finite > 0 MW")
        _check(table, "e_max_mwh", self.e_max_mwh, np.isfinite(self.e_max_mwh) & (self.e_max_mwh > 0),
               "finite > 0 MWh")
        _check(table, "soc_min", self.soc_min, (self.soc_min >= 0) & (self.soc_min <= self.soc_max),
               "0 <= soc_min <= soc_max")
        _check(table, "soc_max", self.soc_max, self.soc_max <= 1, "<= 1")
        _check(table, "soc_init", self.soc_init, (self.soc_init >= self.soc_min) & (self.soc_init <= self.soc_max),
               "soc_min <= soc_init <= soc_max")
        for f in ("eta_charge", "eta_discharge"):
            v = getattr(self, f)
            _check(table, f, v, (v > 0) & (v <= 1), "an efficiency in (0, 1]")


@dataclass(frozen=True, eq=False)
class RadialStructure:
    """The spanning tree of a feeder's in-service branches, rooted at the slack bus.

    Attributes:
        root: Slack bus index.
        parent: ``(n_bus,)`` parent bus, -1 at the root.
        parent_branch: ``(n_bus,)`` index of the branch from the parent, -1 at the root.
        order: ``(n_bus,)`` breadth-first order (root first; children of a bus are contiguous).
        depth: ``(n_bus,)`` number of branches between the bus and the root.
        branch_child: ``(n_branch,)`` downstream bus of each in-service branch, -1 if out of
            service.
        branch_from_is_parent: ``(n_branch,)`` True where ``from_bus`` is the upstream end.
        subtree: ``(n_bus, n_bus)`` sparse CSR, ``subtree[i, j] = 1`` iff bus ``j`` lies in
            the subtree rooted at ``i`` (``i`` included). The flow into bus ``i`` from its
            parent is the sum of the subtree's consumption plus losses.
    """

    root: int
    parent: np.ndarray
    parent_branch: np.ndarray
    order: np.ndarray
    depth: np.ndarray
    branch_child: np.ndarray
    branch_from_is_parent: np.ndarray
    subtree: sp.csr_matrix

    def subtree_of(self, bus: int) -> np.ndarray:
        """Bus indices of the subtree rooted at ``bus`` (sorted, ``bus`` included)."""
        row = self.subtree.getrow(int(bus))
        return np.sort(row.indices)


@dataclass(frozen=True, eq=False)
class Feeder:
    """A radial distribution feeder with its devices.

    Construction validates everything (see :meth:`validate`); a ``Feeder`` is immutable and
    its arrays are read-only.

    Attributes:
        name: Case name.
        bus, branch: Network tables.
        root_bus: Slack bus (the substation, pandapower's ext_grid).
        root_vm_pu: Default slack voltage magnitude (pu).
        load, gen, pv, cap, ess: Device tables (empty tables when absent).
        zones: Partition of the buses into connected sets, one per agent (paper A); by default
            one zone with every bus.
        sn_mva: Base power for per-unit quantities (MVA).
        notes: Free text: data source and documented modelling choices.
    """

    name: str
    bus: BusTable
    branch: BranchTable
    root_bus: int = 0
    root_vm_pu: float = 1.0
    load: LoadTable = None
    gen: GenTable = None
    pv: PVTable = None
    cap: CapTable = None
    ess: ESSTable = None
    zones: tuple = None
    sn_mva: float = 1.0
    notes: str = ""
    _cache: dict = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self):
        for fname, cls in (("load", LoadTable), ("gen", GenTable), ("pv", PVTable), ("cap", CapTable),
                           ("ess", ESSTable)):
            v = getattr(self, fname)
            if v is None:
                kwargs = {"bus": np.zeros(0, dtype=np.int64)}
                if cls is PVTable:
                    kwargs["s_mva"] = np.zeros(0)
                if cls is CapTable:
                    kwargs["q_step_mvar"] = np.zeros(0)
                if cls is ESSTable:
                    kwargs.update(p_max_mw=np.zeros(0), e_max_mwh=np.zeros(0))
                object.__setattr__(self, fname, cls(**kwargs))
            elif not isinstance(v, cls):
                raise NetworkDataError(f"expected a {cls.__name__}, got {type(v).__name__}", fname)
        if not isinstance(self.bus, BusTable):
            raise NetworkDataError(f"expected a BusTable, got {type(self.bus).__name__}", "bus")
        if not isinstance(self.branch, BranchTable):
            raise NetworkDataError(f"expected a BranchTable, got {type(self.branch).__name__}", "branch")
        zones = self.zones
        if zones is None:
            zones = (np.arange(self.n_bus),)
        zones = tuple(_arr("zones", str(k), z, np.int64, None) for k, z in enumerate(zones))
        object.__setattr__(self, "zones", zones)
        object.__setattr__(self, "root_bus", int(self.root_bus))
        object.__setattr__(self, "root_vm_pu", float(self.root_vm_pu))
        self.validate()

    # -- sizes -------------------------------------------------------------------------------
    @property
    def n_bus(self) -> int:
        return len(self.bus)

    @property
    def n_branch(self) -> int:
        return len(self.branch)

    @property
    def n_pv(self) -> int:
        return len(self.pv)

    @property
    def n_cap(self) -> int:
        return len(self.cap)

    @property
    def n_ess(self) -> int:
        return len(self.ess)

    def replace(self, **changes) -> Feeder:
        """A copy with some fields replaced (validated again), e.g. ``feeder.replace(pv=...)``."""
        return dataclasses.replace(self, _cache={}, **changes)

    # -- validation --------------------------------------------------------------------------
    def validate(self) -> None:
        """Check cross-references and topology.

        Raises:
            NetworkDataError: a device or branch names an unknown bus; the in-service branches
                do not form a tree spanning every bus from ``root_bus`` (meshed, islanded, or
                parallel branches); the zones are not a partition of the buses into connected
                sets; ``root_vm_pu`` is not finite and positive.
        """
        n = self.n_bus
        if n == 0:
            raise NetworkDataError("a feeder needs at least one bus", "bus")
        if not 0 <= self.root_bus < n:
            raise NetworkDataError(f"unknown bus {self.root_bus} (feeder has {n} buses)", "root_bus")
        if not (np.isfinite(self.root_vm_pu) and self.root_vm_pu > 0):
            raise NetworkDataError(f"expected a finite voltage > 0 pu, got {self.root_vm_pu}", "root_vm_pu")
        for tname in ("branch.from_bus", "branch.to_bus", "load.bus", "gen.bus", "pv.bus", "cap.bus", "ess.bus"):
            t, f = tname.split(".")
            idx = getattr(getattr(self, t), f)
            bad = np.flatnonzero((idx < 0) | (idx >= n))
            if bad.size:
                raise NetworkDataError(
                    f"unknown bus {idx[bad[:5]].tolist()} at positions {bad[:5].tolist()} (buses are 0..{n - 1})",
                    tname)
        self._build_radial()  # raises on meshed / islanded networks
        self._validate_zones()

    def _build_radial(self) -> RadialStructure:
        br = self.branch
        n = self.n_bus
        on = np.flatnonzero(br.in_service)
        if on.size != n - 1:
            kind = "meshed (a loop or parallel branches)" if on.size > n - 1 else "islanded"
            raise NetworkDataError(
                f"a radial feeder with {n} buses needs exactly {n - 1} in-service branches, got {on.size}: "
                f"the network is {kind}", "branch.in_service")
        adj = sp.coo_matrix((np.ones(2 * on.size), (np.r_[br.from_bus[on], br.to_bus[on]],
                                                      np.r_[br.to_bus[on], br.from_bus[on]])), shape=(n, n)).tocsr()
        if adj.max() > 1 if adj.nnz else False:
            raise NetworkDataError("two in-service branches join the same pair of buses (parallel branches); "
                                   "merge them into one equivalent branch", "branch")
        order, pred = sp.csgraph.breadth_first_order(adj, self.root_bus, directed=False, return_predecessors=True)
        if order.size != n:
            missing = np.setdiff1d(np.arange(n), order)
            raise NetworkDataError(
                f"buses {missing[:5].tolist()} are not connected to the root bus {self.root_bus} "
                "(islanded after open switches or out-of-service branches)", "branch.in_service")
        parent = pred.astype(np.int64)
        parent[self.root_bus] = -1
        # branch lookup for each (parent, child) pair
        key = {}
        for b in on:
            key[(int(br.from_bus[b]), int(br.to_bus[b]))] = (b, True)
            key[(int(br.to_bus[b]), int(br.from_bus[b]))] = (b, False)
        parent_branch = np.full(n, -1, dtype=np.int64)
        branch_child = np.full(self.n_branch, -1, dtype=np.int64)
        from_is_parent = np.zeros(self.n_branch, dtype=bool)
        depth = np.zeros(n, dtype=np.int64)
        for j in order[1:]:
            b, fwd = key[(int(parent[j]), int(j))]
            parent_branch[j] = b
            branch_child[b] = j
            from_is_parent[b] = fwd
            depth[j] = depth[parent[j]] + 1
        # subtree[i, j] = 1 iff i is an ancestor of j (or j itself): walk each bus up to the root
        rows, cols = [], []
        for j in range(n):
            i = j
            while i >= 0:
                rows.append(i)
                cols.append(j)
                i = parent[i]
        subtree = sp.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(n, n))
        arrays = dict(parent=parent, parent_branch=parent_branch, order=order.astype(np.int64), depth=depth,
                      branch_child=branch_child, branch_from_is_parent=from_is_parent)
        for a in arrays.values():
            a.setflags(write=False)
        rs = RadialStructure(root=self.root_bus, subtree=subtree, **arrays)
        self._cache["radial"] = rs
        return rs

    def _validate_zones(self) -> None:
        n = self.n_bus
        allz = np.concatenate(self.zones) if self.zones else np.zeros(0, dtype=np.int64)
        bad = (allz < 0) | (allz >= n)
        if bad.any():
            raise NetworkDataError(f"unknown bus {allz[bad][:5].tolist()} (buses are 0..{n - 1})", "zones")
        count = np.bincount(allz, minlength=n)
        if (count != 1).any():
            missing = np.flatnonzero(count == 0)
            twice = np.flatnonzero(count > 1)
            raise NetworkDataError(
                f"zones must partition the buses: buses {missing[:5].tolist()} in no zone, "
                f"{twice[:5].tolist()} in more than one", "zones")
        parent = self.radial.parent
        for k, z in enumerate(self.zones):
            inside = np.zeros(n, dtype=bool)
            inside[z] = True
            # a set of tree nodes is connected iff exactly one member has its parent outside
            heads = [j for j in z if parent[j] < 0 or not inside[parent[j]]]
            if len(heads) != 1:
                raise NetworkDataError(
                    f"zone {k} is not connected in the feeder tree: it has {len(heads)} separate parts "
                    f"(heads at buses {heads[:5]})", f"zones[{k}]")

    # -- derived data ------------------------------------------------------------------------
    @property
    def radial(self) -> RadialStructure:
        """The feeder's tree (cached)."""
        rs = self._cache.get("radial")
        return rs if rs is not None else self._build_radial()

    @cached_property
    def zone_of_bus(self) -> np.ndarray:
        """``(n_bus,)`` index of the zone each bus belongs to."""
        out = np.empty(self.n_bus, dtype=np.int64)
        for k, z in enumerate(self.zones):
            out[z] = k
        out.setflags(write=False)
        return out

    def nominal_injection(self) -> tuple[np.ndarray, np.ndarray]:
        """Net injection per bus at nominal load, fixed generation at its rating, no PV.

        Returns:
            ``(p_mw, q_mvar)``, each ``(n_bus,)``: positive into the network.
        """
        p = np.zeros(self.n_bus)
        q = np.zeros(self.n_bus)
        np.add.at(p, self.load.bus, -self.load.p_mw)
        np.add.at(q, self.load.bus, -self.load.q_mvar)
        np.add.at(p, self.gen.bus, self.gen.p_mw)
        np.add.at(q, self.gen.bus, self.gen.q_mvar)
        return p, q

    def cap_shunt_q_mvar(self, step) -> np.ndarray:
        """Reactive injection at 1 pu per bus of the capacitor banks at ``step``.

        Args:
            step: ``(n_cap,)`` or ``(K, n_cap)`` integer steps in 0..n_steps.

        Returns:
            ``(n_bus,)`` or ``(K, n_bus)`` MVAr at 1 pu, for ``run_powerflow(shunt_q_mvar=...)``.

        Raises:
            InputError: wrong shape or a step outside 0..n_steps.
        """
        from safedispatch.errors import InputError

        s = np.asarray(step)
        if s.shape[-1:] != (self.n_cap,) or s.ndim not in (1, 2):
            raise InputError(f"expected shape ({self.n_cap},) or (K, {self.n_cap}), got {s.shape}", "cap_step")
        if not np.all(np.isfinite(s)) or np.any(s != np.round(s)) or np.any(s < 0) or np.any(s > self.cap.n_steps):
            raise InputError(f"expected integers in 0..n_steps={self.cap.n_steps.tolist()}", "cap_step")
        out = np.zeros(s.shape[:-1] + (self.n_bus,))
        contrib = s * self.cap.q_step_mvar
        for c in range(self.n_cap):
            out[..., self.cap.bus[c]] += contrib[..., c]
        return out

    def __repr__(self) -> str:
        return (f"Feeder({self.name!r}, n_bus={self.n_bus}, n_branch={self.n_branch}, n_load={len(self.load)}, "
                f"n_pv={self.n_pv}, n_cap={self.n_cap}, n_ess={self.n_ess}, n_zone={len(self.zones)})")
