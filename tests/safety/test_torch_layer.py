"""TorchSafetyLayer against the CPU SafetyLayer (itself tested against an independent CVXPY
projection), finite differences (gradcheck) and cvxpylayers' gradients."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

import safedispatch as sd
from safedispatch import ProjectionStatus as PS
from tests.safety.reference import lindistflow_matrices
from tests.safety.test_layer import random_action, random_snapshot

CASES = ["ieee33-paperB-4", "ieee33-paperB", "ieee33-paperC"]


@pytest.fixture(autouse=True)
def one_thread():
    """Small batched ops are dominated by thread wake-ups on a shared 2-core machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module", params=["numba", "torch"])
def layers(request):
    """Both batch solvers: the CPU structured QP over numba threads and the torch solver."""
    return {c: sd.TorchSafetyLayer(sd.load_case(c), dt_h=5 / 60, backend=request.param) for c in CASES}


def batch(f, rng, B, ramp_every=2, dtype=torch.float64):
    """Random snapshots and raw actions (the CPU layer tests' distribution) as batched tensors."""
    rows = []
    for k in range(B):
        snap = random_snapshot(f, rng, ramp=k % ramp_every == 0 if ramp_every else False)
        raw = random_action(f, rng)
        prev = np.r_[snap.prev.pv_p_mw, snap.prev.pv_q_mvar] if snap.prev is not None else None
        rows.append((np.r_[raw.pv_p_mw, raw.pv_q_mvar], snap.load_p_mw, snap.load_q_mvar, snap.pv_avail_mw, prev))
    T = lambda k: torch.tensor(np.array([r[k] for r in rows]), dtype=dtype)  # noqa: E731
    return T(0), T(1), T(2), T(3), rows


def with_prev(rows, dtype=torch.float64):
    """Previous set-points for every sample (samples without a ramp get a loose one)."""
    out = []
    for r in rows:
        out.append(r[4] if r[4] is not None else np.zeros_like(r[0]))
    return torch.tensor(np.array(out), dtype=dtype)


@pytest.mark.parametrize("case", CASES)
def test_agrees_with_cpu_layer(case, layers):
    tl = layers[case]
    f = tl.feeder
    rng = np.random.default_rng(3)
    raw, lp, lq, av, rows = batch(f, rng, 48, ramp_every=0)
    c = tl.compare(raw, lp, lq, av)
    assert c.max_abs_diff <= 1e-5, c.diff
    assert c.n_status_mismatch == 0
    assert (c.status_torch == PS.PROJECTED).sum() >= 30  # the batch exercises the network limits
    # with ramp limits against previous set-points
    prev = with_prev(rows)
    c = tl.compare(raw, lp, lq, av, prev)
    assert c.max_abs_diff <= 1e-5, c.diff
    assert c.n_status_mismatch == 0
    assert np.isfinite(c.safe_torch).all()


@pytest.mark.parametrize("case", CASES)
def test_torch_solver_alone_is_exact(case):
    """Without the CPU fallback, every sample the torch solver certifies matches the CPU layer:
    the agreement above is not the fallback's."""
    f = sd.load_case(case)
    tl = sd.TorchSafetyLayer(f, fallback=False, backend="torch")
    raw, lp, lq, av, _ = batch(f, np.random.default_rng(11), 48, ramp_every=0)
    c = tl.compare(raw, lp, lq, av)
    done = c.status_torch == PS.PROJECTED
    assert done.sum() >= 0.8 * (c.status_cpu == PS.PROJECTED).sum()
    assert np.abs(c.safe_torch - c.safe_cpu)[done].max() <= 1e-5
    assert set(np.unique(c.status_torch)) <= {PS.UNCHANGED, PS.PROJECTED, PS.SOLVER_FAILED, PS.INFEASIBLE}


@pytest.mark.parametrize("backend", ["numba", "torch"])
def test_large_feeder_agrees(backend):
    f = sd.load_case("ieee33x30")
    tl = sd.TorchSafetyLayer(f, backend=backend)
    rng = np.random.default_rng(5)
    B = 12
    snap = sd.Snapshot.nominal(f, load=1.0)
    lp = torch.tensor(np.tile(snap.load_p_mw, (B, 1)) * rng.uniform(0.4, 1.1, (B, f.n_bus)))
    lq = torch.tensor(np.tile(snap.load_q_mvar, (B, 1)) * rng.uniform(0.4, 1.1, (B, f.n_bus)))
    av = torch.tensor(f.pv.p_max_mw * rng.uniform(0, 1, (B, f.n_pv)))
    s = f.pv.s_mva
    raw = torch.tensor(np.c_[s * rng.uniform(-0.1, 1.2, (B, f.n_pv)), s * rng.uniform(-0.8, 0.8, (B, f.n_pv))])
    c = tl.compare(raw, lp, lq, av)
    assert c.max_abs_diff <= 1e-5, c.diff
    assert c.n_status_mismatch == 0
    assert (c.status_torch == PS.PROJECTED).all()


