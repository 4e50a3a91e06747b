"""The operating snapshot a controller sees and the action it proposes.

Sign conventions (see DESIGN.md): a :class:`Snapshot` carries loads as positive consumption;
an :class:`Action` carries device set-points as injections (PV and storage discharge
positive). :func:`net_injection` turns both into the per-bus injections of
:func:`safedispatch.run_powerflow`.

**Validation.** :func:`check_snapshot` and :func:`check_action` are the one place every public
entry point validates its arguments: a wrong type (a float, a tuple, None where a Snapshot or
an Action goes) is an :class:`~safedispatch.errors.InputError` naming the argument, and so is
every array of the wrong shape, with NaN, inf or complex entries, or with a physically absurd
magnitude (any power above :data:`~safedispatch.errors.MAX_ABS_POWER_MW`, a substation voltage
outside :data:`~safedispatch.errors.V_ROOT_RANGE_PU`, a step length outside :data:`DT_RANGE_H`).

**Checked snapshots are frozen.** The validated copy that :meth:`Snapshot.checked` returns owns
its arrays and marks them read-only (``setflags(write=False)``), so nothing can change a value
after it was checked; checking such a copy again for the same feeder is free (it returns
itself), and only then: a snapshot holding the caller's own arrays is validated on every call,
since the caller may have written into them since. :meth:`Action.checked` returns copies too
(writable: see there). A checked snapshot is an immutable value, safe to share between
threads.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields

import numpy as np

from safedispatch.errors import MAX_ABS_POWER_MW, V_ROOT_RANGE_PU, InputError, real_float_array
from safedispatch.errors import finite_vector as _finite_vector
from safedispatch.network.feeder import Feeder

__all__ = ["DT_RANGE_H", "Action", "Snapshot", "check_action", "check_feeder", "check_snapshot", "load_q_ratio",
           "net_injection", "real_array", "real_vector"]

#: accepted step length ``dt_h`` (hours): ``0 < dt_h <= 24`` (a control step of more than a day
#: is no operating snapshot; ramp and storage limits scale with it)
DT_RANGE_H = (0.0, 24.0)

_REAL = (int, float, np.integer, np.floating)


def real_vector(value, n: int, name: str, *, integer: bool = False,
                max_abs: float | None = MAX_ABS_POWER_MW) -> np.ndarray:
    """:func:`~safedispatch.errors.finite_vector` with the library's power bound by default
    (every vector of a Snapshot or an Action is a power). The result may be ``value`` itself (no
    copy): never write into it."""
    return _finite_vector(value, n, name, integer=integer, max_abs=max_abs)


_vec = real_vector


def real_array(value, shape: tuple, name: str) -> np.ndarray:
    """``value`` as a float64 array of ``shape``, NaN and inf allowed (callers that have a
    fallback for non-finite values check them themselves; :func:`real_vector` rejects them).

    Raises:
        InputError: not convertible to real numbers (complex, strings, objects), or another
            shape (field ``name``).
    """
    a = real_float_array(value, name)
    if a.shape != tuple(shape):
        raise InputError(f"expected shape {tuple(shape)}, got {a.shape}", name)
    return a


def _own(a: np.ndarray, value, freeze: bool = True) -> np.ndarray:
    """``a`` owned (copied unless it is a fresh array nobody else holds) and, by default,
    frozen (read-only)."""
    if a is value or not a.flags.owndata:
        a = a.copy()
    if freeze:
        a.setflags(write=False)
    return a


def _real_scalar(v) -> bool:
    return isinstance(v, _REAL) and not isinstance(v, (bool, np.bool_))


def check_feeder(obj, name: str = "feeder") -> Feeder:
    """``obj`` when it is a :class:`~safedispatch.Feeder`.

    Raises:
        InputError: anything else (field ``name``).
    """
    if not isinstance(obj, Feeder):
        raise InputError(f"expected a Feeder, got {type(obj).__name__}", name)
    return obj


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
        """A validated copy of the feeder's sizes (None filled with defaults), owning its arrays
        (nothing shared with the caller's).

        Unlike a checked snapshot's, these arrays stay writable: an action is validated on
        every use anyway (there is no shortcut to protect), and numba compiles a kernel anew
        for read-only arguments (the structured QP takes ~50 s), so frozen actions passed back
        into the safety layer would cost a compilation each. A snapshot's ``prev`` is frozen
        with the snapshot.

        Raises:
            InputError: ``feeder`` is not a Feeder; wrong shape, NaN/inf, complex entries, a
                power above ``MAX_ABS_POWER_MW`` in magnitude, non-integer or out-of-range
                capacitor steps.
        """
        check_feeder(feeder)
        p = _own(_vec(self.pv_p_mw, feeder.n_pv, f"{prefix}.pv_p_mw"), self.pv_p_mw, freeze=False)
        q = _own(_vec(self.pv_q_mvar, feeder.n_pv, f"{prefix}.pv_q_mvar"), self.pv_q_mvar, freeze=False)
        if self.cap_step is None:
            cap = feeder.cap.step_init.astype(np.int64)
        else:
            name = f"{prefix}.cap_step"
            c = _vec(self.cap_step, feeder.n_cap, name, max_abs=None)
            bad = (c < 0) | (c > feeder.cap.n_steps)
            if bad.any():  # before the integer cast: 1e300 must not wrap around
                raise InputError(f"expected steps in 0..n_steps, got {c[bad][:5].tolist()}", name)
            cap = _vec(c, feeder.n_cap, name, integer=True, max_abs=None)  # a fresh array
        if self.ess_p_mw is None:
            ess = np.zeros(feeder.n_ess)
        else:
            ess = _own(_vec(self.ess_p_mw, feeder.n_ess, f"{prefix}.ess_p_mw"), self.ess_p_mw, freeze=False)
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
            InputError: ``feeder`` is not a Feeder; wrong length, non-finite or absurd entries
                (field ``x``).
        """
        check_feeder(feeder)
        n_pv, n_ess = feeder.n_pv, feeder.n_ess
        x = _vec(x, 2 * n_pv + n_ess, "x")
        return cls(pv_p_mw=x[:n_pv], pv_q_mvar=x[n_pv:2 * n_pv], cap_step=cap_step,
                   ess_p_mw=x[2 * n_pv:] if n_ess else None)

    def __repr__(self) -> str:
        def show(a):
            try:
                return np.round(np.asarray(a, float), 4).tolist()
            except Exception:  # noqa: BLE001  (a repr never raises: an unchecked action may hold anything)
                return repr(a)

        return (f"Action(pv_p_mw={show(self.pv_p_mw)}, pv_q_mvar={show(self.pv_q_mvar)}, cap_step="
                f"{None if self.cap_step is None else show(self.cap_step)}, ess_p_mw="
                f"{None if self.ess_p_mw is None else show(self.ess_p_mw)})")


def _frozen(*arrays) -> bool:
    """Every array is a read-only ndarray (None allowed)."""
    for a in arrays:
        if a is not None and (type(a) is not np.ndarray or a.flags.writeable):
            return False
    return True


@dataclass(frozen=True, eq=False)
class Snapshot:
    """The uncontrolled state of the feeder at one time step.

    Attributes:
        load_p_mw, load_q_mvar: ``(n_bus,)`` uncontrolled net consumption per bus (loads minus
            uncontrolled generation; reactive may be negative), ``|x| <= MAX_ABS_POWER_MW``.
        pv_avail_mw: ``(n_pv,)`` available PV power, ``0 <= avail <= pv.p_max_mw``.
        prev: Set-points applied at the previous step (for ramp limits and capacitor
            switching); None = no ramp constraint.
        ess_soc: ``(n_ess,)`` state of charge (fraction); None = ``ess.soc_init``.
        v_root_pu: Substation voltage magnitude (pu), within ``V_ROOT_RANGE_PU`` (0.5 to
            2.0); None = the feeder's own ``root_vm_pu`` (the ext_grid set-point of a converted
            pandapower net). A value stated here wins.
        dt_h: Step length (hours), ``0 < dt_h <= 24`` (:data:`DT_RANGE_H`): ramp limits scale
            with it, storage energy too.

    A snapshot returned by :meth:`checked` holds read-only copies (see the module docstring).
    """

    load_p_mw: np.ndarray
    load_q_mvar: np.ndarray
    pv_avail_mw: np.ndarray
    prev: Action | None = None
    ess_soc: np.ndarray | None = None
    v_root_pu: float | None = None
    dt_h: float = 0.25
    # the feeder this snapshot is the validated copy for (set by ``checked`` only: not an
    # argument of the constructor, not carried over by ``dataclasses.replace``)
    _checked_for: object = field(default=None, init=False, repr=False, compare=False)

    @classmethod
    def nominal(cls, feeder: Feeder, load: float = 1.0, pv: float = 0.0, **kw) -> Snapshot:
        """Nominal loads (and uncontrolled generation) scaled by ``load``, PV available at
        ``pv`` x peak.

        The snapshot owns fresh arrays (nothing is shared with the feeder or the caller) and is
        validated where it is used, like any other; ``v_root_pu`` stays None unless given.

        Raises:
            InputError: ``feeder`` is not a Feeder, or ``load``/``pv`` is not a finite real
                number.
        """
        check_feeder(feeder)
        for name, v in (("load", load), ("pv", pv)):
            if not (_real_scalar(v) and math.isfinite(v)):
                raise InputError(f"expected a finite real number, got {v!r}", name)
        p, q = feeder.nominal_injection()
        return cls(load_p_mw=-p * float(load), load_q_mvar=-q * float(load),
                   pv_avail_mw=float(pv) * feeder.pv.p_max_mw, **kw)

    def checked(self, feeder: Feeder, prefix: str = "snapshot") -> Snapshot:
        """A validated copy (read-only arrays of the feeder's sizes, defaults filled in).

        A snapshot that is itself the validated copy for ``feeder`` (arrays still read-only)
        is returned as is (about a microsecond: the hot path of the safety layer relies on it).

        Raises:
            InputError: ``feeder`` is not a Feeder; wrong shape, NaN/inf or complex entries, a
                load above ``MAX_ABS_POWER_MW`` in magnitude, availability outside
                ``[0, pv.p_max_mw]``, state of charge outside ``[soc_min, soc_max]``, a previous
                action that is not an Action or not device-feasible (outside an inverter's
                disk), ``v_root_pu`` outside ``V_ROOT_RANGE_PU``, ``dt_h`` outside ``(0, 24]``.
        """
        if self._checked_for is feeder:
            prev = self.prev
            if _frozen(self.load_p_mw, self.load_q_mvar, self.pv_avail_mw, self.ess_soc) and (prev is None or (
                    type(prev) is Action and _frozen(prev.pv_p_mw, prev.pv_q_mvar, prev.cap_step, prev.ess_p_mw))):
                return self
        check_feeder(feeder)
        lp = _own(_vec(self.load_p_mw, feeder.n_bus, f"{prefix}.load_p_mw"), self.load_p_mw)
        lq = _own(_vec(self.load_q_mvar, feeder.n_bus, f"{prefix}.load_q_mvar"), self.load_q_mvar)
        av = _vec(self.pv_avail_mw, feeder.n_pv, f"{prefix}.pv_avail_mw")
        tol = 1e-9
        bad = (av < -tol) | (av > feeder.pv.p_max_mw + tol)
        if bad.any():
            raise InputError(f"expected 0 <= pv_avail_mw <= pv.p_max_mw, got {av[bad][:5].tolist()} at inverters "
                             f"{np.flatnonzero(bad)[:5].tolist()}", f"{prefix}.pv_avail_mw")
        av = np.minimum(np.maximum(av, 0.0), feeder.pv.p_max_mw)  # rounding noise within tol; a fresh array
        av.setflags(write=False)
        if self.ess_soc is None:
            soc = feeder.ess.soc_init.astype(float)
        else:
            soc = _vec(self.ess_soc, feeder.n_ess, f"{prefix}.ess_soc")
            bad = (soc < feeder.ess.soc_min - tol) | (soc > feeder.ess.soc_max + tol)
            if bad.any():
                raise InputError(f"expected soc_min <= ess_soc <= soc_max, got {soc[bad][:5].tolist()}",
                                 f"{prefix}.ess_soc")
            soc = _own(soc, self.ess_soc)
        soc.setflags(write=False)
        v_root = feeder.root_vm_pu if self.v_root_pu is None else self.v_root_pu
        lo, hi = V_ROOT_RANGE_PU
        if not (_real_scalar(v_root) and lo <= v_root <= hi):
            raise InputError(f"expected a voltage in [{lo}, {hi}] pu, got {v_root!r}", f"{prefix}.v_root_pu")
        dt = self.dt_h
        if not (_real_scalar(dt) and DT_RANGE_H[0] < dt <= DT_RANGE_H[1]):
            raise InputError(f"expected a step length in ({DT_RANGE_H[0]:g}, {DT_RANGE_H[1]:g}] h, got {dt!r}",
                             f"{prefix}.dt_h")
        prev = None
        if self.prev is not None:
            if not isinstance(self.prev, Action):
                raise InputError(f"expected an Action or None, got {type(self.prev).__name__}", f"{prefix}.prev")
            prev = self.prev.checked(feeder, prefix=f"{prefix}.prev")  # owns its arrays: freeze them
            for a in (prev.pv_p_mw, prev.pv_q_mvar, prev.cap_step, prev.ess_p_mw):
                a.setflags(write=False)
            s2 = prev.pv_p_mw**2 + prev.pv_q_mvar**2
            bad = s2 > feeder.pv.s_mva**2 * (1 + 1e-6) + 1e-12
            if bad.any():
                raise InputError("previous set-points outside the inverters' rating at "
                                 f"{np.flatnonzero(bad)[:5].tolist()}", f"{prefix}.prev")
        out = Snapshot(load_p_mw=lp, load_q_mvar=lq, pv_avail_mw=av, prev=prev, ess_soc=soc,
                       v_root_pu=float(v_root), dt_h=float(dt))
        object.__setattr__(out, "_checked_for", feeder)
        return out

    def replace(self, **changes) -> Snapshot:
        """A copy with some fields replaced (not a validated one: check it again)."""
        kw = {f.name: getattr(self, f.name) for f in fields(self) if f.init}
        kw.update(changes)
        return Snapshot(**kw)


def check_snapshot(obj, feeder: Feeder, name: str = "snapshot") -> Snapshot:
    """The validated copy of a snapshot argument (:meth:`Snapshot.checked`).

    Args:
        obj: What the caller passed.
        feeder: The network it must fit.
        name: The argument's name, used in error messages (``"snapshot"``).

    Raises:
        InputError: ``obj`` is not a Snapshot (``"expected a Snapshot, got float"``, field
            ``name``), ``feeder`` is not a Feeder, or any check of :meth:`Snapshot.checked`.
    """
    if not isinstance(obj, Snapshot):
        raise InputError(f"expected a Snapshot, got {type(obj).__name__}", name)
    return obj.checked(feeder, prefix=name)


def check_action(obj, feeder: Feeder, name: str = "action") -> Action:
    """The validated copy of an action argument (:meth:`Action.checked`).

    Raises:
        InputError: ``obj`` is not an Action (field ``name``), ``feeder`` is not a Feeder, or
            any check of :meth:`Action.checked`.
    """
    if not isinstance(obj, Action):
        raise InputError(f"expected an Action, got {type(obj).__name__}", name)
    return obj.checked(feeder, prefix=name)


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
        snapshot: Loads (checked here like :func:`check_snapshot` checks them: shape, finite,
            at most ``MAX_ABS_POWER_MW``; a checked snapshot costs nothing).
        action: Set-points (checked like :func:`check_action`).
        shed_p_mw: Optional ``(n_bus,)`` shed active load per bus (reactive shed at the bus
            load's power factor).

    Returns:
        ``(p_mw, q_mvar, shunt_q_mvar)``, each ``(n_bus,)``: injections and the capacitor
        banks' reactive injection at 1 pu.

    Raises:
        InputError: an argument of the wrong type, shape or value (the field is named).
    """
    check_feeder(feeder)
    if not isinstance(snapshot, Snapshot):
        raise InputError(f"expected a Snapshot, got {type(snapshot).__name__}", "snapshot")
    act = check_action(action, feeder)
    if snapshot._checked_for is feeder and _frozen(snapshot.load_p_mw, snapshot.load_q_mvar):
        lp, lq = snapshot.load_p_mw, snapshot.load_q_mvar
    else:  # only the loads are used here: availability, ramps and storage state do not matter
        lp = _vec(snapshot.load_p_mw, feeder.n_bus, "snapshot.load_p_mw")
        lq = _vec(snapshot.load_q_mvar, feeder.n_bus, "snapshot.load_q_mvar")
    p = -lp
    q = -lq
    np.add.at(p, feeder.pv.bus, act.pv_p_mw)
    np.add.at(q, feeder.pv.bus, act.pv_q_mvar)
    if feeder.n_ess:
        np.add.at(p, feeder.ess.bus, act.ess_p_mw)
    if shed_p_mw is not None:
        shed = _vec(shed_p_mw, feeder.n_bus, "shed_p_mw")
        p += shed
        ratio = np.zeros_like(lp)
        np.divide(lq, lp, out=ratio, where=np.abs(lp) > 1e-12)
        q += shed * ratio
    shunt = feeder.cap_shunt_q_mvar(act.cap_step) if feeder.n_cap else np.zeros(feeder.n_bus)
    return p, q, shunt
