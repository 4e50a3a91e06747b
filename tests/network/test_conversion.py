"""from_pandapower + run_powerflow against pandapower's runpp on the ORIGINAL pandapower nets.

The default run converts a representative subset of the networks pandapower and SimBench ship
(``benchmarks/fidelity.py``'s ``QUICK`` list) and compares nominal values and three random
load/PV scalings; the full catalogue with twenty scalings is marked ``slow`` (and is what
``benchmarks/fidelity.py`` reports). Each defect of the conversion has its own test below.
The reference is always ``pp.runpp`` on the user's net, never our own export.
"""

from __future__ import annotations

import re
import sys
import warnings
from pathlib import Path

import numpy as np
import pandapower as pp
import pandapower.networks as pn
import pytest

import safedispatch as sd
from safedispatch.network.io import ConversionReport, conversion_report, injection_from_pandapower, to_pandapower
from safedispatch.problems.zones import model_network

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import fidelity  # noqa: E402  (the benchmark's catalogue of feeders)

TOL_VM_PU = 1e-6
TOL_LOSS_MW = 1e-6
RUNPP = dict(tolerance_mva=1e-10, calculate_voltage_angles=True, max_iteration=100)
CATALOGUE = fidelity.catalogue()
_NETS: dict = {}


def build(name):
    """A fresh copy of a catalogue net (SimBench nets load once per session: ~5 s each)."""
    import copy

    if name not in _NETS:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            _NETS[name] = CATALOGUE[name][1]()
    return copy.deepcopy(_NETS[name])


def runpp(net):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pp.runpp(net, **RUNPP)
    return net


def pp_losses(net):
    out = float(np.nansum(net.res_line.pl_mw)) if len(net.line) else 0.0
    return out + (float(np.nansum(net.res_trafo.pl_mw)) if len(net.trafo) else 0.0)


def feeder_injection(f, rep, net, u, w):
    """Injections built from the feeder's own device tables (rows traced to pandapower through
    ``rep.sources``), with load factors ``u`` and sgen factors ``w`` by pandapower index. PV output
    and storage power are snapshot data the feeder does not hold: read from the net."""
    p, q = np.zeros(f.n_bus), np.zeros(f.n_bus)
    for k, (t, i) in enumerate(rep.sources["load"]):
        fac = u.get(i, 1.0) if t == "load" else 1.0
        p[f.load.bus[k]] -= f.load.p_mw[k] * fac
        q[f.load.bus[k]] -= f.load.q_mvar[k] * fac
    for k, (_, i) in enumerate(rep.sources["gen"]):
        p[f.gen.bus[k]] += f.gen.p_mw[k] * w.get(i, 1.0)
        q[f.gen.bus[k]] += f.gen.q_mvar[k] * w.get(i, 1.0)
    for k, (_, i) in enumerate(rep.sources["pv"]):
        p[f.pv.bus[k]] += net.sgen.p_mw[i] * net.sgen.scaling[i]
        q[f.pv.bus[k]] += net.sgen.q_mvar[i] * net.sgen.scaling[i]
    for k, (_, i) in enumerate(rep.sources["ess"]):
        p[f.ess.bus[k]] -= net.storage.p_mw[i] * net.storage.scaling[i]
        q[f.ess.bus[k]] -= net.storage.q_mvar[i] * net.storage.scaling[i]
    sh = f.cap_shunt_q_mvar(f.cap.step_init) if f.n_cap else np.zeros(f.n_bus)
    return p, q, sh


