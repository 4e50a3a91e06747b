"""The safety layer as a batched, differentiable PyTorch module.

``TorchSafetyLayer(feeder)`` projects a batch of raw inverter set-points onto the same feasible
set as :class:`~safedispatch.safety.layer.SafetyLayer` with the LinDistFlow model and continuous
devices: each inverter's box (``0 <= p <= available``, ramp limits against the previous
set-points), its exact disk ``p^2 + q^2 <= s^2`` and optional power-factor limit, squared-voltage
limits, branch apparent-power limits (second-order cones) and the optional short-circuit-ratio
bound. Capacitor banks stay at fixed steps and storage is idle (both enter as constant
injections), so the action is ``[pv_p_mw | pv_q_mvar]``.

The network model is not re-derived here: the layer builds a CPU :class:`SafetyLayer` on the
same feeder and reads its LinDistFlow maps and structured-QP rows; that layer is also the exact
fallback and the reference of :meth:`TorchSafetyLayer.compare`.

Solve (``backend=``): on CPU tensors by default the CPU structured QP over the batch, split
over numba threads (:meth:`~safedispatch.backends.structured_qp.StructuredQP.solve_batch`,
exact, KKT-checked); on other devices (or with ``backend="torch"``)
:class:`~safedispatch.backends.torch_qp.TorchQP` (batched dual semismooth Newton with a KKT
check, float64), whose samples are returned only when their KKT check passed, the others solved
one by one on the CPU (:class:`StructuredQP`). Infeasible samples get the full CPU layer's
least-violating point. Gradients: implicit differentiation of the optimality
conditions (custom ``torch.autograd.Function``), w.r.t. the raw action, the loads, the PV
availability and the previous set-points.
"""

from __future__ import annotations

import contextlib
import threading
import time
from dataclasses import dataclass

import numba
import numpy as np
import torch
from torch import nn

from safedispatch.backends.torch_qp import TorchQP, TorchQPStatus, implicit_vjp
from safedispatch.errors import InputError
from safedispatch.network.feeder import Feeder
from safedispatch.problems.projection import BIG
from safedispatch.problems.types import Action, Snapshot
from safedispatch.safety import kernels
from safedispatch.safety.layer import DEV_TOL, FEAS_TOL, ProjectionStatus, SafetyLayer

__all__ = ["TorchSafetyLayer", "Comparison"]

#: solvers of the batch: "auto" = "numba" for CPU tensors, "torch" on other devices
BACKENDS = ("auto", "torch", "numba")
#: accepted floating dtypes of the inputs (half precision cannot represent set-points to the
#: model's tolerance: float16 resolves 0.002 MW at 3.5 MW, which moves voltages by ~1e-5 pu)
DTYPES = (torch.float32, torch.float64)

_NUMBA_LOCK = threading.Lock()


def _numba_parallel():
    """A lock around numba's parallel kernels when its threading layer is "workqueue", which is
    not thread-safe (concurrent launches from two threads abort the process); the "omp" and
    "tbb" layers are, and run concurrent calls side by side."""
    try:
        layer = numba.threading_layer()
    except ValueError:  # no parallel kernel has run yet: the layer is not chosen
        return _NUMBA_LOCK
    return _NUMBA_LOCK if layer == "workqueue" else contextlib.nullcontext()


@dataclass
class Comparison:
    """Result of :meth:`TorchSafetyLayer.compare`.

    Attributes:
        max_abs_diff: Largest absolute difference of the safe set-points (MW / MVAr) over the
            batch.
        diff: ``(B,)`` per-sample largest absolute difference.
        status_torch, status_cpu: ``(B,)`` :class:`ProjectionStatus` values of both layers.
        n_status_mismatch: Samples whose statuses differ (UNCHANGED and PROJECTED count as
            different).
        safe_torch, safe_cpu: ``(B, 2 n_pv)`` float64 safe actions.
        torch_time_s, cpu_time_s: Wall time of each layer on the batch.

    Thread-safe: a plain value.
    """

    max_abs_diff: float
    diff: np.ndarray
    status_torch: np.ndarray
    status_cpu: np.ndarray
    n_status_mismatch: int
    safe_torch: np.ndarray
    safe_cpu: np.ndarray
    torch_time_s: float
    cpu_time_s: float


def _onto_devices(x, plo, phi, qlo, qhi, s, t):
    """A solver's answer (feasible to its tolerance) moved exactly onto the device limits:
    boxes, then the disk, then the power-factor cone (the arithmetic of
    :func:`safedispatch.safety.kernels.onto_devices`, batched)."""
    N = s.shape[0]
    out = torch.empty_like(x)
    p, q = out[:, :N], out[:, N:]
    torch.clamp(x[:, :N], plo, phi, out=p)
    torch.clamp(x[:, N:], qlo, qhi, out=q)
    mag = torch.sqrt(p * p + q * q)
    over = mag > s
    if bool(over.any()):
        f = torch.where(over, s / torch.where(mag > 0, mag, torch.ones_like(mag)), torch.ones_like(mag))
        p.copy_(torch.where(over, torch.clamp(p * f, plo, phi), p))
        q.mul_(f)
    tt = t.to(p.dtype)
    fin = torch.isfinite(tt)
    if bool(fin.any()):
        tp = torch.where(fin, tt, torch.zeros_like(tt)) * p
        q.copy_(torch.where(fin, torch.clamp(q, -tp, tp), q))
    return out


def _cast_inside(x, plo, phi, qlo, qhi, s, t, dtype):
    """A float64 batch ``x`` (B, 2 n_pv), inside the device limits, cast to ``dtype`` with the
    entries that the rounding pushed outside a limit (box, disk, power-factor cone; judged in
    float64 arithmetic on the cast values) stepped back inside by one unit in the last place at
    a time (a few steps at most)."""
    y = x.to(dtype)
    if dtype == torch.float64:
        return y
    N = s.shape[0]
    f8 = torch.float64
    tt = torch.as_tensor(t, dtype=f8, device=x.device)
    fin = torch.isfinite(tt)
    t0 = torch.where(fin, tt, torch.zeros_like(tt))
    for _ in range(6):
        p, q = y[:, :N], y[:, N:]
        p8, q8 = p.to(f8), q.to(f8)
        down_p = p8 > phi
        up_p = (p8 < plo) & ~down_p
        down_q = q8 > qhi
        up_q = (q8 < qlo) & ~down_q
        disk = p8 * p8 + q8 * q8 > s * s
        cone = fin & (q8.abs() > t0 * p8)
        shrink_q = (disk | cone) & (q8 != 0)
        shrink_p = disk & (q8 == 0)
        if not bool((down_p | up_p | down_q | up_q | shrink_q | shrink_p).any()):
            break
        inf = torch.full_like(p, float("inf"))
        zero = torch.zeros_like(p)
        p = torch.where(down_p | shrink_p, torch.nextafter(p, -inf), torch.where(up_p, torch.nextafter(p, inf), p))
        q = torch.where(down_q, torch.nextafter(q, -inf), torch.where(up_q, torch.nextafter(q, inf), q))
        q = torch.where(shrink_q, torch.nextafter(q, zero), q)
        y = torch.cat([p, q], 1)
    return y


