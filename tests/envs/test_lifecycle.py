"""The envs follow Gymnasium's lifecycle: no step before reset or after the episode's end, and
bad reset arguments or unreadable actions are typed errors (#18 item 16)."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch

import safedispatch as sd
from safedispatch.envs import (
    DispatchEnv,
    EnvConfig,
    MultiAgentDispatchEnv,
    ParallelSafetyWrapper,
    ResetNeeded,
    SafetyWrapper,
    VectorDispatchEnv,
)
from safedispatch.scenarios.profiles import STEPS_PER_DAY

CFG = EnvConfig(case="ieee33-paperB-4")


def _is_reset_needed(exc_info):
    e = exc_info.value
    assert isinstance(e, gym.error.ResetNeeded) and isinstance(e, sd.SafeDispatchError)
    assert isinstance(e, sd.InputError)  # as the vector env's day-over error always was


def test_reset_needed_is_both_gymnasiums_and_ours():
    assert issubclass(ResetNeeded, gym.error.ResetNeeded)
    assert issubclass(ResetNeeded, sd.InputError) and issubclass(ResetNeeded, ValueError)


def _to_the_end(env, step):
    for k in range(STEPS_PER_DAY):
        out = step()
        trunc = out[3]
        assert bool(trunc.all() if isinstance(trunc, torch.Tensor) else trunc) == (k == STEPS_PER_DAY - 1)
    return out


def test_dispatch_env_lifecycle():
    env = DispatchEnv(CFG)
    a = np.zeros(env.action_space.shape, np.float32)
    with pytest.raises(ResetNeeded, match="before reset") as e:
        env.step(a)
    _is_reset_needed(e)
    with pytest.raises(ResetNeeded):
        env.step_setpoints(sd.Action(pv_p_mw=np.zeros(4), pv_q_mvar=np.zeros(4)))
    env.reset(seed=1)
    _to_the_end(env, lambda: env.step(a))
    for _ in range(2):  # raises until reset
        with pytest.raises(ResetNeeded, match="ended"):
            env.step(a)
    env.reset(seed=1)
    _, _, term, trunc, info = env.step(a)
    assert not term and not trunc and info["step"] == 0


def test_safety_wrapper_lifecycle():
    env = SafetyWrapper(DispatchEnv(CFG), certify_ac=False)
    a = np.zeros(env.action_space.shape, np.float32)
    with pytest.raises(ResetNeeded):
        env.step(a)
    env.reset(seed=2)
    _to_the_end(env, lambda: env.step(a))
    with pytest.raises(ResetNeeded):
        env.step(a)


def test_multi_agent_env_lifecycle():
    env = MultiAgentDispatchEnv(CFG, agents="bus")

    def acts():
        return {ag: np.zeros(env.action_space(ag).shape, np.float32) for ag in env.possible_agents}

    with pytest.raises(ResetNeeded, match="before reset"):
        env.step(acts())
    env.reset(seed=3)
    with pytest.raises(sd.InputError) as e:
        env.step([1.0, 2.0])
    assert e.value.field == "actions"
    _to_the_end(env, lambda: tuple(next(iter(d.values())) for d in env.step(acts())))
    assert env.agents == []
    with pytest.raises(ResetNeeded, match="ended"):
        env.step(acts())
    wrapped = ParallelSafetyWrapper(MultiAgentDispatchEnv(CFG, agents="bus"), certify_ac=False)
    with pytest.raises(ResetNeeded):
        wrapped.step(acts())


def test_vector_env_lifecycle():
    venv = VectorDispatchEnv(CFG, num_envs=2)
    a = np.zeros((2, venv.single_action_space.shape[0]), np.float32)
    with pytest.raises(ResetNeeded, match="before reset") as e:  # was AttributeError
        venv.step(a)
    _is_reset_needed(e)
    venv.reset(seed=0)
    _to_the_end(venv, lambda: venv.step(a))
    with pytest.raises(ResetNeeded, match="over"):
        venv.step(a)
    venv.reset(seed=0)
    venv.step(a)
    for bad in (a.astype(complex), "x", {"a": 1}, None):
        with pytest.raises(sd.InputError) as e:
            venv.step(bad)
        assert e.value.field == "actions"
    with pytest.raises(sd.InputError):
        venv.step(torch.zeros(2, a.shape[1], dtype=torch.complex64))
    for seed in ("x", -1, 1.5, True):
        with pytest.raises(sd.InputError) as e:
            venv.reset(seed=seed)
        assert e.value.field == "seed"


@pytest.mark.parametrize("options,field", [({"day": "x"}, "options.day"), ({"day": 1.5}, "options.day"),
                                           ({"day": None}, "options.day"), ({"day": True}, "options.day"),
                                           ({"day": 10**30}, "options.day"), ("day", "options"), (3, "options")])
def test_bad_reset_options_are_typed(options, field):
    env = DispatchEnv(CFG)
    with pytest.raises(sd.InputError) as e:
        env.reset(options=options)
    assert e.value.field == field
    multi = MultiAgentDispatchEnv(CFG, agents="bus")
    with pytest.raises(sd.InputError):
        multi.reset(options=options)


@pytest.mark.parametrize("seed", ["x", -1, 1.5, True, [1]])
def test_bad_seeds_are_typed(seed):
    with pytest.raises(sd.InputError) as e:
        DispatchEnv(CFG).reset(seed=seed)
    assert e.value.field == "seed"


def test_unreadable_actions_are_typed_and_leave_the_episode_running():
    env = DispatchEnv(CFG)
    env.reset(seed=4)
    n = env.action_space.shape[0]
    for bad in ("x", {"a": 1}, None, np.zeros(n, complex), np.zeros(n + 1), torch.zeros(n, requires_grad=True)):
        with pytest.raises(sd.InputError) as e:
            env.step(bad)
        assert e.value.field == "action"
    for bad in (1.0, (1, 2), sd.Action(pv_p_mw=np.full(4, np.inf), pv_q_mvar=np.zeros(4))):
        with pytest.raises(sd.InputError) as e:
            env.step_setpoints(bad)
        assert e.value.field.startswith("setpoints")
    _, _, _, _, info = env.step(np.zeros(n, np.float16))  # low precision is fine
    assert info["step"] == 0


def test_non_finite_actions_are_reported_and_replaced_by_no_control():
    """Report, don't raise (DESIGN.md): a diverged policy's NaN does not end the training loop;
    the step applies no control and says so."""
    env, ref = DispatchEnv(CFG), DispatchEnv(CFG)
    env.reset(seed=5)
    ref.reset(seed=5)
    n = env.action_space.shape[0]
    a = np.full(n, 0.3, np.float32)
    a[2] = np.nan
    _, r, term, trunc, info = env.step(a)
    assert info["action_invalid"] is True and info["action_out_of_bounds"] == 0.0
    _, r_ref, _, _, info_ref = ref.step_setpoints(ref.no_control())
    assert info_ref["action_invalid"] is False and r == r_ref
    np.testing.assert_array_equal(info["pv_p_mw"], info_ref["pv_p_mw"])
    np.testing.assert_array_equal(info["pv_q_mvar"], np.zeros(4))
    _, _, _, _, info = env.step(np.zeros(n, np.float32))
    assert info["action_invalid"] is False
    wrapped = SafetyWrapper(DispatchEnv(CFG), certify_ac=False)
    wrapped.reset(seed=5)
    _, _, _, _, info = wrapped.step(np.full(n, np.inf, np.float32))
    assert info["action_invalid"] is True
    multi = MultiAgentDispatchEnv(CFG, agents="bus")
    multi.reset(seed=5)
    acts = {ag: np.full(multi.action_space(ag).shape, np.nan, np.float32) for ag in multi.agents}
    _, _, _, _, infos = multi.step(acts)
    assert all(i["action_invalid"] for i in infos.values())
    venv = VectorDispatchEnv(CFG, num_envs=2)
    venv.reset(seed=5)
    b = np.zeros((2, n), np.float32)
    b[1, 0] = np.nan
    _, _, _, _, info = venv.step(b)
    assert info["action_invalid"].tolist() == [False, True]
    assert torch.isfinite(info["vm_pu"]).all()
