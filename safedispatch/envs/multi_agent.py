"""``MultiAgentDispatchEnv``: the same feeder day as :class:`DispatchEnv`, one agent per group of
devices (PettingZoo Parallel API).

Agents (``agents=`` of the constructor):

* ``"zone"`` (paper A): one agent per zone of ``feeder.zones``, controlling the devices inside;
* ``"bus"`` (paper B's clusters): one agent per bus with devices, controlling all of them;
* ``"device"`` (paper B's 48 inverter agents, paper C's inverters and capacitor banks): one agent
  per inverter, capacitor bank and storage unit;
* ``"auto"``: ``"zone"`` when the case declares more than one zone, else ``"device"``.

Each agent's action is its slice of :class:`DispatchEnv`'s action vector (same meaning, same
``Box(-1, 1)``); its observation is local: the voltages and loads (per unit of the case's peak
bus load) at its buses, its inverters' availability and previous set-points, its capacitor
steps and storage state, and the time of day. ``state()`` is the global observation of
:class:`DispatchEnv` (for a centralized critic). All agents share the team reward; every
agent's ``info`` is the step's info. The day's end truncates every agent (and empties
``agents``, as the Parallel API expects); ``step`` before ``reset`` or after the day's end
raises :class:`~safedispatch.envs.dispatch.ResetNeeded`.
"""

from __future__ import annotations

import math

import gymnasium as gym
import numpy as np
from pettingzoo import ParallelEnv

from safedispatch.envs.dispatch import DispatchEnv, EnvConfig, ResetNeeded
from safedispatch.errors import InputError
from safedispatch.network.feeder import Feeder
from safedispatch.problems.types import Action, real_array
from safedispatch.scenarios.profiles import STEPS_PER_DAY

__all__ = ["MultiAgentDispatchEnv"]

GROUPINGS = ("auto", "zone", "bus", "device")


