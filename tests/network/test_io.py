"""from_pandapower / to_pandapower against pandapower's own power flow."""

from __future__ import annotations

import numpy as np
import pandapower as pp
import pandapower.networks as pn
import pytest

import safedispatch as sd
from safedispatch.network.io import injection_from_pandapower
from tests.conftest import random_injection


def _solve_both(net, feeder):
    pp.runpp(net, tolerance_mva=1e-10)
    p, q = feeder.nominal_injection()
    return net, sd.run_powerflow(feeder, p, q)


def test_case33bw_converts_and_matches_pandapower():
    net = pn.case33bw()
    f = sd.from_pandapower(net)
    assert f.n_bus == 33 and f.n_branch == 37 and int(f.branch.in_service.sum()) == 32
    assert np.isinf(f.branch.i_max_ka).all()  # 99999 kA means unrated
    np.testing.assert_allclose(f.bus.vm_min_pu[1:], 0.9)  # read from min_vm_pu
    net, r = _solve_both(net, f)
    np.testing.assert_allclose(r.vm_pu, net.res_bus.vm_pu.to_numpy(), atol=1e-9)
    assert r.p_loss_mw == pytest.approx(net.res_line.pl_mw.sum(), abs=1e-9)


def test_missing_bus_limits_default_to_0_95_1_05():
    net = pn.case33bw()
    net.bus = net.bus.drop(columns=["min_vm_pu", "max_vm_pu"])
    f = sd.from_pandapower(net)
    assert (f.bus.vm_min_pu == 0.95).all() and (f.bus.vm_max_pu == 1.05).all()


def test_switches_open_lines_and_fuse_buses():
    net = pn.case33bw()
    # open line 10 by a switch, close tie line 33 (bus 8-14 in 0-based pandapower indices)
    pp.create_switch(net, bus=int(net.line.from_bus[10]), element=10, et="l", closed=False)
    net.line.loc[33, "in_service"] = True
    f = sd.from_pandapower(net)
    assert not f.branch.in_service[10] and f.branch.in_service[33]
    net, r = _solve_both(net, f)
    np.testing.assert_allclose(r.vm_pu, net.res_bus.vm_pu.to_numpy(), atol=1e-9)
    # a closed bus-bus switch fuses a new bus into bus 5
    net2 = pn.case33bw()
    b = pp.create_bus(net2, vn_kv=12.66)
    pp.create_switch(net2, bus=5, element=b, et="b", closed=True)
    pp.create_load(net2, b, p_mw=0.4, q_mvar=0.1)
    f2 = sd.from_pandapower(net2)
    assert f2.n_bus == 33 and f2.load.bus[-1] == 5
    net2, r2 = _solve_both(net2, f2)
    np.testing.assert_allclose(r2.vm_pu, net2.res_bus.vm_pu.to_numpy()[:33], atol=1e-9)


def test_parallel_lines_are_merged_exactly():
    net = pn.case33bw()
    net.line.loc[:, "max_i_ka"] = 0.2
    i = pp.create_line_from_parameters(net, 2, 3, length_km=2.0, r_ohm_per_km=0.3, x_ohm_per_km=0.2,
                                       c_nf_per_km=10.0, max_i_ka=0.1)
    f = sd.from_pandapower(net)
    k = [n for n in f.branch.name if f"line {i}" in n]
    assert len(k) == 1 and "||" in k[0]
    kb = f.branch.name.index(k[0])
    assert f.branch.i_max_ka[kb] == pytest.approx(0.3)
    net, r = _solve_both(net, f)
    np.testing.assert_allclose(r.vm_pu, net.res_bus.vm_pu.to_numpy(), atol=1e-9)
    assert r.p_loss_mw == pytest.approx(net.res_line.pl_mw.sum(), abs=1e-8)


