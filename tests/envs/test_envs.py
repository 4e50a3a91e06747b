"""The Gymnasium and PettingZoo envs, the safety wrappers, and the metrics."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env
from pettingzoo.test import parallel_api_test

import safedispatch as sd
from safedispatch.envs import DispatchEnv, EnvConfig, MultiAgentDispatchEnv, ParallelSafetyWrapper, SafetyWrapper
from safedispatch.metrics import dispatch_metrics
from safedispatch.problems.types import net_injection
from safedispatch.scenarios import split_days

CONFIGS = [
    EnvConfig(case="ieee33-paperB-4"),
    EnvConfig(case="ieee33-paperC", control="q", reward="paperC", graph_obs=True),
    EnvConfig(case="ieee33-zones", reward="paperA"),
]


@pytest.fixture(autouse=True)
def _quiet_checker():
    # the observation boxes are unbounded on purpose (voltages and loads of any case)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*Box observation space (minimum|maximum) value.*")
        # check_env of SafetyWrapper: the wrapper is the point of that check
        warnings.filterwarnings("ignore", message=".*is different from the unwrapped version.*")
        yield


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: c.case)
def test_gymnasium_checker(cfg):
    check_env(DispatchEnv(cfg), skip_render_check=True)
    check_env(SafetyWrapper(DispatchEnv(cfg)), skip_render_check=True)


@pytest.mark.parametrize("case,agents,n", [("ieee33-paperB", "auto", 48), ("ieee33-paperB", "bus", 4),
                                           ("ieee33-paperC", "device", 4), ("ieee33-zones", "auto", 4)])
def test_pettingzoo_parallel_api(case, agents, n):
    cfg = EnvConfig(case=case, reward="paperA" if case == "ieee33-zones" else "paperB")
    env = MultiAgentDispatchEnv(cfg, agents=agents)
    assert len(env.possible_agents) == n
    parallel_api_test(env, num_cycles=100)
    parallel_api_test(ParallelSafetyWrapper(MultiAgentDispatchEnv(cfg, agents=agents)), num_cycles=10)


def _rollout(env, seed, n=30):
    obs, _ = env.reset(seed=seed)
    env.action_space.seed(seed)
    out = [obs]
    for _ in range(n):
        obs, r, te, tr, info = env.step(env.action_space.sample())
        out += [obs, r, info["vm_pu"]]
    return out


def test_seeding_reproduces_episodes():
    a = _rollout(DispatchEnv(EnvConfig(case="ieee33-paperB-4")), 7)
    b = _rollout(DispatchEnv(EnvConfig(case="ieee33-paperB-4")), 7)
    c = _rollout(DispatchEnv(EnvConfig(case="ieee33-paperB-4")), 8)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c))


def test_day_is_one_episode_truncated_not_terminated():
    env = DispatchEnv(EnvConfig(case="ieee33-paperC", control="q", reward="paperC", split="test"))
    env.reset(seed=0, options={"day": int(env.days[3])})
    steps, done = 0, False
    while not done:
        _, _, term, trunc, info = env.step(env.action_space.sample())
        assert not term
        steps += 1
        done = trunc
    assert steps == 96 and info["step"] == 95 and info["day"] == env.days[3]
    with pytest.raises(sd.InputError):
        env.reset(options={"day": int(split_days("train")[0])})


def test_physics_match_pandapower_and_info_is_plain():
    env = DispatchEnv(EnvConfig(case="ieee33-paperC", control="q", reward="paperC", validate=True))
    env.reset(seed=3)
    for _ in range(8):
        _, _, _, _, info = env.step(env.action_space.sample())
        assert info["pandapower_converged"] and info["pandapower_max_dv_pu"] < 1e-6
        for k, v in info.items():
            assert isinstance(v, (np.ndarray, float, int, bool)), k


def test_device_limits_and_reward_terms():
    cfg = EnvConfig(case="ieee33-paperB-4", w_voltage=100.0, w_loss=1.0, w_curtail=0.5)
    env = DispatchEnv(cfg)
    f = env.feeder
    env.reset(seed=0, options={"day": int(env.days[100])})
    for _ in range(50):  # to midday
        env.step(-np.ones(env.action_space.shape, np.float32))
    snap = env.snapshot()
    a = np.ones(env.action_space.shape, np.float32)  # full P (above availability) and full Q
    _, r, _, _, info = env.step(a)
    # P capped at the available PV, Q at the rating's remainder (active power priority)
    np.testing.assert_allclose(info["pv_p_mw"], np.minimum(snap.pv_avail_mw, f.pv.s_mva))
    np.testing.assert_allclose(info["pv_q_mvar"], np.sqrt(f.pv.s_mva**2 - info["pv_p_mw"] ** 2))
    assert info["device_limited_mva"] > 0 and info["curtailed_mw"] == pytest.approx(0.0, abs=1e-12)
    assert info["action_out_of_bounds"] == 0.0
    # outside the Box: clipped to it (the same step as a = 1) and the excess reported
    env2 = DispatchEnv(cfg)
    env2.reset(seed=0, options={"day": int(env.days[100])})
    for _ in range(50):
        env2.step(-np.ones(env.action_space.shape, np.float32))
    _, r2, _, _, info2 = env2.step(1.5 * a)
    assert info2["action_out_of_bounds"] == pytest.approx(0.5) and r2 == r
    # the reward from the voltages and losses of an independent pandapower run
    import pandapower as pp
    net = sd.to_pandapower(f)
    p, q, _ = net_injection(f, snap, sd.Action(pv_p_mw=info["pv_p_mw"], pv_q_mvar=info["pv_q_mvar"]))
    net.load.drop(net.load.index, inplace=True)
    net.sgen.drop(net.sgen.index, inplace=True)
    for b in range(1, f.n_bus):
        pp.create_load(net, b, p_mw=-p[b], q_mvar=-q[b])
    pp.runpp(net, tolerance_mva=1e-10)
    v = net.res_bus.vm_pu.to_numpy()[1:]
    loss = net.res_line.pl_mw.sum() + (net.res_trafo.pl_mw.sum() if len(net.trafo) else 0.0)
    assert r == pytest.approx(-(100.0 * np.sum((v - 1.0) ** 2) + loss), rel=1e-6)
    excess = np.maximum(v - 1.05, 0) + np.maximum(0.95 - v, 0)
    assert info["cost"] == pytest.approx(excess.sum(), abs=1e-8)


def test_multi_agent_env_is_the_single_env_step_by_step():
    cfg = EnvConfig(case="ieee33-paperB", split="validation")
    single, multi = DispatchEnv(cfg), MultiAgentDispatchEnv(cfg, agents="device")
    single.reset(seed=4)
    obs, _ = multi.reset(seed=4)
    assert single.day == multi.core.day
    rng = np.random.default_rng(0)
    for _ in range(10):
        acts = {a: rng.uniform(-1, 1, multi.action_space(a).shape).astype(np.float32) for a in multi.agents}
        flat = multi.flat_action(acts)
        o1, r1, _, _, i1 = single.step(flat.astype(np.float32))
        _, r2, _, _, i2 = multi.step(acts)
        assert all(r == r1 for r in r2.values())
        np.testing.assert_array_equal(i1["vm_pu"], i2["pv_3"]["vm_pu"])
        np.testing.assert_array_equal(o1, multi.state())
    with pytest.raises(sd.InputError):
        multi.step({"pv_0": np.zeros(2)})


@pytest.mark.parametrize("case,cfg_kw,days", [
    ("ieee33-paperB-4", {}, None),  # every test day
    ("ieee33-paperB", {}, 3),
    ("ieee33-paperC", {"control": "q", "reward": "paperC"}, 3),
])
def test_safety_wrapper_random_policy_has_no_ac_violation(case, cfg_kw, days):
    """A random policy through the wrapper over full test days: no AC voltage violation except
    on steps the layer flags INFEASIBLE (the env's AC power flow matches pandapower, tested above)."""
    env = SafetyWrapper(DispatchEnv(EnvConfig(case=case, split="test", **cfg_kw)))
    env.action_space.seed(0)
    n = bad = infeasible = projected = 0
    for day in env.unwrapped.days[:days]:
        env.reset(seed=0, options={"day": int(day)})
        while True:
            _, _, _, trunc, info = env.step(env.action_space.sample())
            n += 1
            infeasible += info["projection_status"] == sd.ProjectionStatus.INFEASIBLE
            projected += info["projection_status"] == sd.ProjectionStatus.PROJECTED
            if info["projection_status"] != sd.ProjectionStatus.INFEASIBLE and info["cost"] > 1e-9:
                bad += 1
            if trunc:
                break
    assert n >= 96 * 3 and projected > n / 4  # the random policy does need the layer
    assert bad == 0, (bad, n, infeasible)


def test_wrapper_reports_projection():
    env = ParallelSafetyWrapper(MultiAgentDispatchEnv(EnvConfig(case="ieee33-zones", reward="paperA")))
    env.reset(seed=0)
    _, _, _, _, infos = env.step({a: np.ones(env.action_space(a).shape, np.float32) for a in env.agents})
    i = infos["zone_2"]
    assert i["safe_action"].shape == i["raw_action"].shape == (3 * 4,)
    assert i["correction_norm"] == pytest.approx(np.linalg.norm(i["safe_action"] - i["raw_action"]), rel=1e-9)
    with pytest.raises(sd.InputError):
        SafetyWrapper(MultiAgentDispatchEnv(EnvConfig()))


def test_metrics_against_direct_computation():
    f = sd.load_case("ieee33-paperB-4")
    rng = np.random.default_rng(1)
    T = 50
    vm = rng.uniform(0.93, 1.07, (T, f.n_bus))
    vm[:, 0] = 1.0
    loss = rng.uniform(0.05, 0.3, T)
    av = rng.uniform(0, 3, (T, 4))
    p = av * rng.uniform(0.5, 1, (T, 4))
    q = rng.uniform(-1, 1, (T, 4))
    st = rng.integers(0, 3, T)
    cn = rng.uniform(0, 1, T)
    m = dispatch_metrics(f, vm, loss, av, p, q, dt_h=0.25, correction_norm=cn, projection_status=st)
    viol_steps = excess_sum = devs = 0.0
    for t in range(T):
        ex = [max(0.0, v - 1.05) + max(0.0, 0.95 - v) for v in vm[t, 1:]]
        viol_steps += any(e > 0 for e in ex)
        excess_sum += sum(ex)
        devs += sum(abs(v - 1.0) for v in vm[t, 1:])
    assert m["violation_rate"] == pytest.approx(viol_steps / T)
    assert m["controllable_rate"] == pytest.approx(1 - viol_steps / T)
    assert m["violation_pu"] == pytest.approx(excess_sum / T)
    assert m["mean_voltage_deviation_pu"] == pytest.approx(devs / (T * 32))
    assert m["losses_mwh"] == pytest.approx(loss.sum() / 4) and m["losses_mw_summed"] == pytest.approx(loss.sum())
    assert m["curtailment_ratio"] == pytest.approx((av - p).sum() / av.sum())
    assert m["intervention_rate"] == pytest.approx((st != 0).mean())
    assert m["mean_correction"] == pytest.approx(cn.mean())
    # batches of episodes flatten into time
    m2 = dispatch_metrics(f, vm.reshape(5, 10, -1), loss.reshape(5, 10))
    assert m2["rms_voltage_deviation_pu"] == pytest.approx(m["rms_voltage_deviation_pu"])
    with pytest.raises(sd.InputError):
        dispatch_metrics(f, vm[:, :5], loss)
    with pytest.raises(sd.InputError):
        dispatch_metrics(f, vm, loss[:-1])
    with pytest.raises(sd.InputError):  # no step: no mean of nothing (NaN) leaves the library
        dispatch_metrics(f, vm[:0], loss[:0])


@pytest.mark.parametrize("cfg", [EnvConfig(case="ieee33-paperB-4"),
                                 EnvConfig(case="ieee33-paperC", control="q", reward="paperC"),
                                 EnvConfig(case="ieee33-zones")], ids=lambda c: c.case)
def test_vector_env_matches_single_envs_step_by_step(cfg):
    from safedispatch.envs.vector import VectorDispatchEnv

    B = 3
    venv = VectorDispatchEnv(cfg, num_envs=B)
    singles = [DispatchEnv(cfg) for _ in range(B)]
    obs, _ = venv.reset(seed=10)
    ref = np.stack([s.reset(seed=10 + i)[0] for i, s in enumerate(singles)])
    np.testing.assert_allclose(obs.numpy(), ref, rtol=1e-6, atol=1e-6)  # single env observations are float32
    rng = np.random.default_rng(0)
    for _ in range(96):
        a = rng.uniform(-1, 1, (B, venv.single_action_space.shape[0])).astype(np.float32)
        obs, r, term, trunc, info = venv.step(a)
        for i, s in enumerate(singles):
            o1, r1, t1, tr1, i1 = s.step(a[i])
            np.testing.assert_allclose(obs[i].numpy(), o1, rtol=1e-6, atol=1e-6)
            assert r[i].item() == pytest.approx(r1, rel=1e-9, abs=1e-9)
            np.testing.assert_allclose(info["vm_pu"][i].numpy(), i1["vm_pu"], atol=1e-9)
            assert info["cost"][i].item() == pytest.approx(i1["cost"], abs=1e-9)
            assert bool(trunc[i]) == tr1 and not bool(term[i])
    assert bool(trunc.all())
    with pytest.raises(sd.InputError):
        venv.step(a)


def test_vector_env_with_torch_safety_layer_matches_wrapped_single_envs():
    from safedispatch.envs.vector import VectorDispatchEnv

    cfg = EnvConfig(case="ieee33-paperB-4")
    B = 3
    venv = VectorDispatchEnv(cfg, num_envs=B, safety=True)
    singles = [SafetyWrapper(DispatchEnv(cfg), certify_ac=False) for _ in range(B)]
    venv.reset(seed=3)
    for i, s in enumerate(singles):
        s.reset(seed=3 + i)
    rng = np.random.default_rng(1)
    statuses = set()
    for _ in range(40):
        a = rng.uniform(-1, 1, (B, 8)).astype(np.float32)
        _, r, _, _, info = venv.step(a)
        for i, s in enumerate(singles):
            _, r1, _, _, i1 = s.step(a[i])
            statuses.add(i1["projection_status"])
            assert int(info["projection_status"][i]) == i1["projection_status"]
            np.testing.assert_allclose(info["safe_action"][i].numpy(), i1["safe_action"], atol=1e-5)
            assert r[i].item() == pytest.approx(r1, rel=1e-5, abs=1e-5)
    assert sd.ProjectionStatus.PROJECTED in statuses
    with pytest.raises(sd.InputError):
        VectorDispatchEnv(EnvConfig(case="ieee33-paperC", control="q", reward="paperC"), num_envs=2, safety=True)
