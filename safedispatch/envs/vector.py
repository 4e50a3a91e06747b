"""``VectorDispatchEnv``: many feeder days in parallel in PyTorch, with the semantics of
:class:`~safedispatch.envs.dispatch.DispatchEnv` (same action decoding, device limits, rewards,
cost and observation layout), the AC power flow batched (:func:`safedispatch.run_powerflow` on
tensors) and, with ``safety=True``, the batched :class:`~safedispatch.safety.torch_layer.TorchSafetyLayer`.

All ``num_envs`` envs run synchronized days: they start at step 0 on :meth:`reset` and are all
truncated after the 96th step; then call :meth:`reset` again (no auto-reset): :meth:`step`
before the first reset or after the day's end raises
:class:`~safedispatch.envs.dispatch.ResetNeeded`. Env ``i`` seeded
with ``seed`` draws the same day as ``DispatchEnv.reset(seed=seed + i)`` would, so a batch can be
checked against single envs step by step.

Returns are torch tensors on ``device`` (``dtype`` float64 by default): observations
``(B, n_obs)``, rewards ``(B,)``, ``terminated`` / ``truncated`` ``(B,)`` bool, and ``info`` a
dict of ``(B, ...)`` tensors (``vm_pu``, ``pv_p_mw``, ``pv_q_mvar``, ``pv_avail_mw``,
``load_p_mw``, ``load_q_mvar``, ``p_loss_mw``, ``curtailed_mw``, ``cost``, ``pf_converged``, ``action_out_of_bounds``,
``action_invalid``, and with safety ``raw_action``, ``safe_action``, ``correction_norm``, ``projection_status``).

The safety layer here is the LinDistFlow projection without AC certification (the torch layer
has no AC correction loop): its voltages can differ from the AC ones by the model error. The
torch layer handles inverters only, so ``safety=True`` needs a case without capacitor banks and
storage.
"""

from __future__ import annotations

import math

import gymnasium as gym
import numpy as np
import torch

from safedispatch.envs.dispatch import EnvConfig, ResetNeeded, _check_config, check_seed
from safedispatch.errors import InputError
from safedispatch.network.cases import load_case
from safedispatch.network.feeder import Feeder
from safedispatch.powerflow import run_powerflow
from safedispatch.problems.types import check_feeder
from safedispatch.scenarios.profiles import STEPS_PER_DAY, case_profiles

__all__ = ["VectorDispatchEnv"]