def test_float32_and_status_output(layers):
    tl = layers["ieee33-paperB-4"]
    f = tl.feeder
    raw, lp, lq, av, _ = batch(f, np.random.default_rng(8), 16, ramp_every=0)
    safe64 = tl(raw, lp, lq, av)
    safe32, status = tl(raw.float(), lp.float(), lq.float(), av.float(), return_status=True)
    assert safe32.dtype == torch.float32 and safe32.shape == raw.shape
    assert status.shape == (16,) and torch.equal(status, tl.last_status)
    # float32 inputs are rounded to float32 before the (float64) solve: the difference is that rounding
    assert (safe32.double() - safe64).abs().max() <= 1e-5


def test_power_factor_and_scr_limits():
    f = sd.load_case("ieee33-paperB-4")
    f = f.replace(pv=dataclasses.replace(f.pv, pf_min=np.full(f.n_pv, 0.9)))
    tl = sd.TorchSafetyLayer(f, scr_min=3.0)
    raw, lp, lq, av, _ = batch(f, np.random.default_rng(21), 40, ramp_every=0)
    c = tl.compare(raw, lp, lq, av)
    assert c.max_abs_diff <= 1e-5, c.diff
    assert c.n_status_mismatch == 0
    t = np.tan(np.arccos(0.9))
    p, q = c.safe_torch[:, :4], c.safe_torch[:, 4:]
    assert (np.abs(q) <= t * p + 1e-9).all()


def test_unchanged_is_returned_as_is_with_identity_gradient(layers):
    tl = layers["ieee33-paperB"]
    f = tl.feeder
    snap = sd.Snapshot.nominal(f, load=0.6, pv=0.8)
    B = 3
    raw = torch.tensor(np.tile(np.r_[0.1 * snap.pv_avail_mw, np.zeros(f.n_pv)], (B, 1)), requires_grad=True)
    T = lambda a: torch.tensor(np.tile(a, (B, 1)))  # noqa: E731
    safe = tl(raw, T(snap.load_p_mw), T(snap.load_q_mvar), T(snap.pv_avail_mw))
    assert (tl.last_status == PS.UNCHANGED).all()
    assert torch.equal(safe, raw)
    g = torch.randn_like(raw)
    (safe * g).sum().backward()
    assert torch.equal(raw.grad, g)


def test_infeasible_and_degenerate_samples_in_a_batch(layers):
    """An infeasible sample is flagged and gets the CPU layer's least-violating point; samples at
    corners, with no PV available, or repeated, are exact; nothing is NaN."""
    tl = layers["ieee33-paperB-4"]
    f = tl.feeder
    raw, lp, lq, av, _ = batch(f, np.random.default_rng(4), 10, ramp_every=0)
    lp[0] *= 6.0  # far beyond what the inverters can support: no feasible set-point
    lq[0] *= 6.0
    av[1] = 0.0  # no PV: p pinned at 0
    raw[2] = raw[3]  # duplicates
    lp[2], lq[2], av[2] = lp[3], lq[3], av[3]
    s = torch.tensor(f.pv.s_mva)
    raw[4] = torch.cat([s, s])  # far outside every disk: corners of the device sets
    raw[5, 0] = float(av[5, 0])  # exactly on a bound
    c = tl.compare(raw, lp, lq, av)
    assert c.status_torch[0] == PS.INFEASIBLE and c.status_cpu[0] == PS.INFEASIBLE
    assert np.isfinite(c.safe_torch).all()
    assert c.max_abs_diff <= 1e-5, c.diff
    assert c.n_status_mismatch == 0
    assert np.abs(c.safe_torch[1, :4]).max() == 0.0
    np.testing.assert_array_equal(c.safe_torch[2], c.safe_torch[3])
    # gradients stay finite; the infeasible sample gets none
    r = raw.clone().requires_grad_(True)
    tl(r, lp, lq, av).sum().backward()
    assert torch.isfinite(r.grad).all()
    assert r.grad[0].abs().max() == 0.0


