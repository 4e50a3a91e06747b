"""Snapshot and Action: typed validation of every argument, absurd magnitudes rejected up front,
and checked snapshots frozen (#18 items 12, 13 and 14)."""

from __future__ import annotations

import dataclasses
import time
import warnings

import numpy as np
import pytest

import safedispatch as sd
from safedispatch.errors import MAX_ABS_POWER_MW
from safedispatch.problems.types import check_action, check_feeder, check_snapshot


@pytest.fixture(scope="module")
def f():
    return sd.load_case("ieee33-paperB-4")


@pytest.fixture(scope="module")
def fz():
    return sd.load_case("ieee33-zones")  # storage


def _snap(f, **kw):
    return sd.Snapshot.nominal(f, load=0.5, pv=0.5, **kw)


def _act(f, **kw):
    return sd.Action(pv_p_mw=0.5 * f.pv.p_max_mw, pv_q_mvar=np.zeros(f.n_pv), **kw)


# -- item 12: wrong types ------------------------------------------------------------------------
@pytest.mark.parametrize("bad", [1.0, (1, 2), None, "snapshot", {"load_p_mw": 1}, np.zeros(33)])
def test_check_snapshot_names_the_argument_for_a_wrong_type(f, bad):
    with pytest.raises(sd.InputError, match="expected a Snapshot, got") as e:
        check_snapshot(bad, f)
    assert e.value.field == "snapshot"
    with pytest.raises(sd.InputError) as e:
        check_snapshot(bad, f, name="snap")
    assert e.value.field == "snap"


@pytest.mark.parametrize("bad", [1.0, (1, 2), None, "action", {"pv_p_mw": 1}])
def test_check_action_names_the_argument_for_a_wrong_type(f, bad):
    with pytest.raises(sd.InputError, match="expected an Action, got") as e:
        check_action(bad, f)
    assert e.value.field == "action"


@pytest.mark.parametrize("bad", [1.0, None, "ieee33", (1,)])
def test_a_wrong_feeder_is_typed(f, bad):
    for call in (lambda: check_feeder(bad), lambda: _snap(f).checked(bad), lambda: _act(f).checked(bad),
                 lambda: sd.Snapshot.nominal(bad), lambda: sd.Action.from_vector(np.zeros(8), bad),
                 lambda: sd.net_injection(bad, _snap(f), _act(f))):
        with pytest.raises(sd.InputError) as e:
            call()
        assert e.value.field == "feeder"


def test_snapshot_fields_of_the_wrong_type_are_typed(f):
    n = f.n_bus
    cases = {
        "snapshot.load_p_mw": dict(load_p_mw="x"),
        "snapshot.load_q_mvar": dict(load_q_mvar={"a": 1}),
        "snapshot.pv_avail_mw": dict(pv_avail_mw=[None] * 4),
        "snapshot.prev": dict(prev=(1, 2)),
        "snapshot.v_root_pu": dict(v_root_pu="1.0"),
        "snapshot.dt_h": dict(dt_h=None),
    }
    for field, kw in cases.items():
        with pytest.raises(sd.InputError) as e:
            _snap(f).replace(**kw).checked(f)
        assert e.value.field == field, (field, e.value)
    with pytest.raises(sd.InputError, match="complex") as e:
        _snap(f).replace(load_p_mw=np.ones(n) * (1 + 1j)).checked(f)
    with pytest.raises(sd.InputError) as e:  # numpy raises OverflowError converting this
        _snap(f).replace(load_p_mw=[10**400] + [0] * (n - 1)).checked(f)
    assert e.value.field == "snapshot.load_p_mw"
    with pytest.raises(sd.InputError):  # a bool is no voltage
        _snap(f).replace(v_root_pu=True).checked(f)