class _Workspace:
    """The large per-call arrays of a CPU batch of ``B`` samples: the rows' right-hand sides and
    the batch solver's outputs. Reused across calls (fresh pages cost ~45 ms per 32 MiB on a
    65 536-sample batch, as much as the arithmetic that fills them)."""

    __slots__ = ("B", "h", "c", "out", "_scratch")

    def __init__(self, B: int, mh: int, m: int, qp):
        self.B = B
        self.h = torch.empty(B, mh, dtype=torch.float64)
        self.c = torch.empty(B, m, 2, dtype=torch.float64)
        self.out = (np.empty((B, qp.n)), np.empty(B, dtype=np.int64), np.empty(B, dtype=np.int64),
                    np.empty((B, qp.m)), np.empty((B, qp.m_soc)))
        self._scratch = None

    def scratch(self, n_pv: int):
        """Arrays the backward writes gradients into that no input asked for (contents
        meaningless): ``(bounds (4, B, n_pv), h-shaped, c-shaped)``."""
        if self._scratch is None:
            self._scratch = (torch.empty(4, self.B, n_pv, dtype=torch.float64), torch.empty_like(self.h),
                             torch.empty_like(self.c))
        return self._scratch


class _Lease:
    """Holds a workspace while anything may still read it (the forward, then the autograd
    context of its backward); returns it to the layer's pool when dropped (under the pool's
    lock: leases end in whatever thread drops the last reference)."""

    __slots__ = ("ws", "pool", "lock")

    def __init__(self, ws: _Workspace, pool: list, lock):
        self.ws, self.pool, self.lock = ws, pool, lock

    def __del__(self):
        with self.lock:
            self.pool.append(self.ws)
            del self.pool[:-1]  # keep one free workspace