@pytest.mark.parametrize("backend", ["numba", "torch"])
def test_gradcheck_at_stable_points(backend):
    f = sd.load_case("ieee33-paperB-4")
    tl = sd.TorchSafetyLayer(f, backend=backend)
    raw, lp, lq, av, _ = batch(f, np.random.default_rng(2), 2, ramp_every=0)
    _, st = tl(raw, lp, lq, av, return_status=True)
    assert (st == PS.PROJECTED).all()
    inputs = tuple(t.clone().requires_grad_(True) for t in (raw, av))
    assert torch.autograd.gradcheck(lambda r, a: tl(r, lp, lq, a), inputs, eps=1e-6, atol=1e-5, rtol=1e-4)
    # the loads (2 x 33 buses each): random directions of the Jacobian (gradcheck's fast mode;
    # every column in full mode took 2 forwards each, a minute on the torch backend)
    loads = tuple(t.clone().requires_grad_(True) for t in (lp, lq))
    assert torch.autograd.gradcheck(lambda p, q: tl(raw, p, q, av), loads, eps=1e-6, atol=1e-5, rtol=1e-4,
                                    fast_mode=True)


@pytest.mark.parametrize("case", CASES + ["ieee33x30"])
def test_compiled_rhs_equals_torch_maps(case):
    """The compiled tree sweeps that give the rows' right-hand sides on CPU (and their adjoint)
    against the torch maps used on other devices (dense affine map or sparse path matrix)."""
    from safedispatch.safety.torch_layer import _RhsFn

    f = sd.load_case(case)
    tl = sd.TorchSafetyLayer(f, scr_min=3.0)
    st = tl._static(torch.device("cpu"))
    rng = np.random.default_rng(4)
    snap = sd.Snapshot.nominal(f, load=1.0)
    B = 7
    lp = torch.tensor(snap.load_p_mw * rng.uniform(0.2, 1.5, (B, f.n_bus)), requires_grad=True)
    lq = torch.tensor(snap.load_q_mvar * rng.uniform(-0.5, 1.5, (B, f.n_bus)), requires_grad=True)
    h, c = _RhsFn.apply(lp, lq, tl, None)
    h_ref, c_ref = tl._rhs_torch(st, lp, lq)
    assert h.shape == h_ref.shape and c.shape == c_ref.shape
    assert torch.allclose(h, h_ref, rtol=0, atol=1e-12) and torch.allclose(c, c_ref, rtol=0, atol=1e-12)
    gh, gc = torch.randn_like(h), torch.randn_like(c)
    grads = torch.autograd.grad((h * gh).sum() + (c * gc).sum(), (lp, lq))
    grads_ref = torch.autograd.grad((h_ref * gh).sum() + (c_ref * gc).sum(), (lp, lq))
    for g, g_ref in zip(grads, grads_ref):
        assert torch.allclose(g, g_ref, rtol=0, atol=1e-10)


def test_reused_buffers_keep_pending_backwards_exact():
    """Two forwards of the same batch size with both graphs alive, then their backwards: the
    second call must not overwrite what the first one's backward reads."""
    f = sd.load_case("ieee33-paperB-4")
    tl, ref = sd.TorchSafetyLayer(f), sd.TorchSafetyLayer(f, reuse_buffers=False)
    rng = np.random.default_rng(13)
    b1, b2 = batch(f, rng, 24, ramp_every=0), batch(f, rng, 24, ramp_every=0)
    grads = {}
    for name, layer in (("reuse", tl), ("fresh", ref)):
        ins = [[t.clone().requires_grad_(True) for t in b[:4]] for b in (b1, b2)]
        outs = [layer(*i) for i in ins]  # both graphs alive
        for o in outs:
            o.backward(torch.ones_like(o))
        grads[name] = [(o.detach(), *(t.grad for t in i)) for o, i in zip(outs, ins)]
    for a, b in zip(grads["reuse"], grads["fresh"]):
        for x, y in zip(a, b):
            assert torch.equal(x, y)
    # the graphs are gone: one set is kept and taken again by the next call of that size
    del outs
    assert len(tl._pool) == 1 and tl._pool[0].B == 24
    kept = tl._pool[0]
    safe = tl(b1[0].clone().requires_grad_(True), *b1[1:4])
    assert tl._pool == []  # reserved by the live graph
    del safe
    assert tl._pool[0] is kept
    with torch.no_grad():  # no graph: the call hands the set back at once
        tl(*b1[:4])
    assert tl._pool[0] is kept
    tl.release_buffers()
    assert tl._pool == []