def test_torch_tensors_that_need_grad_are_typed_not_runtime_errors(f):
    torch = pytest.importorskip("torch")
    p = torch.zeros(f.n_pv, requires_grad=True)
    with pytest.raises(sd.InputError) as e:
        sd.Action(pv_p_mw=p, pv_q_mvar=np.zeros(f.n_pv)).checked(f)
    assert e.value.field == "action.pv_p_mw"


def test_net_injection_checks_its_arguments(f):
    snap, act = _snap(f), _act(f)
    with pytest.raises(sd.InputError, match="expected a Snapshot"):
        sd.net_injection(f, 1.0, act)
    with pytest.raises(sd.InputError, match="expected an Action"):
        sd.net_injection(f, snap, (1, 2))
    with pytest.raises(sd.InputError) as e:
        sd.net_injection(f, snap.replace(load_p_mw=np.full(f.n_bus, np.nan)), act)
    assert e.value.field == "snapshot.load_p_mw"
    with pytest.raises(sd.InputError) as e:
        sd.net_injection(f, snap, act, shed_p_mw=np.ones(3))
    assert e.value.field == "shed_p_mw"
    p, q, sh = sd.net_injection(f, snap, act)
    p2, q2, sh2 = sd.net_injection(f, snap.checked(f), act.checked(f))
    np.testing.assert_array_equal(p, p2)
    np.testing.assert_array_equal(q, q2)
    assert p.flags.writeable and np.isfinite(p).all()


# -- item 13: absurd magnitudes ------------------------------------------------------------------
@pytest.mark.parametrize("value", [1e300, -1e308, MAX_ABS_POWER_MW * (1 + 1e-9) + 1])
def test_absurd_powers_are_rejected_without_overflow_warnings(f, fz, value):
    n = f.n_bus
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for field, kw in (("load_p_mw", dict(load_p_mw=np.r_[0.0, np.full(n - 1, value)])),
                          ("load_q_mvar", dict(load_q_mvar=np.full(n, value)))):
            with pytest.raises(sd.InputError, match="magnitudes") as e:
                _snap(f).replace(**kw).checked(f)
            assert e.value.field == f"snapshot.{field}"
        with pytest.raises(sd.InputError) as e:
            _snap(f).replace(pv_avail_mw=np.full(4, value)).checked(f)
        assert e.value.field == "snapshot.pv_avail_mw"
        for field in ("pv_p_mw", "pv_q_mvar"):
            with pytest.raises(sd.InputError, match="magnitudes") as e:
                sd.Action(**{"pv_p_mw": np.zeros(4), "pv_q_mvar": np.zeros(4), field: np.full(4, value)}).checked(f)
            assert e.value.field == f"action.{field}"
        with pytest.raises(sd.InputError, match="magnitudes") as e:
            sd.Action(pv_p_mw=np.zeros(4), pv_q_mvar=np.zeros(4), ess_p_mw=np.full(4, value)).checked(fz)
        assert e.value.field == "action.ess_p_mw"
        prev = sd.Action(pv_p_mw=np.full(4, value), pv_q_mvar=np.zeros(4))
        with pytest.raises(sd.InputError) as e:
            _snap(f, prev=prev).checked(f)
        assert e.value.field == "snapshot.prev.pv_p_mw"
        with pytest.raises(sd.InputError) as e:
            sd.Snapshot.nominal(fz, ess_soc=np.full(4, value)).checked(fz)
        assert e.value.field == "snapshot.ess_soc"


def test_a_power_at_the_bound_is_accepted(f):
    act = sd.Action(pv_p_mw=np.full(4, MAX_ABS_POWER_MW), pv_q_mvar=np.full(4, -MAX_ABS_POWER_MW)).checked(f)
    assert act.pv_p_mw[0] == MAX_ABS_POWER_MW


def test_capacitor_steps_of_absurd_size_do_not_wrap_around():
    fc = sd.load_case("ieee33-paperC")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "invalid value encountered in cast"
        for bad in (1e300, -1e300, 2**63, 0.5):
            with pytest.raises(sd.InputError) as e:
                sd.Action(pv_p_mw=np.zeros(2), pv_q_mvar=np.zeros(2), cap_step=np.full(2, bad)).checked(fc)
            assert e.value.field == "action.cap_step"