class VectorDispatchEnv:
    """``num_envs`` days of one feeder in parallel (see the module docstring).

    Args:
        config: :class:`EnvConfig` (``graph_obs`` and ``validate`` are not supported here).
        num_envs: Batch size.
        device, dtype: Where and in which precision the tensors live.
        safety: Project every action with a :class:`TorchSafetyLayer` built here.
        safety_kw: Extra arguments of the :class:`TorchSafetyLayer`.
        feeder: A feeder to use instead of ``config.case``.

    Raises:
        InputError: bad settings (the field is named).
    """

    def __init__(self, config: EnvConfig | None = None, num_envs: int = 1024, device="cpu",
                 dtype: torch.dtype = torch.float64, safety: bool = False, safety_kw: dict | None = None,
                 feeder: Feeder | None = None):
        if config is not None and not isinstance(config, EnvConfig):
            raise InputError(f"expected an EnvConfig or None, got {type(config).__name__}", "config")
        cfg = config or EnvConfig()
        if cfg.graph_obs or cfg.validate:
            raise InputError("graph_obs and validate are single-env options", "config")
        if cfg.reward == "paperA":
            raise InputError("the zonal reward is implemented in the single env only", "reward")
        if isinstance(num_envs, bool) or not isinstance(num_envs, int) or num_envs < 1:
            raise InputError(f"expected an integer >= 1, got {num_envs!r}", "num_envs")
        self.config = cfg
        self.feeder = f = check_feeder(feeder) if feeder is not None else load_case(cfg.case)
        self.days = _check_config(cfg, f)
        self.num_envs = B = num_envs
        self.device, self.dtype = torch.device(device), dtype
        pr = case_profiles(f, self.days, cfg.load_profile, cfg.pv_profile)
        t = self._t
        self._load_p, self._load_q, self._avail = (t(x).reshape(len(self.days), STEPS_PER_DAY, -1)
                                                   for x in (pr.load_p_mw, pr.load_q_mvar, pr.pv_avail_mw))
        self.dt_h = pr.dt_h
        self.n_act_pv = 2 * f.n_pv if cfg.control == "pq" else f.n_pv
        n_act = self.n_act_pv + f.n_cap + f.n_ess
        n_obs = 3 * f.n_bus + 3 * f.n_pv + f.n_cap + f.n_ess + 2
        self.single_action_space = gym.spaces.Box(-1.0, 1.0, (n_act,), dtype=np.float32)
        self.single_observation_space = gym.spaces.Box(-np.inf, np.inf, (n_obs,), dtype=np.float32)
        p0, q0 = f.nominal_injection()
        self._load_scale = max(float(np.abs(p0).max()), float(np.abs(q0).max()), 1e-6)
        self._s, self._pmax = t(f.pv.s_mva), t(f.pv.p_max_mw)
        self._pv_bus = torch.tensor(f.pv.bus, device=self.device)
        self._cap_bus = torch.tensor(f.cap.bus, device=self.device)
        self._ess_bus = torch.tensor(f.ess.bus, device=self.device)
        self._n_steps, self._q_step = t(f.cap.n_steps), t(f.cap.q_step_mvar)
        ess = f.ess
        self._ess = {k: t(getattr(ess, k)) for k in ("p_max_mw", "e_max_mwh", "soc_min", "soc_max", "eta_charge",
                                                      "eta_discharge", "soc_init")}
        mask = np.ones(f.n_bus, bool)
        mask[f.root_bus] = False
        self._mask = torch.as_tensor(mask, device=self.device)
        self._vmin, self._vmax = t(f.bus.vm_min_pu[mask]), t(f.bus.vm_max_pu[mask])
        self.layer = None
        if safety:
            if f.n_cap or f.n_ess:
                raise InputError("the torch safety layer handles inverters only: pick a case without capacitor "
                                 "banks and storage", "safety")
            from safedispatch.safety.torch_layer import TorchSafetyLayer

            self.layer = TorchSafetyLayer(f, dt_h=self.dt_h, **(safety_kw or {}))
        self._day_pos = torch.zeros(B, dtype=torch.long, device=self.device)
        self._step = 0
        self._started = False  # reset() was called at least once

    def _t(self, x) -> torch.Tensor:
        # a copy (the profiles are read-only arrays)
        return torch.tensor(np.asarray(x, float), dtype=self.dtype, device=self.device)

    # -- data of the current step ------------------------------------------------------------
    def _now(self):
        k = self._step
        d = self._day_pos
        return self._load_p[d, k], self._load_q[d, k], self._avail[d, k]

    def reset(self, seed: int | None = None) -> tuple[torch.Tensor, dict]:
        """Start a day in every env (env ``i``: the day ``DispatchEnv.reset(seed=seed + i)`` draws;
        without a seed, days drawn from a fresh generator).

        Raises:
            InputError: ``seed`` is not None or an integer >= 0.
        """
        seed = check_seed(seed)
        B, f = self.num_envs, self.feeder
        pos = np.empty(B, dtype=np.int64)
        for i in range(B):
            rng, _ = gym.utils.seeding.np_random(None if seed is None else seed + i)
            pos[i] = rng.integers(len(self.days))
        self._day_pos = torch.as_tensor(pos, device=self.device)
        self._step = 0
        lp, lq, av = self._now()
        self._p = av.clone()
        self._q = torch.zeros_like(av)
        self._cap = self._t(f.cap.step_init).expand(B, -1).clone()
        self._e = torch.zeros(B, f.n_ess, dtype=self.dtype, device=self.device)
        self._soc = self._ess["soc_init"].expand(B, -1).clone()
        pf = self._powerflow(self._p, self._q, self._cap, self._e)
        self._vm = pf.vm_pu
        self._started = True
        return self._obs(), {"day": torch.as_tensor(self.days[pos], device=self.device)}

    def _decode(self, a: torch.Tensor):
        f, n = self.feeder, self.feeder.n_pv
        _, _, av = self._now()
        if self.config.control == "pq":
            p = (a[:, :n] + 1.0) / 2.0 * self._s
            q = a[:, n:2 * n] * self._s
        else:
            p = av.clone()
            q = a[:, :n] * torch.sqrt(torch.clamp(self._s**2 - p**2, min=0.0))
        o = self.n_act_pv
        cap = torch.round((a[:, o:o + f.n_cap] + 1.0) / 2.0 * self._n_steps)
        e = a[:, o + f.n_cap:] * self._ess["p_max_mw"]
        return p, q, cap, e

    def _device_limits(self, p, q, cap, e):
        _, _, av = self._now()
        p = torch.minimum(torch.clamp(p, min=0.0), torch.minimum(av, self._s))
        qcap = torch.sqrt(torch.clamp(self._s**2 - p**2, min=0.0))
        q = torch.maximum(torch.minimum(q, qcap), -qcap)
        cap = torch.minimum(torch.clamp(cap, min=0.0), self._n_steps)
        es = self._ess
        e_hi = torch.minimum(es["p_max_mw"], torch.clamp(self._soc - es["soc_min"], min=0) * es["e_max_mwh"]
                             * es["eta_discharge"] / self.dt_h)
        e_lo = -torch.minimum(es["p_max_mw"], torch.clamp(es["soc_max"] - self._soc, min=0) * es["e_max_mwh"]
                              / (es["eta_charge"] * self.dt_h))
        e = torch.maximum(torch.minimum(e, e_hi), e_lo)
        return p, q, cap, e

    def _powerflow(self, p, q, cap, e):
        lp, lq, _ = self._now()
        P, Q = -lp.clone(), -lq.clone()
        P.index_add_(1, self._pv_bus, p)
        Q.index_add_(1, self._pv_bus, q)
        if self.feeder.n_ess:
            P.index_add_(1, self._ess_bus, e)
        sh = torch.zeros_like(P)
        if self.feeder.n_cap:
            sh.index_add_(1, self._cap_bus, cap * self._q_step)
        return run_powerflow(self.feeder, P, Q, shunt_q_mvar=sh)

    def step(self, actions):
        """Advance every env by one step.

        Args:
            actions: ``(num_envs, n_act)`` in ``[-1, 1]`` (tensor or array).

        A row with NaN or inf entries is no control for that env (all available PV at unity
        power factor, capacitors held, storage idle), flagged in ``info["action_invalid"]``
        ``(B,)``, as in :class:`~safedispatch.envs.dispatch.DispatchEnv`.

        Raises:
            ResetNeeded: before the first :meth:`reset` or after the day's end.
            InputError: not real numbers or the wrong shape (field ``actions``).
        """
        f, cfg, B = self.feeder, self.config, self.num_envs
        if not self._started:
            raise ResetNeeded("step() before reset(): call reset() to start the day")
        if self._step >= STEPS_PER_DAY:
            raise ResetNeeded("the day is over (the last step returned truncated=True): call reset()")
        try:
            cplx = actions.is_complex() if isinstance(actions, torch.Tensor) else np.iscomplexobj(actions)
        except Exception:  # noqa: BLE001  (not array-like: the conversion below says why)
            cplx = False
        if cplx:
            raise InputError("expected real numbers, got complex values", "actions")
        if isinstance(actions, np.ndarray) and not actions.flags.writeable:
            actions = actions.copy()  # torch warns on (and cannot share) read-only memory
        try:
            a = torch.as_tensor(actions, dtype=self.dtype, device=self.device)
        except Exception as exc:  # noqa: BLE001  (any conversion failure is bad input)
            raise InputError(f"expected a ({B}, n_act) array of real numbers: {type(exc).__name__}: {exc}",
                             "actions") from None
        if tuple(a.shape) != (B, self.single_action_space.shape[0]):
            raise InputError(f"expected shape ({B}, {self.single_action_space.shape[0]}), got {tuple(a.shape)}",
                             "actions")
        # as DispatchEnv: a row with NaN or inf is no control for that env, reported, not raised
        invalid = ~torch.isfinite(a).all(dim=1)
        a = torch.where(invalid[:, None], torch.zeros_like(a), a)
        clipped = a.clamp(-1.0, 1.0)  # the Box's bounds; the excess is reported, as in DispatchEnv
        info = {"action_out_of_bounds": (a - clipped).abs().amax(dim=1), "action_invalid": invalid}
        a = clipped
        p, q, cap, e = self._decode(a)
        lp, lq, av = self._now()
        if bool(invalid.any()):
            m = invalid[:, None]
            p = torch.where(m, torch.minimum(av, self._s), p)
            q = torch.where(m, torch.zeros_like(q), q)
            cap = torch.where(m, self._cap, cap)
            e = torch.where(m, torch.zeros_like(e), e)
        if self.layer is not None:
            raw = torch.cat([p, q], dim=1)
            prev = torch.cat([self._p, self._q], dim=1)
            safe, status = self.layer(raw, lp, lq, av, prev=prev, return_status=True)
            p, q = safe[:, :f.n_pv], safe[:, f.n_pv:]
            info.update(raw_action=raw, safe_action=safe, correction_norm=torch.linalg.vector_norm(safe - raw, dim=1),
                        projection_status=status.to(self.device))
        p, q, cap, e = self._device_limits(p, q, cap, e)
        pf = self._powerflow(p, q, cap, e)
        vm = pf.vm_pu
        vb = vm[:, self._mask]
        excess = torch.clamp(vb - self._vmax, min=0) + torch.clamp(self._vmin - vb, min=0)
        cost = excess.sum(dim=1)
        loss = pf.p_loss_mw
        curtailed = (av - p).sum(dim=1)
        dev = vb - cfg.v_ref_pu
        if cfg.reward == "paperB":
            reward = -(cfg.w_voltage * (dev * dev).sum(dim=1) + cfg.w_loss * loss + cfg.w_curtail * curtailed)
        else:
            switches = (cap - self._cap).abs().sum(dim=1)
            reward = -(dev.abs().mean(dim=1) + cfg.w_loss * loss + cfg.w_switch * switches)
        info.update(vm_pu=vm, pv_p_mw=p, pv_q_mvar=q, pv_avail_mw=av, load_p_mw=lp, load_q_mvar=lq, p_loss_mw=loss,
                    curtailed_mw=curtailed, cost=cost, pf_converged=torch.as_tensor(pf.converged, device=self.device))
        if f.n_ess:
            es = self._ess
            self._soc = self._soc - torch.where(e > 0, e / es["eta_discharge"], e * es["eta_charge"]) * self.dt_h \
                / es["e_max_mwh"]
        self._p, self._q, self._cap, self._e, self._vm = p, q, cap, e, vm
        self._step += 1
        done = self._step >= STEPS_PER_DAY
        truncated = torch.full((B,), done, dtype=torch.bool, device=self.device)
        terminated = torch.zeros(B, dtype=torch.bool, device=self.device)
        obs = self._obs(min(self._step, STEPS_PER_DAY - 1))
        return obs, reward, terminated, truncated, info

    def _obs(self, k: int | None = None) -> torch.Tensor:
        k = self._step if k is None else k
        d = self._day_pos
        lp, lq, av = self._load_p[d, k], self._load_q[d, k], self._avail[d, k]
        frac = k / STEPS_PER_DAY
        B = self.num_envs
        tod = torch.tensor([math.sin(2 * math.pi * frac), math.cos(2 * math.pi * frac)], dtype=self.dtype,
                           device=self.device).expand(B, 2)
        parts = [self._vm, lp / self._load_scale, lq / self._load_scale, av / torch.clamp(self._pmax, min=1e-9),
                 self._p / self._s, self._q / self._s, self._cap / torch.clamp(self._n_steps, min=1), self._soc, tod]
        return torch.cat(parts, dim=1)