@pytest.mark.parametrize("backend", ["numba", "torch"])
def test_gradcheck_with_ramp_limits(backend):
    f = sd.load_case("ieee33-paperB")
    tl = sd.TorchSafetyLayer(f, dt_h=5 / 60, backend=backend)
    raw, lp, lq, av, rows = batch(f, np.random.default_rng(9), 1, ramp_every=1)
    prev = with_prev(rows)
    inputs = tuple(t.clone().requires_grad_(True) for t in (raw, av, prev))
    assert torch.autograd.gradcheck(lambda r, a, pr: tl(r, lp, lq, a, pr), inputs, eps=1e-6, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("case,pf", [("ieee33-paperB-4", False), ("ieee33-paperB-4", True), ("ieee33-paperB", False),
                                     ("ieee33-paperC", True)])
def test_compiled_gradient_equals_torch_gradient(case, pf):
    """The numba backend's compiled VJP (structured_qp_vjp) against the torch backend's
    implicit_vjp: two solvers and two implementations of the implicit gradient, on random
    batches with ramp limits, power-factor limits and corners (no PV, ramp-bound boxes)."""
    f = sd.load_case(case)
    if pf:
        f = f.replace(pv=dataclasses.replace(f.pv, pf_min=np.full(f.n_pv, 0.9)))
    tn = sd.TorchSafetyLayer(f, dt_h=5 / 60, scr_min=3.0 if pf else None, backend="numba")
    tt = sd.TorchSafetyLayer(f, dt_h=5 / 60, scr_min=3.0 if pf else None, backend="torch")
    rng = np.random.default_rng(31)
    raw, lp, lq, av, rows = batch(f, rng, 64, ramp_every=2)
    av[::5] = 0.0  # night: p pinned at 0 (box corners)
    prev = with_prev(rows)
    gw = torch.tensor(rng.normal(size=raw.shape))
    grads, outs = [], []
    for tl in (tn, tt):
        ins = [t.clone().requires_grad_(True) for t in (raw, lp, lq, av, prev)]
        safe, st = tl(*ins, return_status=True)
        grads.append(torch.autograd.grad((safe * gw).sum(), ins))
        outs.append((safe.detach(), st))
    assert (outs[0][1] == outs[1][1]).all()
    assert (outs[0][0] - outs[1][0]).abs().max() <= 1e-6
    proj = (outs[0][1] == PS.PROJECTED).numpy()
    assert proj.sum() >= 32
    names = ("raw", "load_p_mw", "load_q_mvar", "pv_avail_mw", "prev")
    for name, a, b in zip(names, *grads):
        a, b = a.numpy(), b.numpy()
        scale = max(1.0, np.abs(b).max())
        # per-sample agreement; the active set is the same wherever the solutions agree closely
        bad = np.flatnonzero(np.abs(a - b).max(1) > 1e-6 * scale)
        assert bad.size <= 1, (name, bad, np.abs(a - b).max())
    assert grads[0][0].abs().sum() > 0 and grads[0][3].abs().sum() > 0
    if np.isfinite(f.pv.ramp_p_pu_per_min).any():
        assert grads[0][4].abs().sum() > 0  # the ramp limits are active somewhere


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # numpy 2 copy keyword, inside cvxpylayers
@pytest.mark.parametrize("backend", ["numba", "torch"])
def test_gradient_matches_cvxpylayers(backend):
    """The same projection written independently in CVXPY (dense affine LinDistFlow from the
    feeder tables) and differentiated by cvxpylayers (diffcp)."""
    cp = pytest.importorskip("cvxpy")
    cvl = pytest.importorskip("cvxpylayers.torch")
    f = sd.load_case("ieee33-paperB-4")
    R, X, F, bsh = lindistflow_matrices(f)
    n, N = f.n_bus, f.n_pv
    Bpv = np.zeros((n, N))
    Bpv[f.pv.bus, np.arange(N)] = 1
    nonroot = np.arange(n) != f.root_bus
    smax = (np.sqrt(3) * f.bus.vn_kv[f.branch.to_bus] * f.branch.i_max_ka)
    p, q = cp.Variable(N), cp.Variable(N)
    rp, rq, lp_, av_ = cp.Parameter(N), cp.Parameter(N), cp.Parameter(n), cp.Parameter(N)
    pin = -lp_ + Bpv @ p
    qin = bsh + Bpv @ q  # reactive load fixed (a constant below)
    lq = sd.Snapshot.nominal(f, load=0.9).load_q_mvar
    qin = qin - lq
    w = 1.0 + R @ pin + X @ qin
    P, Q = F @ (-pin), F @ (-qin)
    cons = [p >= 0, p <= av_, cp.norm(cp.vstack([p, q]), axis=0) <= f.pv.s_mva,
            w[nonroot] <= f.bus.vm_max_pu[nonroot] ** 2, w[nonroot] >= f.bus.vm_min_pu[nonroot] ** 2,
            cp.norm(cp.vstack([P, Q]), axis=0) <= smax]
    prob = cp.Problem(cp.Minimize(0.5 * cp.sum_squares(p - rp) + 0.5 * cp.sum_squares(q - rq)), cons)
    layer = cvl.CvxpyLayer(prob, parameters=[rp, rq, lp_, av_], variables=[p, q])
    tl = sd.TorchSafetyLayer(f, backend=backend)
    rng = np.random.default_rng(13)
    B = 4
    snap = sd.Snapshot.nominal(f, load=0.9)
    lp = torch.tensor(np.tile(snap.load_p_mw, (B, 1)) * rng.uniform(0.6, 1.0, (B, n)), requires_grad=True)
    av = torch.tensor(f.pv.p_max_mw * rng.uniform(0.3, 1.0, (B, N)), requires_grad=True)
    raw = torch.tensor(np.c_[f.pv.s_mva * rng.uniform(0.2, 1.0, (B, N)), f.pv.s_mva * rng.uniform(-0.6, 0.6, (B, N))],
                       requires_grad=True)
    weights = torch.tensor(rng.normal(size=(B, 2 * N)))
    safe = tl(raw, lp, torch.tensor(np.tile(lq, (B, 1))), av)
    assert (tl.last_status == PS.PROJECTED).all()
    g_ours = torch.autograd.grad((safe * weights).sum(), (raw, lp, av))
    ps, qs = layer(raw[:, :N], raw[:, N:], lp, av, solver_args={"eps": 1e-10, "max_iters": 20000})
    np.testing.assert_allclose(torch.cat([ps, qs], 1).detach().numpy(), safe.detach().numpy(), atol=1e-4)
    g_ref = torch.autograd.grad((torch.cat([ps, qs], 1) * weights).sum(), (raw, lp, av))
    for a, b in zip(g_ours, g_ref):
        np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-5, rtol=1e-4)
    assert g_ours[0].abs().sum() > 0 and g_ours[1].abs().sum() > 0