class MultiAgentDispatchEnv(ParallelEnv):
    """Multi-agent dispatch of one feeder day (see the module docstring).

    Args:
        config: :class:`EnvConfig`.
        agents: ``"auto"``, ``"zone"``, ``"bus"`` or ``"device"``.
        feeder: A feeder to use instead of ``config.case``.

    Raises:
        InputError: bad settings, or a grouping that leaves an agent with nothing to control.
    """

    metadata = {"render_modes": [], "name": "safedispatch_multi_agent_v0"}

    def __init__(self, config: EnvConfig | None = None, agents: str = "auto", feeder: Feeder | None = None):
        cfg = config or EnvConfig()
        if cfg.graph_obs:
            raise InputError("graph observations are for the single-agent env", "graph_obs")
        self.core = DispatchEnv(cfg, feeder=feeder)
        f = self.core.feeder
        if agents not in GROUPINGS:
            raise InputError(f"expected one of {GROUPINGS}, got {agents!r}", "agents")
        if agents == "auto":
            agents = "zone" if len(f.zones) > 1 else "device"
        self.grouping = agents
        groups = self._groups(f, agents)
        self.possible_agents = [name for name, _ in groups]
        self.agents: list[str] = []
        n_pv = f.n_pv
        o = self.core.n_act_pv
        self._act_idx, self._obs_idx = {}, {}
        for name, (pv, cap, ess, buses) in groups:
            idx = list(pv) + ([n_pv + i for i in pv] if cfg.control == "pq" else [])
            idx += [o + c for c in cap] + [o + f.n_cap + e for e in ess]
            self._act_idx[name] = np.array(idx, dtype=np.int64)
            self._obs_idx[name] = (np.array(sorted(buses), dtype=np.int64), np.array(pv, dtype=np.int64),
                                   np.array(cap, dtype=np.int64), np.array(ess, dtype=np.int64))
        self._n_act = self.core.action_space.shape[0]
        # one space object per agent, returned on every call (the Parallel API test checks it)
        self._act_spaces = {a: gym.spaces.Box(-1.0, 1.0, (self._act_idx[a].size,), dtype=np.float32)
                            for a in self.possible_agents}
        self._obs_spaces = {}
        for a in self.possible_agents:
            b, pv, cap, ess = self._obs_idx[a]
            n = 3 * b.size + 3 * pv.size + cap.size + ess.size + 2
            self._obs_spaces[a] = gym.spaces.Box(-np.inf, np.inf, (n,), dtype=np.float32)

    @staticmethod
    def _groups(f: Feeder, how: str) -> list:
        """``[(name, (pv, cap, ess, buses))]`` with device indices and the buses they observe."""
        pv_bus, cap_bus, ess_bus = f.pv.bus, f.cap.bus, f.ess.bus
        out = []
        if how == "device":
            out += [(f"pv_{i}", ([i], [], [], {int(pv_bus[i])})) for i in range(f.n_pv)]
            out += [(f"cap_{i}", ([], [i], [], {int(cap_bus[i])})) for i in range(f.n_cap)]
            out += [(f"ess_{i}", ([], [], [i], {int(ess_bus[i])})) for i in range(f.n_ess)]
        elif how == "bus":
            buses = sorted(set(pv_bus.tolist()) | set(cap_bus.tolist()) | set(ess_bus.tolist()))
            for b in buses:
                out.append((f"bus_{b}", (np.flatnonzero(pv_bus == b).tolist(), np.flatnonzero(cap_bus == b).tolist(),
                                         np.flatnonzero(ess_bus == b).tolist(), {int(b)})))
        else:
            if not f.zones:
                raise InputError("the case declares no zones", "agents")
            for k, z in enumerate(f.zones):
                zs = set(np.asarray(z).tolist())
                grp = ([i for i in range(f.n_pv) if pv_bus[i] in zs], [i for i in range(f.n_cap) if cap_bus[i] in zs],
                       [i for i in range(f.n_ess) if ess_bus[i] in zs], zs)
                if not (grp[0] or grp[1] or grp[2]):
                    raise InputError(f"zone {k} has no device to control", "agents")
                out.append((f"zone_{k}", grp))
        return out

    def action_space(self, agent: str) -> gym.spaces.Box:
        return self._act_spaces[agent]

    def observation_space(self, agent: str) -> gym.spaces.Box:
        return self._obs_spaces[agent]

    def state(self) -> np.ndarray:
        """The global observation (:class:`DispatchEnv`'s) for a centralized critic."""
        return self.core._obs()

    def _local(self, agent: str) -> np.ndarray:
        c = self.core
        f = c.feeder
        r = c._row()
        pr = c.profiles
        b, pv, cap, ess = self._obs_idx[agent]
        s = f.pv.s_mva[pv]
        frac = c.step_index / STEPS_PER_DAY
        parts = [c._vm[b], pr.load_p_mw[r, b] / c._load_scale, pr.load_q_mvar[r, b] / c._load_scale,
                 pr.pv_avail_mw[r, pv] / np.maximum(f.pv.p_max_mw[pv], 1e-9), c._prev.pv_p_mw[pv] / s,
                 c._prev.pv_q_mvar[pv] / s, c._prev.cap_step[cap] / np.maximum(f.cap.n_steps[cap], 1), c._soc[ess],
                 [math.sin(2 * math.pi * frac), math.cos(2 * math.pi * frac)]]
        return np.concatenate([np.asarray(x, float).ravel() for x in parts]).astype(np.float32)

    def reset(self, seed: int | None = None, options: dict | None = None):
        _, info = self.core.reset(seed=seed, options=options)
        self.agents = list(self.possible_agents)
        return {a: self._local(a) for a in self.agents}, {a: dict(info) for a in self.agents}

    def flat_action(self, actions: dict) -> np.ndarray:
        """The :class:`DispatchEnv` action vector of the agents' actions.

        Raises:
            InputError: ``actions`` is not a dict, a live agent without an action, an unknown
                agent, an action that is not a real vector of the agent's size (NaN or inf
                entries are no error: see :class:`~safedispatch.envs.dispatch.DispatchEnv`).
        """
        if not isinstance(actions, dict):
            raise InputError(f"expected a dict of actions by agent, got {type(actions).__name__}", "actions")
        missing = [a for a in self.agents if a not in actions]
        if missing:
            raise InputError(f"expected an action for every live agent, missing {missing[:5]}", "actions")
        flat = np.zeros(self._n_act)
        for a, act in actions.items():
            if not isinstance(a, str) or a not in self._act_idx:
                raise InputError(f"unknown agent {a!r}", "actions")
            # NaN or inf pass on: the core env reports them and applies no control
            flat[self._act_idx[a]] = real_array(act, (self._act_idx[a].size,), f"actions[{a!r}]")
        return flat

    def check_running(self) -> None:
        """Raise :class:`~safedispatch.envs.dispatch.ResetNeeded` unless an episode is running."""
        if not self.agents:
            self.core.check_running()  # its message says whether reset was never called
            raise ResetNeeded("no live agents: call reset() to start an episode")

    def step(self, actions: dict):
        """One step of every live agent.

        Raises:
            ResetNeeded: before :meth:`reset` or after the day's end.
            InputError: bad actions (see :meth:`flat_action`).
        """
        self.check_running()
        return self.step_setpoints(self.core.decode(self.flat_action(actions)))

    def step_setpoints(self, setpoints: Action):
        """Apply set-points for all devices (e.g. a safety layer's output); same return as
        :meth:`step`.

        Raises:
            ResetNeeded: before :meth:`reset` or after the day's end.
            InputError: ``setpoints`` is not an Action of the feeder's sizes.
        """
        self.check_running()
        _, reward, terminated, truncated, info = self.core.step_setpoints(setpoints)
        agents = self.agents
        obs = {a: self._local(a) for a in agents}
        rew = {a: reward for a in agents}
        term = {a: terminated for a in agents}
        trunc = {a: truncated for a in agents}
        infos = {a: dict(info) for a in agents}
        if terminated or truncated:
            self.agents = []
        return obs, rew, term, trunc, infos

    def render(self):
        return None

    def close(self):
        self.core.close()
