"""Fuzz every public entry point (#18, acceptance criterion).

Each call gets arguments that are mostly sensible with a few fields spoiled: wrong types
(floats, tuples, None, strings, dicts), wrong shapes, NaN/inf, huge and tiny magnitudes (1e300,
1e-300, -1e308, 1e6 + 1), low-precision dtypes (float16, float32, torch bfloat16, integer and
bool arrays) and complex values. The properties, checked on every call by :func:`call`:

* the call returns or raises a :class:`~safedispatch.SafeDispatchError`, nothing else;
* every float array (numpy or torch) in what it returns is finite, and no float is NaN;
* no success status (UNCHANGED/PROJECTED, OPTIMAL, REPAIRED, CONVERGED, converged power flows)
  comes with a point outside the model's limits: the projection's ``violation`` is ~0 and the
  set-points respect the devices' limits; an OPTIMAL/REPAIRED OPF is AC-feasible;
* each call takes under :data:`LIMIT_S` seconds (one-time setup, such as building a layer or
  compiling kernels, is done before the calls are timed).

Sizes: the default (CI) run makes about 1 500 calls in all; the ``slow`` variant of each test
makes about 10 750 (``pytest -m slow tests/test_fuzz.py``), or ``FUZZ_EXAMPLES`` in all when
that variable is set. Hypothesis runs derandomized without an example database, so every run
sees the same cases; the too-slow health check is suppressed only for the tests whose single
examples run a solver or a power flow (their time is what :func:`call` measures).
"""

from __future__ import annotations

import copy
import math
import os
import time
import warnings
from collections import Counter
from enum import IntEnum

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import safedispatch as sd
from safedispatch.errors import MAX_ABS_POWER_MW
from safedispatch.problems.types import check_action, check_snapshot

#: wall-time limit of one call (s)
LIMIT_S = 2.0
#: examples per test: (default run, slow run); the slow column sums to >= 10 000
BUDGET = {
    "load_case": (60, 400),
    "from_pandapower": (20, 150),
    "run_powerflow": (120, 1000),
    "run_powerflow_torch": (100, 800),
    "snapshot_action": (200, 1500),
    "net_injection": (100, 700),
    "project": (150, 1200),
    "project_certified": (40, 300),
    "project_action": (60, 400),
    "project_vector": (80, 600),
    "torch_layer": (80, 600),
    "solve_opf": (60, 400),
    "solve_mip": (60, 400),
    "solve_admm": (30, 200),
    "controllers": (80, 600),
    "metrics": (80, 600),
    "envs": (80, 600),
    "vector_env": (40, 300),
}
FULL_TOTAL = sum(b[1] for b in BUDGET.values())
FUZZ_EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "0") or 0)
SIZES = pytest.mark.parametrize("size", ["ci", pytest.param("full", marks=pytest.mark.slow)])
#: calls made, by entry point (reported at the end; the slow run checks the total)
CALLS: Counter = Counter()
#: outcomes by entry point: the error's type or the result's status (printed at the end with -s)
OUTCOMES: Counter = Counter()
FULL_DONE: set = set()


def examples(name: str, size: str) -> int:
    ci, full = BUDGET[name]
    if size == "ci":
        return ci
    return max(1, math.ceil(full * FUZZ_EXAMPLES / FULL_TOTAL)) if FUZZ_EXAMPLES else full


def run(name: str, size: str, strategy, prop, slow_examples: bool = True) -> None:
    """Run ``prop(drawn)`` on ``examples(name, size)`` draws of ``strategy``."""
    checks = [HealthCheck.too_slow, HealthCheck.data_too_large] if slow_examples else [HealthCheck.data_too_large]

    @settings(max_examples=examples(name, size), deadline=None, database=None, derandomize=True,
              suppress_health_check=checks, print_blob=True)
    @given(strategy)
    def inner(drawn):
        prop(drawn)

    inner()
    if size == "full":
        FULL_DONE.add(name)


@pytest.fixture(scope="module", autouse=True)
def _report_outcomes():
    yield
    if OUTCOMES:
        print("\nfuzz outcomes:")
        for (name, outcome), n in sorted(OUTCOMES.items()):
            print(f"  {name:22s} {outcome:24s} {n}")


# -- the properties ------------------------------------------------------------------------------
class Untyped(AssertionError):
    pass


def call(name: str, fn):
    """Call ``fn()``: its result, or the SafeDispatchError it raised; anything else fails the
    test, as does a call slower than LIMIT_S or a result with a non-finite array."""
    CALLS[name] += 1
    t0 = time.perf_counter()
    try:
        out = fn()
    except sd.SafeDispatchError as exc:
        out = exc
    except Exception as exc:  # noqa: BLE001  (this is what the property is about)
        raise Untyped(f"{name}: untyped {type(exc).__name__}: {exc}") from exc
    dt = time.perf_counter() - t0
    status = getattr(out, "status", None)
    OUTCOMES[name, status.name if isinstance(status, IntEnum) else type(out).__name__] += 1
    assert dt < LIMIT_S, f"{name}: {dt:.2f} s"
    if not isinstance(out, Exception):
        assert_finite(out, name)
    return out