@pytest.mark.parametrize("field,change,match", [
    ("raw", lambda a: (a[0][:, :3],) + a[1:], "shape"),
    ("load_p_mw", lambda a: (a[0], a[1].clone().fill_(float("nan"))) + a[2:], "NaN"),
    ("pv_avail_mw", lambda a: a[:3] + (a[3] + 100.0,), "p_max"),
    ("pv_avail_mw", lambda a: a[:3] + (-a[3] - 1.0,), "p_max"),
    ("raw", lambda a: (a[0].numpy(),) + a[1:], "torch.Tensor"),
    ("load_q_mvar", lambda a: (a[0], a[1], a[2][:1]) + a[3:], "shape"),
])
def test_bad_input_raises_naming_the_field(field, change, match, layers):
    tl = layers["ieee33-paperB-4"]
    raw, lp, lq, av, _ = batch(tl.feeder, np.random.default_rng(0), 2, ramp_every=0)
    args = change((raw, lp, lq, av))
    with pytest.raises(sd.InputError, match=match) as ei:
        tl(*args)
    assert ei.value.field == field
    assert isinstance(ei.value, ValueError)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.complex64, torch.complex128])
@pytest.mark.parametrize("field", ["raw", "load_p_mw", "pv_avail_mw"])
def test_half_precision_and_complex_inputs_are_rejected_naming_the_field(dtype, field, layers):
    """Half precision cannot represent set-points to the model's tolerance (float16 outputs
    exceeded inverter ratings by up to 9e-3 MVA); complex values are not powers."""
    tl = layers["ieee33-paperB-4"]
    raw, lp, lq, av, _ = batch(tl.feeder, np.random.default_rng(0), 2, ramp_every=0)
    args = {"raw": raw, "load_p_mw": lp, "load_q_mvar": lq, "pv_avail_mw": av}
    args[field] = args[field].to(dtype)
    with pytest.raises(sd.InputError, match="complex" if dtype.is_complex else "float32 or float64") as ei:
        tl(*args.values())
    assert ei.value.field == field


