"""The papers' evaluation metrics, computed one way for every controller.

All functions take trajectories as arrays with time on the first axis (any further leading
batch axes are flattened into time): voltages ``(T, n_bus)``, set-points ``(T, n_pv)``,
losses ``(T,)``. Voltage metrics are over the non-slack buses (the substation voltage is
fixed by the grid, not by the controller).

Definitions (``v_ref`` = 1 pu by default):

* ``mean_voltage_deviation_pu``: mean over steps and buses of ``|v - v_ref|`` (paper C).
* ``rms_voltage_deviation_pu``: ``sqrt(mean((v - v_ref)^2))`` (paper B).
* ``violation_rate``: share of steps with any bus outside its limits (paper C).
* ``controllable_rate``: share of steps with every bus inside its limits (MAPDN's CR, Wang et
  al., NeurIPS 2021); ``1 - violation_rate``.
* ``violation_pu``: mean over steps of the summed limit excess ``sum max(0, v - vmax) +
  max(0, vmin - v)`` (paper C's constraint cost); ``max_violation_pu``: the largest excess.
* ``losses_mwh``: ``sum(p_loss) * dt``; ``losses_mw_summed``: ``sum(p_loss)`` (paper C's table
  sums MW over the 96 steps).
* ``curtailment_ratio``: ``sum(avail - p) / sum(avail)`` (paper B).
* ``reactive_mvarh``: ``sum(|q|) * dt``, reactive power used.
* ``intervention_rate``: share of steps the safety layer changed the action (status not
  UNCHANGED); ``mean_correction``: mean correction norm (MW/MVAr), both only when the safety
  layer's outputs are passed.
"""

from __future__ import annotations

import sys

import numpy as np

from safedispatch.errors import MAX_ABS_POWER_MW, V_ROOT_RANGE_PU, InputError
from safedispatch.network.feeder import Feeder
from safedispatch.problems.types import DT_RANGE_H, check_feeder

__all__ = ["VM_MAX_PU", "dispatch_metrics"]

#: largest voltage magnitude (pu) accepted in a trajectory: anything above is no feeder state
#: (and its square, in the RMS deviation, must stay finite)
VM_MAX_PU = 10.0


def _arr(x, name: str, ndim: int, width: int | None = None, max_abs: float = MAX_ABS_POWER_MW) -> np.ndarray:
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(x, torch.Tensor):  # trajectories recorded as tensors: values only
        if x.is_complex():
            raise InputError("expected real numbers, got complex values", name)
        x = x.detach().cpu().double().numpy()  # bfloat16 has no numpy dtype
    try:
        if np.iscomplexobj(x):
            raise InputError("expected real numbers, got complex values", name)
        a = np.asarray(x, dtype=float)
    except InputError:
        raise
    except Exception as exc:  # noqa: BLE001  (any conversion failure is bad input)
        raise InputError(f"expected an array of real numbers: {type(exc).__name__}: {exc}", name) from None
    if a.ndim < ndim:
        raise InputError(f"expected at least {ndim} dimensions, got shape {a.shape}", name)
    if ndim == 2:
        if width is not None and a.shape[-1] != width:
            raise InputError(f"expected last dimension {width}, got shape {a.shape}", name)
        a = a.reshape(-1, a.shape[-1])
    else:
        a = a.reshape(-1)
    if not np.isfinite(a).all():
        raise InputError("contains NaN or inf", name)
    if a.size and np.abs(a).max() > max_abs:
        raise InputError(f"expected magnitudes <= {max_abs:g}, got {float(np.abs(a).max())!r}", name)
    return a


def _real(v) -> bool:
    """A finite real number (not a bool)."""
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_)) \
        and bool(np.isfinite(v))