def assert_finite(obj, where: str, depth: int = 0) -> None:
    """Every float array in ``obj`` finite, no float NaN (inf is a documented "no value")."""
    if depth > 6 or obj is None or isinstance(obj, (str, bytes, bool, int, np.integer, np.bool_, sd.Feeder)):
        return
    if isinstance(obj, (float, np.floating)):
        assert not math.isnan(obj), f"{where}: NaN"
    elif isinstance(obj, np.ndarray):
        if obj.dtype.kind in "fc":
            assert np.isfinite(obj).all(), f"{where}: non-finite values {obj}"
    elif isinstance(obj, torch.Tensor):
        if obj.is_floating_point() or obj.is_complex():
            assert bool(torch.isfinite(obj.detach()).all()), f"{where}: non-finite values {obj}"
    elif isinstance(obj, dict):
        for k, v in obj.items():
            assert_finite(v, f"{where}[{k!r}]", depth + 1)
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            assert_finite(v, f"{where}[{i}]", depth + 1)
    elif hasattr(obj, "__dataclass_fields__"):
        for k in obj.__dataclass_fields__:
            if k.startswith("_") or k == "info":  # info: diagnostics (limits used may be inf: no limit)
                continue
            assert_finite(getattr(obj, k), f"{where}.{k}", depth + 1)


def assert_device_feasible(f: sd.Feeder, snap: sd.Snapshot, act: sd.Action, where: str, tol: float = 1e-6) -> None:
    """Set-points within the devices' own limits: 0 <= p <= available PV, inside each disk,
    storage within its power rating, capacitor steps in range."""
    try:
        s = snap.checked(f)
    except sd.SafeDispatchError as exc:
        raise AssertionError(f"{where}: returned an answer for a snapshot Snapshot.checked rejects: {exc}") from None
    p, q = np.asarray(act.pv_p_mw, float), np.asarray(act.pv_q_mvar, float)
    assert (p >= -tol).all() and (p <= np.minimum(s.pv_avail_mw, f.pv.s_mva) + tol).all(), f"{where}: p {p}"
    assert (np.hypot(p, q) <= f.pv.s_mva * (1 + tol) + tol).all(), f"{where}: outside a disk"
    if act.ess_p_mw is not None and f.n_ess:
        assert (np.abs(np.asarray(act.ess_p_mw, float)) <= f.ess.p_max_mw * (1 + tol) + tol).all(), where
    if act.cap_step is not None and f.n_cap:
        c = np.asarray(act.cap_step)
        assert ((c >= 0) & (c <= f.cap.n_steps)).all(), f"{where}: cap steps {c}"


SUCCESS = {sd.ProjectionStatus.UNCHANGED, sd.ProjectionStatus.PROJECTED}


def check_projection(f, snap, res, where: str) -> None:
    if isinstance(res, Exception):
        return
    assert isinstance(res, sd.ProjectionResult), where
    if res.status in SUCCESS:
        assert max(res.violation.values()) <= 1e-6, f"{where}: {res.status.name} with violation {res.violation}"
        assert_device_feasible(f, snap, res.action, where)
    if res.certified:
        buses = np.arange(f.n_bus) != f.root_bus
        v = res.ac_vm_pu[buses]
        assert (v >= f.bus.vm_min_pu[buses] - 1e-6).all() and (v <= f.bus.vm_max_pu[buses] + 1e-6).all(), \
            f"{where}: certified outside the voltage limits"


# -- strategies: mostly sensible arguments, a few fields spoiled --------------------------------
SPECIALS = [np.nan, np.inf, -np.inf, 1e300, -1e308, 1e-300, -1e-300, MAX_ABS_POWER_MW + 1, -MAX_ABS_POWER_MW - 1,
            5e-324, 0.0, -0.0]
WRONG = st.sampled_from([None, "x", "", (), (1, 2), {}, {"a": 1}, [None], 1 + 2j, b"\x00", object(), True, 1.0, -7])
SCALARS = st.one_of(st.sampled_from(SPECIALS), WRONG, st.floats(allow_nan=True, allow_infinity=True),
                    st.integers(-(10**30), 10**30), st.complex_numbers(max_magnitude=1e6))
NP_DTYPES = [np.float32, np.float16, np.int64, np.int8, np.bool_, np.uint8, np.complex128, object]
TORCH_DTYPES = [torch.float64, torch.float32, torch.float16, torch.bfloat16, torch.int64, torch.bool, torch.complex64]


