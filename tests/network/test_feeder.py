"""Feeder data model: construction, immutability, radial structure, validation errors."""

from __future__ import annotations

import networkx as nx
import numpy as np
import pytest

import safedispatch as sd
from safedispatch.network import BranchTable, BusTable, CapTable, ESSTable, Feeder, LoadTable, PVTable


def small_feeder(**over):
    """0 - 1 - 2, 1 - 3 (a Y), 10 kV."""
    kw = dict(
        name="small",
        bus=BusTable(vn_kv=[10.0] * 4),
        branch=BranchTable(from_bus=[0, 1, 3], to_bus=[1, 2, 1], r_ohm=[0.5, 0.4, 0.3], x_ohm=[0.4, 0.3, 0.2],
                           i_max_ka=[0.3, 0.2, 0.2]),
        load=LoadTable(bus=[2, 3], p_mw=[1.0, 0.5], q_mvar=[0.3, 0.1]),
        pv=PVTable(bus=[2], s_mva=[1.0]),
    )
    kw.update(over)
    return Feeder(**kw)


def test_defaults_and_sizes():
    f = small_feeder()
    assert (f.n_bus, f.n_branch, f.n_pv, f.n_cap, f.n_ess) == (4, 3, 1, 0, 0)
    np.testing.assert_array_equal(f.bus.vm_min_pu, 0.95)
    np.testing.assert_array_equal(f.bus.vm_max_pu, 1.05)
    assert np.isinf(f.bus.s_sc_mva).all()
    assert f.pv.p_max_mw[0] == 1.0  # peak defaults to the rating
    assert len(f.zones) == 1 and sorted(f.zones[0]) == [0, 1, 2, 3]
    assert f.branch.in_service.all()


def test_arrays_are_read_only_and_dataclass_frozen():
    f = small_feeder()
    with pytest.raises(ValueError):
        f.branch.r_ohm[0] = 1.0
    with pytest.raises(AttributeError):
        f.name = "x"
    with pytest.raises(ValueError):
        f.radial.parent[1] = 3


def test_radial_structure_matches_networkx():
    f = sd.load_case("ieee33")
    rs = f.radial
    g = nx.Graph()
    on = f.branch.in_service
    g.add_edges_from(zip(f.branch.from_bus[on], f.branch.to_bus[on]))
    assert nx.is_tree(g)
    depth = nx.single_source_shortest_path_length(g, f.root_bus)
    pred = dict(nx.bfs_predecessors(g, f.root_bus))
    for j in range(f.n_bus):
        assert rs.depth[j] == depth[j]
        assert rs.parent[j] == pred.get(j, -1)
        if j != f.root_bus:
            b = rs.parent_branch[j]
            assert {f.branch.from_bus[b], f.branch.to_bus[b]} == {j, rs.parent[j]}
            assert rs.branch_child[b] == j
            assert rs.branch_from_is_parent[b] == (f.branch.from_bus[b] == rs.parent[j])
        # subtree = the bus and its descendants
        desc = nx.descendants(nx.bfs_tree(g, f.root_bus), j) | {j}
        assert set(rs.subtree_of(j).tolist()) == desc
    # breadth-first: every bus appears after its parent
    pos = np.empty(f.n_bus, int)
    pos[rs.order] = np.arange(f.n_bus)
    assert all(pos[rs.parent[j]] < pos[j] for j in range(f.n_bus) if j != f.root_bus)
    assert (rs.branch_child[~on] == -1).all()


def test_reversed_branch_orientation_gives_same_powerflow():
    a = small_feeder()
    br = a.branch
    b = a.replace(branch=BranchTable(from_bus=br.to_bus, to_bus=br.from_bus, r_ohm=br.r_ohm, x_ohm=br.x_ohm,
                                     i_max_ka=br.i_max_ka))
    p, q = a.nominal_injection()
    ra, rb = sd.run_powerflow(a, p, q), sd.run_powerflow(b, p, q)
    np.testing.assert_allclose(ra.vm_pu, rb.vm_pu, atol=1e-12)
    np.testing.assert_allclose(ra.p_from_mw, rb.p_to_mw, atol=1e-12)
    np.testing.assert_allclose(ra.i_ka, rb.i_ka, atol=1e-12)


def test_cap_shunt_q_mvar():
    f = small_feeder(cap=CapTable(bus=[2, 2, 3], q_step_mvar=[0.1, 0.2, 0.3], n_steps=[2, 1, 3]))
    np.testing.assert_allclose(f.cap_shunt_q_mvar([2, 1, 3]), [0, 0, 0.4, 0.9])
    np.testing.assert_allclose(f.cap_shunt_q_mvar([[0, 0, 1], [1, 0, 0]]), [[0, 0, 0, 0.3], [0, 0, 0.1, 0]])
    with pytest.raises(sd.InputError, match="cap_step"):
        f.cap_shunt_q_mvar([3, 0, 0])  # above n_steps
    with pytest.raises(sd.InputError, match="cap_step"):
        f.cap_shunt_q_mvar([0.5, 0, 0])
    with pytest.raises(sd.InputError, match="cap_step"):
        f.cap_shunt_q_mvar([0, 0])


def _branch(**over):
    kw = dict(from_bus=[0, 1, 3], to_bus=[1, 2, 1], r_ohm=[0.5, 0.4, 0.3], x_ohm=[0.4, 0.3, 0.2])
    kw.update(over)
    return BranchTable(**kw)


