"""The operating snapshot a controller sees and the action it proposes.

Sign conventions (see DESIGN.md): a :class:`Snapshot` carries loads as positive consumption;
an :class:`Action` carries device set-points as injections (PV and storage discharge
positive). :func:`net_injection` turns both into the per-bus injections of
:func:`safedispatch.run_powerflow`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

import numpy as np

from safedispatch.errors import InputError
from safedispatch.errors import finite_vector as _vec
from safedispatch.network.feeder import Feeder

__all__ = ["Action", "Snapshot", "load_q_ratio", "net_injection"]


@dataclass(frozen=True, eq=False)
class Action:
    """Device set-points proposed by a controller.

    Attributes:
        pv_p_mw, pv_q_mvar: ``(n_pv,)`` inverter active and reactive injection.
        cap_step: ``(n_cap,)`` integer capacitor steps (None: keep the previous steps).
        ess_p_mw: ``(n_ess,)`` storage power, positive = discharge (None: idle).
    """

    pv_p_mw: np.ndarray
    pv_q_mvar: np.ndarray
    cap_step: np.ndarray | None = None
    ess_p_mw: np.ndarray | None = None

    def checked(self, feeder: Feeder, prefix: str = "action") -> Action:
        """A copy with validated arrays of the feeder's sizes (None filled with defaults).

        Raises:
            InputError: wrong shape, NaN/inf, non-integer or out-of-range capacitor steps.
        """
        p = _vec(self.pv_p_mw, feeder.n_pv, f"{prefix}.pv_p_mw")
        q = _vec(self.pv_q_mvar, feeder.n_pv, f"{prefix}.pv_q_mvar")
        if self.cap_step is None:
            cap = feeder.cap.step_init.copy()
        else:
            cap = _vec(self.cap_step, feeder.n_cap, f"{prefix}.cap_step", integer=True)
            bad = (cap < 0) | (cap > feeder.cap.n_steps)
            if bad.any():
                raise InputError(f"expected steps in 0..n_steps, got {cap[bad].tolist()}", f"{prefix}.cap_step")
        ess = (np.zeros(feeder.n_ess) if self.ess_p_mw is None
               else _vec(self.ess_p_mw, feeder.n_ess, f"{prefix}.ess_p_mw"))
        return Action(pv_p_mw=p, pv_q_mvar=q, cap_step=cap, ess_p_mw=ess)

    def to_vector(self) -> np.ndarray:
        """The continuous set-points as one vector ``[pv_p_mw | pv_q_mvar | ess_p_mw]``."""
        parts = [np.asarray(self.pv_p_mw, float), np.asarray(self.pv_q_mvar, float)]
        if self.ess_p_mw is not None:
            parts.append(np.asarray(self.ess_p_mw, float))
        return np.concatenate(parts)

    @classmethod
    def from_vector(cls, x, feeder: Feeder, cap_step=None) -> Action:
        """Inverse of :meth:`to_vector` (``x`` of length ``2 n_pv + n_ess``).

        Raises:
            InputError: wrong length or non-finite entries (field ``x``).
        """
        n_pv, n_ess = feeder.n_pv, feeder.n_ess
        x = _vec(x, 2 * n_pv + n_ess, "x")
        return cls(pv_p_mw=x[:n_pv], pv_q_mvar=x[n_pv:2 * n_pv], cap_step=cap_step,
                   ess_p_mw=x[2 * n_pv:] if n_ess else None)

    def __repr__(self) -> str:
        return (f"Action(pv_p_mw={np.round(self.pv_p_mw, 4).tolist()}, pv_q_mvar={np.round(self.pv_q_mvar, 4).tolist()}"
                f", cap_step={None if self.cap_step is None else np.asarray(self.cap_step).tolist()}, ess_p_mw="
                f"{None if self.ess_p_mw is None else np.round(self.ess_p_mw, 4).tolist()})")


@dataclass(frozen=True, eq=False)
class Snapshot:
    """The uncontrolled state of the feeder at one time step.

    Attributes:
        load_p_mw, load_q_mvar: ``(n_bus,)`` uncontrolled net consumption per bus (loads minus
            uncontrolled generation; reactive may be negative).
        pv_avail_mw: ``(n_pv,)`` available PV power, ``0 <= avail <= pv.p_max_mw``.
        prev: Set-points applied at the previous step (for ramp limits and capacitor
            switching); None = no ramp constraint.
        ess_soc: ``(n_ess,)`` state of charge (fraction); None = ``ess.soc_init``.
        v_root_pu: Substation voltage magnitude (pu); None = the feeder's own
            ``root_vm_pu`` (the ext_grid set-point of a converted pandapower net). A value
            stated here wins.
        dt_h: Step length (hours): ramp limits scale with it, storage energy too.
    """

    load_p_mw: np.ndarray
    load_q_mvar: np.ndarray
    pv_avail_mw: np.ndarray
    prev: Action | None = None
    ess_soc: np.ndarray | None = None
    v_root_pu: float | None = None
    dt_h: float = 0.25
    _checked_for: object = field(default=None, repr=False, compare=False)

    @classmethod
    def nominal(cls, feeder: Feeder, load: float = 1.0, pv: float = 0.0, **kw) -> Snapshot:
        """Nominal loads (and uncontrolled generation) scaled by ``load``, PV available at
        ``pv`` x peak."""
        p, q = feeder.nominal_injection()
        return cls(load_p_mw=-p * load, load_q_mvar=-q * load, pv_avail_mw=pv * feeder.pv.p_max_mw, **kw)

    def checked(self, feeder: Feeder) -> Snapshot:
        """A validated copy (arrays of the feeder's sizes, defaults filled in).

        Raises:
            InputError: wrong shape, NaN/inf, availability outside ``[0, pv.p_max_mw]``,
                state of charge outside ``[soc_min, soc_max]``, a previous action that is not
                device-feasible (outside an inverter's disk), non-positive ``v_root_pu`` or
                ``dt_h``.
        """
        if self._checked_for is feeder:
            return self
        lp = _vec(self.load_p_mw, feeder.n_bus, "snapshot.load_p_mw")
        lq = _vec(self.load_q_mvar, feeder.n_bus, "snapshot.load_q_mvar")
        av = _vec(self.pv_avail_mw, feeder.n_pv, "snapshot.pv_avail_mw")
        tol = 1e-9
        bad = (av < -tol) | (av > feeder.pv.p_max_mw + tol)
        if bad.any():
            raise InputError(f"expected 0 <= pv_avail_mw <= pv.p_max_mw, got {av[bad][:5].tolist()} at inverters "
                             f"{np.flatnonzero(bad)[:5].tolist()}", "snapshot.pv_avail_mw")
        av = np.clip(av, 0.0, feeder.pv.p_max_mw)  # only removes rounding noise within tol
        if self.ess_soc is None:
            soc = feeder.ess.soc_init.copy()
        else:
            soc = _vec(self.ess_soc, feeder.n_ess, "snapshot.ess_soc")
            bad = (soc < feeder.ess.soc_min - tol) | (soc > feeder.ess.soc_max + tol)
            if bad.any():
                raise InputError(f"expected soc_min <= ess_soc <= soc_max, got {soc[bad].tolist()}", "snapshot.ess_soc")
        v_root = feeder.root_vm_pu if self.v_root_pu is None else self.v_root_pu
        for name, v in (("v_root_pu", v_root), ("dt_h", self.dt_h)):
            if not (isinstance(v, (int, float, np.floating, np.integer)) and np.isfinite(v) and v > 0):
                raise InputError(f"expected a finite number > 0, got {v!r}", f"snapshot.{name}")
        prev = None
        if self.prev is not None:
            if not isinstance(self.prev, Action):
                raise InputError(f"expected an Action or None, got {type(self.prev).__name__}", "snapshot.prev")
            prev = self.prev.checked(feeder, prefix="snapshot.prev")
            s2 = prev.pv_p_mw**2 + prev.pv_q_mvar**2
            bad = s2 > feeder.pv.s_mva**2 * (1 + 1e-6) + 1e-12
            if bad.any():
                raise InputError("previous set-points outside the inverters' rating at "
                                 f"{np.flatnonzero(bad)[:5].tolist()}", "snapshot.prev")
        out = Snapshot(load_p_mw=lp, load_q_mvar=lq, pv_avail_mw=av, prev=prev, ess_soc=soc,
                       v_root_pu=float(v_root), dt_h=float(self.dt_h))
        object.__setattr__(out, "_checked_for", feeder)
        return out

    def replace(self, **changes) -> Snapshot:
        """A copy with some fields replaced."""
        kw = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "_checked_for"}
        kw.update(changes)
        return Snapshot(**kw)


def load_q_ratio(snapshot: Snapshot) -> np.ndarray:
    """``(n_bus,)`` reactive/active ratio of each bus's load (0 where there is no active load):
    shed load keeps its power factor."""
    lp, lq = np.asarray(snapshot.load_p_mw, float), np.asarray(snapshot.load_q_mvar, float)
    out = np.zeros_like(lp)
    np.divide(lq, lp, out=out, where=np.abs(lp) > 1e-12)
    return out


def net_injection(feeder: Feeder, snapshot: Snapshot, action: Action, shed_p_mw=None):
    """Per-bus injections for :func:`safedispatch.run_powerflow` of an applied action.

    Args:
        feeder: The network.
        snapshot: Loads (validated with ``snapshot.checked(feeder)``).
        action: Set-points (validated with ``action.checked(feeder)``).
        shed_p_mw: Optional ``(n_bus,)`` shed active load per bus (reactive shed at the bus
            load's power factor).

    Returns:
        ``(p_mw, q_mvar, shunt_q_mvar)``, each ``(n_bus,)``: injections and the capacitor
        banks' reactive injection at 1 pu.
    """
    p = -np.asarray(snapshot.load_p_mw, float).copy()
    q = -np.asarray(snapshot.load_q_mvar, float).copy()
    np.add.at(p, feeder.pv.bus, action.pv_p_mw)
    np.add.at(q, feeder.pv.bus, action.pv_q_mvar)
    if feeder.n_ess and action.ess_p_mw is not None:
        np.add.at(p, feeder.ess.bus, action.ess_p_mw)
    if shed_p_mw is not None:
        shed = np.asarray(shed_p_mw, float)
        p += shed
        q += shed * load_q_ratio(snapshot)
    steps = action.cap_step if action.cap_step is not None else feeder.cap.step_init
    shunt = feeder.cap_shunt_q_mvar(np.asarray(steps)) if feeder.n_cap else np.zeros(feeder.n_bus)
    return p, q, shunt