def assert_matches_pandapower(net, n_scalings, seed=0, **kw):
    """Convert ``net`` and compare with runpp on it at nominal and ``n_scalings`` random
    scalings of every load's and sgen's ``scaling``. Returns (feeder, report, max dV, max dloss)."""
    f, rep = sd.from_pandapower(net, report=True, **kw)
    rng = np.random.default_rng(seed)
    load0, sgen0 = net.load.scaling.to_numpy(float).copy(), net.sgen.scaling.to_numpy(float).copy()
    dv = dl = 0.0
    for k in range(n_scalings + 1):
        u = np.ones(len(net.load)) if k == 0 else rng.uniform(0.2, 1.3) * rng.uniform(0.8, 1.2, len(net.load))
        w = np.ones(len(net.sgen)) if k == 0 else rng.uniform(0.0, 1.0) * rng.uniform(0.8, 1.2, len(net.sgen))
        net.load["scaling"] = load0 * u
        net.sgen["scaling"] = sgen0 * w
        p, q, sh = feeder_injection(f, rep, net, dict(zip(net.load.index, u)), dict(zip(net.sgen.index, w)))
        if k == 0:  # the library's helper reads the same values from the net
            for a, b in zip((p, q, sh), injection_from_pandapower(net, rep)):
                np.testing.assert_allclose(a, b, atol=1e-12)
        runpp(net)
        r = sd.run_powerflow(f, p, q, shunt_q_mvar=sh, tol_pu=1e-12)
        assert r.converged
        vm = net.res_bus.vm_pu
        assert vm.loc[list(rep.dropped_buses)].isna().all(), "a bus we dropped is solved by pandapower"
        solved = list(rep.bus_map)
        theirs = vm.loc[solved].to_numpy()
        assert np.isfinite(theirs).all(), "a bus we keep is not solved by pandapower"
        ours = r.vm_pu[[rep.bus_map[b] for b in solved]]
        dv = max(dv, float(np.abs(ours - theirs).max()))
        loss = r.p_loss_mw + rep.branch_shunt_p_mw @ r.vm_pu**2
        dl = max(dl, abs(loss - pp_losses(net)))
    net.load["scaling"], net.sgen["scaling"] = load0, sgen0
    assert dv <= TOL_VM_PU, f"max |dV| {dv:.2e} pu"
    assert dl <= TOL_LOSS_MW, f"max loss difference {dl:.2e} MW"
    return f, rep, dv, dl


ELEMENT = re.compile(r"net\.(\w+)\[(\d+)\]")

#: expected outcome of the CI subset: None converts, else the table the error names first
EXPECTED = {"example_simple": "gen", "ieee_european_lv_asymmetric": "asymmetric_load"}
CI_CONVERT = [n for n in fidelity.QUICK if n not in EXPECTED]


@pytest.mark.parametrize("name", CI_CONVERT)
def test_original_nets_match_pandapower(name):
    if CATALOGUE[name][0] == "simbench":
        pytest.importorskip("simbench")
    f, rep, _, _ = assert_matches_pandapower(build(name), n_scalings=3)
    assert rep.ok and f.n_bus == rep.n_bus and "converted from pandapower" in f.notes


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_unsupported_nets_are_rejected_naming_the_element(name):
    net = build(name)
    with pytest.raises(sd.NetworkDataError) as ei:
        sd.from_pandapower(net)
    m = ELEMENT.search(str(ei.value))
    assert m and m.group(1) == EXPECTED[name], str(ei.value)
    assert ei.value.field.startswith(f"net.{EXPECTED[name]}")
    rep = ei.value.report
    assert not rep.ok and rep.rejected and rep.rejected[0][0] == EXPECTED[name]


def test_multivoltage_example_lists_every_unsupported_element():
    net = pn.example_multivoltage()
    rep = conversion_report(net)
    assert not rep.ok
    tables = {t for t, *_ in rep.rejected}
    # meshed HV ring, a voltage-controlled generator, extended wards, a 3-winding trafo, an impedance
    assert {"line", "gen", "xward", "trafo3w", "impedance"} <= tables
    assert any("closes a loop" in why for *_, why in rep.rejected)
    assert "error" in str(rep) and rep.error.count("net.") >= 5


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(CATALOGUE))
def test_every_catalogue_net_converts_exactly_or_is_rejected_clearly(name):
    if CATALOGUE[name][0] == "simbench":
        pytest.importorskip("simbench")
    net = build(name)
    try:
        sd.from_pandapower(net)
    except sd.NetworkDataError as exc:
        assert ELEMENT.search(str(exc)) or exc.field == "net.ext_grid", str(exc)
        return
    assert_matches_pandapower(net, n_scalings=20, seed=7)