@pytest.mark.parametrize("make,field", [
    (lambda: _branch(r_ohm=[0.5, np.nan, 0.3]), "branch.r_ohm"),
    (lambda: _branch(r_ohm=[0.5, -0.1, 0.3]), "branch.r_ohm"),
    (lambda: _branch(i_max_ka=[0.3, -0.2, 0.2]), "branch.i_max_ka"),
    (lambda: _branch(i_max_ka=[0.3, 0.0, 0.2]), "branch.i_max_ka"),
    (lambda: _branch(i_max_ka=[0.3, np.nan, 0.2]), "branch.i_max_ka"),
    (lambda: _branch(r_ohm=[0.5, 0.4]), "branch.r_ohm"),
    (lambda: _branch(to_bus=[1, 1, 1]), "branch.to_bus"),
    (lambda: _branch(r_ohm=[0.5, 0.0, 0.3], x_ohm=[0.4, 0.0, 0.2]), "branch.x_ohm"),
    (lambda: BusTable(vn_kv=[10.0, -1.0]), "bus.vn_kv"),
    (lambda: BusTable(vn_kv=[10.0, 10.0], vm_min_pu=[0.95, 1.1], vm_max_pu=[1.05, 1.05]), "bus.vm_max_pu"),
    (lambda: BusTable(vn_kv=[10.0], s_sc_mva=[0.0]), "bus.s_sc_mva"),
    (lambda: PVTable(bus=[1], s_mva=[-1.0]), "pv.s_mva"),
    (lambda: PVTable(bus=[1], s_mva=[1.0], p_max_mw=[1.5]), "pv.p_max_mw"),
    (lambda: PVTable(bus=[1], s_mva=[1.0], pf_min=[1.2]), "pv.pf_min"),
    (lambda: PVTable(bus=[1], s_mva=[1.0], ramp_p_pu_per_min=[0.0]), "pv.ramp_p_pu_per_min"),
    (lambda: CapTable(bus=[1], q_step_mvar=[0.0]), "cap.q_step_mvar"),
    (lambda: CapTable(bus=[1], q_step_mvar=[1.0], n_steps=[0]), "cap.n_steps"),
    (lambda: ESSTable(bus=[1], p_max_mw=[1.0], e_max_mwh=[-2.0]), "ess.e_max_mwh"),
    (lambda: ESSTable(bus=[1], p_max_mw=[1.0], e_max_mwh=[2.0], soc_init=[0.95]), "ess.soc_init"),
    (lambda: ESSTable(bus=[1], p_max_mw=[1.0], e_max_mwh=[2.0], eta_charge=[1.2]), "ess.eta_charge"),
    (lambda: LoadTable(bus=[1], p_mw=[np.inf]), "load.p_mw"),
    (lambda: LoadTable(bus=[[1]]), "load.bus"),
])
def test_table_validation_names_the_field(make, field):
    with pytest.raises(sd.NetworkDataError) as ei:
        make()
    assert isinstance(ei.value, ValueError)
    assert ei.value.field == field and str(ei.value).startswith(field)


@pytest.mark.parametrize("over,field,match", [
    (dict(load=LoadTable(bus=[2, 7])), "load.bus", "unknown bus"),
    (dict(pv=PVTable(bus=[-1], s_mva=[1.0])), "pv.bus", "unknown bus"),
    (dict(branch=_branch(from_bus=[0, 1, 9])), "branch.from_bus", "unknown bus"),
    (dict(branch=_branch(from_bus=[0, 1, 3, 0], to_bus=[1, 2, 1, 2], r_ohm=[.1] * 4, x_ohm=[.1] * 4)),
     "branch.in_service", "meshed"),
    (dict(branch=_branch(from_bus=[0, 1, 3], to_bus=[1, 2, 1], in_service=[True, True, False])),
     "branch.in_service", "islanded"),
    (dict(branch=_branch(from_bus=[0, 1, 0], to_bus=[1, 2, 1])), "branch", "parallel"),
    (dict(root_bus=4), "root_bus", "unknown bus"),
    (dict(root_vm_pu=float("nan")), "root_vm_pu", "finite"),
    (dict(zones=([0, 1], [2])), "zones", "partition"),
    (dict(zones=([0, 1], [2, 3], [3])), "zones", "partition"),
    (dict(zones=([0, 2], [1, 3])), "zones[0]", "not connected"),
    (dict(zones=([0, 1, 2, 3, 9],)), "zones", "unknown bus"),
    (dict(load=[1, 2]), "load", "LoadTable"),
])
def test_feeder_validation_names_the_field(over, field, match):
    with pytest.raises(sd.NetworkDataError, match=match) as ei:
        small_feeder(**over)
    assert ei.value.field == field


def test_islanded_with_right_branch_count_is_detected():
    # 4 buses and 3 branches, the count of a tree, but not a tree
    bus = BusTable(vn_kv=[10.0] * 4)
    br = BranchTable(from_bus=[0, 1, 2], to_bus=[1, 2, 1], r_ohm=[.1] * 3, x_ohm=[.1] * 3)
    with pytest.raises(sd.NetworkDataError):
        Feeder(name="x", bus=bus, branch=br)
    br = BranchTable(from_bus=[0, 1, 2], to_bus=[1, 2, 0], r_ohm=[.1] * 3, x_ohm=[.1] * 3)  # loop, bus 3 alone
    with pytest.raises(sd.NetworkDataError, match="not connected") as ei:
        Feeder(name="x", bus=bus, branch=br)
    assert ei.value.field == "branch.in_service"


def test_zones_valid_partition_and_zone_of_bus():
    f = small_feeder(zones=([0, 1, 3], [2]))
    assert f.zone_of_bus.tolist() == [0, 0, 1, 0]


def test_replace_revalidates():
    f = small_feeder()
    with pytest.raises(sd.NetworkDataError, match="unknown bus"):
        f.replace(pv=PVTable(bus=[11], s_mva=[1.0]))
