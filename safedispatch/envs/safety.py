"""``SafetyWrapper``: every action goes through the safety layer before the feeder sees it.

For :class:`~safedispatch.envs.dispatch.DispatchEnv` (Gymnasium) and
:class:`~safedispatch.envs.multi_agent.MultiAgentDispatchEnv` (PettingZoo): the raw action is
decoded into the set-points it requests, projected by a
:class:`~safedispatch.safety.layer.SafetyLayer` on the current snapshot (loads, PV availability,
previous set-points for the ramp limits, storage state) and the safe set-points are applied.
``info`` gains ``raw_action`` and ``safe_action`` (``[pv_p_mw | pv_q_mvar | ess_p_mw]``),
``correction_norm`` and ``projection_status`` (a :class:`~safedispatch.safety.layer.ProjectionStatus`
value); the multi-agent wrapper writes them into every agent's info.

``certify_ac=True`` (the default) checks each projection with the AC power flow and corrects the
model until it holds (:mod:`safedispatch.safety.certify`), so the applied set-points violate no
AC voltage or thermal limit unless the layer reports INFEASIBLE.
"""

from __future__ import annotations

import gymnasium as gym
from pettingzoo.utils import BaseParallelWrapper

from safedispatch.envs.dispatch import DispatchEnv
from safedispatch.envs.multi_agent import MultiAgentDispatchEnv
from safedispatch.errors import InputError
from safedispatch.safety.layer import SafetyLayer

__all__ = ["ParallelSafetyWrapper", "SafetyWrapper"]


def _layer_for(feeder, layer: SafetyLayer | None, layer_kw: dict) -> SafetyLayer:
    layer = layer if layer is not None else SafetyLayer(feeder, **layer_kw)
    if layer.feeder is not feeder:
        raise InputError("expected a SafetyLayer built on the env's feeder", "layer")
    return layer


def _project(layer: SafetyLayer, base: DispatchEnv, raw, certify_ac: bool, max_rounds: int):
    res = layer.project(raw, base.snapshot(), certify_ac=certify_ac, max_rounds=max_rounds)
    extra = {"raw_action": raw.to_vector(), "safe_action": res.action.to_vector(),
             "correction_norm": float(res.correction_norm), "projection_status": int(res.status)}
    if certify_ac:
        extra["certified"] = bool(res.certified)
    return res, extra


class SafetyWrapper(gym.Wrapper):
    """Projects each action of a :class:`DispatchEnv` onto the safe set (see the module docstring).

    Args:
        env: The :class:`DispatchEnv` itself (not wrapped: the wrapper applies set-points
            through it).
        layer: A :class:`SafetyLayer` for the env's feeder (default: built here with ``**layer_kw``).
        certify_ac: Certify every projection with the AC power flow.
        max_rounds: Certification rounds at most.

    Raises:
        InputError: ``env`` is not a DispatchEnv, or ``layer`` is for another feeder.
    """

    def __init__(self, env: DispatchEnv, layer: SafetyLayer | None = None, certify_ac: bool = True,
                 max_rounds: int = 6, **layer_kw):
        if not isinstance(env, DispatchEnv):
            raise InputError(f"expected a DispatchEnv, got {type(env).__name__}", "env")
        super().__init__(env)
        self.layer = _layer_for(env.feeder, layer, layer_kw)
        self.certify_ac, self.max_rounds = bool(certify_ac), int(max_rounds)

    def reset(self, *, seed=None, options=None):
        # a new episode starts the layer cold, so equal seeds and actions give bit-equal episodes
        self.layer.reset_warm_start()
        return self.env.reset(seed=seed, options=options)

    def step(self, action):
        """Project the action, then step the env (``info`` gains the projection's outputs).

        Raises:
            ResetNeeded: before :meth:`reset` or after the episode's end.
            InputError: an action the env cannot read.
        """
        base: DispatchEnv = self.env
        base.check_running()
        raw = base.decode(action)
        res, extra = _project(self.layer, base, raw, self.certify_ac, self.max_rounds)
        obs, reward, terminated, truncated, info = base.step_setpoints(res.action)
        info.update(extra)
        return obs, reward, terminated, truncated, info


class ParallelSafetyWrapper(BaseParallelWrapper):
    """:class:`SafetyWrapper` for :class:`MultiAgentDispatchEnv`: the agents' joint action is
    projected as one (the layer sees the whole feeder), and every agent's ``info`` carries the
    projection's outputs.

    Args:
        env: The :class:`MultiAgentDispatchEnv` itself.
        layer, certify_ac, max_rounds, layer_kw: As for :class:`SafetyWrapper`.

    Raises:
        InputError: ``env`` is not a MultiAgentDispatchEnv, or ``layer`` is for another feeder.
    """

    def __init__(self, env: MultiAgentDispatchEnv, layer: SafetyLayer | None = None, certify_ac: bool = True,
                 max_rounds: int = 6, **layer_kw):
        if not isinstance(env, MultiAgentDispatchEnv):
            raise InputError(f"expected a MultiAgentDispatchEnv, got {type(env).__name__}", "env")
        super().__init__(env)
        self.layer = _layer_for(env.core.feeder, layer, layer_kw)
        self.certify_ac, self.max_rounds = bool(certify_ac), int(max_rounds)

    def reset(self, seed=None, options=None):
        self.layer.reset_warm_start()
        return self.env.reset(seed=seed, options=options)

    def step(self, actions):
        """Project the joint action, then step the env (every agent's ``info`` gains the
        projection's outputs).

        Raises:
            ResetNeeded: before :meth:`reset` or after the day's end.
            InputError: bad actions.
        """
        env: MultiAgentDispatchEnv = self.env
        env.check_running()
        raw = env.core.decode(env.flat_action(actions))
        res, extra = _project(self.layer, env.core, raw, self.certify_ac, self.max_rounds)
        obs, rew, term, trunc, infos = env.step_setpoints(res.action)
        for info in infos.values():
            info.update({k: (v.copy() if hasattr(v, "copy") else v) for k, v in extra.items()})
        return obs, rew, term, trunc, infos