@st.composite
def spoiled(draw, base: np.ndarray, allow_bad: bool = True):
    """``base`` (a sensible vector), often as is or rescaled, sometimes spoiled."""
    base = np.array(base, dtype=float)
    kinds = ["ok", "ok", "ok", "ok", "list", "scaled"]
    if allow_bad:
        kinds += ["special", "special", "dtype", "shape", "wrong", "torch", "complex", "readonly"]
    kind = draw(st.sampled_from(kinds))
    if kind == "ok":
        return base.copy()
    if kind == "list":
        return base.tolist()
    if kind == "scaled":
        return base * draw(st.sampled_from([0.0, 0.5, 1.5, 3.0, -1.0, 1e-300, 1e3]))
    if kind == "special":
        a = base.copy()
        if a.size:
            idx = draw(st.lists(st.integers(0, a.size - 1), min_size=1, max_size=3))
            a.flat[idx] = draw(st.sampled_from(SPECIALS))
        return a
    if kind == "dtype":
        dt = draw(st.sampled_from(NP_DTYPES))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return base.astype(dt)
    if kind == "shape":
        return draw(st.sampled_from([base[..., :-1], np.concatenate([base, base[..., :1]], axis=-1), base[None],
                                     base.reshape(-1, 1), base.reshape(-1), np.zeros(0), np.float64(0.5),
                                     np.zeros((2, *base.shape))]))
    if kind == "wrong":
        return draw(WRONG)
    if kind == "torch":
        dt = draw(st.sampled_from(TORCH_DTYPES))
        t = torch.tensor(base).to(dt)
        if dt.is_floating_point and draw(st.booleans()):
            t.requires_grad_(True)
        return t
    if kind == "complex":
        return base + 1j * draw(st.sampled_from([0.0, 1.0, 1e-300]))
    a = base.copy()
    a.setflags(write=False)
    return a


def _nominal(f):
    p, q = f.nominal_injection()
    return -p, -q


@st.composite
def actions(draw, f, allow_bad: bool = True, sensible: bool = False):
    if allow_bad and not sensible and draw(st.integers(0, 9)) == 0:
        return draw(WRONG)
    s = f.pv.s_mva
    if sensible:  # inside the disks
        u = draw(st.floats(0.0, 1.0))
        p, q = s * u, s * draw(st.floats(-1.0, 1.0)) * math.sqrt(1 - u * u)
    else:
        p, q = s * draw(st.floats(0.0, 1.2)), s * draw(st.floats(-1.2, 1.2))
    n_bad = draw(st.integers(0, 2)) if allow_bad and not sensible else 0
    bad = set(draw(st.permutations(["p", "q", "cap", "ess"]))[:n_bad])
    cap = None
    if f.n_cap and draw(st.booleans()):
        cap = draw(spoiled(np.minimum(f.cap.n_steps, draw(st.integers(0, 3))).astype(float), "cap" in bad))
    ess = None
    if f.n_ess and draw(st.booleans()):
        ess = draw(spoiled(f.ess.p_max_mw * draw(st.floats(-1.2, 1.2)), "ess" in bad))
    return sd.Action(pv_p_mw=draw(spoiled(p, "p" in bad)), pv_q_mvar=draw(spoiled(q, "q" in bad)), cap_step=cap,
                     ess_p_mw=ess)


@st.composite
def snapshots(draw, f, allow_bad: bool = True):
    if allow_bad and draw(st.integers(0, 11)) == 0:
        return draw(WRONG)
    lp, lq = _nominal(f)
    scale = draw(st.sampled_from([0.0, 0.3, 0.7, 1.0, 1.3, 2.0, 5.0]))
    avail = f.pv.p_max_mw * draw(st.floats(0.0, 1.0))
    n_bad = draw(st.integers(0, 2)) if allow_bad else 0
    bad_fields = set(draw(st.permutations(["lp", "lq", "av", "prev", "soc", "v", "dt"]))[:n_bad])
    kw = dict(load_p_mw=draw(spoiled(lp * scale, "lp" in bad_fields)),
              load_q_mvar=draw(spoiled(lq * scale, "lq" in bad_fields)),
              pv_avail_mw=draw(spoiled(avail, "av" in bad_fields)))
    if draw(st.booleans()):
        kw["prev"] = draw(st.one_of(WRONG, actions(f)) if "prev" in bad_fields else actions(f, sensible=True))
    if f.n_ess and draw(st.booleans()):
        mid = 0.5 * (f.ess.soc_min + f.ess.soc_max)
        kw["ess_soc"] = draw(spoiled(mid, "soc" in bad_fields))
    if "v" in bad_fields:
        kw["v_root_pu"] = draw(st.one_of(SCALARS, st.floats(0.4, 2.1)))
    elif draw(st.booleans()):
        kw["v_root_pu"] = draw(st.floats(0.95, 1.05))
    if "dt" in bad_fields:
        kw["dt_h"] = draw(st.one_of(SCALARS, st.floats(-1.0, 30.0)))
    snap = sd.Snapshot(**kw)
    if draw(st.integers(0, 4)) == 0:  # a checked (frozen) copy, when it is valid
        try:
            snap = snap.checked(f)
        except sd.SafeDispatchError:
            pass
    return snap