# ---- defect 2: open transformer switches ---------------------------------------------------------


def _two_transformer_net():
    """20 kV slack - 2 km cable - bus 1 with two 0.4 MVA transformers to two LV feeders."""
    net = pp.create_empty_network()
    b0, b1 = pp.create_bus(net, 20.0), pp.create_bus(net, 20.0)
    pp.create_ext_grid(net, b0, vm_pu=1.02)
    pp.create_line(net, b0, b1, 2.0, "NA2XS2Y 1x95 RM/25 12/20 kV")
    lv = []
    for k in range(2):
        a, b = pp.create_bus(net, 0.4), pp.create_bus(net, 0.4)
        pp.create_transformer(net, b1, a, "0.4 MVA 20/0.4 kV", name=f"T{k}")
        pp.create_line(net, a, b, 0.2, "NAYY 4x150 SE")
        pp.create_load(net, b, p_mw=0.1, q_mvar=0.03)
        lv.append((a, b))
    return net, lv


def test_open_transformer_switch_disconnects_the_transformer_and_drops_its_buses():
    net, lv = _two_transformer_net()
    pp.create_switch(net, lv[1][0], 1, et="t", closed=False)  # T1 opened on its LV side
    f, rep, _, _ = assert_matches_pandapower(net, n_scalings=2)
    assert set(rep.dropped_buses) == set(lv[1])  # pandapower shows them as NaN
    assert f.n_bus == 4 and "trafo 1" in rep.half_connected
    # T1 still magnetizes from bus 1: its iron losses are in pandapower's res_trafo.pl_mw
    runpp(net)
    assert net.res_trafo.pl_mw[1] > 1e-4
    k = rep.bus_map[1]
    assert rep.branch_shunt_p_mw[k] * net.res_bus.vm_pu[1] ** 2 == pytest.approx(net.res_trafo.pl_mw[1], rel=1e-6)
    # opened on the HV side the same
    net.switch.loc[0, "bus"] = 1
    assert_matches_pandapower(net, n_scalings=0)


# ---- defect 3: every table converted or rejected -------------------------------------------------


def test_gen_and_ward_are_not_dropped_silently():
    net = pn.create_kerber_landnetz_kabel_1()
    pp.create_gen(net, 5, p_mw=0.01, vm_pu=1.0, name="my gen")
    with pytest.raises(sd.NetworkDataError, match=r"net\.gen\[0\] 'my gen': a voltage-controlled") as ei:
        sd.from_pandapower(net)
    assert ei.value.field == "net.gen"
    net.gen.loc[0, "in_service"] = False  # out of service: ignored silently
    pp.create_ward(net, 7, ps_mw=0.004, qs_mvar=0.001, pz_mw=0.002, qz_mvar=-0.003, name="my ward")
    f, rep, _, _ = assert_matches_pandapower(net, n_scalings=1)
    assert rep.tables["gen"] == {"converted": 0, "ignored": 1, "rejected": 0}
    assert rep.tables["ward"]["converted"] == 1 and ("ward", 0) in rep.sources["load"]
    k = rep.bus_map[7]
    assert f.bus.shunt_p_mw[k] == pytest.approx(0.002) and f.bus.shunt_q_mvar[k] == pytest.approx(-0.003)


