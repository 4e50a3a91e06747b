"""Volt-VAr droop: each inverter sets its reactive power from its own terminal voltage.

IEEE Std 1547-2018, "Standard for Interconnection and Interoperability of Distributed Energy
Resources with Associated Electric Power Systems Interfaces", clause 5.3.3 and Table 8: the
**category B default** volt-var curve (V in pu of nominal, Q in pu of the nameplate apparent
power, positive = injection)::

    V:  0.92   0.98   1.02   1.08
    Q: +0.44   0      0     -0.44

linear between the breakpoints and flat beyond the outer ones.

How the controller gets its local voltage: a real inverter measures it; a simulation must find
the steady state where the voltage each inverter measures is the one its own reactive power
(and everyone else's) produces. :class:`VoltVarDroop` finds that equilibrium by a damped
fixed-point iteration with the AC power flow :func:`safedispatch.run_powerflow`::

    v_k = AC power flow(set-points(q_k));   q_{k+1} = q_k + damping (curve(v_k) - q_k)

which is the discrete-time picture of the inverters' first-order open-loop response (1547's
5 s default time constant) settling. With a measured voltage (``act(snapshot, vm_pu=...)``) it
applies the curve once, as a one-step-delayed local controller would.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from safedispatch.baselines.controller import Controller, available_p_mw, hold_cap_step
from safedispatch.errors import InputError
from safedispatch.network.feeder import Feeder
from safedispatch.powerflow import run_powerflow
from safedispatch.problems.types import Action, Snapshot, check_snapshot, net_injection, real_vector

__all__ = ["CATEGORY_B_DEFAULT", "VM_MAX_PU", "VoltVarCurve", "VoltVarDroop"]

#: largest measured voltage (pu) ``act(vm_pu=...)`` accepts: anything above is no measurement
VM_MAX_PU = 10.0


@dataclass(frozen=True)
class VoltVarCurve:
    """A piecewise-linear volt-var curve (IEEE 1547-2018 clause 5.3.3).

    Attributes:
        v_pu: ``(4,)`` increasing breakpoint voltages V1 < V2 <= V3 < V4 (pu of nominal).
        q_pu: ``(4,)`` reactive power at the breakpoints, pu of the inverter's apparent-power
            rating, positive = injection (capacitive).
    """

    v_pu: tuple = (0.92, 0.98, 1.02, 1.08)
    q_pu: tuple = (0.44, 0.0, 0.0, -0.44)

    def __post_init__(self):
        v, q = _floats(self.v_pu, "curve.v_pu"), _floats(self.q_pu, "curve.q_pu")
        if v.shape != (4,) or not np.isfinite(v).all() or not (v[0] < v[1] <= v[2] < v[3]):
            raise InputError(f"expected 4 finite breakpoints V1 < V2 <= V3 < V4, got {list(self.v_pu)}", "curve.v_pu")
        if q.shape != (4,) or not np.isfinite(q).all() or (np.abs(q) > 1).any():
            raise InputError(f"expected 4 values in [-1, 1], got {list(self.q_pu)}", "curve.q_pu")

    def __call__(self, vm_pu) -> np.ndarray:
        """Reactive power (pu of rating) at voltages ``vm_pu`` (any shape), flat outside
        [V1, V4]."""
        return np.interp(np.asarray(vm_pu, float), np.asarray(self.v_pu, float), np.asarray(self.q_pu, float))


def _floats(value, name: str) -> np.ndarray:
    """``value`` as a real float array; InputError (naming ``name``) when it is not one."""
    if np.iscomplexobj(value):
        raise InputError("expected real numbers, got complex values", name)
    try:
        return np.asarray(value, dtype=float)
    except Exception as exc:  # noqa: BLE001  (any conversion failure is bad input)
        raise InputError(f"expected real numbers: {type(exc).__name__}: {exc}", name) from None


def _real(v) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_)) \
        and bool(np.isfinite(v))


#: IEEE 1547-2018 Table 8, category B default settings (V_ref = 1.0 pu)
CATEGORY_B_DEFAULT = VoltVarCurve()


class VoltVarDroop(Controller):
    """Local volt-var control of every inverter (IEEE 1547-2018 clause 5.3.3).

    Each inverter injects all available PV and sets ``q = curve(v) * s_mva`` at its bus
    voltage ``v``. When the disk ``p^2 + q^2 <= s^2`` cannot hold both:

    * ``priority="var"`` (default): reactive power first, active power curtailed to
      ``sqrt(s^2 - q^2)``. 1547 requires the volt-var reactive capability at rated active
      power; with inverters rated at the PV peak (as in the built-in cases) that capability
      exists only by curtailing, which is what "var priority" inverters do.
    * ``priority="watt"``: active power first, ``|q| <= sqrt(s^2 - p^2)``.

    A power-factor limit ``pf_min`` further caps ``|q| <= tan(acos(pf_min)) p``.

    Args:
        feeder: The network.
        curve: The volt-var curve (default: category B default).
        priority: "var" or "watt".
        damping: Step of the fixed-point iteration in (0, 1].
        tol_mvar: Stop when every inverter's ``|curve(v) s - q|`` is below this (MVAr).
        max_iter: Iteration limit (the last iterate is returned; ``last_info`` says so).

    Raises:
        InputError: bad priority, damping, tolerance or iteration limit.
    """

    name = "volt_var"

    def __init__(self, feeder: Feeder, curve: VoltVarCurve = CATEGORY_B_DEFAULT, priority: str = "var",
                 damping: float = 0.5, tol_mvar: float = 1e-6, max_iter: int = 200):
        super().__init__(feeder)
        if not isinstance(curve, VoltVarCurve):
            raise InputError(f"expected a VoltVarCurve, got {type(curve).__name__}", "curve")
        if priority not in ("var", "watt"):
            raise InputError(f"expected 'var' or 'watt', got {priority!r}", "priority")
        if not (_real(damping) and 0 < damping <= 1):
            raise InputError(f"expected 0 < damping <= 1, got {damping!r}", "damping")
        if not (_real(tol_mvar) and tol_mvar > 0):
            raise InputError(f"expected a finite tolerance > 0, got {tol_mvar!r}", "tol_mvar")
        if isinstance(max_iter, bool) or not (isinstance(max_iter, (int, np.integer)) and max_iter >= 1):
            raise InputError(f"expected an integer >= 1, got {max_iter!r}", "max_iter")
        self.curve, self.priority, self.damping = curve, priority, float(damping)
        self.tol_mvar, self.max_iter = float(tol_mvar), int(max_iter)
        pf = feeder.pv.pf_min
        self._t_pf = np.where(pf > 0, np.tan(np.arccos(np.clip(pf, 1e-12, 1.0))), np.inf)
        #: ``{"iterations": int, "converged": bool, "residual_mvar": float}`` of the last call
        self.last_info: dict = {}

    def setpoints(self, q_target_mvar, p_avail_mw) -> tuple[np.ndarray, np.ndarray]:
        """Clip a reactive target into each inverter's capability under the priority rule.

        Args:
            q_target_mvar: ``(n_pv,)`` reactive power the curve asks for (MVAr).
            p_avail_mw: ``(n_pv,)`` available active power (MW), ``<= s_mva``.

        Returns:
            ``(p_mw, q_mvar)``, each ``(n_pv,)``, inside the disks and the pf limits.
        """
        s = self.feeder.pv.s_mva
        q = np.clip(q_target_mvar, -s, s)
        if self.priority == "var":
            p = np.minimum(p_avail_mw, np.sqrt(np.maximum(s**2 - q**2, 0.0)))
        else:
            p = np.asarray(p_avail_mw, float).copy()
            qmax = np.sqrt(np.maximum(s**2 - p**2, 0.0))
            q = np.clip(q, -qmax, qmax)
        lim = np.isfinite(self._t_pf)
        if lim.any():  # inf * 0 would be NaN where there is no limit
            qpf = np.where(lim, np.where(lim, self._t_pf, 0.0) * p, np.inf)
            q = np.clip(q, -qpf, qpf)
        return p, q

    def act(self, snapshot: Snapshot, vm_pu=None) -> Action:
        """Set-points at the volt-var equilibrium (or from measured voltages).

        Args:
            snapshot: Loads and PV availability.
            vm_pu: Optional ``(n_bus,)`` measured voltages: apply the curve once to them
                instead of iterating with the AC power flow.

        Returns:
            The action (capacitors held, storage idle).

        Raises:
            InputError: the snapshot is not a Snapshot or does not fit the feeder; ``vm_pu`` is
                not ``(n_bus,)`` finite voltages in ``(0, VM_MAX_PU]``.
        """
        f = self.feeder
        snap = check_snapshot(snapshot, f)
        avail = available_p_mw(f, snap)
        cap = hold_cap_step(f, snap)
        s = f.pv.s_mva
        mk = lambda p, q: Action(pv_p_mw=p, pv_q_mvar=q, cap_step=cap, ess_p_mw=np.zeros(f.n_ess))  # noqa: E731
        if vm_pu is not None:
            v = real_vector(vm_pu, f.n_bus, "vm_pu", max_abs=VM_MAX_PU)
            if (v <= 0).any():
                raise InputError(f"expected voltages > 0, got {v[v <= 0][:5].tolist()}", "vm_pu")
            p, q = self.setpoints(self.curve(v[f.pv.bus]) * s, avail)
            self.last_info = {"iterations": 0, "converged": True, "residual_mvar": 0.0}
            return mk(p, q)
        q = np.zeros(f.n_pv)
        p, q = self.setpoints(q, avail)
        res = np.inf
        it = 0
        for it in range(1, self.max_iter + 1):  # noqa: B007  (the count is reported)
            act = mk(p, q)
            pi, qi, sh = net_injection(f, snap, act)
            pf = run_powerflow(f, pi, qi, v_root_pu=snap.v_root_pu, shunt_q_mvar=sh)
            target = self.curve(pf.vm_pu[f.pv.bus]) * s
            # the reachable target: what the inverter would actually set for that voltage
            _, q_reach = self.setpoints(target, avail)
            res = float(np.max(np.abs(q_reach - q), initial=0.0))
            if res <= self.tol_mvar:
                break
            p, q = self.setpoints(q + self.damping * (q_reach - q), avail)
        self.last_info = {"iterations": it, "converged": bool(res <= self.tol_mvar), "residual_mvar": res}
        return mk(p, q)