# -- feeders, layers and solvers built once (their setup is not what is timed) -----------------
@pytest.fixture(scope="module")
def feeders():
    return {name: sd.load_case(name) for name in ("ieee33-paperB-4", "ieee33-paperC", "ieee33-zones")}


@pytest.fixture(scope="module")
def layers(feeders):
    out = {}
    for name, f in feeders.items():
        layer = sd.SafetyLayer(f)
        snap = sd.Snapshot.nominal(f, load=0.5, pv=0.8)
        act = sd.Action(pv_p_mw=np.asarray(snap.pv_avail_mw), pv_q_mvar=np.zeros(f.n_pv), ess_p_mw=np.zeros(f.n_ess))
        prev = sd.Action(pv_p_mw=np.zeros(f.n_pv), pv_q_mvar=np.zeros(f.n_pv))
        for s in (snap, snap.checked(f), snap.replace(prev=prev), snap.replace(prev=prev).checked(f)):
            for a in (act, act.checked(f)):  # every compiled variant the calls can meet
                layer.project(a, s)
                layer.project(a, s, certify_ac=True)
                layer.project_vector(a.to_vector(), s)
                sd.project_action(a, s, feeder=f, model="socp")
                sd.project_action(a, s, feeder=f)
        out[name] = layer
    return out


@pytest.fixture(scope="module")
def warm_baselines(feeders, layers):
    from safedispatch import baselines as B

    for f in feeders.values():
        snap = sd.Snapshot.nominal(f, load=0.5, pv=0.8)
        for model in ("socp", "lindistflow"):
            B.solve_opf(f, snap, model=model)
        B.solve_mip(f, snap)
        B.VoltVarDroop(f).act(snap)
    fz = feeders["ieee33-zones"]
    B.solve_admm(fz, sd.Snapshot.nominal(fz, load=0.5, pv=0.8), max_iter=ADMM_MAX_ITER)
    return True


FEEDER_NAMES = st.sampled_from(["ieee33-paperB-4", "ieee33-paperC", "ieee33-zones"])


# -- network -------------------------------------------------------------------------------------
@SIZES
def test_load_case(size):
    valid = ["ieee33", "ieee33-paperB", "ieee33-paperB-4", "ieee33-paperC", "ieee33-zones"]
    for name in valid:  # the first load of a case (and of pandapower) is setup, not the call timed
        sd.load_case(name)
    names = st.one_of(st.sampled_from(valid + ["IEEE33", " ieee33", "ieee33\x00", "nope"]),
                      st.text(max_size=12), WRONG, st.lists(st.text(max_size=3), max_size=2))

    def prop(name):
        out = call("load_case", lambda: sd.load_case(name))
        assert isinstance(out, (sd.Feeder, sd.SafeDispatchError))

    run("load_case", size, names, prop, slow_examples=False)


@pytest.fixture(scope="module")
def pp_net(feeders):
    return sd.to_pandapower(feeders["ieee33-paperC"])


@SIZES
def test_from_pandapower(size, pp_net):
    cols = {"bus": ["vn_kv", "max_vm_pu", "in_service"], "line": ["r_ohm_per_km", "x_ohm_per_km", "length_km",
                                                                   "max_i_ka", "from_bus", "c_nf_per_km"],
            "load": ["p_mw", "q_mvar", "bus", "scaling"], "sgen": ["p_mw", "sn_mva", "bus", "type"],
            "ext_grid": ["vm_pu", "bus"]}
    cols = {t: c for t, c in cols.items() if t in pp_net and len(pp_net[t])}
    @st.composite
    def mutations(draw):
        kind = draw(st.sampled_from(["whole", "drop", "set", "set", "set"]))
        if kind == "whole":
            return ("whole", draw(WRONG))
        table = draw(st.sampled_from(sorted(cols)))
        if kind == "drop":
            return ("drop", table)
        return (table, draw(st.integers(0, 100)), draw(st.sampled_from(cols[table])),
                draw(st.one_of(st.sampled_from(SPECIALS), WRONG, st.integers(-5, 100))))

    def prop(m):
        if m[0] == "whole":
            call("from_pandapower", lambda: sd.from_pandapower(m[1]))
            return
        net = copy.deepcopy(pp_net)
        if m[0] == "drop":
            net[m[1]] = net[m[1]].iloc[0:0]
        else:
            table, row, col, value = m
            idx = net[table].index[row % len(net[table])]
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # pandas' dtype-change warnings
                try:
                    net[table][col] = net[table][col].astype(object)
                    net[table].at[idx, col] = value
                except Exception:  # noqa: BLE001  (pandas refused the value: nothing to test)
                    return
        call("from_pandapower", lambda: sd.from_pandapower(net))

    run("from_pandapower", size, mutations(), prop)


