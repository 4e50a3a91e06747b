"""Volt-VAr droop and no control: the IEEE 1547-2018 curve, its equilibrium checked by
pandapower, and set-points always inside the inverter disks."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import safedispatch as sd
from safedispatch.baselines import NoControl, VoltVarCurve, VoltVarDroop
from tests.conftest import pp_powerflow


@pytest.fixture(scope="module")
def feeder():
    return sd.load_case("ieee33-paperB-4")


def ac_state(feeder, snap, act):
    p, q, sh = sd.net_injection(feeder, snap.checked(feeder), act.checked(feeder))
    return sd.run_powerflow(feeder, p, q, shunt_q_mvar=sh), (p, q, sh)


def test_category_b_breakpoints():
    c = VoltVarCurve()  # IEEE 1547-2018 Table 8, category B default
    v = np.array([0.85, 0.92, 0.95, 0.98, 1.0, 1.02, 1.05, 1.08, 1.2])
    np.testing.assert_allclose(c(v), [0.44, 0.44, 0.22, 0.0, 0.0, 0.0, -0.22, -0.44, -0.44], atol=1e-12)


def test_curve_is_configurable_and_checked():
    c = VoltVarCurve(v_pu=(0.9, 0.97, 1.03, 1.1), q_pu=(0.6, 0.0, 0.0, -0.6))
    assert c(1.065) == pytest.approx(-0.3)
    with pytest.raises(sd.InputError) as e:
        VoltVarCurve(v_pu=(0.9, 1.0, 0.99, 1.1))
    assert e.value.field == "curve.v_pu"
    with pytest.raises(ValueError):
        VoltVarCurve(q_pu=(2.0, 0, 0, -0.4))


def test_no_control_injects_all_pv_at_unity_pf(feeder):
    snap = sd.Snapshot.nominal(feeder, load=0.5, pv=0.7)
    a = NoControl(feeder).act(snap)
    np.testing.assert_allclose(a.pv_p_mw, 0.7 * feeder.pv.p_max_mw)
    np.testing.assert_array_equal(a.pv_q_mvar, 0.0)


def test_droop_reduces_overvoltage_at_its_ac_equilibrium(feeder):
    snap = sd.Snapshot.nominal(feeder, load=0.3, pv=1.0)  # light load, full sun
    base, _ = ac_state(feeder, snap, NoControl(feeder).act(snap))
    ctl = VoltVarDroop(feeder)
    act = ctl.act(snap)
    assert ctl.last_info["converged"]
    # independent check of the equilibrium: pandapower's Newton-Raphson at the returned
    # set-points gives voltages at which the curve asks for exactly these Q values
    _, (p, q, sh) = ac_state(feeder, snap, act)
    net = pp_powerflow(feeder, p, q, shunt_q_mvar=sh)
    v_pp = net.res_bus.vm_pu.to_numpy()
    q_curve = ctl.curve(v_pp[feeder.pv.bus]) * feeder.pv.s_mva
    np.testing.assert_allclose(act.pv_q_mvar, q_curve, atol=1e-4)
    assert base.vm_pu.max() > 1.2  # the uncontrolled case is badly over the 1.05 limit
    assert v_pp.max() < base.vm_pu.max() - 0.1  # droop absorbs Q and pulls it down by > 0.1 pu
    assert (act.pv_q_mvar < 0).all()


def test_measured_voltage_applies_the_curve_once(feeder):
    snap = sd.Snapshot.nominal(feeder, load=1.0, pv=0.2)
    v = np.full(feeder.n_bus, 0.95)
    a = VoltVarDroop(feeder).act(snap, vm_pu=v)
    np.testing.assert_allclose(a.pv_q_mvar, 0.22 * feeder.pv.s_mva)
    with pytest.raises(sd.InputError) as e:
        VoltVarDroop(feeder).act(snap, vm_pu=v[:3])
    assert e.value.field == "vm_pu"


@pytest.mark.parametrize("priority", ["var", "watt"])
def test_setpoints_always_inside_the_disks(priority, rng):
    f = sd.load_case("ieee33-paperB-4")
    pv = dataclasses.replace(f.pv, pf_min=np.array([0.0, 0.9, 0.0, 0.95]))
    f = f.replace(pv=pv)
    ctl = VoltVarDroop(f, priority=priority)
    for _ in range(20):
        avail = rng.uniform(0, 1, f.n_pv) * f.pv.p_max_mw
        p, q = ctl.setpoints(rng.uniform(-2, 2, f.n_pv) * f.pv.s_mva, avail)
        assert np.all(p**2 + q**2 <= f.pv.s_mva**2 * (1 + 1e-12))
        assert np.all((p >= 0) & (p <= avail + 1e-12))
        lim = f.pv.pf_min > 0
        assert np.all(np.abs(q[lim]) <= np.tan(np.arccos(f.pv.pf_min[lim])) * p[lim] + 1e-12)
        if priority == "watt":
            np.testing.assert_allclose(p, avail)


def test_bad_arguments_raise_typed_errors(feeder):
    for kw, field in (({"priority": "both"}, "priority"), ({"damping": 0.0}, "damping"),
                      ({"max_iter": 0}, "max_iter")):
        with pytest.raises(sd.InputError) as e:
            VoltVarDroop(feeder, **kw)
        assert e.value.field == field
    with pytest.raises(sd.InputError) as e:
        VoltVarDroop(feeder).act(sd.Snapshot.nominal(feeder).replace(pv_avail_mw=[1.0]))
    assert e.value.field == "snapshot.pv_avail_mw"