@pytest.mark.parametrize("v", [1e300, 0.0, 0.49, 2.01, -1.0, np.inf, np.nan])
def test_root_voltage_outside_its_range_is_rejected(f, v):
    with pytest.raises(sd.InputError, match=r"\[0.5, 2.0\]") as e:
        _snap(f, v_root_pu=v).checked(f)
    assert e.value.field == "snapshot.v_root_pu"


@pytest.mark.parametrize("v", [0.5, 1.0, 2.0, np.float32(1.02), 1])
def test_root_voltage_inside_its_range_is_accepted(f, v):
    assert _snap(f, v_root_pu=v).checked(f).v_root_pu == pytest.approx(float(v))


@pytest.mark.parametrize("dt", [0.0, -0.25, 24.01, 1e300, np.nan, np.inf, True])
def test_step_length_outside_its_range_is_rejected(f, dt):
    with pytest.raises(sd.InputError) as e:
        _snap(f, dt_h=dt).checked(f)
    assert e.value.field == "snapshot.dt_h"


@pytest.mark.parametrize("dt", [1e-3, 0.25, 1, 24.0])
def test_step_length_inside_its_range_is_accepted(f, dt):
    assert _snap(f, dt_h=dt).checked(f).dt_h == float(dt)


def test_absurd_loads_fail_fast_in_solve_opf(f):
    """Loads of 1e300 MW ran 30-37 s in solve_opf before SOLVER_FAILED; v_root_pu=1e300 raised
    OverflowError from the power flow."""
    from safedispatch.baselines import solve_opf

    t0 = time.perf_counter()
    with pytest.raises(sd.InputError):
        solve_opf(f, _snap(f).replace(load_p_mw=np.r_[0.0, np.full(f.n_bus - 1, 1e300)]))
    with pytest.raises(sd.InputError):
        solve_opf(f, _snap(f, v_root_pu=1e300))
    assert time.perf_counter() - t0 < 1.0


# -- item 14: checked snapshots are frozen -------------------------------------------------------
def test_checked_copies_are_read_only_and_own_their_arrays(f, fz):
    user = np.asarray(_snap(f).load_p_mw).copy()
    snap = _snap(f, prev=_act(f)).replace(load_p_mw=user)
    c = snap.checked(f)
    for a in (c.load_p_mw, c.load_q_mvar, c.pv_avail_mw, c.ess_soc, c.prev.pv_p_mw, c.prev.pv_q_mvar,
              c.prev.cap_step, c.prev.ess_p_mw):
        assert isinstance(a, np.ndarray) and not a.flags.writeable
        with pytest.raises(ValueError, match="read-only"):
            a[...] = np.nan
    assert not np.shares_memory(c.load_p_mw, user)
    user[1] = 123.0  # the caller's array stays the caller's: the checked copy does not move
    assert c.load_p_mw[1] != 123.0
    raw = _act(f)
    a = raw.checked(f)  # a copy (writable: numba compiles kernels anew for read-only arguments)
    assert not (np.shares_memory(a.pv_p_mw, raw.pv_p_mw) or np.shares_memory(a.pv_q_mvar, raw.pv_q_mvar))


def test_a_mutated_user_snapshot_is_validated_again(f):
    """The user report: ``Snapshot(load_p_mw=a, ...)``, projected (validated), then ``a[0] = nan``
    and projected again came back UNCHANGED with NaN voltages."""
    a = np.asarray(_snap(f).load_p_mw).copy()
    snap = _snap(f).replace(load_p_mw=a)
    snap.checked(f)
    a[1] = np.nan
    with pytest.raises(sd.InputError) as e:
        snap.checked(f)
    assert e.value.field == "snapshot.load_p_mw"
    a[1] = 0.1
    c = snap.checked(f)
    a[1] = np.nan
    assert c.checked(f) is c and np.isfinite(c.load_p_mw).all()