@pytest.mark.parametrize("add,table", [
    (lambda n: pp.create_xward(n, 5, 0.01, 0.0, 0.0, 0.0, 0.1, 0.1, 1.0, name="xw"), "xward"),
    (lambda n: pp.create_impedance(n, 3, 5, 0.01, 0.01, 1.0, name="imp"), "impedance"),
    (lambda n: pp.create_dcline(n, 3, 5, 0.01, 0.0, 0.0, 1.0, 1.0, name="dc"), "dcline"),
    (lambda n: pp.create_asymmetric_load(n, 5, p_a_mw=0.01, name="asym"), "asymmetric_load"),
    (lambda n: pp.create_asymmetric_sgen(n, 5, p_a_mw=0.01, name="asym"), "asymmetric_sgen"),
    (lambda n: pp.create_storage(n, 5, p_mw=0.01, max_e_mwh=np.nan, name="batt"), "storage"),
    (lambda n: pp.create_load(n, 5, p_mw=0.01, const_z_p_percent=30.0, name="zip"), "load"),
])
def test_unsupported_elements_are_rejected_by_name(add, table):
    net = pn.create_kerber_landnetz_kabel_1()
    add(net)
    with pytest.raises(sd.NetworkDataError) as ei:
        sd.from_pandapower(net)
    m = ELEMENT.search(str(ei.value))
    assert m and m.group(1) == table, str(ei.value)
    assert ei.value.field.startswith(f"net.{table}")


def test_a_table_we_never_heard_of_is_rejected_not_ignored():
    net = pn.create_kerber_landnetz_kabel_1()
    import pandas as pd

    net["flux_capacitor"] = pd.DataFrame({"bus": [4], "name": ["doc"], "in_service": [True]})
    with pytest.raises(sd.NetworkDataError, match=r"net\.flux_capacitor\[0\] 'doc': element table 'flux_capacitor'"):
        sd.from_pandapower(net)
    net["flux_capacitor"].loc[0, "in_service"] = False
    assert sd.from_pandapower(net).n_bus == len(net.bus)


def test_elements_on_out_of_service_buses_are_ignored_with_a_note():
    net = pn.create_kerber_landnetz_kabel_1()
    b = pp.create_bus(net, 0.4, in_service=False)
    pp.create_line(net, 5, b, 0.1, "NAYY 4x50 SE")  # dangling at bus 5: its charging stays
    pp.create_gen(net, b, p_mw=0.01, name="stranded")
    pp.create_load(net, b, p_mw=0.01)
    f, rep, _, _ = assert_matches_pandapower(net, n_scalings=0)
    assert rep.tables["gen"]["ignored"] == 1 and b in rep.dropped_buses
    assert any("net.gen" in n and "out-of-service or unsupplied" in n for n in rep.notes)


def test_motor_is_a_constant_load_as_pandapower_models_it():
    net = pn.create_kerber_landnetz_kabel_1()
    pp.create_motor(net, 6, pn_mech_mw=0.012, cos_phi=0.85, efficiency_percent=92.0, loading_percent=80.0,
                    name="pump")
    f, rep, _, _ = assert_matches_pandapower(net, n_scalings=1)
    assert ("motor", 0) in rep.sources["load"]


# ---- defect 4: lines connected at one end only ---------------------------------------------------


def test_open_line_switch_keeps_the_charging_of_the_closed_end():
    net = pn.simple_mv_open_ring_net()  # 20 kV cables, one ring switch open
    f, rep, _, _ = assert_matches_pandapower(net, n_scalings=2)
    assert len(rep.half_connected) == 1
    open_line = int(net.switch.element[~net.switch.closed].iloc[0])
    assert rep.half_connected == (f"line {open_line}",)
    assert (rep.branch_shunt_q_mvar < 0).any()  # a capacitive shunt at the closed end
    # without that shunt the feeder is off by far more than the bound (the defect)
    bare = f.replace(bus=sd.network.BusTable(vn_kv=f.bus.vn_kv, vm_min_pu=f.bus.vm_min_pu,
                                             vm_max_pu=f.bus.vm_max_pu, name=f.bus.name))
    p, q, sh = injection_from_pandapower(net, rep)
    d = np.abs(sd.run_powerflow(bare, p, q).vm_pu - sd.run_powerflow(f, p, q).vm_pu).max()
    assert d > 1e-5