class TorchSafetyLayer(nn.Module):
    """Batched, differentiable projection of inverter set-points onto the LinDistFlow safe set.

    Args:
        feeder: The network.
        model: Only ``"lindistflow"`` (the SOCP model has no closed-form network map).
        weights_pv: ``(n_pv,)`` distance weights > 0 (same for P and Q); default 1.
        scr_min: Minimum short-circuit ratio (see :class:`SafetyLayer`); None: off.
        pv_error_sd_mw, confidence: Chance-constraint margins (see :class:`SafetyLayer`).
        cap_step: ``(n_cap,)`` fixed capacitor steps (default ``feeder.cap.step_init``).
        v_root_pu: Substation voltage magnitude (pu); None = the feeder's ``root_vm_pu`` (as
            :class:`~safedispatch.Snapshot`).
        dt_h: Step length (hours) for the ramp limits.
        tol: KKT tolerance of the torch solver: every limit met to ``tol * max(1, |x|_inf)``
            (rows scaled to unit norm, so a distance in MW/MVAr), complementarity to the same.
        max_iter: Newton iterations per sample before the sample goes to the CPU fallback.
        fallback: Hand samples the torch solver cannot certify to the CPU solvers (exact). With
            False they are returned as the last iterate with status SOLVER_FAILED.
        chunk: Samples the torch solver iterates together.
        reuse_buffers: Keep the large arrays of a CPU batch (right-hand sides, solver outputs;
            ~120 MB at 65 536 samples of a 33-bus feeder) for the next call of the same batch
            size instead of allocating fresh memory each time. A call's arrays stay reserved
            while its autograd graph lives (its backward reads them); at most one free set is
            kept (:meth:`release_buffers` drops it).
        backend: ``"torch"``: the batched torch solver (any device); ``"numba"``: the CPU
            structured QP (:meth:`~safedispatch.backends.structured_qp.StructuredQP.solve_batch`,
            the batch split over numba threads; CPU tensors only); ``"auto"``: numba for CPU
            tensors, torch elsewhere. Both are exact and verified (KKT check) and give the same
            answers; on CPU the numba solver is much faster (see ``benchmarks/torch_layer.py``).

    Attributes:
        last_status: ``(B,)`` int64 CPU tensor of :class:`ProjectionStatus` values of the last
            call made by the calling thread (per thread; ``return_status=True`` returns them
            with the call's result).
        last_info: Counters of the calling thread's last call: ``{"torch_optimal", "fallback",
            "iterations_max"}``.

    Thread-safe: a layer may be shared by threads that call it concurrently. The static data
    are read-only after construction; the workspace pool is guarded by a lock (a call leases
    its own workspace); ``last_status``/``last_info`` are per thread; the CPU layer that
    handles infeasible samples is itself thread-safe (its calls serialize); numba's parallel
    kernels run under a lock when numba's threading layer is not thread-safe ("workqueue").
    Answers do not depend on other calls: each sample is solved from a cold start, and the
    CPU layer's answers do not depend on the order of its calls.

    Precision: inputs must be float32 or float64 (float16 and bfloat16 are rejected: at half
    precision a set-point cannot be represented to the model's tolerance); everything is
    computed in float64, and a float32 result is rounded towards the inside of the device limits
    (boxes, disk, power-factor cone), so that it never exceeds a rating.

    Raises:
        InputError: unsupported model, bad weights, steps or options (the field is named).
    """

    def __init__(self, feeder: Feeder, model: str = "lindistflow", weights_pv=None, scr_min: float | None = None,
                 pv_error_sd_mw=None, confidence: float = 0.95, cap_step=None, v_root_pu: float | None = None,
                 dt_h: float = 0.25, tol: float = 1e-9, max_iter: int = 50, fallback: bool = True,
                 chunk: int = 8192, backend: str = "auto", reuse_buffers: bool = True):
        super().__init__()
        if model != "lindistflow":
            raise InputError(f"expected 'lindistflow' (the only model with a batched torch solver), got {model!r}",
                             "model")
        if feeder.n_pv == 0:
            raise InputError("expected a feeder with at least one inverter", "feeder")
        if v_root_pu is None:
            v_root_pu = feeder.root_vm_pu
        for name, val in (("v_root_pu", v_root_pu), ("dt_h", dt_h), ("tol", tol)):
            if not (isinstance(val, (int, float)) and np.isfinite(val) and val > 0):
                raise InputError(f"expected a finite number > 0, got {val!r}", name)
        if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 1:
            raise InputError(f"expected an integer >= 1, got {max_iter!r}", "max_iter")
        if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
            raise InputError(f"expected an integer >= 1, got {chunk!r}", "chunk")
        if backend not in BACKENDS:
            raise InputError(f"expected one of {BACKENDS}, got {backend!r}", "backend")
        self.backend = backend
        self.reuse_buffers = bool(reuse_buffers)
        self._pool: list = []  # free workspaces (see _Lease)
        self._pool_lock = threading.RLock()
        self._tls = threading.local()
        self.feeder = feeder
        self.n_pv = feeder.n_pv
        self.v_root_pu, self.dt_h = float(v_root_pu), float(dt_h)
        self.tol, self.max_iter, self.fallback, self.chunk = float(tol), max_iter, bool(fallback), chunk
        if feeder.n_cap:
            steps = feeder.cap.step_init if cap_step is None else np.asarray(cap_step)
            cap_q = feeder.cap_shunt_q_mvar(steps)  # raises InputError on bad steps
            self.cap_step = np.asarray(steps, dtype=np.int64)
        else:
            cap_q = np.zeros(feeder.n_bus)
            self.cap_step = np.zeros(0, dtype=np.int64)
        # the continuous problem: capacitor banks as constant reactive injection (LinDistFlow models
        # them at 1 pu), storage idle; the CPU layer on this feeder is the reference and fallback
        self.cap_q_mvar = cap_q
        self.feeder_c = feeder.replace(cap=None, ess=None) if (feeder.n_cap or feeder.n_ess) else feeder
        self.cpu = SafetyLayer(self.feeder_c, model="lindistflow", weights_pv=weights_pv, scr_min=scr_min,
                               pv_error_sd_mw=pv_error_sd_mw, confidence=confidence)
        mod = self.cpu.models[0]
        self._mod = mod
        mn, tree = mod.mn, mod.mn.tree
        self.m = tree.n - 1
        qp = mod.fast  # structured rows: [Gw; -Gw; scr] and one 2x2n cone block per branch
        lim = mod.base_limits()
        self._G, self._A = qp.G, qp.A
        self._S = np.clip(lim.smax, 1e-12, BIG)
        self._wmin, self._wmax = lim.wmin, lim.wmax
        self._wmin_c, self._wmax_c = (np.ascontiguousarray(a, dtype=float) for a in (lim.wmin, lim.wmax))
        self._capq_c = np.ascontiguousarray(self.cap_q_mvar, dtype=float)
        self._scr = np.array([cap for _idx, cap in mod.weak], dtype=float)
        self._mh = 2 * self.m + len(self._scr)
        self._s = mod.s_pv
        self._t = mod.t_pv
        self._w = self.cpu.weights_pv[mn.pv]
        self._nodes = mod.nodes
        self._sn = mn.sn_mva
        self._b = tree.b_pu[1:]
        # the tree for the compiled right-hand sides on CPU (kernels.rhs_batch)
        c_ = np.ascontiguousarray
        self._tree = (c_(self._nodes, dtype=np.int64), float(self._sn), c_(self._b, dtype=float),
                      c_(tree.parent, dtype=np.int64), c_(2.0 * tree.r_pu[1:]), c_(2.0 * tree.x_pu[1:]))
        pv = self.feeder_c.pv
        self._ramp_p = pv.ramp_p_pu_per_min * pv.s_mva
        self._ramp_q = pv.ramp_q_pu_per_min * pv.s_mva
        self._dev_cache: dict = {}
        self._static_lock = threading.Lock()

    @property
    def last_status(self) -> torch.Tensor:
        """``(B,)`` statuses of the calling thread's last call (see the class docstring)."""
        return getattr(self._tls, "status", torch.zeros(0, dtype=torch.int64))

    @last_status.setter
    def last_status(self, value) -> None:
        self._tls.status = value

    @property
    def last_info(self) -> dict:
        """Counters of the calling thread's last call (see the class docstring)."""
        return getattr(self._tls, "info", {})

    @last_info.setter
    def last_info(self, value) -> None:
        self._tls.info = value

    def __getstate__(self):
        state = self.__dict__.copy()
        for k in ("_pool_lock", "_tls", "_static_lock"):
            state.pop(k, None)
        state["_pool"] = []
        return state

    def __setstate__(self, state):
        super().__setstate__(state)
        self._pool_lock = threading.RLock()
        self._tls = threading.local()
        self._static_lock = threading.Lock()

    def release_buffers(self) -> None:
        """Drop the kept workspace of CPU batches (see ``reuse_buffers``)."""
        with self._pool_lock:
            self._pool.clear()

    def _lease(self, B: int) -> _Lease:
        with self._pool_lock:
            for k, ws in enumerate(self._pool):
                if ws.B == B:
                    del self._pool[k]
                    break
            else:
                ws = None
        if ws is None:
            ws = _Workspace(B, self._mh, self.m, self._mod.fast)
        return _Lease(ws, self._pool if self.reuse_buffers else [], self._pool_lock)

    # -- static data per device ------------------------------------------------------------------
    def _static(self, device: torch.device) -> dict:
        key = str(device)
        st = self._dev_cache.get(key)
        if st is not None:
            return st
        with self._static_lock:
            return self._static_build(device, key)

    def _static_build(self, device: torch.device, key: str) -> dict:
        if key not in self._dev_cache:
            mod = self._mod
            f8 = torch.float64
            T = lambda a: torch.as_tensor(np.array(a, dtype=float), dtype=f8, device=device)  # noqa: E731
            st = {"qp": TorchQP(self.n_pv, self._G, self._A, self._S, self._s, self._t, self._w, device=device)}
            m = self.m
            if mod.dense:
                # h and c as one affine map of the loads: out = load_p @ Wp + load_q @ Wq + bias with
                # columns [wmax - w | w - wmin | scr | P_0, Q_0, P_1, Q_1, ...] (one buffer, no
                # concatenation per call); w = v0^2 + [pi | qi] McT[:, :m], pi = -load_p / sn,
                # qi = (cap_q - load_q) / sn + b on the tree's nodes
                McT = mod.Mc.T  # (2m, 3m): [pi | qi] -> [w - ws | P | Q]
                nb, sn, k = self.feeder_c.n_bus, self._sn, len(self._scr)
                Wp, Wq = np.zeros((nb, 3 * m)), np.zeros((nb, 3 * m))
                np.add.at(Wp, self._nodes, -McT[:m] / sn)
                np.add.at(Wq, self._nodes, -McT[m:] / sn)
                const = (self.cap_q_mvar[self._nodes] / sn + self._b) @ McT[m:]
                v2 = self.v_root_pu**2

                def cols(W):
                    out = np.zeros((W.shape[0], 2 * m + k + 2 * m))
                    out[:, :m], out[:, m:2 * m] = -W[:, :m], W[:, :m]
                    out[:, 2 * m + k::2], out[:, 2 * m + k + 1::2] = W[:, m:2 * m], W[:, 2 * m:]
                    return out

                bias = cols(const[None])[0]
                bias[:m] += self._wmax - v2
                bias[m:2 * m] += v2 - self._wmin
                bias[2 * m:2 * m + k] = self._scr
                mh = 2 * m + k  # h and c as separate (contiguous) outputs
                Wp, Wq = cols(Wp), cols(Wq)
                st["Wh"] = (T(Wp[:, :mh]), T(Wq[:, :mh]), T(bias[:mh]))
                st["Wc"] = (T(Wp[:, mh:]), T(Wq[:, mh:]), T(bias[mh:]))
            else:
                S = torch.as_tensor(mod.S, dtype=f8).to_sparse().to(device)
                st["S_sp"], st["ST_sp"] = S, S.t().coalesce()
                st["r2"], st["x2"] = T(mod.r2), T(mod.x2)
            st["nodes"] = torch.as_tensor(self._nodes, dtype=torch.long, device=device)
            st["b"] = T(self._b)
            st["capq"] = T(self.cap_q_mvar)
            st["wmin"], st["wmax"] = T(self._wmin), T(self._wmax)
            st["scr"] = T(self._scr)
            st["s"], st["pmax"] = T(self._s), T(self.feeder_c.pv.p_max_mw)
            st["ramp_p"], st["ramp_q"] = T(self._ramp_p), T(self._ramp_q)
            st["G"], st["A"], st["S"] = T(self._G), T(self._A), T(self._S)
            st["m"] = m
            self._dev_cache[key] = st
        return self._dev_cache[key]

    # -- inputs ----------------------------------------------------------------------------------
    def _check(self, raw, load_p_mw, load_q_mvar, pv_avail_mw, prev):
        N, nb = self.n_pv, self.feeder.n_bus
        if not isinstance(raw, torch.Tensor):
            raise InputError(f"expected a torch.Tensor, got {type(raw).__name__}", "raw")
        if raw.ndim != 2 or raw.shape[1] != 2 * N:
            raise InputError(f"expected shape (B, {2 * N}) = [pv_p_mw | pv_q_mvar], got {tuple(raw.shape)}", "raw")
        B = raw.shape[0]
        out = []
        for name, t, width in (("raw", raw, 2 * N), ("load_p_mw", load_p_mw, nb), ("load_q_mvar", load_q_mvar, nb),
                               ("pv_avail_mw", pv_avail_mw, N), ("prev", prev, 2 * N)):
            if t is None and name == "prev":
                out.append(None)
                continue
            if not isinstance(t, torch.Tensor):
                raise InputError(f"expected a torch.Tensor, got {type(t).__name__}", name)
            if t.shape != (B, width):
                raise InputError(f"expected shape ({B}, {width}), got {tuple(t.shape)}", name)
            if t.is_complex():
                raise InputError(f"expected real numbers, got complex values ({t.dtype})", name)
            if t.dtype not in DTYPES:
                raise InputError(f"expected float32 or float64 (half precision cannot represent set-points to the "
                                 f"model's tolerance), got {t.dtype}", name)
            if t.device != raw.device:
                raise InputError(f"expected device {raw.device}, got {t.device}", name)
            # a NaN or an infinity makes the sum non-finite; only then (or when the sum overflows)
            # the element-wise test that names them (the full test cost ~2 % of a large batch)
            td = t.detach()
            if not bool(torch.isfinite(td.sum())) and not bool(torch.isfinite(td).all()):
                bad = (~torch.isfinite(td)).nonzero()[:5].tolist()
                raise InputError(f"contains NaN or inf at (sample, index) {bad}", name)
            out.append(t)
        st = self._static(raw.device)
        av = pv_avail_mw.detach().to(torch.float64)
        bad = (av < -1e-9) | (av > st["pmax"] + 1e-9)
        if bool(bad.any()):
            raise InputError(f"expected 0 <= pv_avail_mw <= pv.p_max_mw, got values outside at (sample, inverter) "
                             f"{bad.nonzero()[:5].tolist()}", "pv_avail_mw")
        if prev is not None:
            pv_ = prev.detach().to(torch.float64)
            s2 = pv_[:, :N] ** 2 + pv_[:, N:] ** 2
            bad = s2 > st["s"] ** 2 * (1 + 1e-6) + 1e-12
            if bool(bad.any()):
                raise InputError(f"previous set-points outside the inverters' rating at (sample, inverter) "
                                 f"{bad.nonzero()[:5].tolist()}", "prev")
        return out

    def _data(self, st, load_p, load_q, avail, prev, ws=None):
        """Device bounds ``(B, n_pv)`` and the rows' right-hand sides ``h (B, m)``, ``c (B, m_soc, 2)``
        as differentiable functions of the inputs (float64)."""
        N = self.n_pv
        s = st["s"]
        avail = torch.minimum(torch.clamp(avail, min=0.0), st["pmax"])  # removes rounding noise only
        p_hi = torch.minimum(avail, s)
        p_lo = torch.zeros_like(p_hi)
        q_lo, q_hi = (-s).expand_as(p_hi), s.expand_as(p_hi)
        if prev is not None:
            minutes = 60.0 * self.dt_h
            rp, rq = st["ramp_p"] * minutes, st["ramp_q"] * minutes
            pp_, pq_ = prev[:, :N], prev[:, N:]
            p_hi = torch.minimum(p_hi, pp_ + rp)
            p_lo = torch.minimum(torch.clamp(pp_ - rp, min=0.0), p_hi)
            q_lo = torch.maximum(q_lo, pq_ - rq)
            q_hi = torch.minimum(q_hi, pq_ + rq)
        if load_p.device.type == "cpu":
            # compiled tree sweeps, linear in the feeder (the dense map is ~30x the arithmetic)
            h, c = _RhsFn.apply(load_p, load_q, self, ws)
        else:
            h, c = self._rhs_torch(st, load_p, load_q)
        return (p_lo, p_hi, q_lo, q_hi), h, c

    def _rhs_torch(self, st, load_p, load_q):
        """``h``, ``c`` by torch operations (any device): one affine map on small feeders, the
        tree's sparse path matrix on large ones."""
        m, sn = st["m"], self._sn
        if "Wh" in st:
            (Ph, Qh, bh), (Pc, Qc, bc) = st["Wh"], st["Wc"]
            h = torch.addmm(bh, load_p, Ph).addmm_(load_q, Qh)
            c = torch.addmm(bc, load_p, Pc).addmm_(load_q, Qc).unflatten(1, (m, 2))
            return h, c
        nodes = st["nodes"]  # sparse maps (large feeders)
        pi0 = -load_p[:, nodes] / sn
        qi0 = -(load_q - st["capq"])[:, nodes] / sn + st["b"]
        P0 = -torch.sparse.mm(st["S_sp"], pi0.T).T
        Q0 = -torch.sparse.mm(st["S_sp"], qi0.T).T
        cw = -torch.sparse.mm(st["ST_sp"], (st["r2"] * P0 + st["x2"] * Q0).T).T
        cw = cw + self.v_root_pu**2
        B = load_p.shape[0]
        h = torch.cat([st["wmax"] - cw, cw - st["wmin"], st["scr"].expand(B, -1)], 1)
        c = torch.stack([P0, Q0], -1)
        return h, c

    # -- forward ---------------------------------------------------------------------------------
    def forward(self, raw, load_p_mw, load_q_mvar, pv_avail_mw, prev=None, return_status: bool = False):
        """Project a batch.

        Args:
            raw: ``(B, 2 n_pv)`` raw set-points ``[pv_p_mw | pv_q_mvar]`` (float32 or float64;
                the other inputs likewise, each in either of the two).
            load_p_mw, load_q_mvar: ``(B, n_bus)`` uncontrolled consumption per bus (as in
                :class:`Snapshot`).
            pv_avail_mw: ``(B, n_pv)`` available PV power, ``0 <= avail <= pv.p_max_mw``.
            prev: ``(B, 2 n_pv)`` previous set-points for the ramp limits, or None.
            return_status: Also return the ``(B,)`` statuses.

        Returns:
            ``safe``: ``(B, 2 n_pv)`` in ``raw``'s dtype and device (computed in float64; a
            float32 result rounded towards the inside of the device limits), never NaN; with
            ``return_status`` the pair ``(safe, status)``. Statuses (also in ``last_status``):
            UNCHANGED (raw already feasible, returned as is), PROJECTED (the nearest feasible
            point), INFEASIBLE (no feasible point: the CPU layer's least-violating point),
            SOLVER_FAILED (only with ``fallback=False``: the torch solver's last iterate, inside
            the device sets). Gradients flow to ``raw``, the loads, ``pv_avail_mw`` and ``prev``
            for UNCHANGED and PROJECTED samples; they are zero for the other two.

        Raises:
            InputError: a wrong type, shape, dtype (complex, or half precision: float16 and
                bfloat16 are rejected) or device, NaN or inf, availability outside
                ``[0, pv.p_max_mw]``, previous set-points outside an inverter's rating (the field
                is named).
        """
        raw, load_p_mw, load_q_mvar, pv_avail_mw, prev = self._check(raw, load_p_mw, load_q_mvar, pv_avail_mw, prev)
        st = self._static(raw.device)
        f8 = torch.float64
        lease = self._lease(raw.shape[0]) if raw.device.type == "cpu" else None
        ws = None if lease is None else lease.ws
        bnd, h, c = self._data(st, load_p_mw.to(f8), load_q_mvar.to(f8), pv_avail_mw.to(f8),
                               None if prev is None else prev.to(f8), ws)
        def row(i):  # one sample's per-bus inputs, for the CPU fallback
            return tuple(None if t is None else t[i].detach().to(f8).cpu().numpy()
                         for t in (load_p_mw, load_q_mvar, pv_avail_mw, prev))

        holder: dict = {"row": row, "lease": lease}
        del lease
        x = _ProjectFn.apply(raw.to(f8), *bnd, h, c, self, st, holder)
        status = holder["status"]
        self.last_status = status
        self.last_info = holder["info"]
        safe = x.to(raw.dtype)
        if raw.dtype != f8 and x.shape[0]:
            B, N = x.shape[0], self.n_pv
            with torch.no_grad():
                inside = _cast_inside(x.detach(), *(b.expand(B, N) for b in bnd), st["s"], self._t, raw.dtype)
            safe = safe + (inside - safe).detach()  # rounded inside the limits; the gradient is x's
        return (safe, status) if return_status else safe

    # -- the solve (no autograd) ------------------------------------------------------------------
    @torch.no_grad()
    def _solve(self, st, r, bnd, h, c, row, ws=None):
        """Solve a float64 batch; returns ``(x, status, grad_info)``."""
        qp: TorchQP = st["qp"]
        B, N = r.shape[0], self.n_pv
        dev = r.device
        plo, phi, qlo, qhi = (b.expand(B, N) for b in bnd)
        status = torch.full((B,), int(ProjectionStatus.PROJECTED), dtype=torch.int64)
        x = r.clone()
        info = {"torch_optimal": 0, "fallback": 0, "iterations_max": 0}
        # 1. already feasible: returned as is (the CPU layer's test and tolerances)
        rp, rq = r[:, :N], r[:, N:]
        dv = torch.maximum(torch.maximum(plo - rp, rp - phi), torch.maximum(qlo - rq, rq - qhi))
        dv = torch.maximum(dv, torch.sqrt(rp * rp + rq * rq) - st["s"])
        if qp.pf:
            t = torch.as_tensor(self._t, dtype=r.dtype, device=dev)
            dv = torch.maximum(dv, torch.where(torch.isfinite(t), rq.abs() - t * rp, torch.full_like(rq, -1.0)))
        dev_ok = dv.amax(1) <= DEV_TOL * (1.0 + float(self._s.max()))
        # the network rows only where the devices' limits hold (often few samples)
        unchanged = dev_ok.clone()
        cand = dev_ok.nonzero(as_tuple=True)[0]
        if cand.numel():
            rc = r[cand]
            nl = (rc @ st["G"].T - h[cand]).amax(1) if self._G.shape[0] else torch.zeros_like(rc[:, 0])
            if self._A.shape[0]:
                flows = torch.einsum("jcn,bn->bjc", st["A"], rc) + c[cand]
                nl = torch.maximum(nl, (flows.norm(dim=-1) - st["S"]).amax(1))
            unchanged[cand] = nl <= FEAS_TOL
        todo = (~unchanged).nonzero(as_tuple=True)[0]
        status[unchanged.cpu()] = int(ProjectionStatus.UNCHANGED)
        slots = [torch.zeros(B, 1, dtype=torch.long, device=dev), torch.zeros(B, 1, dtype=r.dtype, device=dev),
                 torch.zeros(B, 1, dtype=torch.long, device=dev), torch.zeros(B, 1, 2, dtype=r.dtype, device=dev)]
        grad_ok = unchanged.clone()
        extra = []  # CPU-solved samples with their own (wider) working sets
        numba_grad: dict = {}  # samples solved by the numba batch solver (their gradient is compiled too)
        use_numba = self.backend == "numba" or (self.backend == "auto" and dev.type == "cpu")
        if use_numba and dev.type != "cpu":
            raise InputError(f"the numba backend needs CPU tensors, got {dev}", "backend")
        if todo.numel() and use_numba:
            self._solve_numba(st, r, (plo, phi, qlo, qhi), h, c, x, status, todo, grad_ok, numba_grad, info, row,
                              ws)
        elif todo.numel():
            sol = qp.solve(r[todo], plo[todo], phi[todo], qlo[todo], qhi[todo], h[todo], c[todo], tol=self.tol,
                           max_iter=self.max_iter, chunk=self.chunk)
            x[todo] = sol.x
            opt = sol.status == TorchQPStatus.OPTIMAL
            ok_ids = todo[opt]
            grad_ok[ok_ids] = True
            for k, v in enumerate((sol.i_lin, sol.lam, sol.i_soc, sol.y)):
                slots[k] = torch.zeros((B,) + tuple(v.shape[1:]), dtype=v.dtype, device=dev)
                slots[k][ok_ids] = v[opt]
            info["torch_optimal"] = int(opt.sum())
            info["iterations_max"] = int(sol.iterations.max()) if sol.iterations.numel() else 0
            bad_ids = todo[~opt].cpu().numpy()
            bad_st = sol.status[~opt].cpu().numpy()
            info["fallback"] = int(bad_ids.size)
            if bad_ids.size:
                self._fallback(st, r, bnd, h, c, x, status, bad_ids, bad_st, grad_ok, extra, row)
        return x, status, {"grad_ok": grad_ok, "slots": slots, "extra": extra, "numba": numba_grad, "info": info}

    def _solve_numba(self, st, r, bnd, h, c, x, status, todo, grad_ok, numba_grad, info, row, ws=None):
        """The samples ``todo`` by the CPU structured QP in one parallel batch; fills ``x``,
        ``status``, ``grad_ok`` and what the compiled gradient needs (``numba_grad``) in place."""
        N = self.n_pv
        cq = self._mod.fast
        nd = lambda t: t.detach().numpy()  # noqa: E731
        # the full batch goes in with the rows to solve (no gathering of h and c)
        R = nd(r)
        RP, RQ = np.ascontiguousarray(R[:, :N]), np.ascontiguousarray(R[:, N:])
        bn = [np.ascontiguousarray(nd(b)) for b in bnd]
        Cn = nd(c)
        e0 = np.zeros((R.shape[0], 0))
        idx = todo.numpy()
        with _numba_parallel():
            X, code, iters, LL, LS = cq.solve_batch(RP, RQ, e0, self._w, np.zeros(0), *bn, self._s, self._t, e0, e0,
                                                    nd(h), Cn, self._S, tol=self.tol, index=idx,
                                                    out=None if ws is None else ws.out)
        plo, phi, qlo, qhi = (b[todo] for b in bnd)
        xt = _onto_devices(torch.from_numpy(X), plo, phi, qlo, qhi, st["s"], torch.as_tensor(self._t))
        opt = torch.from_numpy(code == 0)
        ok_ids = todo[opt]
        x[ok_ids] = xt[opt]
        status[ok_ids] = int(ProjectionStatus.PROJECTED)
        grad_ok[ok_ids] = True
        # what the compiled implicit gradient needs (structured_qp_vjp.vjp_batch)
        numba_grad["ids"] = ok_ids
        numba_grad["data"] = (xt.numpy(), LL, LS, RP, RQ, *bn, Cn, idx, code == 0)
        info["torch_optimal"] = 0
        info["numba_optimal"] = int(opt.sum())
        info["iterations_max"] = int(iters.max()) if iters.size else 0
        bad = todo[~opt].numpy()
        info["fallback"] = int(bad.size)
        for i in bad:  # infeasible (or not certified): the CPU layer decides, least-violating point
            if not self.fallback:
                status[i] = int(ProjectionStatus.SOLVER_FAILED)
                continue
            out = self._cpu_project(nd(r[i]), row(int(i)))
            x[i] = torch.as_tensor(out.action.to_vector()[:2 * N], dtype=x.dtype)
            status[i] = int(out.status)

    def _fallback(self, st, r, bnd, h, c, x, status, ids, why, grad_ok, extra, row):
        """Samples the torch solver did not certify: the CPU structured QP on the same numbers,
        then the CPU layer (least-violating point) for infeasible ones."""
        from safedispatch.backends.structured_qp import QPStatus

        N = self.n_pv
        qp = st["qp"]
        nd = lambda t: t.detach().cpu().numpy()  # noqa: E731
        B = r.shape[0]
        R = nd(r[ids])
        bl = [nd(b.expand(B, N)[ids]) for b in bnd]
        H, C = nd(h[ids]), nd(c[ids])
        cq = self._mod.fast
        e0 = np.zeros(0)
        for k, i in enumerate(ids):
            if not self.fallback:
                status[i] = int(ProjectionStatus.SOLVER_FAILED)
                continue
            res = None
            if why[k] != TorchQPStatus.INFEASIBLE:
                res = cq.solve(R[k, :N], R[k, N:], e0, self._w, e0, bl[0][k], bl[1][k], bl[2][k], bl[3][k], self._s,
                               self._t, e0, e0, H[k], C[k], self._S)
            if res is not None and res.status == QPStatus.OPTIMAL:
                p, q = res.x[:N].copy(), res.x[N:].copy()
                kernels.onto_devices(p, q, e0.copy(), bl[0][k], bl[1][k], bl[2][k], bl[3][k], self._s, self._t, e0, e0)
                x[i] = torch.as_tensor(np.concatenate([p, q]), dtype=x.dtype, device=x.device)
                status[i] = int(ProjectionStatus.PROJECTED)
                extra.append((int(i), self._slots_from_cpu(qp, res, np.concatenate([p, q]), C[k])))
                continue
            # no certified optimum: the CPU layer decides (infeasible: least-violating point)
            out = self._cpu_project(R[k], row(int(i)))
            x[i] = torch.as_tensor(out.action.to_vector()[:2 * N], dtype=x.dtype, device=x.device)
            status[i] = int(out.status)

    @staticmethod
    def _slots_from_cpu(qp: TorchQP, res, x, c):
        """Working set (scaled rows) from the CPU solver's multipliers, for the gradient."""
        lin = np.flatnonzero(res.lam_lin[qp.lin_map] > 0)
        soc = np.flatnonzero(res.lam_soc[qp.soc_map] > 0)
        gn, an = qp.gn.cpu().numpy(), qp.an.cpu().numpy()
        lam = res.lam_lin[qp.lin_map][lin] * gn[lin]
        An = qp.An.cpu().numpy()
        y = np.zeros((soc.size, 2))
        for k, j in enumerate(soc):
            u = An[j] @ x + c[qp.soc_map[j]] / an[j]
            y[k] = res.lam_soc[qp.soc_map[j]] * an[j] * u / max(np.linalg.norm(u), 1e-300)
        return lin, lam, soc, y

    # -- CPU reference ----------------------------------------------------------------------------
    def _cpu_project(self, raw_row, inputs):
        lp, lq, av, pv_ = inputs
        N = self.n_pv
        prev = None if pv_ is None else Action(pv_p_mw=pv_[:N], pv_q_mvar=pv_[N:])
        snap = Snapshot(load_p_mw=lp, load_q_mvar=lq - self.cap_q_mvar, pv_avail_mw=av, prev=prev,
                        v_root_pu=self.v_root_pu, dt_h=self.dt_h)
        return self.cpu.project(Action(pv_p_mw=raw_row[:N], pv_q_mvar=raw_row[N:]), snap)

    @torch.no_grad()
    def compare(self, raw, load_p_mw, load_q_mvar, pv_avail_mw, prev=None) -> Comparison:
        """Run this layer and the CPU :class:`SafetyLayer` (same feeder, capacitor banks at this
        layer's fixed steps, storage idle) on the same inputs and report the disagreement.

        Args:
            raw, load_p_mw, load_q_mvar, pv_avail_mw, prev: As for :meth:`forward`.

        Returns:
            A :class:`Comparison`.

        Raises:
            InputError: as :meth:`forward`.
        """
        t0 = time.perf_counter()
        safe, st_t = self.forward(raw, load_p_mw, load_q_mvar, pv_avail_mw, prev, return_status=True)
        t1 = time.perf_counter()
        N = self.n_pv
        nd = lambda t: None if t is None else t.detach().cpu().to(torch.float64).numpy()  # noqa: E731
        R, LP, LQ, AV, PV = (nd(t) for t in (raw, load_p_mw, load_q_mvar, pv_avail_mw, prev))
        B = R.shape[0]
        safe_cpu = np.zeros((B, 2 * N))
        st_c = np.zeros(B, dtype=np.int64)
        t2 = time.perf_counter()
        for i in range(B):
            out = self._cpu_project(R[i], (LP[i], LQ[i], AV[i], None if PV is None else PV[i]))
            safe_cpu[i] = out.action.to_vector()[:2 * N]
            st_c[i] = int(out.status)
        t3 = time.perf_counter()
        s_t = nd(safe)
        diff = np.abs(s_t - safe_cpu).max(1) if B else np.zeros(0)
        st_t = st_t.numpy()
        return Comparison(max_abs_diff=float(diff.max(initial=0.0)), diff=diff, status_torch=st_t, status_cpu=st_c,
                          n_status_mismatch=int((st_t != st_c).sum()), safe_torch=s_t, safe_cpu=safe_cpu,
                          torch_time_s=t1 - t0, cpu_time_s=t3 - t2)


