"""Built-in cases: the papers' set-ups as documented in safedispatch.network.cases."""

from __future__ import annotations

import sys

import numpy as np
import pytest

import safedispatch as sd
from safedispatch.network import cases
from tests.conftest import pp_powerflow


def b(k):  # papers' 1-based bus -> index
    return k - 1


ALL = sd.list_cases()


@pytest.mark.parametrize("name", ALL)
def test_every_case_loads_validates_and_solves_like_pandapower(name):
    f = sd.load_case(name)
    assert f.name == name and f.notes
    f.validate()
    # explicit thermal ratings everywhere (no unrated branch in a built-in case)
    assert np.isfinite(f.branch.i_max_ka).all()
    p, q = f.nominal_injection()
    r = sd.run_powerflow(f, p, q)
    assert r.converged
    net = pp_powerflow(f, p, q)
    np.testing.assert_allclose(r.vm_pu, net.res_bus.vm_pu.to_numpy(), atol=1e-6)


def test_load_case_is_cached_and_unknown_name_lists_cases():
    assert sd.load_case("ieee33") is sd.load_case("ieee33")
    with pytest.raises(sd.NetworkDataError, match="ieee33-paperB") as ei:
        sd.load_case("ieee34")
    assert ei.value.field == "name"


def test_ieee33_ratings_and_limits():
    f = sd.load_case("ieee33")
    assert f.n_bus == 33 and f.bus.vn_kv[0] == 12.66
    assert (f.bus.vm_min_pu == 0.95).all() and (f.bus.vm_max_pu == 1.05).all()
    np.testing.assert_allclose(f.load.p_mw.sum(), 3.715)
    np.testing.assert_allclose(f.load.q_mvar.sum(), 2.3)
    trunk = f.branch.i_max_ka[:5]
    assert (trunk == cases.TRUNK_RATING_KA).all() and (f.branch.i_max_ka[5:] == 0.1).all()
    # base load is thermally feasible with these ratings; at 100 A the trunk would not be
    p, q = f.nominal_injection()
    r = sd.run_powerflow(f, p, q)
    assert r.loading.max() < 1.0
    assert (r.i_ka[:5] > 0.1).all() and (r.i_ka[5:] < 0.1).all()


def test_paper_b_48_inverters():
    f = sd.load_case("ieee33-paperB")
    assert f.n_pv == 48
    np.testing.assert_allclose(f.pv.s_mva, 0.25)
    assert f.pv.s_mva.sum() == pytest.approx(12.0)
    per_bus = {int(k) + 1: float(f.pv.s_mva[f.pv.bus == k].sum()) for k in np.unique(f.pv.bus)}
    assert per_bus == {6: 3.5, 13: 3.0, 18: 2.5, 30: 3.0}
    assert all(2.5 <= v <= 5.0 for v in per_bus.values())  # the paper's cluster range
    np.testing.assert_allclose(f.pv.ramp_p_pu_per_min, 0.15)
    np.testing.assert_allclose(f.pv.ramp_q_pu_per_min, 0.10)
    # weak bus 18: SCR 2.8 for its 2.5 MW cluster
    assert f.bus.s_sc_mva[b(18)] / per_bus[18] == pytest.approx(2.8)
    assert np.isinf(np.delete(f.bus.s_sc_mva, b(18))).all()


def test_paper_b4_aggregates_the_same_clusters():
    f4, f48 = sd.load_case("ieee33-paperB-4"), sd.load_case("ieee33-paperB")
    assert f4.n_pv == 4
    for k, bus in enumerate(f4.pv.bus):
        assert f4.pv.s_mva[k] == pytest.approx(f48.pv.s_mva[f48.pv.bus == bus].sum())
    np.testing.assert_array_equal(f4.bus.s_sc_mva, f48.bus.s_sc_mva)


def test_paper_c_devices():
    f = sd.load_case("ieee33-paperC")
    assert sorted((f.pv.bus + 1).tolist()) == [8, 13] and (f.pv.s_mva == 3.0).all()
    assert sorted((f.cap.bus + 1).tolist()) == [6, 32]
    assert (f.cap.q_step_mvar * f.cap.n_steps == 1.0).all() and (f.cap.n_steps == 1).all()


def test_zones_case_each_zone_has_pv_and_storage():
    f = sd.load_case("ieee33-zones")
    assert len(f.zones) == 4
    for z in f.zones:
        assert np.isin(f.pv.bus, z).sum() == 1
        assert np.isin(f.ess.bus, z).sum() == 1
    assert f.load.sheddable.all()
    assert sorted(np.concatenate(f.zones).tolist()) == list(range(33))


def test_synthetic_feeder_size():
    f = sd.load_case("ieee33x30")
    assert f.n_bus == 991 and f.n_pv == 120
    assert 0.9 < sd.run_powerflow(f, *f.nominal_injection()).vm_pu.min() < 0.95


def test_simbench_case_has_real_ratings_and_pv():
    f = sd.load_case("simbench-mv-rural")
    assert f.n_bus > 90 and f.n_pv > 80 and len(f.gen) > 0
    assert f.root_vm_pu == pytest.approx(1.025)
    assert (f.branch.b_us[f.branch.in_service] > 0).all()  # cables/overhead lines carry charging
    assert (f.branch.i_max_ka < 1.0).all()


def test_simbench_missing_gives_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "simbench", None)  # import simbench -> ImportError
    with pytest.raises(sd.BackendUnavailableError, match=r"safedispatch\[data\]") as ei:
        cases._case_simbench("simbench-mv-rural")
    assert isinstance(ei.value, ImportError) and ei.value.field == "simbench"