def test_line_at_an_out_of_service_bus_and_between_fused_buses():
    net = pn.simple_mv_open_ring_net()
    b = pp.create_bus(net, 20.0, in_service=False)
    pp.create_line(net, 3, b, 1.5, "NA2XS2Y 1x95 RM/25 12/20 kV")  # pandapower keeps it dangling at bus 3
    c = pp.create_bus(net, 20.0)
    pp.create_switch(net, 4, c, et="b", closed=True)
    pp.create_line(net, 4, c, 0.8, "NA2XS2Y 1x95 RM/25 12/20 kV")  # both ends fused: a shunt
    f, rep, _, _ = assert_matches_pandapower(net, n_scalings=1)
    assert rep.fused_buses == ((4, c),) and len(rep.half_connected) == 3


# ---- defect 5: transformer magnetizing branch ----------------------------------------------------


@pytest.mark.parametrize("trafo_model", ["t", "pi"])
def test_transformer_magnetizing_losses_as_pandapower(trafo_model):
    net = pn.create_kerber_dorfnetz()
    f, rep = sd.from_pandapower(net, trafo_model=trafo_model, report=True)
    assert rep.trafo_model == trafo_model
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pp.runpp(net, trafo_model=trafo_model, **RUNPP)
    r = sd.run_powerflow(f, *injection_from_pandapower(net, rep)[:2], tol_pu=1e-12)
    vm = net.res_bus.vm_pu.to_numpy()
    np.testing.assert_allclose(r.vm_pu[[rep.bus_map[b] for b in range(len(vm))]], vm, atol=1e-9)
    assert r.p_loss_mw == pytest.approx(pp_losses(net), abs=1e-9)
    # the net remembers the model of its last runpp
    assert sd.from_pandapower(net, report=True)[1].trafo_model == trafo_model


def test_parallel_transformers_are_merged_exactly():
    net, lv = _two_transformer_net()
    net.trafo.loc[1, "parallel"] = 2
    pp.create_transformer(net, 1, lv[0][0], "0.4 MVA 20/0.4 kV", name="T0 bis")
    f, rep, _, _ = assert_matches_pandapower(net, n_scalings=1)
    assert any("trafo 0 || trafo 2" in m for m in rep.merged_branches)


def test_nominal_ratio_with_other_rated_voltages_is_exact():
    net, _ = _two_transformer_net()
    net.trafo.loc[0, ["vn_hv_kv", "vn_lv_kv"]] = [21.0, 0.42]  # same ratio as the buses' 20 / 0.4
    assert_matches_pandapower(net, n_scalings=0)


def test_tap_changer_types_as_pandapower_reads_them():
    net, _ = _two_transformer_net()
    net.trafo.loc[0, ["tap_pos", "tap_changer_type"]] = [2, "Ideal"]  # a phase shift only
    assert_matches_pandapower(net, n_scalings=0)
    net.trafo.loc[0, "tap_changer_type"] = "Ratio"
    with pytest.raises(sd.NetworkDataError, match=r"net\.trafo\[0\] 'T0': off-nominal voltage ratio"):
        sd.from_pandapower(net)
    net.trafo.loc[0, "tap_pos"] = net.trafo.tap_neutral[0]
    assert_matches_pandapower(net, n_scalings=0)


# ---- defects 6 and 7: inverters ------------------------------------------------------------------


def test_inverter_rating_and_peak_never_come_from_the_present_output():
    net = pn.create_kerber_landnetz_kabel_1()
    pp.create_sgen(net, 4, p_mw=0.0, sn_mva=0.03, type="PV", name="night")
    pp.create_sgen(net, 5, p_mw=0.02, sn_mva=0.03, type="PV", scaling=0.0, name="curtailed")
    pp.create_sgen(net, 6, p_mw=0.01, sn_mva=0.03, max_p_mw=0.025, type="PV", name="capped")
    pp.create_sgen(net, 7, p_mw=0.01, sn_mva=0.03, max_p_mw=0.05, type="PV", name="clipped")
    pp.create_sgen(net, 8, p_mw=0.01, max_p_mw=0.02, type="pv", name="no sn")
    f = sd.from_pandapower(net)
    np.testing.assert_allclose(f.pv.s_mva, [0.03, 0.03, 0.03, 0.03, 0.02])
    np.testing.assert_allclose(f.pv.p_max_mw, [0.03, 0.03, 0.025, 0.03, 0.02])
    pp.create_sgen(net, 9, p_mw=0.01, type="PV", name="unrated")
    with pytest.raises(sd.NetworkDataError, match=r"net\.sgen\[5\] 'unrated': an inverter \(PV\) needs a rating"):
        sd.from_pandapower(net)


