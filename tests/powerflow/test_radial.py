"""run_powerflow against published values (Baran & Wu 1989) and pandapower's Newton-Raphson."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import safedispatch as sd
from tests.conftest import pp_powerflow, random_injection

TOL_PU = 1e-6


@pytest.fixture(scope="module")
def ieee33():
    return sd.load_case("ieee33")


def test_baran_wu_published_values(ieee33):
    # Baran & Wu (1989): 202.68 kW losses, minimum voltage 0.91309 pu at bus 18 (1-based)
    p, q = ieee33.nominal_injection()
    r = sd.run_powerflow(ieee33, p, q)
    assert r.converged
    assert r.p_loss_mw * 1000 == pytest.approx(202.68, abs=0.01)
    assert r.vm_pu.min() == pytest.approx(0.91309, abs=5e-6)
    assert int(r.vm_pu.argmin()) + 1 == 18
    # power balance: slack supplies the load plus the losses
    assert r.p_slack_mw == pytest.approx(3.715 + r.p_loss_mw, abs=1e-9)


def _compare(feeder, r, net, k=None):
    pick = (lambda a: a) if k is None else (lambda a: a[k])
    n_line = len(net.line)
    vm = pick(r.vm_pu)
    np.testing.assert_allclose(vm, net.res_bus.vm_pu.to_numpy(), atol=TOL_PU, rtol=0)
    np.testing.assert_allclose(pick(r.va_degree), net.res_bus.va_degree.to_numpy(), atol=1e-5, rtol=0)
    # lines are the first n_line branches in to_pandapower's order
    np.testing.assert_allclose(pick(r.i_ka)[:n_line], net.res_line.i_ka.to_numpy(), atol=1e-7, rtol=0)
    for ours, theirs in (("p_from_mw", "p_from_mw"), ("q_from_mvar", "q_from_mvar"), ("p_to_mw", "p_to_mw"),
                         ("q_to_mvar", "q_to_mvar")):
        np.testing.assert_allclose(pick(getattr(r, ours))[:n_line], net.res_line[theirs].to_numpy(), atol=1e-6)
    assert pick(r.p_loss_mw) == pytest.approx(net.res_line.pl_mw.sum(), abs=1e-6)
    assert pick(r.p_slack_mw) == pytest.approx(net.res_ext_grid.p_mw.iloc[0], abs=1e-6)
    assert pick(r.q_slack_mvar) == pytest.approx(net.res_ext_grid.q_mvar.iloc[0], abs=1e-6)


@pytest.mark.parametrize("case,extra_gen", [("ieee33", 0.0), ("ieee33", 0.6), ("simbench-mv-rural", 0.0),
                                            ("simbench-mv-rural", 0.8), ("simbench-mv-urban", 0.0)])
def test_matches_pandapower_random_injections(case, extra_gen, rng):
    feeder = sd.load_case(case)
    K = 6
    P, Q = zip(*(random_injection(feeder, rng, load=(0.0, 1.6), pv=(0.0, 1.0), extra_gen_mw=extra_gen)
                 for _ in range(K)))
    P, Q = np.array(P), np.array(Q)
    r = sd.run_powerflow(feeder, P, Q)
    assert r.converged.all()
    for k in range(K):
        _compare(feeder, r, pp_powerflow(feeder, P[k], Q[k]), k)


def test_heavy_reverse_flow_up_to_1_3_pu(ieee33, rng):
    # generation far beyond the load at the feeder ends: voltages climb to ~1.3 pu
    p, q = ieee33.nominal_injection()
    p = p * 0.3
    ends = np.array([18, 22, 25, 33]) - 1
    p[ends] += [6.5, 2.0, 2.5, 6.5]
    r = sd.run_powerflow(ieee33, p, q)
    assert r.converged
    assert 1.25 < r.vm_pu.max() < 1.35
    _compare(ieee33, r, pp_powerflow(ieee33, p, q))


def test_large_synthetic_feeder_matches_pandapower(rng):
    feeder = sd.load_case("ieee33x30")
    p, q = random_injection(feeder, rng, load=(0.3, 1.2), pv=(0.0, 1.0))
    r = sd.run_powerflow(feeder, p, q)
    assert r.converged
    _compare(feeder, r, pp_powerflow(feeder, p, q))


def test_capacitor_shunts_and_slack_voltage_match_pandapower(rng):
    feeder = sd.load_case("ieee33-paperC")
    p, q = random_injection(feeder, rng)
    shunt = feeder.cap_shunt_q_mvar(np.array([1, 1]))
    r = sd.run_powerflow(feeder, p, q, shunt_q_mvar=shunt, v_root_pu=1.03)
    net = pp_powerflow(feeder, p, q, shunt_q_mvar=shunt, v_root_pu=1.03)
    _compare(feeder, r, net)
    # a capacitor's injection is Q_rated * V^2: check against pandapower's shunt result
    vm_cap = r.vm_pu[feeder.cap.bus]
    np.testing.assert_allclose(-net.res_shunt.q_mvar.to_numpy(), feeder.cap.q_step_mvar * vm_cap**2, rtol=1e-7)


def test_batch_equals_single_and_per_sample_slack(ieee33, rng):
    P, Q = zip(*(random_injection(ieee33, rng) for _ in range(5)))
    P, Q = np.array(P), np.array(Q)
    v0 = np.linspace(0.97, 1.05, 5)
    rb = sd.run_powerflow(ieee33, P, Q, v_root_pu=v0)
    for k in range(5):
        r1 = sd.run_powerflow(ieee33, P[k], Q[k], v_root_pu=v0[k])
        np.testing.assert_allclose(rb.vm_pu[k], r1.vm_pu, atol=1e-12)
        assert rb.vm_pu[k, ieee33.root_bus] == pytest.approx(v0[k])
    # a 100-sample batch runs the parallel kernel: same answers as the serial one
    P100 = np.repeat(P, 20, axis=0)
    r100 = sd.run_powerflow(ieee33, P100, np.repeat(Q, 20, axis=0))
    np.testing.assert_allclose(r100.vm_pu[::20], sd.run_powerflow(ieee33, P, Q).vm_pu, atol=1e-12)


def test_out_of_service_branches_carry_nothing(ieee33):
    p, q = ieee33.nominal_injection()
    r = sd.run_powerflow(ieee33, p, q)
    off = ~ieee33.branch.in_service
    assert off.sum() == 5
    assert (r.i_ka[off] == 0).all() and (r.p_from_mw[off] == 0).all() and (r.loading[off] == 0).all()


@pytest.mark.parametrize("dtype,atol", [(torch.float64, 1e-9), (torch.float32, 2e-4)])
def test_torch_matches_numpy(dtype, atol, rng):
    feeder = sd.load_case("simbench-mv-rural")
    P, Q = zip(*(random_injection(feeder, rng, extra_gen_mw=0.5) for _ in range(8)))
    P, Q = np.array(P), np.array(Q)
    shunt = np.zeros_like(P)
    shunt[:, 5] = 0.5
    rn = sd.run_powerflow(feeder, P, Q, shunt_q_mvar=shunt)
    tol = 1e-9 if dtype == torch.float64 else 1e-6
    rt = sd.run_powerflow(feeder, torch.tensor(P, dtype=dtype), torch.tensor(Q, dtype=dtype),
                          shunt_q_mvar=torch.tensor(shunt, dtype=dtype), tol_pu=tol)
    assert isinstance(rt.vm_pu, torch.Tensor) and rt.vm_pu.dtype == dtype
    assert bool(rt.converged.all())
    for name in ("vm_pu", "va_degree", "i_ka", "p_from_mw", "q_to_mvar", "p_loss_mw", "p_slack_mw", "q_slack_mvar"):
        scale = 1.0 if name != "va_degree" else 10.0
        np.testing.assert_allclose(getattr(rt, name).numpy(), getattr(rn, name), atol=atol * scale, err_msg=name)


def test_torch_gradient_matches_finite_differences(ieee33, rng):
    p, q = random_injection(ieee33, rng)
    pt = torch.tensor(p, dtype=torch.float64, requires_grad=True)
    qt = torch.tensor(q, dtype=torch.float64)

    def f(x):
        return sd.run_powerflow(ieee33, x, qt, tol_pu=1e-13).vm_pu[17]

    (g,) = torch.autograd.grad(f(pt), pt)
    h = 1e-6
    for bus in (5, 12, 17, 30):
        e = torch.zeros_like(pt)
        e[bus] = h
        fd = (f(pt.detach() + e) - f(pt.detach() - e)) / (2 * h)
        assert float(g[bus]) == pytest.approx(float(fd), rel=1e-5, abs=1e-9)


@pytest.mark.gpu
def test_torch_on_cuda_matches_cpu(ieee33, rng):
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device on this machine")
    p, q = random_injection(ieee33, rng)
    rc = sd.run_powerflow(ieee33, torch.tensor(p, device="cuda"), torch.tensor(q, device="cuda"))
    rn = sd.run_powerflow(ieee33, p, q)
    np.testing.assert_allclose(rc.vm_pu.cpu().numpy(), rn.vm_pu, atol=1e-10)


# ---- non-convergence is flagged, never NaN --------------------------------------------------

@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_voltage_collapse_is_flagged_and_finite(ieee33, backend):
    p, q = ieee33.nominal_injection()
    P = np.stack([p, 12 * p, p * 0.5])  # the middle sample is far beyond the loadability limit
    Q = np.stack([q, 12 * q, q * 0.5])
    if backend == "torch":
        P, Q = torch.tensor(P), torch.tensor(Q)
    r = sd.run_powerflow(ieee33, P, Q)
    conv = np.asarray(r.converged)
    assert conv.tolist() == [True, False, True]
    assert int(np.asarray(r.status)[1]) in (1, 2)
    for name in ("vm_pu", "va_degree", "i_ka", "p_loss_mw", "p_slack_mw"):
        assert np.isfinite(np.asarray(getattr(r, name))).all(), name
    # the good samples are unaffected by the bad one
    np.testing.assert_allclose(np.asarray(r.vm_pu)[0], sd.run_powerflow(ieee33, p, q).vm_pu, atol=1e-12)


def test_iteration_limit_is_flagged(ieee33):
    p, q = ieee33.nominal_injection()
    r = sd.run_powerflow(ieee33, p, q, max_iter=2)
    assert not r.converged and int(r.status) == 1 and int(r.iterations) == 2
    assert np.isfinite(r.vm_pu).all()


@settings(max_examples=60, deadline=None)
@given(scale=st.floats(0.0, 6.0), pv=st.floats(0.0, 3.0), seed=st.integers(0, 2**31 - 1))
def test_property_converged_means_power_balance_else_flagged(scale, pv, seed):
    feeder = sd.load_case("ieee33-paperB-4")
    rng = np.random.default_rng(seed)
    p, q = feeder.nominal_injection()
    p = p * scale * rng.uniform(0.5, 1.5, feeder.n_bus)
    q = q * scale * rng.uniform(-0.5, 1.5, feeder.n_bus)
    np.add.at(p, feeder.pv.bus, pv * feeder.pv.p_max_mw * rng.uniform(0, 1, feeder.n_pv))
    r = sd.run_powerflow(feeder, p, q)
    for name in r.__dataclass_fields__:
        assert np.isfinite(np.asarray(getattr(r, name), dtype=float)).all(), name
    if r.converged:
        # energy conservation: supply = load + losses
        assert r.p_slack_mw + p.sum() == pytest.approx(r.p_loss_mw, abs=1e-6)
        assert r.p_loss_mw >= -1e-12
    else:
        assert int(r.status) in (1, 2)


# ---- bad input raises typed errors naming the field -----------------------------------------

@pytest.mark.parametrize("kwargs,field", [
    (dict(p_mw=np.zeros(32)), "p_mw"),
    (dict(p_mw=np.zeros((2, 3, 33))), "p_mw"),
    (dict(q_mvar=np.full(33, np.nan)), "q_mvar"),
    (dict(q_mvar=np.full(33, np.inf)), "q_mvar"),
    (dict(q_mvar=np.zeros((2, 33))), "q_mvar"),
    (dict(v_root_pu=-1.0), "v_root_pu"),
    (dict(v_root_pu=np.nan), "v_root_pu"),
    (dict(v_root_pu=np.ones(3)), "v_root_pu"),
    (dict(shunt_q_mvar=np.ones(5)), "shunt_q_mvar"),
    (dict(tol_pu=0.0), "tol_pu"),
    (dict(max_iter=0), "max_iter"),
    (dict(p_mw=["a"] * 33), "p_mw"),
    # absurd finite values: rejected up front instead of OverflowError / ZeroDivisionError / NaN
    (dict(v_root_pu=1e300), "v_root_pu"),
    (dict(v_root_pu=1e-300), "v_root_pu"),
    (dict(v_root_pu=0.49), "v_root_pu"),
    (dict(v_root_pu=2.01), "v_root_pu"),
    (dict(v_root_pu=1.0 + 0.1j), "v_root_pu"),
    (dict(p_mw=np.full(33, 1e308)), "p_mw"),
    (dict(q_mvar=np.full(33, -2e6)), "q_mvar"),
    (dict(shunt_q_mvar=np.full(33, 1e7)), "shunt_q_mvar"),
    (dict(p_mw=np.zeros(33, dtype=complex)), "p_mw"),
    (dict(tol_pu=1.0), "tol_pu"),
    (dict(tol_pu="tight"), "tol_pu"),
    (dict(max_iter=2.5), "max_iter"),
])
def test_bad_input_raises_typed_error(ieee33, kwargs, field):
    args = dict(p_mw=np.zeros(33), q_mvar=np.zeros(33))
    args.update(kwargs)
    p, q = args.pop("p_mw"), args.pop("q_mvar")
    with pytest.raises(sd.InputError) as ei:
        sd.run_powerflow(ieee33, p, q, **args)
    assert isinstance(ei.value, ValueError) and isinstance(ei.value, sd.SafeDispatchError)
    assert ei.value.field == field and field in str(ei.value)


def test_mixed_numpy_and_torch_is_rejected(ieee33):
    with pytest.raises(sd.InputError, match="q_mvar"):
        sd.run_powerflow(ieee33, torch.zeros(33, dtype=torch.float64), np.zeros(33))


@pytest.mark.parametrize("K", [1, 64])
def test_absurd_slack_voltage_in_a_batch_is_an_input_error(ieee33, K):
    # a batch of 64 runs the parallel kernel, where 1e-300 pu raised numba's SystemError
    P = np.zeros((K, 33))
    with pytest.raises(sd.InputError) as ei:
        sd.run_powerflow(ieee33, P, P, v_root_pu=np.full(K, 1e-300))
    assert ei.value.field == "v_root_pu"


@pytest.mark.parametrize("backend", ["numpy", "torch"])
@pytest.mark.parametrize("K", [3, 64])
def test_largest_accepted_injection_gives_finite_flagged_results(ieee33, backend, K):
    from safedispatch.powerflow.radial import MAX_INJECTION_MW, V_ROOT_RANGE_PU

    p, q = ieee33.nominal_injection()
    P = np.tile(p, (K, 1))
    Q = np.tile(q, (K, 1))
    P[1] = MAX_INJECTION_MW  # every bus at the bound
    Q[2] = -MAX_INJECTION_MW
    v0 = np.full(K, 1.0)
    v0[-1] = V_ROOT_RANGE_PU[0]
    if backend == "torch":
        P, Q, v0 = torch.tensor(P), torch.tensor(Q), torch.tensor(v0)
    r = sd.run_powerflow(ieee33, P, Q, v_root_pu=v0)
    for name in r.__dataclass_fields__:
        assert np.isfinite(np.asarray(getattr(r, name), dtype=float)).all(), name
    conv = np.asarray(r.converged)
    assert conv[0] and not conv[1] and not conv[2]
    assert set(np.asarray(r.status)[1:3].tolist()) <= {1, 2}


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.complex64, torch.int64])
def test_torch_half_complex_and_integer_inputs_are_rejected(ieee33, dtype):
    x = torch.zeros(33, dtype=dtype)
    with pytest.raises(sd.InputError) as ei:
        sd.run_powerflow(ieee33, x, x)
    assert ei.value.field == "p_mw"
    with pytest.raises(sd.InputError, match="dtype"):
        sd.run_powerflow(ieee33, torch.zeros(33, dtype=torch.float64), torch.zeros(33, dtype=torch.float32))


def _with_bus_shunts(feeder):
    from safedispatch.network import BusTable

    n = feeder.n_bus
    sp_ = np.zeros(n)
    sq = np.zeros(n)
    sp_[[5, 17]] = [0.02, 0.05]  # lossy shunts
    sq[[5, 20, 30]] = [-0.3, 0.1, -0.2]  # capacitive and inductive
    b = feeder.bus
    return feeder.replace(bus=BusTable(vn_kv=b.vn_kv, vm_min_pu=b.vm_min_pu, vm_max_pu=b.vm_max_pu,
                                       s_sc_mva=b.s_sc_mva, name=b.name, shunt_p_mw=sp_, shunt_q_mvar=sq))


def test_fixed_bus_shunts_match_pandapower_and_balance(ieee33, rng):
    f = _with_bus_shunts(ieee33)
    p, q = random_injection(f, rng)
    cap = np.zeros(33)
    cap[12] = 0.4
    r = sd.run_powerflow(f, p, q, shunt_q_mvar=cap, tol_pu=1e-12)
    net = pp_powerflow(f, p, q, shunt_q_mvar=cap)
    np.testing.assert_allclose(r.vm_pu, net.res_bus.vm_pu.to_numpy(), atol=1e-9)
    assert r.p_slack_mw == pytest.approx(net.res_ext_grid.p_mw.iloc[0], abs=1e-9)
    assert r.q_slack_mvar == pytest.approx(net.res_ext_grid.q_mvar.iloc[0], abs=1e-9)
    vm2 = r.vm_pu**2
    assert r.p_shunt_mw == pytest.approx(f.bus.shunt_p_mw @ vm2, rel=1e-12)
    assert r.q_shunt_mvar == pytest.approx(f.bus.shunt_q_mvar @ vm2 - cap @ vm2, rel=1e-12)
    assert r.p_slack_mw == pytest.approx(r.p_loss_mw + r.p_shunt_mw - p.sum(), abs=1e-12)
    assert r.q_slack_mvar == pytest.approx(r.q_loss_mvar + r.q_shunt_mvar - q.sum(), abs=1e-12)
    # the shunts matter: without them the answer differs
    assert np.abs(sd.run_powerflow(ieee33, p, q, shunt_q_mvar=cap).vm_pu - r.vm_pu).max() > 1e-4
    # torch agrees, shunt totals included
    rt = sd.run_powerflow(f, torch.tensor(p), torch.tensor(q), shunt_q_mvar=torch.tensor(cap), tol_pu=1e-12)
    for name in ("vm_pu", "p_slack_mw", "q_slack_mvar", "p_shunt_mw", "q_shunt_mvar", "p_loss_mw"):
        np.testing.assert_allclose(getattr(rt, name).numpy(), getattr(r, name), atol=1e-10, err_msg=name)