def dispatch_metrics(feeder: Feeder, vm_pu, p_loss_mw, pv_avail_mw=None, pv_p_mw=None, pv_q_mvar=None,
                     dt_h: float = 0.25, v_ref_pu: float = 1.0, correction_norm=None, projection_status=None) -> dict:
    """The metrics of one or many trajectories (see the module docstring).

    Args:
        feeder: The network (voltage limits, slack bus).
        vm_pu: ``(..., T, n_bus)`` AC voltages per step.
        p_loss_mw: ``(..., T)`` losses per step.
        pv_avail_mw, pv_p_mw, pv_q_mvar: ``(..., T, n_pv)`` availability and applied set-points
            (optional: curtailment and reactive metrics need them).
        dt_h: Step length (hours).
        v_ref_pu: Reference voltage of the deviation metrics.
        correction_norm, projection_status: ``(..., T)`` the safety layer's outputs (optional).

    Returns:
        A dict of floats.

    Raises:
        InputError: ``feeder`` is not a Feeder; an argument that is not an array of real
            numbers, shapes that do not match the feeder or each other, no step, NaN or inf,
            voltages outside ``[0, VM_MAX_PU]``, powers above ``MAX_ABS_POWER_MW`` in magnitude,
            ``dt_h`` outside ``(0, 24]`` h, ``v_ref_pu`` outside ``V_ROOT_RANGE_PU``.
    """
    check_feeder(feeder)
    v = _arr(vm_pu, "vm_pu", 2, feeder.n_bus, max_abs=VM_MAX_PU)
    T = v.shape[0]
    if T == 0:
        raise InputError("expected at least one step", "vm_pu")
    if (v < 0).any():
        raise InputError(f"expected voltage magnitudes >= 0, got {float(v.min())!r}", "vm_pu")
    loss = _arr(p_loss_mw, "p_loss_mw", 1)
    if loss.size != T:
        raise InputError(f"expected {T} steps like vm_pu, got {loss.size}", "p_loss_mw")
    if not (_real(dt_h) and DT_RANGE_H[0] < dt_h <= DT_RANGE_H[1]):
        raise InputError(f"expected a step length in ({DT_RANGE_H[0]:g}, {DT_RANGE_H[1]:g}] h, got {dt_h!r}", "dt_h")
    if not (_real(v_ref_pu) and V_ROOT_RANGE_PU[0] <= v_ref_pu <= V_ROOT_RANGE_PU[1]):
        raise InputError(f"expected a voltage in {list(V_ROOT_RANGE_PU)} pu, got {v_ref_pu!r}", "v_ref_pu")
    mask = np.ones(feeder.n_bus, bool)
    mask[feeder.root_bus] = False
    vb = v[:, mask]
    vmin, vmax = feeder.bus.vm_min_pu[mask], feeder.bus.vm_max_pu[mask]
    excess = np.maximum(vb - vmax, 0.0) + np.maximum(vmin - vb, 0.0)
    viol_step = excess.max(axis=1) > 0
    dev = vb - v_ref_pu
    out = {
        "steps": float(T),
        "mean_voltage_deviation_pu": float(np.abs(dev).mean()),
        "rms_voltage_deviation_pu": float(np.sqrt((dev**2).mean())),
        "violation_rate": float(viol_step.mean()),
        "controllable_rate": float(1.0 - viol_step.mean()),
        "violation_pu": float(excess.sum(axis=1).mean()),
        "max_violation_pu": float(excess.max(initial=0.0)),
        "min_vm_pu": float(vb.min()),
        "max_vm_pu": float(vb.max()),
        "losses_mwh": float(loss.sum() * dt_h),
        "losses_mw_summed": float(loss.sum()),
    }
    if pv_avail_mw is not None and pv_p_mw is not None:
        av = _arr(pv_avail_mw, "pv_avail_mw", 2, feeder.n_pv)
        p = _arr(pv_p_mw, "pv_p_mw", 2, feeder.n_pv)
        if av.shape[0] != T or p.shape[0] != T:
            raise InputError(f"expected {T} steps like vm_pu", "pv_p_mw" if p.shape[0] != T else "pv_avail_mw")
        tot = av.sum()
        # below a microwatt of PV over the trajectory there is nothing to curtail (and a ratio
        # to ~0 would overflow)
        out["curtailment_ratio"] = float((av - p).sum() / tot) if tot > 1e-12 else 0.0
        out["pv_energy_mwh"] = float(p.sum() * dt_h)
    if pv_q_mvar is not None:
        q = _arr(pv_q_mvar, "pv_q_mvar", 2, feeder.n_pv)
        if q.shape[0] != T:
            raise InputError(f"expected {T} steps like vm_pu", "pv_q_mvar")
        out["reactive_mvarh"] = float(np.abs(q).sum() * dt_h)
    if projection_status is not None:
        st = _arr(projection_status, "projection_status", 1, max_abs=255)
        if st.size != T:
            raise InputError(f"expected {T} steps like vm_pu", "projection_status")
        out["intervention_rate"] = float((st != 0).mean())
    if correction_norm is not None:
        cn = _arr(correction_norm, "correction_norm", 1)
        if cn.size != T:
            raise InputError(f"expected {T} steps like vm_pu", "correction_norm")
        out["mean_correction"] = float(cn.mean())
    return out