def test_simbench_rooftop_pv_is_classified_as_inverters_and_reported():
    pytest.importorskip("simbench")
    net = build("1-MV-rural--0-sw")
    f, rep = sd.from_pandapower(net, report=True)
    types = net.sgen.type
    assert set(types[list(rep.pv_sgens)]) == {"lv_RES", "PV_MV"}  # lv_RES: the LV grids' rooftop PV
    assert set(types[list(rep.fixed_sgens)]) == {"Wind_MV", "Biomass_MV", "Hydro_MV"}
    assert f.n_pv == len(rep.pv_sgens) == 92 and "92 PV inverters, 10 fixed generation" in f.notes
    only_mv = sd.from_pandapower(net, pv_types=["pv_mv"])
    assert only_mv.n_pv == int((types == "PV_MV").sum())
    wind = sd.from_pandapower(net, is_pv=lambda row: row["type"] == "Wind_MV")
    assert wind.n_pv == int((types == "Wind_MV").sum())
    with pytest.raises(sd.InputError) as ei:
        sd.from_pandapower(net, pv_types=["PV"], is_pv=lambda row: True)
    assert ei.value.field == "is_pv"


# ---- report --------------------------------------------------------------------------------------


def test_conversion_report_is_machine_readable_and_in_the_notes():
    net = pn.create_cigre_network_mv(with_der="pv_wind")
    f, rep = sd.from_pandapower(net, report=True)
    assert isinstance(rep, ConversionReport) and rep.ok and rep.n_bus == f.n_bus
    assert rep.tables["line"]["converted"] == 15 and rep.tables["sgen"]["converted"] == 9
    assert len(rep.pv_sgens) == 8 and len(rep.fixed_sgens) == 1
    assert rep.bus_map == {b: k for k, b in enumerate(net.bus.index)}
    assert len(rep.sources["load"]) == len(f.load) and len(rep.sources["pv"]) == f.n_pv
    assert str(rep) in f.notes
    # conversion_report says why a net does not convert, without raising
    bad = conversion_report(pn.example_simple())
    assert not bad.ok and bad.rejected[0][:3] == ("gen", 0, "generator") and "net.gen[0]" in bad.error


# ---- export and the models built on the feeder ---------------------------------------------------


def test_to_pandapower_round_trip_keeps_shunts_and_magnetizing(rng):
    net = pn.simple_mv_open_ring_net()
    f, rep = sd.from_pandapower(net, report=True)
    assert f.bus.shunt_q_mvar.any() and (f.branch.g_us > 0).any()
    back = sd.from_pandapower(to_pandapower(f))
    for tab, fields in (("bus", ("vn_kv", "shunt_p_mw", "shunt_q_mvar")),
                        ("branch", ("from_bus", "to_bus", "r_ohm", "x_ohm", "b_us", "g_us", "in_service"))):
        for fl in fields:
            np.testing.assert_allclose(getattr(getattr(back, tab), fl), getattr(getattr(f, tab), fl), rtol=1e-9,
                                       atol=1e-12, err_msg=f"{tab}.{fl}")
    # the exported net solves like the feeder (injection mode)
    p, q, _ = injection_from_pandapower(net, rep)
    exp = runpp(to_pandapower(f, p, q))
    r = sd.run_powerflow(f, p, q, tol_pu=1e-12)
    np.testing.assert_allclose(r.vm_pu, exp.res_bus.vm_pu.to_numpy(), atol=1e-9)
    assert r.p_slack_mw == pytest.approx(exp.res_ext_grid.p_mw.iloc[0], abs=1e-9)
    assert r.p_slack_mw == pytest.approx(r.p_loss_mw + r.p_shunt_mw - p.sum(), abs=1e-12)