@pytest.mark.parametrize("trafo_model", ["t", "pi"])
def test_transformer_with_magnetizing_branch_matches_pandapower(trafo_model):
    net = pn.case33bw()
    hv = pp.create_bus(net, vn_kv=110.0)
    pp.create_transformer_from_parameters(net, hv, 0, sn_mva=25.0, vn_hv_kv=110.0, vn_lv_kv=12.66, vkr_percent=0.41,
                                          vk_percent=12.0, pfe_kw=14.0, i0_percent=0.07, parallel=2)
    net.ext_grid.loc[0, "bus"] = hv
    f = sd.from_pandapower(net, trafo_model=trafo_model)
    assert f.n_bus == 34 and f.bus.vn_kv[f.root_bus] == 110.0
    t = f.branch.name.index("trafo 0")
    assert f.branch.i_max_ka[t] == pytest.approx(2 * 25 / (np.sqrt(3) * 12.66))
    # iron losses: 2 x 14 kW at 12.66 kV; magnetizing susceptance inductive
    assert f.branch.g_us[t] * 1e-6 * 12.66**2 == pytest.approx(0.028, rel=1e-3)
    assert f.branch.b_us[t] < 0
    pp.runpp(net, tolerance_mva=1e-10, trafo_model=trafo_model)
    p, q = f.nominal_injection()
    r = sd.run_powerflow(f, p, q, tol_pu=1e-12)
    np.testing.assert_allclose(r.vm_pu, net.res_bus.vm_pu.to_numpy(), atol=1e-9)
    assert r.p_loss_mw == pytest.approx(net.res_line.pl_mw.sum() + net.res_trafo.pl_mw.sum(), abs=1e-9)
    assert r.i_ka[t] == pytest.approx(net.res_trafo.i_lv_ka.iloc[0], rel=1e-8)


def test_roundtrip_to_pandapower_keeps_devices(rng):
    f = sd.load_case("ieee33-paperC")
    net = sd.to_pandapower(f)
    g = sd.from_pandapower(net)
    for tab, fields in (("bus", ("vn_kv", "vm_min_pu", "vm_max_pu")),
                        ("branch", ("from_bus", "to_bus", "r_ohm", "x_ohm", "i_max_ka", "in_service")),
                        ("load", ("bus", "p_mw", "q_mvar")), ("pv", ("bus", "s_mva", "p_max_mw")),
                        ("cap", ("bus", "q_step_mvar", "n_steps"))):
        for fl in fields:
            ours, back = getattr(getattr(f, tab), fl), getattr(getattr(g, tab), fl)
            np.testing.assert_allclose(back, ours, err_msg=f"{tab}.{fl}")
    z = sd.load_case("ieee33-zones")
    gz = sd.from_pandapower(sd.to_pandapower(z), zones=z.zones)
    np.testing.assert_allclose(gz.ess.p_max_mw, z.ess.p_max_mw)
    np.testing.assert_allclose(gz.ess.e_max_mwh, z.ess.e_max_mwh)
    np.testing.assert_allclose(gz.ess.soc_min, z.ess.soc_min)
    assert [list(a) for a in gz.zones] == [sorted(a) for a in z.zones]


def test_sgen_types_become_pv_or_fixed_generation():
    net = pn.case33bw()
    pp.create_sgen(net, 17, p_mw=0.5, sn_mva=1.0, type="PV")
    pp.create_sgen(net, 20, p_mw=0.3, type="WP")
    f = sd.from_pandapower(net)
    # rated by sn_mva, peak sn_mva without max_p_mw: never the present output
    assert f.n_pv == 1 and f.pv.bus[0] == 17 and f.pv.s_mva[0] == 1.0 and f.pv.p_max_mw[0] == 1.0
    assert len(f.gen) == 1 and f.gen.p_mw[0] == 0.3
    p, q = f.nominal_injection()
    assert p[20] == pytest.approx(0.3 - net.load.p_mw[net.load.bus == 20].sum())


@pytest.mark.parametrize("mutate,field,names", [
    (lambda n: pp.create_ext_grid(n, 5), "net.ext_grid", "net.ext_grid[1]"),
    (lambda n: n.ext_grid.__setitem__("in_service", False), "net.ext_grid", "got 0"),
    (lambda n: n.load.__setitem__("const_z_p_percent", 50.0), "net.load.const_z_p_percent", "net.load[0]"),
    (lambda n: n.line.__setitem__("in_service", True), "net.line", "closes a loop"),  # closes the tie lines
    (lambda n: n.line.loc.__setitem__((3, "r_ohm_per_km"), np.nan), "net.line.r_ohm_per_km", "net.line[3]"),
    (lambda n: n.line.loc.__setitem__((3, "max_i_ka"), -1.0), "net.line.max_i_ka", "net.line[3]"),
    (lambda n: n.load.loc.__setitem__((0, "bus"), 99), "net.load", "net.load[0]"),
])
def test_bad_pandapower_nets_raise_typed_errors(mutate, field, names):
    net = pn.case33bw()
    mutate(net)
    with pytest.raises(sd.NetworkDataError) as ei:
        sd.from_pandapower(net)
    assert ei.value.field == field, str(ei.value)
    assert names in str(ei.value)  # pandapower's element, not a position in our arrays


