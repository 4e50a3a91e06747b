"""Batched AC power flow for radial feeders: ``run_powerflow``.

Constant-power injections, pi-model branches (lines with their charging, transformers with
their magnetizing branch: shunt halves at each end), the feeder's fixed bus shunts
(``BusTable.shunt_p_mw``/``shunt_q_mvar``: P = P_1pu * V^2, Q = Q_1pu * V^2) and switched
constant-admittance shunts (capacitor banks: Q = Q_1pu * V^2), slack voltage per sample. numpy
inputs run the compiled sweep (:mod:`~safedispatch.powerflow.sweep_numba`); torch inputs run the
level-wise torch sweep (:mod:`~safedispatch.powerflow.sweep_torch`) on the inputs' device,
differentiable by autograd. Both agree with pandapower's Newton-Raphson ``runpp`` to better than
1e-6 pu (tests/powerflow), also against the original pandapower nets that
:func:`~safedispatch.network.io.from_pandapower` converts (tests/network/test_conversion.py).

Transformer phase shifts are not modelled: in a radial network a shift rotates every angle
downstream of the transformer by the same amount and changes no magnitude, current or power, so
magnitudes, flows and losses match pandapower; angles differ by the shift.

Inputs are checked up front (:class:`~safedispatch.errors.InputError` naming the argument):
finite real numbers, ``|p_mw|, |q_mvar|, |shunt_q_mvar| <= MAX_INJECTION_MW`` (1e6 MW per bus,
far beyond any distribution feeder, small enough that no intermediate overflows) and
``V_ROOT_RANGE_PU`` = [0.5, 2.0] pu for the slack. Within these ranges no NaN or inf leaves
:func:`run_powerflow`: a sample that does not converge keeps its last finite iterate and says so
in ``status``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from safedispatch.errors import MAX_ABS_POWER_MW, V_ROOT_RANGE_PU, InputError
from safedispatch.network.feeder import Feeder
from safedispatch.powerflow import sweep_numba
from safedispatch.powerflow.sweep_numba import CONVERGED

__all__ = ["MAX_INJECTION_MW", "V_ROOT_RANGE_PU", "PowerFlowResult", "run_powerflow"]

#: largest accepted |injection| per bus (MW, MVAr; also for ``shunt_q_mvar``): the library-wide
#: ``MAX_ABS_POWER_MW``; a terawatt per bus is no distribution feeder, and below it every
#: intermediate of the sweep stays finite. Accepted slack voltages: ``V_ROOT_RANGE_PU`` (outside it
#: no feeder operates and the sweep's divergence guard, 0.05-5 pu, would misjudge the first iterate).
MAX_INJECTION_MW = MAX_ABS_POWER_MW


@dataclass(frozen=True, eq=False)
class PowerFlowResult:
    """Result of :func:`run_powerflow`. Leading dimensions ``...`` are ``()`` or ``(K,)``;
    arrays are numpy or torch, as the inputs were.

    Attributes:
        vm_pu: (..., n_bus) voltage magnitudes.
        va_degree: (..., n_bus) voltage angles (slack at 0).
        i_ka: (..., n_branch) current magnitude, the larger of both ends (pandapower's
            ``res_line.i_ka``); 0 for out-of-service branches.
        loading: (..., n_branch) ``i_ka / i_max_ka`` (0 for unrated branches).
        p_from_mw, q_from_mvar, p_to_mw, q_to_mvar: (..., n_branch) power entering the branch
            at its from and to end.
        p_loss_mw, q_loss_mvar: (...,) total branch losses (series impedances and the branches'
            own shunts: line charging, transformer magnetizing).
        p_slack_mw, q_slack_mvar: (...,) power supplied by the slack (substation):
            ``p_loss_mw + p_shunt_mw - sum(p_mw)``, likewise for Q.
        converged: (...,) True where the sweep met the tolerance.
        iterations: (...,) sweeps used.
        status: (...,) 0 converged, 1 iteration limit, 2 diverged (voltage collapse). Samples
            that did not converge hold their last finite iterate, never NaN.
        p_shunt_mw, q_shunt_mvar: (...,) consumption of all bus shunts at the solved
            voltages: the feeder's fixed shunts (``BusTable.shunt_p_mw``/``shunt_q_mvar``) and
            the ``shunt_q_mvar`` argument's capacitor banks (counted negative: they inject).
    """

    vm_pu: Any
    va_degree: Any
    i_ka: Any
    loading: Any
    p_from_mw: Any
    q_from_mvar: Any
    p_to_mw: Any
    q_to_mvar: Any
    p_loss_mw: Any
    q_loss_mvar: Any
    p_slack_mw: Any
    q_slack_mvar: Any
    converged: Any
    iterations: Any
    status: Any
    p_shunt_mw: Any = None
    q_shunt_mvar: Any = None


@dataclass(frozen=True, eq=False)
class _Model:
    """Per-unit data of a feeder for the sweep (built once per feeder, cached on it)."""

    order: np.ndarray  # (n,) int64
    parent: np.ndarray  # (n,) int64
    z: np.ndarray  # (n,) complex: branch from parent, pu
    y: np.ndarray  # (n,) complex: lumped branch shunt halves plus fixed bus shunts, pu
    ysh: np.ndarray  # (n,) complex: fixed bus shunts alone, pu (admittance: consumption is conj(ysh) V^2)
    on: np.ndarray  # in-service branch indices
    child: np.ndarray  # child bus of each in-service branch
    par: np.ndarray  # parent bus of each in-service branch
    yh: np.ndarray  # half shunt admittance of each in-service branch, pu
    from_is_parent: np.ndarray
    ibase_ka: np.ndarray  # (n,) kA per pu current at each bus
    i_max_ka: np.ndarray  # (n_branch,)
    levels: list  # [(bus idx, parent idx)] for depth 1..D


def _model(feeder: Feeder) -> _Model:
    m = feeder._cache.get("pf_model")
    if m is not None:
        return m
    rs = feeder.radial
    br = feeder.branch
    sn = feeder.sn_mva
    n = feeder.n_bus
    vn = feeder.bus.vn_kv
    on = np.flatnonzero(br.in_service)
    child = rs.branch_child[on]
    par = rs.parent[child]
    zbase = vn[br.to_bus[on]] ** 2 / sn  # impedances are referred to the to_bus side
    zb = (br.r_ohm[on] + 1j * br.x_ohm[on]) / zbase
    yh = 0.5 * (br.g_us[on] + 1j * br.b_us[on]) * 1e-6 * zbase
    z = np.zeros(n, dtype=np.complex128)
    z[child] = zb
    y = np.zeros(n, dtype=np.complex128)
    np.add.at(y, child, yh)
    np.add.at(y, par, yh)
    # BusTable shunts are consumption at 1 pu, S = conj(Y) |V|^2, so Y = (P - jQ) / sn
    ysh = (np.asarray(feeder.bus.shunt_p_mw, dtype=float) - 1j * np.asarray(feeder.bus.shunt_q_mvar, dtype=float)) / sn
    y = y + ysh
    levels = []
    for d in range(1, int(rs.depth.max(initial=0)) + 1):
        buses = np.flatnonzero(rs.depth == d)
        levels.append((buses, rs.parent[buses]))
    m = _Model(order=np.ascontiguousarray(rs.order), parent=np.ascontiguousarray(rs.parent), z=z, y=y, ysh=ysh, on=on,
               child=child, par=par, yh=yh, from_is_parent=rs.branch_from_is_parent[on],
               ibase_ka=sn / (np.sqrt(3.0) * vn), i_max_ka=np.asarray(br.i_max_ka), levels=levels)
    feeder._cache["pf_model"] = m
    return m


def _is_torch(x) -> bool:
    return type(x).__module__.startswith("torch")


def _check_injection(name: str, x, n_bus: int, is_torch: bool):
    """``x`` as a finite real ``(n_bus,)`` or ``(K, n_bus)`` array or tensor within
    ``MAX_INJECTION_MW``; raises InputError naming ``name``."""
    if is_torch:
        import torch

        if not isinstance(x, torch.Tensor):
            raise InputError(f"expected a torch.Tensor like the other inputs, got {type(x).__name__}", name)
        if x.is_complex() or not x.is_floating_point():
            raise InputError(f"expected a real floating tensor (float32 or float64), got dtype {x.dtype}", name)
        if x.dtype in (torch.float16, torch.bfloat16):
            raise InputError(f"expected float32 or float64, got {x.dtype}: half precision cannot resolve "
                             "voltage drops of 1e-4 pu; convert with .double() or .float()", name)
        # one reduction: the largest magnitude is NaN or inf exactly when a value is
        top = float(x.detach().abs().max()) if x.numel() else 0.0
    else:
        if _is_torch(x):
            raise InputError("expected a numpy array like the other inputs, got a torch.Tensor", name)
        if np.iscomplexobj(x):
            raise InputError("expected real numbers, got complex values (pass P and Q separately)", name)
        try:
            x = np.asarray(x, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise InputError(f"expected real numbers: {exc}", name) from None
        top = float(np.abs(x).max()) if x.size else 0.0
    if x.ndim not in (1, 2) or x.shape[-1] != n_bus:
        raise InputError(f"expected shape ({n_bus},) or (K, {n_bus}), got {tuple(x.shape)}", name)
    if not math.isfinite(top):
        raise InputError("contains NaN or inf", name)
    if top > MAX_INJECTION_MW:
        raise InputError(f"expected |values| <= {MAX_INJECTION_MW:g} per bus, got up to {top:.3g}: no "
                         "distribution feeder carries that", name)
    return x


def _check_v_root(v0, K: int, batched: bool, is_torch: bool, like):
    """The slack voltage as an array or tensor (of ``like``'s dtype and device for torch), scalar
    or ``(K,)``, within ``V_ROOT_RANGE_PU``; raises InputError naming ``v_root_pu``."""
    name = "v_root_pu"
    if is_torch:
        import torch

        if isinstance(v0, torch.Tensor) and v0.is_complex():
            raise InputError(f"expected real voltages, got dtype {v0.dtype}", name)
        if not isinstance(v0, torch.Tensor) and np.iscomplexobj(v0):
            raise InputError("expected real voltages, got complex values", name)
        try:
            v = torch.as_tensor(v0, dtype=like.dtype, device=like.device)
        except (TypeError, ValueError, RuntimeError) as exc:
            raise InputError(f"expected real numbers: {exc}", name) from None
        vals = v.detach().cpu().double().numpy()
    else:
        if _is_torch(v0):
            raise InputError("expected a number or numpy array like the other inputs, got a torch.Tensor", name)
        if np.iscomplexobj(v0):
            raise InputError("expected real voltages, got complex values", name)
        try:
            v = np.asarray(v0, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise InputError(f"expected real numbers: {exc}", name) from None
        vals = v
    if v.ndim > 1 or (v.ndim == 1 and v.shape[0] != K) or (v.ndim == 1 and not batched):
        raise InputError(f"expected a scalar{f' or shape ({K},)' if batched else ''}, got shape {tuple(v.shape)}",
                         name)
    lo, hi = V_ROOT_RANGE_PU
    if not bool(np.all(np.isfinite(vals))):
        raise InputError("expected finite values in pu", name)
    if not bool(np.all((vals >= lo) & (vals <= hi))):
        raise InputError(f"expected values in [{lo}, {hi}] pu, got {np.asarray(vals).ravel()[:5].tolist()}", name)
    return v


def run_powerflow(feeder: Feeder, p_mw, q_mvar, *, v_root_pu=None, shunt_q_mvar=None, tol_pu: float = 1e-9,
                  max_iter: int = 100) -> PowerFlowResult:
    """AC power flow of a radial feeder for one or K injection scenarios.

    The feeder's fixed bus shunts (``feeder.bus.shunt_p_mw``/``shunt_q_mvar``) and its branches'
    shunts (line charging, transformer magnetizing) are always part of the network; switched
    capacitor banks come in through ``shunt_q_mvar``.

    Args:
        feeder: The network.
        p_mw, q_mvar: Net injection per bus, positive into the network (generation
            positive, load negative): ``(n_bus,)`` or ``(K, n_bus)``, numpy or torch (both
            the same kind), each ``|value| <= MAX_INJECTION_MW``. The slack bus's own entry is a
            load at the substation. Torch tensors must be float32 or float64 (not complex, not
            half precision); the result has their dtype.
        v_root_pu: Slack voltage magnitude: scalar or ``(K,)`` in ``V_ROOT_RANGE_PU``
            (0.5-2.0 pu); default ``feeder.root_vm_pu``.
        shunt_q_mvar: Reactive injection at 1 pu of constant-admittance shunts per bus
            (capacitor banks, see :meth:`Feeder.cap_shunt_q_mvar`): ``(n_bus,)`` or
            ``(K, n_bus)``.
        tol_pu: Convergence tolerance on the largest voltage change in one sweep (pu).
        max_iter: Sweep limit.

    Returns:
        PowerFlowResult with numpy arrays (numpy input) or tensors on the input's device and
        dtype (torch input). Every value is finite; samples that did not converge are flagged
        in ``converged``/``status``.

    Raises:
        InputError: an argument has the wrong shape, type or dtype, a non-finite value, or a
            value outside its range (injections beyond ``MAX_INJECTION_MW``, slack voltage
            outside ``V_ROOT_RANGE_PU``, ``tol_pu`` not in (0, 1), ``max_iter`` < 1).
    """
    n = feeder.n_bus
    is_torch = _is_torch(p_mw)
    p = _check_injection("p_mw", p_mw, n, is_torch)
    q = _check_injection("q_mvar", q_mvar, n, is_torch)
    if tuple(p.shape) != tuple(q.shape):
        raise InputError(f"expected the shape of p_mw {tuple(p.shape)}, got {tuple(q.shape)}", "q_mvar")
    if is_torch and q.dtype != p.dtype:
        raise InputError(f"expected the dtype of p_mw ({p.dtype}), got {q.dtype}", "q_mvar")
    batched = p.ndim == 2
    K = p.shape[0] if batched else 1
    try:
        tol_ok = isinstance(tol_pu, (int, float, np.floating, np.integer)) and not isinstance(tol_pu, bool) \
            and 0 < float(tol_pu) < 1
    except (TypeError, ValueError):
        tol_ok = False
    if not tol_ok:
        raise InputError(f"expected a tolerance in (0, 1) pu, got {tol_pu!r}", "tol_pu")
    if isinstance(max_iter, bool) or not isinstance(max_iter, (int, np.integer)) or int(max_iter) < 1:
        raise InputError(f"expected an integer >= 1, got {max_iter!r}", "max_iter")
    if shunt_q_mvar is not None:
        b = _check_injection("shunt_q_mvar", shunt_q_mvar, n, is_torch)
        if b.ndim == 2 and (not batched or b.shape[0] != K):
            raise InputError(f"expected shape ({n},) or ({K}, {n}), got {tuple(b.shape)}", "shunt_q_mvar")
        if is_torch and b.dtype != p.dtype:
            raise InputError(f"expected the dtype of p_mw ({p.dtype}), got {b.dtype}", "shunt_q_mvar")
    else:
        b = None
    v0 = _check_v_root(feeder.root_vm_pu if v_root_pu is None else v_root_pu, K, batched, is_torch, p)

    m = _model(feeder)
    sn = feeder.sn_mva
    if is_torch:
        out = _run_torch(m, feeder, p, q, b, v0, batched, K, tol_pu, int(max_iter))
    else:
        s = np.ascontiguousarray(((p + 1j * q) / sn).reshape(K, n))
        bx = np.zeros((1, n)) if b is None else np.ascontiguousarray((b / sn).reshape(-1, n), dtype=np.float64)
        v0c = np.ascontiguousarray(np.broadcast_to(v0, (K,)), dtype=np.complex128)
        r = sweep_numba.solve(m, s, bx, v0c, tol_pu, int(max_iter), feeder.n_branch, sn)
        t, fl = r["totals"], r["flows"]
        out = PowerFlowResult(
            vm_pu=r["vm"], va_degree=r["va"], i_ka=r["i_ka"], loading=r["loading"], p_from_mw=fl[0], q_from_mvar=fl[1],
            p_to_mw=fl[2], q_to_mvar=fl[3], p_loss_mw=t[0], q_loss_mvar=t[1], p_slack_mw=t[2], q_slack_mvar=t[3],
            converged=r["status"] == CONVERGED, iterations=r["iters"], status=r["status"], p_shunt_mw=t[4],
            q_shunt_mvar=t[5])
    if not batched:
        out = PowerFlowResult(**{k: getattr(out, k)[0] for k in out.__dataclass_fields__})
    return out


def _run_torch(m, feeder, p, q, b, v0, batched, K, tol, max_iter):
    import torch

    from safedispatch.powerflow import sweep_torch

    dev, rdt = p.device, p.dtype
    cdt = torch.complex128 if rdt == torch.float64 else torch.complex64
    n = feeder.n_bus
    key = ("pf_model_torch", str(dev), cdt)
    tm = feeder._cache.get(key)
    if tm is None:
        lv = [(torch.as_tensor(bus, device=dev), torch.as_tensor(par, device=dev)) for bus, par in m.levels]
        tm = dict(levels=lv, z=torch.as_tensor(m.z, dtype=cdt, device=dev),
                  y=torch.as_tensor(m.y, dtype=cdt, device=dev), ysh=torch.as_tensor(m.ysh, dtype=cdt, device=dev))
        feeder._cache[key] = tm
    s = torch.complex(p, q).reshape(K, n) / feeder.sn_mva
    bx = torch.zeros((1, n), dtype=rdt, device=dev) if b is None else (b / feeder.sn_mva).reshape(-1, n)
    v0c = torch.complex(v0, torch.zeros_like(v0)).expand(K)
    v, j, iters, status = sweep_torch.sweep(tm["levels"], tm["z"], tm["y"], s, bx, v0c, tol, max_iter)
    return _results_torch(m, feeder, v, j, s, bx, tm["ysh"], iters, status)


def _results_torch(m: _Model, feeder: Feeder, v, j, s, bx, ysh, iters, status) -> PowerFlowResult:
    """Branch flows, losses and slack supply from bus voltages and branch series currents
    (the torch counterpart of ``sweep_numba._flows_one``)."""
    import torch

    sn = feeder.sn_mva
    K, dev = v.shape[0], v.device
    rdt = v.real.dtype

    def t(a, dtype=None):
        return torch.as_tensor(np.array(a), dtype=dtype, device=dev)

    child, par = t(m.child), t(m.par)
    jb = j.index_select(1, child)
    vp, vc = v.index_select(1, par), v.index_select(1, child)
    yh = t(m.yh, v.dtype)
    i_par = jb + yh * vp  # current entering the branch at the upstream end
    i_ch = jb - yh * vc  # current leaving the branch at the downstream end
    s_par = vp * torch.conj(i_par) * sn
    s_ch = -vc * torch.conj(i_ch) * sn
    ib = t(m.ibase_ka, rdt)
    ia = torch.maximum(i_par.abs() * ib[par], i_ch.abs() * ib[child])
    fwd = t(m.from_is_parent, torch.bool)
    s_from = torch.where(fwd, s_par, s_ch)
    s_to = torch.where(fwd, s_ch, s_par)
    on = t(m.on)

    def scatter(vals):
        return torch.zeros((K, feeder.n_branch), dtype=vals.dtype, device=dev).index_copy(1, on, vals)

    i_ka = scatter(ia)
    s_loss = (s_par + s_ch).sum(1)
    vm = v.abs()
    # slack supply = losses + shunt consumption - injections (the slack's own load included)
    m2 = vm**2
    p_sh = (ysh.real * sn * m2).sum(1)
    q_sh = -((ysh.imag + bx) * sn * m2).sum(1)
    s_slack = s_loss + torch.complex(p_sh, q_sh) - s.sum(1) * sn
    return PowerFlowResult(
        vm_pu=vm, va_degree=torch.rad2deg(torch.angle(v)), i_ka=i_ka, loading=i_ka / t(m.i_max_ka, rdt),
        p_from_mw=scatter(s_from.real), q_from_mvar=scatter(s_from.imag), p_to_mw=scatter(s_to.real),
        q_to_mvar=scatter(s_to.imag), p_loss_mw=s_loss.real, q_loss_mvar=s_loss.imag, p_slack_mw=s_slack.real,
        q_slack_mvar=s_slack.imag, converged=status == CONVERGED, iterations=iters, status=status, p_shunt_mw=p_sh,
        q_shunt_mvar=q_sh)