def test_float32_results_stay_inside_the_device_limits(layers):
    """Computed in float64, returned in float32 rounded towards the inside of every box, disk and
    power-factor cone: never above a rating, not even by the rounding of the cast."""
    f = sd.load_case("ieee33-paperB")
    f = f.replace(pv=dataclasses.replace(f.pv, pf_min=np.full(f.n_pv, 0.95)))
    tl = sd.TorchSafetyLayer(f)
    raw, lp, lq, av, _ = batch(f, np.random.default_rng(12), 200, ramp_every=0)
    raw = raw * 3.0  # far outside the disks: the answers lie on their boundaries
    safe = tl(raw.float(), lp.float(), lq.float(), av.float())
    assert safe.dtype == torch.float32 and torch.isfinite(safe).all()
    x = safe.double()
    N = f.n_pv
    p, q = x[:, :N], x[:, N:]
    s = torch.tensor(f.pv.s_mva)
    assert (p * p + q * q <= s * s).all()
    assert (p >= 0).all() and (p <= torch.minimum(av.float().double(), s)).all()
    t = float(np.tan(np.arccos(0.95)))
    assert (q.abs() <= t * p).all()


def test_infeasible_batch_is_fast():
    """A batch of 64 snapshots no set-point can carry (loads x5 to x20): the CPU layer's
    least-violating points, under a second (it took 82 s)."""
    import time

    f = sd.load_case("ieee33-paperB-4")
    tl = sd.TorchSafetyLayer(f)
    rng = np.random.default_rng(9)
    p0, q0 = f.nominal_injection()

    def make(B):
        sc = rng.uniform(5, 20, (B, 1))
        raw = np.hstack([f.pv.s_mva * rng.uniform(0, 1, (B, 4)), f.pv.s_mva * rng.uniform(-1, 1, (B, 4))])
        return (torch.tensor(raw), torch.tensor(-p0[None] * sc), torch.tensor(-q0[None] * sc),
                torch.tensor(f.pv.p_max_mw[None] * rng.uniform(0, 1, (B, 4))))

    tl(*make(4))  # compiles and builds what is cached
    args = make(64)
    t0 = time.perf_counter()
    safe, status = tl(*args, return_status=True)
    assert time.perf_counter() - t0 < 1.0
    assert (status == PS.INFEASIBLE).all() and torch.isfinite(safe).all()


def test_bad_prev_and_options_raise(layers):
    tl = layers["ieee33-paperB-4"]
    raw, lp, lq, av, _ = batch(tl.feeder, np.random.default_rng(0), 2, ramp_every=0)
    with pytest.raises(sd.InputError) as ei:
        tl(raw, lp, lq, av, prev=raw * 10)
    assert ei.value.field == "prev"
    with pytest.raises(sd.InputError) as ei:
        sd.TorchSafetyLayer(tl.feeder, model="socp")
    assert ei.value.field == "model"
    with pytest.raises(sd.InputError) as ei:
        sd.TorchSafetyLayer(tl.feeder, backend="jax")
    assert ei.value.field == "backend"


@pytest.mark.gpu
def test_cuda_matches_cpu():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    tl = sd.TorchSafetyLayer(sd.load_case("ieee33-paperB"))  # "auto": numba on CPU, torch on CUDA
    raw, lp, lq, av, _ = batch(tl.feeder, np.random.default_rng(6), 32, ramp_every=0)
    safe_cpu = tl(raw, lp, lq, av)
    dev = torch.device("cuda")
    safe_gpu = tl(raw.to(dev), lp.to(dev), lq.to(dev), av.to(dev))
    assert safe_gpu.device.type == "cuda"
    assert (safe_gpu.cpu() - safe_cpu).abs().max() <= 1e-8
    with pytest.raises(sd.InputError, match="numba"):
        sd.TorchSafetyLayer(tl.feeder, backend="numba")(raw.to(dev), lp.to(dev), lq.to(dev), av.to(dev))