class _RhsFn(torch.autograd.Function):
    """The rows' right-hand sides ``h (B, 2m + k)``, ``c (B, m, 2)`` of CPU float64 loads, by the
    compiled tree sweeps (:func:`~safedispatch.safety.kernels.rhs_batch`) and their adjoint."""

    @staticmethod
    def forward(ctx, load_p, load_q, layer, ws):
        nodes, sn, b, parent, r2, x2 = layer._tree
        B, m = load_p.shape[0], layer.m
        if ws is None:
            h = torch.empty(B, layer._mh, dtype=torch.float64)
            c = torch.empty(B, m, 2, dtype=torch.float64)
        else:
            h, c = ws.h, ws.c
        if B:
            nd = lambda t: t.detach().contiguous().numpy()  # noqa: E731
            with _numba_parallel():
                kernels.rhs_batch(nd(load_p), nd(load_q), layer._capq_c, nodes, sn, b, parent, r2, x2,
                                  layer.v_root_pu ** 2, layer._wmin_c, layer._wmax_c, layer._scr,
                                  min(B, 4 * numba.get_num_threads()), h.numpy(), c.numpy())
        ctx.layer = layer
        ctx.nb = load_p.shape[1]
        return h, c

    @staticmethod
    def backward(ctx, h_bar, c_bar):
        if not (ctx.needs_input_grad[0] or ctx.needs_input_grad[1]):
            return None, None, None, None
        nodes, sn, _b, parent, r2, x2 = ctx.layer._tree
        B = h_bar.shape[0]
        lp_bar = torch.zeros(B, ctx.nb, dtype=torch.float64)
        lq_bar = torch.zeros(B, ctx.nb, dtype=torch.float64)
        if B:
            with _numba_parallel():
                kernels.rhs_batch_vjp(h_bar.contiguous().numpy(), c_bar.contiguous().numpy(), nodes, sn, parent, r2,
                                      x2, min(B, 4 * numba.get_num_threads()), lp_bar.numpy(), lq_bar.numpy())
        return lp_bar, lq_bar, None, None


