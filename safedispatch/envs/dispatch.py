"""``DispatchEnv``: one agent dispatches every device of a feeder over one day (Gymnasium).

Each episode is one day of the shipped profiles (:mod:`safedispatch.scenarios`), 96 steps of
15 minutes; the day's end is ``truncated`` (nothing terminates an episode). Every step is
physics: the applied set-points go through the AC power flow (:func:`safedispatch.run_powerflow`;
``validate=True`` also runs pandapower and reports the largest voltage difference).

**Action** (``Box(-1, 1)``, float32), by ``control``:

* ``"pq"``: ``[a_p | a_q]`` per inverter: requested ``p = (a_p + 1) / 2 * s_mva`` and
  ``q = a_q * s_mva``;
* ``"q"`` (paper C): ``a_q`` per inverter; ``p`` is the available PV and ``q = a_q *
  sqrt(s^2 - p^2)``, the inverter's remaining reactive capability;

then one entry per capacitor bank (step ``round((a + 1) / 2 * n_steps)``) and per storage unit
(``e = a * p_max_mw``, discharge positive). The inverters' own limits are physics, not a safety
layer: active power is capped at the available PV, reactive power at the rating's remainder
(active power priority, as IEEE 1547-2018 allows), storage at its state-of-charge limits; what
they cut is reported in ``info["device_limited_mva"]``. Voltage and thermal limits are not
enforced by the env: that is the controller's (or :class:`~safedispatch.envs.safety.SafetyWrapper`'s)
job, and violations show in ``info["cost"]`` and the reward.

**Observation** (``Box``, float32): the bus voltages of the last power flow, the loads
``load_p_mw``, ``load_q_mvar`` (per bus, divided by the case's peak bus load), PV availability
per unit of ``p_max_mw``, the previous set-points per unit of ``s_mva``, capacitor steps per unit
of ``n_steps``, storage state of charge, and ``sin``/``cos`` of the time of day. With
``graph_obs=True`` a ``Dict`` of ``node`` ``(n_bus, 5)`` features ``[V, P_load, Q_load, Q_pv,
Q_cap]`` (paper C) and ``adj``, the symmetric normalized adjacency with self-loops
``D^-1/2 (A + I) D^-1/2`` (Kipf & Welling 2017).

**Reward** (``reward=``; the weights are fields of :class:`EnvConfig`):

* ``"paperB"``: ``-(w_voltage sum_i (v_i - v_ref)^2 + w_loss p_loss_mw + w_curtail curtailed_mw)``;
* ``"paperC"``: ``-(mean_i |v_i - v_ref| + w_loss p_loss_mw + w_switch n_switches)``;
* ``"paperA"``: ``-(w_balance sum_z max(0, |exchange_z| - balance_band_mw) + w_voltage sum_i
  (v_i - v_ref)^2)``, ``exchange_z`` the zone's net injection (lossless zonal balance);

and every step reports ``info["cost"] = sum_i max(0, v_i - vmax_i) + max(0, vmin_i - v_i)``
(paper C's constraint cost, pu) for constrained RL. A power flow that does not converge is
reported in ``info["pf_converged"]`` (its last iterate is used, finite); no hidden penalty.
With ``validate=True``, ``info["pandapower_converged"]`` and, when it converged,
``info["pandapower_max_dv_pu"]``.

``info`` holds plain numpy arrays and floats: ``vm_pu``, ``pv_p_mw``, ``pv_q_mvar``,
``pv_avail_mw``, ``load_p_mw``, ``load_q_mvar``, ``cap_step``, ``ess_p_mw``, ``p_loss_mw``,
``curtailed_mw``, ``cost``, ``pf_converged``, ``device_limited_mva``, ``action_out_of_bounds``,
``action_invalid``, ``day``, ``step``.

**Lifecycle** (Gymnasium's): :meth:`~DispatchEnv.reset` starts an episode; :meth:`~DispatchEnv.step`
before the first reset, or after the step that returned ``truncated`` (or ``terminated``),
raises :class:`ResetNeeded` until the next reset.

**Bad actions are reported, not raised** (Grid2Op's habit, DESIGN.md): an action with NaN or
inf entries (a diverged policy) is replaced for that step by no control (all available PV at
unity power factor, capacitors held, storage idle) and ``info["action_invalid"]`` is True
(False otherwise); an action outside the Box is clipped and the excess reported in
``info["action_out_of_bounds"]``. What is not an action of this env at all (wrong shape or
type, complex values) is a programming error and raises :class:`~safedispatch.errors.InputError`
naming ``action``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import gymnasium as gym
import numpy as np

from safedispatch.errors import InputError
from safedispatch.network.cases import load_case
from safedispatch.network.feeder import Feeder
from safedispatch.powerflow import run_powerflow
from safedispatch.problems.types import Action, Snapshot, check_action, check_feeder, net_injection, real_array
from safedispatch.scenarios.profiles import STEPS_PER_DAY, case_profiles, split_days

__all__ = ["DispatchEnv", "EnvConfig", "ResetNeeded"]


class ResetNeeded(InputError, gym.error.ResetNeeded):
    """``step`` was called before ``reset``, or after the episode ended (``terminated`` or
    ``truncated``): call ``reset()`` first.

    Both a :class:`~safedispatch.errors.InputError` (so a :class:`~safedispatch.errors.SafeDispatchError`
    and a ``ValueError``) and Gymnasium's own ``gymnasium.error.ResetNeeded``, so code written
    against either catches it.
    """


def check_seed(seed, name: str = "seed") -> int | None:
    """None or a non-negative integer (what Gymnasium's seeding accepts).

    Raises:
        InputError: anything else (field ``name``).
    """
    if seed is None:
        return None
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise InputError(f"expected None or an integer >= 0, got {seed!r}", name)
    return int(seed)


def check_options(options) -> dict:
    """None or a dict of reset options; ``"day"``, when present, an integer.

    Raises:
        InputError: anything else (field ``options`` or ``options.day``).
    """
    if options is None:
        return {}
    if not isinstance(options, dict):
        raise InputError(f"expected None or a dict, got {type(options).__name__}", "options")
    if "day" in options:
        d = options["day"]
        if isinstance(d, (bool, np.bool_)) or not isinstance(d, (int, np.integer)):
            raise InputError(f"expected an integer day of year, got {d!r}", "options.day")
    return options

REWARDS = ("paperB", "paperC", "paperA")
CONTROLS = ("pq", "q")


@dataclass
class EnvConfig:
    """Settings of :class:`DispatchEnv` (and of the multi-agent and vector envs)."""

    case: str = "ieee33-paperB-4"
    """Built-in case name (see ``safedispatch cases``)."""
    control: str = "pq"
    """``"pq"`` (P and Q of every inverter) or ``"q"`` (Q only, P = available PV)."""
    reward: str = "paperB"
    """``"paperB"``, ``"paperC"`` or ``"paperA"`` (see the module docstring)."""
    split: str = "train"
    """Days to sample episodes from: ``"train"``, ``"validation"`` or ``"test"``."""
    days: tuple | None = None
    """Explicit days of year (overrides ``split``)."""
    load_profile: str = "mv_semiurb"
    """Load profile of every bus (see :func:`safedispatch.scenarios.case_profiles`)."""
    pv_profile: str = "measured"
    """PV profile of every inverter."""
    v_ref_pu: float = 1.0
    """Reference voltage of the deviation terms."""
    w_voltage: float = 100.0
    """Weight of the squared voltage deviation (per pu^2)."""
    w_loss: float = 1.0
    """Weight of the losses (per MW)."""
    w_curtail: float = 0.5
    """Weight of curtailed PV (per MW), paper B."""
    w_switch: float = 0.01
    """Weight of a capacitor step change, paper C."""
    w_balance: float = 1.0
    """Weight of a zone's exchange beyond the band (per MW), paper A."""
    balance_band_mw: float = 0.5
    """Zonal exchange that costs nothing, paper A."""
    graph_obs: bool = False
    """Dict observation with node features and the normalized adjacency (paper C's GCN)."""
    validate: bool = False
    """Also run pandapower's power flow each step and report ``info["pandapower_max_dv_pu"]``."""
    extra: dict = field(default_factory=dict)
    """Free-form notes carried along (not used by the env)."""


def _check_config(cfg: EnvConfig, feeder: Feeder) -> np.ndarray:
    if cfg.control not in CONTROLS:
        raise InputError(f"expected one of {CONTROLS}, got {cfg.control!r}", "control")
    if cfg.reward not in REWARDS:
        raise InputError(f"expected one of {REWARDS}, got {cfg.reward!r}", "reward")
    if cfg.reward == "paperA" and not feeder.zones:
        raise InputError(f"case {cfg.case!r} declares no zones", "reward")
    if feeder.n_pv == 0:
        raise InputError(f"case {cfg.case!r} has no inverter to control", "case")
    for name in ("v_ref_pu", "w_voltage", "w_loss", "w_curtail", "w_switch", "w_balance", "balance_band_mw"):
        v = getattr(cfg, name)
        if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
            raise InputError(f"expected a finite number >= 0, got {v!r}", name)
    days = split_days(cfg.split) if cfg.days is None else np.asarray(cfg.days)
    return np.asarray(days, dtype=np.int64)


class DispatchEnv(gym.Env):
    """One agent, every device, one day per episode (see the module docstring).

    Args:
        config: :class:`EnvConfig` (default: paper B's four clusters, P and Q control).
        feeder: A feeder to use instead of ``config.case``.

    Raises:
        InputError: bad settings (the field is named).
    """

    metadata = {"render_modes": []}

    def __init__(self, config: EnvConfig | None = None, feeder: Feeder | None = None):
        super().__init__()
        if config is not None and not isinstance(config, EnvConfig):
            raise InputError(f"expected an EnvConfig or None, got {type(config).__name__}", "config")
        self.config = cfg = config or EnvConfig()
        self.feeder = f = check_feeder(feeder) if feeder is not None else load_case(cfg.case)
        self.days = _check_config(cfg, f)
        self.profiles = case_profiles(f, self.days, cfg.load_profile, cfg.pv_profile)
        self.n_act_pv = 2 * f.n_pv if cfg.control == "pq" else f.n_pv
        n_act = self.n_act_pv + f.n_cap + f.n_ess
        self.action_space = gym.spaces.Box(-1.0, 1.0, (n_act,), dtype=np.float32)
        p0, q0 = f.nominal_injection()
        self._load_scale = max(float(np.abs(p0).max()), float(np.abs(q0).max()), 1e-6)
        if cfg.graph_obs:
            A = np.zeros((f.n_bus, f.n_bus))
            live = f.branch.in_service
            A[f.branch.from_bus[live], f.branch.to_bus[live]] = 1.0
            A = np.maximum(A, A.T) + np.eye(f.n_bus)
            d = 1.0 / np.sqrt(A.sum(axis=1))
            self.adjacency = (d[:, None] * A * d[None, :]).astype(np.float32)
            self.observation_space = gym.spaces.Dict({
                "node": gym.spaces.Box(-np.inf, np.inf, (f.n_bus, 5), dtype=np.float32),
                "adj": gym.spaces.Box(0.0, 1.0, (f.n_bus, f.n_bus), dtype=np.float32)})
        else:
            n_obs = 3 * f.n_bus + 3 * f.n_pv + f.n_cap + f.n_ess + 2
            self.observation_space = gym.spaces.Box(-np.inf, np.inf, (n_obs,), dtype=np.float32)
        self._zone_of_bus = None
        if cfg.reward == "paperA":
            self._zone_of_bus = np.full(f.n_bus, -1)
            for k, z in enumerate(f.zones):
                self._zone_of_bus[np.asarray(z)] = k
        self._pp_net = None
        self._action_excess = 0.0
        self._action_invalid = False
        self._day_pos = 0
        self._t = 0
        self._prev: Action | None = None
        self._soc = f.ess.soc_init.copy()
        self._vm = np.ones(f.n_bus)
        self._needs_reset = True  # before the first reset and after the episode's end

    # -- data of the current step ------------------------------------------------------------
    def _row(self) -> int:
        return self._day_pos * STEPS_PER_DAY + self._t

    @property
    def day(self) -> int:
        """Day of year of the current episode."""
        return int(self.days[self._day_pos])

    @property
    def step_index(self) -> int:
        """Step within the day (0..95) the next action applies to."""
        return self._t

    def snapshot(self) -> Snapshot:
        """The current step's :class:`Snapshot` (loads, PV availability, previous set-points,
        storage state): what a safety layer needs."""
        r = self._row()
        pr = self.profiles
        return Snapshot(load_p_mw=pr.load_p_mw[r].copy(), load_q_mvar=pr.load_q_mvar[r].copy(),
                        pv_avail_mw=pr.pv_avail_mw[r].copy(), prev=self._prev, ess_soc=self._soc.copy(),
                        v_root_pu=float(self.feeder.root_vm_pu), dt_h=pr.dt_h)

    # -- action mapping ----------------------------------------------------------------------
    def decode(self, action) -> Action:
        """The set-points an action vector requests (before the devices' own limits).

        An action with NaN or inf entries decodes to no control (see the module docstring),
        flagged for the step's ``info["action_invalid"]``.

        Raises:
            InputError: not an array of real numbers of the action space's shape (field
                ``action``).
        """
        f = self.feeder
        a = real_array(action, self.action_space.shape, "action")
        if not np.isfinite(a).all():
            self._action_invalid, self._action_excess = True, 0.0
            return self.no_control()
        self._action_invalid = False
        # the Box's bounds: RL noise may step outside them; how far is reported in the step's info
        clipped = np.clip(a, -1.0, 1.0)
        self._action_excess = float(np.abs(a - clipped).max(initial=0.0))
        a = clipped
        s = f.pv.s_mva
        avail = self.profiles.pv_avail_mw[self._row()]
        if self.config.control == "pq":
            p = (a[:f.n_pv] + 1.0) / 2.0 * s
            q = a[f.n_pv:2 * f.n_pv] * s
        else:
            p = avail.copy()
            q = a[:f.n_pv] * np.sqrt(np.maximum(s**2 - p**2, 0.0))
        o = self.n_act_pv
        cap = np.rint((a[o:o + f.n_cap] + 1.0) / 2.0 * f.cap.n_steps).astype(np.int64)
        e = a[o + f.n_cap:] * f.ess.p_max_mw
        return Action(pv_p_mw=p, pv_q_mvar=q, cap_step=cap, ess_p_mw=e)

    def no_control(self) -> Action:
        """The current step's no-control set-points: all available PV at unity power factor,
        capacitors at their previous steps, storage idle (the fallback for an unreadable
        action)."""
        f = self.feeder
        avail = self.profiles.pv_avail_mw[self._row()]
        cap = self._prev.cap_step.copy() if self._prev is not None else f.cap.step_init.copy()
        return Action(pv_p_mw=np.minimum(avail, f.pv.s_mva), pv_q_mvar=np.zeros(f.n_pv), cap_step=cap,
                      ess_p_mw=np.zeros(f.n_ess))

    def _device_limits(self, act: Action) -> tuple[Action, float]:
        """What the devices can do of a requested action: P at most the available PV, Q within
        the rating's remainder, storage within its power and state-of-charge limits."""
        f = self.feeder
        avail = self.profiles.pv_avail_mw[self._row()]
        s = f.pv.s_mva
        p = np.clip(np.asarray(act.pv_p_mw, float), 0.0, np.minimum(avail, s))
        qcap = np.sqrt(np.maximum(s**2 - p**2, 0.0))
        q = np.clip(np.asarray(act.pv_q_mvar, float), -qcap, qcap)
        cap = np.clip(np.asarray(act.cap_step if act.cap_step is not None else f.cap.step_init), 0, f.cap.n_steps)
        e_req = np.zeros(f.n_ess) if act.ess_p_mw is None else np.asarray(act.ess_p_mw, float)
        ess = f.ess
        dt = self.profiles.dt_h
        e_hi = np.minimum(ess.p_max_mw, np.maximum(self._soc - ess.soc_min, 0) * ess.e_max_mwh * ess.eta_discharge / dt)
        e_lo = -np.minimum(ess.p_max_mw, np.maximum(ess.soc_max - self._soc, 0) * ess.e_max_mwh / (ess.eta_charge * dt))
        e = np.clip(e_req, e_lo, e_hi)
        cut = float(np.sqrt(np.sum((p - act.pv_p_mw) ** 2 + (q - act.pv_q_mvar) ** 2) + np.sum((e - e_req) ** 2)))
        return Action(pv_p_mw=p, pv_q_mvar=q, cap_step=cap.astype(np.int64), ess_p_mw=e), cut

    # -- gymnasium API -----------------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict | None = None):
        """Start a day: ``options={"day": d}`` picks day of year ``d`` (one of ``self.days``);
        otherwise a day is drawn from ``self.days`` with the env's seeded generator.

        Raises:
            InputError: ``seed`` is not None or an integer >= 0, ``options`` not None or a dict,
                ``options["day"]`` not an integer or not one of this env's days.
        """
        seed = check_seed(seed)
        options = check_options(options)
        if "day" in options:
            hit = np.flatnonzero(self.days == int(options["day"]))
            if hit.size == 0:
                raise InputError(f"day {options['day']!r} is not one of this env's days", "options.day")
        super().reset(seed=seed)
        f = self.feeder
        if "day" in options:
            self._day_pos = int(hit[0])
        else:
            self._day_pos = int(self.np_random.integers(len(self.days)))
        self._t = 0
        self._soc = f.ess.soc_init.copy()
        avail = self.profiles.pv_avail_mw[self._row()]
        # before the first step: no control (all available PV, no reactive power, initial steps)
        self._prev = Action(pv_p_mw=avail.copy(), pv_q_mvar=np.zeros(f.n_pv), cap_step=f.cap.step_init.copy(),
                            ess_p_mw=np.zeros(f.n_ess))
        pf = self._powerflow(self._prev)
        self._vm = np.asarray(pf.vm_pu, float)
        self._needs_reset = False
        return self._obs(), {"day": self.day, "step": 0}

    def check_running(self) -> None:
        """Raise :class:`ResetNeeded` unless an episode is running (reset called, not ended)."""
        if self._needs_reset:
            if self._prev is None:
                raise ResetNeeded("step() before reset(): call reset() to start an episode")
            raise ResetNeeded("the episode ended (the day's last step returned truncated=True): call reset() to "
                              "start the next one")

    def step(self, action):
        """One step of 15 minutes (see the module docstring).

        Raises:
            ResetNeeded: before the first :meth:`reset` or after the episode's end.
            InputError: an action the env cannot read (field ``action``).
        """
        self.check_running()
        return self.step_setpoints(self.decode(action))

    def step_setpoints(self, requested: Action):
        """Apply set-points (an :class:`Action`, e.g. a safety layer's output) for the current
        step; same return as :meth:`step`.

        Raises:
            ResetNeeded: before the first :meth:`reset` or after the episode's end.
            InputError: ``requested`` is not an Action of the feeder's sizes with finite values
                (field ``setpoints``).
        """
        self.check_running()
        f, cfg = self.feeder, self.config
        requested = check_action(requested, f, "setpoints")
        applied, cut = self._device_limits(requested)
        pf = self._powerflow(applied)
        r = self._row()
        vm = np.asarray(pf.vm_pu, float)
        avail = self.profiles.pv_avail_mw[r]
        curtailed = float(np.sum(avail - applied.pv_p_mw))
        mask = np.ones(f.n_bus, bool)
        mask[f.root_bus] = False
        vb = vm[mask]
        excess = np.maximum(vb - f.bus.vm_max_pu[mask], 0) + np.maximum(f.bus.vm_min_pu[mask] - vb, 0)
        cost = float(excess.sum())
        loss = float(pf.p_loss_mw)
        dev = vb - cfg.v_ref_pu
        if cfg.reward == "paperB":
            reward = -(cfg.w_voltage * float(dev @ dev) + cfg.w_loss * loss + cfg.w_curtail * curtailed)
        elif cfg.reward == "paperC":
            switches = float(np.abs(applied.cap_step - self._prev.cap_step).sum())
            reward = -(float(np.abs(dev).mean()) + cfg.w_loss * loss + cfg.w_switch * switches)
        else:
            p_inj, _, _ = net_injection(f, self.snapshot(), applied)
            exch = np.bincount(self._zone_of_bus[self._zone_of_bus >= 0], p_inj[self._zone_of_bus >= 0],
                               minlength=len(f.zones))
            reward = -(cfg.w_balance * float(np.maximum(np.abs(exch) - cfg.balance_band_mw, 0).sum())
                       + cfg.w_voltage * float(dev @ dev))
        info = {"vm_pu": vm, "pv_p_mw": applied.pv_p_mw.copy(), "pv_q_mvar": applied.pv_q_mvar.copy(),
                "pv_avail_mw": avail.copy(), "load_p_mw": self.profiles.load_p_mw[r].copy(),
                "load_q_mvar": self.profiles.load_q_mvar[r].copy(), "cap_step": applied.cap_step.copy(),
                "ess_p_mw": applied.ess_p_mw.copy(), "p_loss_mw": loss, "curtailed_mw": curtailed, "cost": cost,
                "pf_converged": bool(pf.converged), "device_limited_mva": cut,
                "action_out_of_bounds": self._action_excess, "action_invalid": self._action_invalid,
                "day": self.day, "step": self._t}
        # set-points applied directly (step_setpoints) were neither clipped nor replaced
        self._action_excess, self._action_invalid = 0.0, False
        if cfg.validate:
            dv = self._pandapower_check(applied, vm)
            info["pandapower_converged"] = dv is not None
            if dv is not None:
                info["pandapower_max_dv_pu"] = dv
        # storage energy
        ess = f.ess
        if f.n_ess:
            e = applied.ess_p_mw
            dt = self.profiles.dt_h
            self._soc = self._soc - np.where(e > 0, e / ess.eta_discharge, e * ess.eta_charge) * dt / ess.e_max_mwh
        self._prev = applied
        self._vm = vm
        self._t += 1
        truncated = self._t >= STEPS_PER_DAY
        if truncated:
            self._t = STEPS_PER_DAY - 1  # the observation repeats the last step's data
            self._needs_reset = True
        return self._obs(), float(reward), False, truncated, info

    # -- internals ---------------------------------------------------------------------------
    def _powerflow(self, act: Action):
        p, q, sh = net_injection(self.feeder, self.snapshot(), act)
        return run_powerflow(self.feeder, p, q, shunt_q_mvar=sh)

    def _pandapower_check(self, act: Action, vm: np.ndarray) -> float:
        import pandapower as pp

        from safedispatch.network.io import to_pandapower

        f = self.feeder
        if self._pp_net is None:
            self._pp_net = to_pandapower(f)
        net = self._pp_net
        p, q, sh = net_injection(f, self.snapshot(), act)
        net.load.drop(net.load.index, inplace=True)
        net.sgen.drop(net.sgen.index, inplace=True)
        # only the capacitor banks: the fixed bus shunts (half-connected line charging, wards) stay
        cap_rows = net.shunt["controllable"].fillna(True).astype(bool) if "controllable" in net.shunt else True
        net.shunt.drop(net.shunt.index[cap_rows], inplace=True)
        for b in range(f.n_bus):
            if b == f.root_bus:
                continue
            pp.create_load(net, b, p_mw=-p[b], q_mvar=-q[b])
            if sh[b]:
                pp.create_shunt(net, b, q_mvar=-sh[b], p_mw=0.0, controllable=True)
        try:
            pp.runpp(net, tolerance_mva=1e-9, max_iteration=50)
        except pp.LoadflowNotConverged:
            return None
        return float(np.max(np.abs(net.res_bus.vm_pu.to_numpy() - vm)))

    def _obs(self):
        f = self.feeder
        r = self._row()
        pr = self.profiles
        frac = self._t / STEPS_PER_DAY
        if self.config.graph_obs:
            q_pv = np.zeros(f.n_bus)
            np.add.at(q_pv, f.pv.bus, self._prev.pv_q_mvar)
            q_cap = f.cap_shunt_q_mvar(self._prev.cap_step) if f.n_cap else np.zeros(f.n_bus)
            node = np.stack([self._vm, pr.load_p_mw[r] / self._load_scale, pr.load_q_mvar[r] / self._load_scale,
                             q_pv / self._load_scale, q_cap / self._load_scale], axis=1)
            return {"node": node.astype(np.float32), "adj": self.adjacency.copy()}
        s = f.pv.s_mva
        parts = [self._vm, pr.load_p_mw[r] / self._load_scale, pr.load_q_mvar[r] / self._load_scale,
                 pr.pv_avail_mw[r] / np.maximum(f.pv.p_max_mw, 1e-9), self._prev.pv_p_mw / s,
                 self._prev.pv_q_mvar / s, self._prev.cap_step / np.maximum(f.cap.n_steps, 1), self._soc,
                 [math.sin(2 * math.pi * frac), math.cos(2 * math.pi * frac)]]
        return np.concatenate([np.asarray(x, float).ravel() for x in parts]).astype(np.float32)