# -- power flow ----------------------------------------------------------------------------------
@st.composite
def powerflow_args(draw, torch_: bool):
    f = sd.load_case(draw(FEEDER_NAMES))
    lp, lq = _nominal(f)
    scale = draw(st.sampled_from([0.0, 0.5, 1.0, 2.0, 10.0, -3.0]))
    p, q = -lp * scale, -lq * scale
    if f.n_pv:
        np.add.at(p, f.pv.bus, f.pv.p_max_mw * draw(st.floats(0, 1)))
    K = draw(st.sampled_from([None, None, 1, 3]))
    if K is not None:
        p, q = np.tile(p, (K, 1)), np.tile(q, (K, 1))
    if torch_:
        dt = draw(st.sampled_from(TORCH_DTYPES + [torch.float64, torch.float32] * 3))
        P, Q = torch.tensor(p).to(dt), torch.tensor(q).to(dt)
        if draw(st.integers(0, 3)) == 0 and P.is_floating_point():
            P = P.clone()
            P.view(-1)[draw(st.integers(0, P.numel() - 1))] = draw(st.sampled_from([math.nan, math.inf, 1e30]))
        if draw(st.integers(0, 5)) == 0:
            Q = draw(st.one_of(WRONG, st.just(q)))  # mixed kinds or junk
    else:
        P = draw(spoiled(p.ravel(), True)) if K is None else p
        Q = draw(spoiled(q.ravel(), draw(st.booleans()))) if K is None else q
    kw = {}
    if draw(st.booleans()):
        kw["v_root_pu"] = draw(st.one_of(st.floats(0.4, 2.1), SCALARS,
                                         st.just(np.full(K or 1, 1.0)), st.just(torch.ones(K or 1))))
    if draw(st.booleans()):
        kw["shunt_q_mvar"] = draw(spoiled(np.zeros(f.n_bus), True))
    if draw(st.integers(0, 4)) == 0:
        kw["tol_pu"] = draw(SCALARS)
    if draw(st.integers(0, 4)) == 0:
        kw["max_iter"] = draw(st.one_of(SCALARS, st.integers(-2, 5)))
    return f, P, Q, kw


def _check_pf(f, res, where):
    if not isinstance(res, Exception):
        assert tuple(res.vm_pu.shape)[-1] == f.n_bus, where


@SIZES
def test_run_powerflow(size, feeders):
    def prop(args):
        f, P, Q, kw = args
        _check_pf(f, call("run_powerflow", lambda: sd.run_powerflow(f, P, Q, **kw)), "run_powerflow")

    run("run_powerflow", size, powerflow_args(False), prop)


@SIZES
def test_run_powerflow_torch(size, feeders):
    def prop(args):
        f, P, Q, kw = args
        _check_pf(f, call("run_powerflow_torch", lambda: sd.run_powerflow(f, P, Q, **kw)), "run_powerflow_torch")

    run("run_powerflow_torch", size, powerflow_args(True), prop)


# -- snapshot, action, injections ----------------------------------------------------------------
@SIZES
def test_snapshot_and_action(size, feeders):
    def prop(args):
        name, snap, act = args
        f = feeders[name]
        for obj, kind in ((snap, "snapshot"), (act, "action")):
            checker = check_snapshot if kind == "snapshot" else check_action
            out = call("snapshot_action", lambda c=checker, o=obj: c(o, f))
            if isinstance(out, Exception):
                continue
            if kind == "snapshot":
                for a in (out.load_p_mw, out.load_q_mvar, out.pv_avail_mw, out.ess_soc):
                    assert not a.flags.writeable and (np.abs(a) <= MAX_ABS_POWER_MW).all()
                assert 0.5 <= out.v_root_pu <= 2.0 and 0 < out.dt_h <= 24
                assert out.checked(f) is out
            else:
                assert (np.abs(out.to_vector()) <= MAX_ABS_POWER_MW).all()

    strategy = FEEDER_NAMES.flatmap(lambda n: st.tuples(st.just(n), snapshots(sd.load_case(n)),
                                                        actions(sd.load_case(n))))
    run("snapshot_action", size, strategy, prop, slow_examples=False)


@SIZES
def test_net_injection(size, feeders):
    def prop(args):
        name, snap, act, shed = args
        f = feeders[name]
        out = call("net_injection", lambda: sd.net_injection(f, snap, act, shed))
        if not isinstance(out, Exception):
            assert len(out) == 3 and all(o.shape == (f.n_bus,) for o in out)

    strategy = FEEDER_NAMES.flatmap(lambda n: st.tuples(
        st.just(n), snapshots(sd.load_case(n)), actions(sd.load_case(n)),
        st.one_of(st.none(), spoiled(np.zeros(sd.load_case(n).n_bus)))))
    run("net_injection", size, strategy, prop, slow_examples=False)