class _ProjectFn(torch.autograd.Function):
    """x = projection(raw; bounds, h, c) with implicit-differentiation backward."""

    @staticmethod
    def forward(ctx, r, plo, phi, qlo, qhi, h, c, layer, st, holder):
        B = r.shape[0]
        N = layer.n_pv
        bnd = tuple(b.expand(B, N) for b in (plo, phi, qlo, qhi))
        if B == 0:
            x = r.clone()
            holder["status"] = torch.zeros(0, dtype=torch.int64)
            holder["info"] = {"torch_optimal": 0, "fallback": 0, "iterations_max": 0}
            ctx.empty = True
            return x
        ctx.empty = False
        lease = holder.pop("lease")
        x, status, g = layer._solve(st, r, bnd, h, c, holder["row"], None if lease is None else lease.ws)
        ctx.lease = lease  # the backward reads the workspace (c, multipliers)
        holder["status"] = status
        holder["info"] = g["info"]
        ctx.st = st
        ctx.g = g
        ctx.layer = layer
        ctx.save_for_backward(r, *bnd, x)
        ctx.status = status
        return x

    @staticmethod
    def backward(ctx, gx):
        if ctx.empty:
            return (gx.clone(),) + (None,) * 9
        r, plo, phi, qlo, qhi, x = ctx.saved_tensors
        st, g = ctx.st, ctx.g
        qp: TorchQP = st["qp"]
        B = r.shape[0]
        dev = r.device
        r_bar = torch.zeros_like(r)
        # gradients no input asked for (e.g. loads and availability that are data) go to the
        # workspace's scratch arrays instead of fresh memory, and come back as None
        need = ctx.needs_input_grad
        ws = None if ctx.lease is None else ctx.lease.ws
        sb = ws.scratch(plo.shape[1]) if ws is not None and not all(need[1:7]) else None
        b_bar = [torch.zeros_like(plo) if need[1 + k] or sb is None else sb[0][k] for k in range(4)]
        h_bar = (torch.zeros(B, qp.m_full, dtype=r.dtype, device=dev) if need[5] or sb is None else sb[1])
        c_bar = (torch.zeros(B, qp.ms_full, 2, dtype=r.dtype, device=dev) if need[6] or sb is None else sb[2])
        st_dev = ctx.status.to(dev)
        unchanged = st_dev == int(ProjectionStatus.UNCHANGED)
        r_bar[unchanged] = gx[unchanged]
        ok = g["grad_ok"].to(dev) & ~unchanged
        extra_ids = [i for i, _ in g["extra"]]
        if extra_ids:
            ok[torch.as_tensor(extra_ids, dtype=torch.long, device=dev)] = False
        nb = g["numba"]
        if nb and nb["ids"].numel():
            # samples of the numba batch solver: the compiled implicit gradient (same formulas)
            from safedispatch.backends.structured_qp_vjp import vjp_batch

            layer = ctx.layer
            ok[nb["ids"]] = False
            X, LL, LS, RP, RQ, PLO, PHI, QLO, QHI, Cn, idx, mask = nb["data"]
            with _numba_parallel():
                vjp_batch(layer._mod.fast, X, LL, LS, RP, RQ, PLO, PHI, QLO, QHI, layer._w, layer._s, layer._t, Cn,
                          layer._S, gx.detach().numpy(), index=idx, mask=mask,
                          out=(r_bar.numpy(), tuple(b.numpy() for b in b_bar), h_bar.numpy(), c_bar.numpy()))
        groups = []
        ids = ok.nonzero(as_tuple=True)[0]
        if ids.numel():
            iL, lam, iS, y = (s[ids] for s in g["slots"])
            groups.append((ids, iL, lam, iS, y))
        for i, (lin, lamv, soc, yv) in g["extra"]:
            T = lambda a, dt=r.dtype: torch.as_tensor(a, dtype=dt, device=dev).unsqueeze(0)  # noqa: E731
            kL, kS = max(lin.size, 1), max(soc.size, 1)
            iL = torch.zeros(1, kL, dtype=torch.long, device=dev)
            lam = torch.zeros(1, kL, dtype=r.dtype, device=dev)
            iS = torch.zeros(1, kS, dtype=torch.long, device=dev)
            y = torch.zeros(1, kS, 2, dtype=r.dtype, device=dev)
            iL[0, :lin.size] = T(lin, torch.long)[0]
            lam[0, :lin.size] = T(lamv)[0]
            iS[0, :soc.size] = T(soc, torch.long)[0]
            y[0, :soc.size] = T(yv)[0]
            groups.append((torch.tensor([i], device=dev), iL, lam, iS, y))
        for ids, iL, lam, iS, y in groups:
            bnd = tuple(b[ids] for b in (plo, phi, qlo, qhi))
            # v = r - W^-1 M^T z at the solution (the point whose projection is x)
            u = torch.einsum("bk,bkn->bn", lam, qp.Gn[iL]) + torch.einsum("bkc,bkcn->bn", y, qp.An[iS])
            v = r[ids] - u * qp.winv.repeat(2)
            rb, bb, hb, cb = implicit_vjp(qp, gx[ids], x[ids], v, iL, lam, iS, y, bnd)
            r_bar[ids] = rb
            for k in range(4):
                b_bar[k][ids] = bb[k]
            h_bar[ids] = hb
            c_bar[ids] = cb
        grads = (r_bar, *b_bar, h_bar, c_bar)
        return tuple(gr if need[k] else None for k, gr in enumerate(grads)) + (None, None, None)