def test_the_checked_shortcut_trusts_only_frozen_validated_arrays(f):
    c = _snap(f, prev=_act(f)).checked(f)
    assert c.checked(f) is c
    assert c.checked(f.replace()) is not c  # another feeder object: checked again
    # the marker is no constructor argument, and dataclasses.replace does not carry it over
    with pytest.raises(TypeError):
        sd.Snapshot(load_p_mw=c.load_p_mw, load_q_mvar=c.load_q_mvar, pv_avail_mw=c.pv_avail_mw, _checked_for=f)
    bad = dataclasses.replace(c, load_p_mw=np.full(f.n_bus, np.nan))
    with pytest.raises(sd.InputError):
        bad.checked(f)
    # writes re-enabled behind the library's back: the copy is no longer trusted
    c2 = _snap(f).checked(f)
    c2.load_q_mvar.setflags(write=True)
    c2.load_q_mvar[0] = np.inf
    with pytest.raises(sd.InputError):
        c2.checked(f)
    c3 = _snap(f, prev=_act(f)).checked(f)
    c3.prev.pv_q_mvar.setflags(write=True)
    c3.prev.pv_q_mvar[0] = np.nan
    with pytest.raises(sd.InputError):
        c3.checked(f)
    c4 = _snap(f).checked(f)
    object.__setattr__(c4, "pv_avail_mw", np.full(4, np.nan))  # a writable array swapped in
    with pytest.raises(sd.InputError):
        c4.checked(f)


def test_checking_a_checked_snapshot_stays_cheap(f):
    c = _snap(f, prev=_act(f)).checked(f)
    n = 2000
    best = np.inf
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(n):
            c.checked(f)
        best = min(best, (time.perf_counter() - t0) / n)
    assert best < 10e-6, f"{best * 1e6:.2f} us"  # measured ~1 us
    s = _snap(f, prev=_act(f))
    t0 = time.perf_counter()
    for _ in range(200):
        s.checked(f)
    assert (time.perf_counter() - t0) / 200 < 500e-6  # a full check: tens of microseconds


def test_nominal_owns_fresh_arrays_and_stays_unchecked(f):
    s = sd.Snapshot.nominal(f, load=0.3, pv=1.0)
    assert s.v_root_pu is None and s._checked_for is None  # the feeder's root voltage applies at use
    for a in (s.load_p_mw, s.load_q_mvar, s.pv_avail_mw):
        assert a.flags.writeable and a.flags.owndata
        assert not np.shares_memory(a, f.pv.p_max_mw)
    t = sd.Snapshot.nominal(f, load=0.3, pv=1.0)
    assert not np.shares_memory(s.load_p_mw, t.load_p_mw)
    for kw in (dict(load="x"), dict(load=np.nan), dict(pv=None), dict(pv=np.inf), dict(load=[1.0])):
        with pytest.raises(sd.InputError) as e:
            sd.Snapshot.nominal(f, **kw)
        assert e.value.field in ("load", "pv")


def test_torch_tensors_of_any_real_dtype_are_read_by_value(f):
    torch = pytest.importorskip("torch")
    for dt in (torch.float64, torch.float32, torch.float16, torch.bfloat16, torch.int64):
        a = sd.Action(pv_p_mw=torch.ones(4, dtype=dt), pv_q_mvar=torch.zeros(4, dtype=dt)).checked(f)
        np.testing.assert_array_equal(a.pv_p_mw, np.ones(4))
    with pytest.raises(sd.InputError, match="complex"):
        sd.Action(pv_p_mw=torch.ones(4, dtype=torch.complex64), pv_q_mvar=np.zeros(4)).checked(f)


def test_repr_never_raises_on_an_unchecked_action():
    assert "Action(" in repr(sd.Action(pv_p_mw="x", pv_q_mvar=None))