# -- safety layer --------------------------------------------------------------------------------
def _layer_strategy():
    return FEEDER_NAMES.flatmap(lambda n: st.tuples(st.just(n), snapshots(sd.load_case(n)),
                                                    actions(sd.load_case(n))))


@SIZES
def test_project(size, feeders, layers):
    def prop(args):
        name, snap, act = args
        f, layer = feeders[name], layers[name]
        check_projection(f, snap, call("project", lambda: layer.project(act, snap)), f"project[{name}]")

    run("project", size, _layer_strategy(), prop)


@SIZES
def test_project_certified(size, feeders, layers):
    def prop(args):
        name, snap, act = args
        f, layer = feeders[name], layers[name]
        res = call("project_certified", lambda: layer.project(act, snap, certify_ac=True))
        check_projection(f, snap, res, f"project(certify_ac)[{name}]")

    run("project_certified", size, _layer_strategy(), prop)


@SIZES
def test_project_action(size, feeders, layers):
    def prop(args):
        (name, snap, act), model = args
        f = feeders[name]
        res = call("project_action", lambda: sd.project_action(act, snap, feeder=f, model=model))
        check_projection(f, snap, res, f"project_action[{name}, {model!r}]")

    models = st.one_of(st.sampled_from(["lindistflow", "socp"]), WRONG)
    run("project_action", size, st.tuples(_layer_strategy(), models), prop)


@SIZES
def test_project_vector(size, feeders, layers):
    def prop(args):
        name, snap, x = args
        f, layer = feeders[name], layers[name]
        out = call("project_vector", lambda: layer.project_vector(x, snap))
        if not isinstance(out, Exception):
            vec, res = out
            check_projection(f, snap, res, f"project_vector[{name}]")
            np.testing.assert_array_equal(vec, res.action.to_vector())

    def xs(n):
        f = sd.load_case(n)
        base = np.r_[f.pv.s_mva * 0.7, f.pv.s_mva * -0.3, np.zeros(f.n_ess)]
        return spoiled(base)

    strategy = FEEDER_NAMES.flatmap(lambda n: st.tuples(st.just(n), snapshots(sd.load_case(n)), xs(n)))
    run("project_vector", size, strategy, prop)


@pytest.fixture(scope="module")
def torch_layer(feeders):
    f = feeders["ieee33-paperB-4"]
    tl = sd.TorchSafetyLayer(f)
    snap = sd.Snapshot.nominal(f, load=0.5, pv=0.8)
    for dt in (torch.float64, torch.float32):
        raw = torch.tensor(np.r_[snap.pv_avail_mw, np.zeros(4)], dtype=dt).expand(3, -1).clone()
        lp = torch.tensor(np.asarray(snap.load_p_mw), dtype=dt).expand(3, -1).clone()
        lq = torch.tensor(np.asarray(snap.load_q_mvar), dtype=dt).expand(3, -1).clone()
        av = torch.tensor(np.asarray(snap.pv_avail_mw), dtype=dt).expand(3, -1).clone()
        tl(raw, lp, lq, av)
        tl(raw, lp, lq, av, prev=raw)
    return tl


@SIZES
def test_torch_layer(size, feeders, torch_layer):
    f = feeders["ieee33-paperB-4"]
    lp0, lq0 = _nominal(f)

    @st.composite
    def batches(draw):
        B = draw(st.sampled_from([0, 1, 3]))
        dt = draw(st.sampled_from([torch.float64, torch.float64, torch.float32] + TORCH_DTYPES))
        scale = draw(st.sampled_from([0.0, 0.5, 1.0, 2.0]))
        av = f.pv.p_max_mw * draw(st.floats(0, 1))
        raw = np.r_[f.pv.s_mva * draw(st.floats(0, 1.2)), f.pv.s_mva * draw(st.floats(-1.2, 1.2))]
        arrs = [np.tile(x, (B, 1)) for x in (raw, lp0 * scale, lq0 * scale, av)]
        ts = [torch.tensor(a).to(dt) for a in arrs]
        which = draw(st.integers(-4, 3))  # one argument spoiled, or none
        if which >= 0:
            ts[which] = draw(st.one_of(WRONG, st.just(arrs[which]), spoiled(arrs[which][0] if B else arrs[which])))
            if isinstance(ts[which], np.ndarray) and ts[which].ndim == 1 and B:
                ts[which] = torch.tensor(np.tile(ts[which], (B, 1)))
        elif draw(st.booleans()) and B:
            t = ts[draw(st.integers(0, 3))]
            if t.is_floating_point() and t.numel():
                t.view(-1)[0] = draw(st.sampled_from([math.nan, math.inf, 1e30, -1e30]))
        t0 = ts[0]
        prev = t0.detach().clone() if isinstance(t0, torch.Tensor) and draw(st.booleans()) else None
        if isinstance(t0, torch.Tensor) and t0.is_floating_point() and draw(st.booleans()):
            t0.requires_grad_(True)
        return ts, prev

    def prop(args):
        ts, prev = args
        out = call("torch_layer", lambda: torch_layer(*ts, prev=prev, return_status=True))
        if isinstance(out, Exception):
            return
        safe, status = out
        assert safe.shape == ts[0].shape and safe.dtype == ts[0].dtype
        n = f.n_pv
        av = ts[3].detach().double()
        for b in range(safe.shape[0]):
            if int(status[b]) in (int(sd.ProjectionStatus.UNCHANGED), int(sd.ProjectionStatus.PROJECTED)):
                x = safe[b].detach().double().numpy()
                tol = 1e-6 if safe.dtype == torch.float64 else 1e-2  # float32's rounding
                assert (x[:n] >= -tol).all() and (x[:n] <= av[b].numpy() + tol).all(), x
                assert (np.hypot(x[:n], x[n:]) <= f.pv.s_mva * (1 + tol) + tol).all(), x

    run("torch_layer", size, batches(), prop)