def test_islanded_buses_are_dropped_or_raise_on_request():
    net = pn.case33bw()
    net.line.loc[3, "in_service"] = False  # buses 4.. lose their supply (tie lines are open)
    f, rep = sd.from_pandapower(net, report=True)
    pp.runpp(net, tolerance_mva=1e-10)
    unsupplied = set(np.flatnonzero(net.res_bus.vm_pu.isna().to_numpy()).tolist())
    assert unsupplied == set(range(4, 18)) | set(range(25, 33))  # the lateral at bus 1 and 2 stay supplied
    assert set(rep.dropped_buses) == unsupplied and f.n_bus == 33 - len(unsupplied)
    assert "unsupplied buses dropped" in f.notes
    r = sd.run_powerflow(f, *injection_from_pandapower(net, rep)[:2])
    vm = net.res_bus.vm_pu.to_numpy()
    for b, k in rep.bus_map.items():
        assert r.vm_pu[k] == pytest.approx(vm[b], abs=1e-9)
    with pytest.raises(sd.NetworkDataError, match=r"net.bus\[4\]") as ei:
        sd.from_pandapower(net, unsupplied="raise")
    assert ei.value.field == "net.bus"


def test_off_nominal_tap_is_rejected():
    net = pn.case33bw()
    hv = pp.create_bus(net, vn_kv=110.0)
    pp.create_transformer_from_parameters(net, hv, 0, sn_mva=25.0, vn_hv_kv=110.0, vn_lv_kv=12.66, vkr_percent=0.4,
                                          vk_percent=12.0, pfe_kw=0.0, i0_percent=0.0, tap_pos=2, tap_neutral=0,
                                          tap_step_percent=1.5, tap_side="hv", tap_changer_type="Ratio")
    net.ext_grid.loc[0, "bus"] = hv
    with pytest.raises(sd.NetworkDataError, match=r"net.trafo\[0\].*off-nominal.*tap") as ei:
        sd.from_pandapower(net)
    assert ei.value.field == "net.trafo.tap_pos"
    # without a changer type pandapower ignores the tap position, and so does the conversion
    net.trafo["tap_changer_type"] = None
    f = sd.from_pandapower(net)
    pp.runpp(net, tolerance_mva=1e-10)
    r = sd.run_powerflow(f, *f.nominal_injection())
    np.testing.assert_allclose(r.vm_pu, net.res_bus.vm_pu.to_numpy(), atol=1e-9)
    # rated voltages whose ratio differs from the buses' are off-nominal too
    net.trafo["vn_lv_kv"] = 12.0
    with pytest.raises(sd.NetworkDataError, match="off-nominal") as ei:
        sd.from_pandapower(net)
    assert ei.value.field == "net.trafo.vn_hv_kv"


def test_to_pandapower_injection_mode(rng):
    f = sd.load_case("ieee33")
    p, q = random_injection(f, rng)
    net = sd.to_pandapower(f, p, q)
    assert len(net.load) == f.n_bus and len(net.sgen) == 0
    np.testing.assert_allclose(-net.load.p_mw.to_numpy(), p)


@pytest.mark.parametrize(("args", "field"), [
    (("p", "q", None), None),
    (("short", "q", None), "p_mw"),
    (("p", "nan", None), "q_mvar"),
    (("p", None, None), "q_mvar"),
    ((None, "q", None), "p_mw"),
    ((None, None, "short"), "shunt_q_mvar"),
])
def test_to_pandapower_rejects_bad_injections_naming_the_field(rng, args, field):
    f = sd.load_case("ieee33")
    p, q = random_injection(f, rng)
    q_nan = q.copy()
    q_nan[3] = np.nan
    vals = {"p": p, "q": q, "short": p[:-1], "nan": q_nan, None: None}
    call = [vals[a] for a in args]
    if field is None:  # the valid call, as the control of the cases below
        assert len(sd.to_pandapower(f, *call).load) == f.n_bus
        return
    with pytest.raises(sd.InputError) as ei:
        sd.to_pandapower(f, *call)
    assert ei.value.field == field