def test_to_pandapower_transformer_pi_without_a_t_equivalent():
    # a capacitive transformer shunt has no T with pandapower's signs: exported as end shunts
    net, _ = _two_transformer_net()
    f = sd.from_pandapower(net)
    k = f.branch.name.index("trafo 0")
    br = f.branch
    g = sd.network.BranchTable(from_bus=br.from_bus, to_bus=br.to_bus, r_ohm=br.r_ohm, x_ohm=br.x_ohm,
                               b_us=np.where(np.arange(len(br)) == k, 5e3, br.b_us), g_us=br.g_us,
                               i_max_ka=br.i_max_ka, in_service=br.in_service, name=br.name)
    f2 = f.replace(branch=g)
    p, q = f2.nominal_injection()
    exp = runpp(to_pandapower(f2, p, q))
    np.testing.assert_allclose(sd.run_powerflow(f2, p, q, tol_pu=1e-12).vm_pu, exp.res_bus.vm_pu.to_numpy(),
                               atol=1e-9)


def test_model_network_folds_bus_shunts_into_the_constant_susceptance():
    net = pn.simple_mv_open_ring_net()
    f = sd.from_pandapower(net)
    mn = model_network(f)
    bare = model_network(f.replace(bus=sd.network.BusTable(vn_kv=f.bus.vn_kv, name=f.bus.name)))
    np.testing.assert_allclose(mn.tree.b_pu - bare.tree.b_pu, -f.bus.shunt_q_mvar[mn.tree.bus] / f.sn_mva)


# ---------------------------------------------------------------- certification on the original net


def test_written_setpoints_reproduce_the_feeders_injections():
    """write_setpoints_to_pandapower puts an action into the rows the devices came from: the
    net's injections then equal the feeder's net_injection of that action."""
    net = build("cigre_mv_pv_wind")
    f, rep = sd.from_pandapower(net, report=True)
    rng = np.random.default_rng(3)
    act = sd.Action(pv_p_mw=f.pv.p_max_mw * rng.uniform(0, 1, f.n_pv),
                    pv_q_mvar=f.pv.s_mva * rng.uniform(-0.3, 0.3, f.n_pv))
    lp, lq = fidelity._uncontrolled(net, rep)
    snap = sd.Snapshot(load_p_mw=lp, load_q_mvar=lq, pv_avail_mw=act.pv_p_mw)
    from safedispatch.network.io import write_setpoints_to_pandapower

    write_setpoints_to_pandapower(net, rep, act.pv_p_mw, act.pv_q_mvar)
    p, q, _sh = injection_from_pandapower(net, rep)
    p2, q2, _ = sd.net_injection(f, snap, act)
    np.testing.assert_allclose(p, p2, atol=1e-12)
    np.testing.assert_allclose(q, q2, atol=1e-12)
    with pytest.raises(sd.InputError, match="pv_p_mw"):
        write_setpoints_to_pandapower(net, rep, act.pv_p_mw[:-1], act.pv_q_mvar)


@pytest.mark.parametrize("name", ["cigre_mv_pv_wind", "1-MV-rural--0-sw", "1-LV-rural1--0-sw"])
def test_certified_answers_are_clean_in_runpp_on_the_original_net(name):
    """Over- and under-voltage snapshots projected with certify_ac=True: every certified answer,
    written into the user's original pandapower net, has no bus outside its limits (1e-6 pu) and
    no branch above 100 % in runpp."""
    if CATALOGUE[name][0] == "simbench":
        pytest.importorskip("simbench")
    net = build(name)
    f, rep = sd.from_pandapower(net, report=True)
    out = fidelity.certification_check(net, f, rep, n=6, seed=1)
    assert out["errors"] == 0
    assert out["certified"] >= 1
    assert out["certified"] + out["refused"] == out["n"]
    assert out["certified_but_violating"] == 0, out
    assert out["max_v_violation_pu"] <= 1e-6 and out["max_loading_excess_pct"] <= 1e-4