# -- baselines -----------------------------------------------------------------------------------
ADMM_MAX_ITER = 30  # an option of the call: the fuzz is about inputs, not ADMM's iteration count


def _check_opf(f, snap, res, where):
    from safedispatch.baselines import OPFStatus

    if isinstance(res, Exception):
        return
    if res.status in (OPFStatus.OPTIMAL, OPFStatus.REPAIRED):
        assert res.ac_feasible, where
        assert_device_feasible(f, snap, res.action, where)


@SIZES
def test_solve_opf(size, feeders, warm_baselines):
    from safedispatch.baselines import solve_opf

    def prop(args):
        (name, snap, _), model = args
        f = feeders[name]
        res = call("solve_opf", lambda: solve_opf(f, snap, model=model))
        _check_opf(f, snap, res, f"solve_opf[{name}, {model!r}]")

    run("solve_opf", size, st.tuples(_layer_strategy(), st.one_of(st.sampled_from(["socp", "lindistflow"]), WRONG)),
        prop)


@SIZES
def test_solve_mip(size, feeders, warm_baselines):
    from safedispatch.baselines import MIPStatus, solve_mip

    def prop(args):
        name, snap, _ = args
        f = feeders[name]
        res = call("solve_mip", lambda: solve_mip(f, snap))
        if not isinstance(res, Exception) and res.status == MIPStatus.OPTIMAL:
            assert_device_feasible(f, snap, res.action, f"solve_mip[{name}]")

    run("solve_mip", size, _layer_strategy(), prop)


@SIZES
def test_solve_admm(size, feeders, warm_baselines):
    from safedispatch.baselines import ADMMStatus, solve_admm

    f = feeders["ieee33-zones"]

    def prop(snap):
        res = call("solve_admm", lambda: solve_admm(f, snap, max_iter=ADMM_MAX_ITER))
        if not isinstance(res, Exception) and res.status == ADMMStatus.CONVERGED:
            assert_device_feasible(f, snap, res.action, "solve_admm")

    run("solve_admm", size, snapshots(f), prop)


@SIZES
def test_controllers(size, feeders, warm_baselines):
    from safedispatch.baselines import NoControl, VoltVarDroop

    droops = {n: VoltVarDroop(f) for n, f in feeders.items()}

    def prop(args):
        (name, snap, _), vm = args
        f = feeders[name]
        for where, fn in (("droop", lambda: droops[name].act(snap)), ("droop(vm_pu)", lambda: droops[name].act(
                snap, vm_pu=vm)), ("no_control", lambda: NoControl(f).act(snap))):
            out = call("controllers", fn)
            if not isinstance(out, Exception):
                assert_device_feasible(f, snap, out, where)

    vms = st.one_of(spoiled(np.ones(33)), st.floats(0.0, 2.0).map(lambda v: np.full(33, v)))
    run("controllers", size, st.tuples(_layer_strategy(), vms), prop)


# -- metrics -------------------------------------------------------------------------------------
@SIZES
def test_metrics(size, feeders):
    from safedispatch.metrics import dispatch_metrics

    f = feeders["ieee33-paperB-4"]

    @st.composite
    def trajectories(draw):
        T = draw(st.sampled_from([0, 1, 5]))
        vm = np.full((T, f.n_bus), draw(st.floats(0.8, 1.2)))
        loss = np.full(T, 0.1)
        av = np.tile(f.pv.p_max_mw, (T, 1)) * draw(st.floats(0, 1))
        kw = {"pv_avail_mw": av, "pv_p_mw": av * 0.9, "pv_q_mvar": np.zeros((T, 4)), "dt_h": 0.25,
              "v_ref_pu": 1.0, "correction_norm": np.zeros(T), "projection_status": np.zeros(T)}
        args = {"vm_pu": vm, "p_loss_mw": loss, **{k: v for k, v in kw.items() if draw(st.booleans())}}
        for k in draw(st.lists(st.sampled_from(sorted(args)), max_size=2, unique=True)):
            v = args[k]
            args[k] = draw(st.one_of(SCALARS, spoiled(v.ravel()))) if isinstance(v, np.ndarray) else draw(SCALARS)
        return args

    def prop(args):
        call("metrics", lambda: dispatch_metrics(f, **args))

    run("metrics", size, trajectories(), prop, slow_examples=False)


# -- environments --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def envs():
    from safedispatch.envs import DispatchEnv, EnvConfig, MultiAgentDispatchEnv, SafetyWrapper

    cfg = EnvConfig(case="ieee33-paperB-4")
    return {"single": DispatchEnv(cfg), "wrapped": SafetyWrapper(DispatchEnv(cfg), certify_ac=False),
            "multi": MultiAgentDispatchEnv(cfg, agents="bus")}


@SIZES
def test_envs(size, envs):
    op = st.one_of(
        st.tuples(st.just("reset"), st.one_of(st.none(), st.integers(0, 2**31), SCALARS),
                  st.one_of(st.none(), st.just({}), st.fixed_dictionaries({"day": st.one_of(
                      st.integers(0, 366), SCALARS)}), WRONG)),
        st.tuples(st.just("step"), spoiled(np.zeros(8)), st.just(None)),
        st.tuples(st.just("step"), spoiled(np.full(8, 0.5)), st.just(None)),
        st.tuples(st.just("setpoints"), actions(sd.load_case("ieee33-paperB-4")), st.just(None)),
        st.tuples(st.just("to_end"), st.just(None), st.just(None)),
    )

    def prop(args):
        kind, ops = args
        env = envs[kind]
        for name, a, b in ops:
            if name == "reset":
                call("envs", lambda a=a, b=b: env.reset(seed=a, options=b))
            elif name == "to_end":
                if not isinstance(call("envs", lambda: env.reset(seed=0)), Exception):
                    for _ in range(96):
                        _step(env, kind, np.zeros(8, np.float32))
                    out = call("envs", lambda: _step(env, kind, np.zeros(8, np.float32)))
                    assert isinstance(out, sd.envs.ResetNeeded), out
            elif name == "step":
                call("envs", lambda a=a: _step(env, kind, a))
            elif kind != "wrapped":  # a gymnasium Wrapper does not forward step_setpoints
                call("envs", lambda a=a: env.step_setpoints(a))

    run("envs", size, st.tuples(st.sampled_from(["single", "wrapped", "multi"]), st.lists(op, min_size=1,
                                                                                          max_size=4)), prop)


def _step(env, kind, a):
    if kind == "multi":
        flat = a
        acts = {}
        if isinstance(flat, np.ndarray) and flat.shape == (8,):
            for ag in env.possible_agents:
                acts[ag] = flat[env._act_idx[ag]]
        else:
            acts = {ag: flat for ag in env.possible_agents}
        return env.step(acts)
    return env.step(a)


@pytest.fixture(scope="module")
def vector_env():
    from safedispatch.envs import EnvConfig, VectorDispatchEnv

    return VectorDispatchEnv(EnvConfig(case="ieee33-paperB-4"), num_envs=2)


@SIZES
def test_vector_env(size, vector_env):
    op = st.one_of(
        st.tuples(st.just("reset"), st.one_of(st.none(), st.integers(0, 2**31), SCALARS)),
        st.tuples(st.just("step"), st.one_of(spoiled(np.zeros((2, 8))), spoiled(np.zeros(16)).map(
            lambda v: v.reshape(2, 8) if isinstance(v, np.ndarray) and v.size == 16 else v))),
    )

    def prop(ops):
        for name, a in ops:
            if name == "reset":
                call("vector_env", lambda a=a: vector_env.reset(seed=a))
            else:
                call("vector_env", lambda a=a: vector_env.step(a))

    run("vector_env", size, st.lists(op, min_size=1, max_size=4), prop)


# -- the size of the slow run --------------------------------------------------------------------
@pytest.mark.slow
def test_zz_slow_run_made_at_least_10000_calls():
    """Runs last (file order): with every slow variant above run, the calls number >= 10 000."""
    if FULL_DONE != set(BUDGET):
        pytest.skip(f"only {sorted(FULL_DONE)} of the slow variants ran")
    total = sum(CALLS.values())
    print(f"fuzz calls: {total} ({dict(CALLS)})")
    assert total >= min(10_000, FUZZ_EXAMPLES or 10_000)
