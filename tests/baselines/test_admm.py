"""ADMM over zones against the centralized LinDistFlow OPF (independent reference)."""

from __future__ import annotations

import numpy as np
import pytest

import safedispatch as sd
from safedispatch.baselines import solve_opf
from safedispatch.baselines.admm import (
    ADMMStatus,
    SerialExecutor,
    ThreadExecutor,
    ZonalADMM,
    ZoneExecutor,
    ZoneWorker,
    solve_admm,
    subtree_zones,
)
from safedispatch.formulations.lindistflow import affine_maps
from safedispatch.problems.types import net_injection
from safedispatch.problems.zones import model_network

REL = 1e-3


def central(f, snap, objective):
    return solve_opf(f, snap, model="lindistflow", objective=objective, repair=False)


def lindistflow_vm(f, snap, act):
    """Voltages of the whole-feeder LinDistFlow at the set-points (affine form, not the zones')."""
    tree = model_network(f).tree
    Rw, Xw, _ = affine_maps(tree)
    p, q, sh = net_injection(f, snap, act)
    nodes = tree.bus[1:]
    snap = snap.checked(f)
    w = snap.v_root_pu**2 + Rw @ (p[nodes] / f.sn_mva) + Xw @ ((q + sh)[nodes] / f.sn_mva + tree.b_pu[1:])
    vm = np.full(f.n_bus, snap.v_root_pu)
    vm[nodes] = np.sqrt(w)
    return vm


@pytest.fixture(scope="module")
def zones33():
    f = sd.load_case("ieee33-zones")
    admm = ZonalADMM(f, warm_start=False, executor=SerialExecutor())
    yield f, admm
    admm.close()


@pytest.mark.parametrize(("load", "pv"), [(1.0, 0.5), (0.5, 1.0)])
def test_reaches_the_centralized_optimum_on_ieee33_zones(zones33, load, pv):
    f, admm = zones33
    snap = sd.Snapshot.nominal(f, load=load, pv=pv)
    ref = central(f, snap, "losses")
    res = admm.solve(snap)
    assert res.status == ADMMStatus.CONVERGED
    assert abs(res.objective - ref.objective) <= REL * abs(ref.objective)
    # the zones' voltages are the feeder's LinDistFlow voltages at the assembled set-points
    np.testing.assert_allclose(res.model_vm_pu, lindistflow_vm(f, snap, res.action), atol=1e-4)
    assert np.all(res.action.pv_p_mw**2 + res.action.pv_q_mvar**2 <= f.pv.s_mva**2 * (1 + 1e-9))
    n = res.iterations
    assert n > 1 and res.primal_residual.shape == res.dual_residual.shape == res.rho.shape == (n,)
    assert res.primal_residual[-1] < 1e-2 * res.primal_residual[0]
    assert res.solve_time_s > 0 and res.zone_time_s > 0 and np.isfinite(res.losses_mw)


def test_paper_b_objective_on_ieee33_zones():
    f = sd.load_case("ieee33-zones")
    snap = sd.Snapshot.nominal(f, load=0.8, pv=0.8)
    ref = central(f, snap, "paperB")
    res = solve_admm(f, snap, objective="paperB", executor=SerialExecutor())
    assert res.status == ADMMStatus.CONVERGED
    assert abs(res.objective - ref.objective) <= REL * abs(ref.objective)


def test_reaches_the_centralized_optimum_on_ieee33x30():
    f = sd.load_case("ieee33x30")
    zones = subtree_zones(f, 17)
    assert len(zones) == 31  # the root's zone and one per copy's far end: boundaries inside copies
    snap = sd.Snapshot.nominal(f, load=1.0, pv=0.5)
    ref = central(f, snap, "losses")
    res = solve_admm(f, snap, zones=zones, executor=SerialExecutor())
    assert res.status == ADMMStatus.CONVERGED
    assert abs(res.objective - ref.objective) <= REL * abs(ref.objective)
    assert res.info["n_zones"] == 31 and res.info["n_boundary_entries"] == 90
    np.testing.assert_allclose(res.model_vm_pu, lindistflow_vm(f, snap, res.action), atol=1e-4)


def test_thread_executor_gives_the_serial_iterates(zones33):
    f, serial = zones33
    snap = sd.Snapshot.nominal(f, load=0.8, pv=0.8)
    a = serial.solve(snap)
    threaded = ZonalADMM(f, warm_start=False, executor=ThreadExecutor(max_workers=2))
    try:
        b = threaded.solve(snap)
    finally:
        threaded.close()
    # the same algorithm: equal iterates up to solver round-off (1e-6 relative here)
    assert abs(a.iterations - b.iterations) <= 2 and b.status == ADMMStatus.CONVERGED
    k = min(a.iterations, b.iterations) // 2
    np.testing.assert_allclose(a.primal_residual[:k], b.primal_residual[:k], rtol=1e-3)
    assert b.objective == pytest.approx(a.objective, rel=1e-6)


class RecordingExecutor:
    """A third-party executor: only the protocol, no inheritance."""

    def __init__(self):
        self.calls = []

    def start(self, specs):
        self.workers = [ZoneWorker(s) for s in specs]

    def call(self, method, args):
        self.calls.append(method)
        return [getattr(w, method)(*a) for w, a in zip(self.workers, args)]

    def close(self):
        self.workers = []


def test_any_executor_implementing_the_protocol_works():
    f = sd.load_case("ieee33-zones")
    ex = RecordingExecutor()
    assert isinstance(ex, ZoneExecutor)
    res = solve_admm(f, sd.Snapshot.nominal(f, load=1.0, pv=0.5), executor=ex)
    assert res.status == ADMMStatus.CONVERGED
    assert ex.calls[0] == "set_snapshot" and ex.calls.count("solve") == res.iterations


def test_warm_start_saves_iterations():
    f = sd.load_case("ieee33-zones")
    admm = ZonalADMM(f, executor=SerialExecutor())
    snap = sd.Snapshot.nominal(f, load=0.9, pv=0.6)
    cold = admm.solve(snap)
    warm = admm.solve(snap.replace(load_p_mw=snap.load_p_mw * 1.01))
    assert warm.status == ADMMStatus.CONVERGED and warm.iterations < cold.iterations / 2


def test_subtree_zones_partition_into_valid_zones():
    for name, target in (("ieee33", 8), ("ieee33x30", 17), ("ieee33x30", 100)):
        f = sd.load_case(name)
        zones = subtree_zones(f, target)
        g = f.replace(zones=zones)  # the feeder validates partition and connectivity
        assert sorted(np.concatenate(g.zones).tolist()) == list(range(f.n_bus))
        assert all(len(z) >= 2 for z in zones)


def test_unconverged_and_bad_input_are_statuses_and_typed_errors():
    f = sd.load_case("ieee33-zones")
    res = solve_admm(f, sd.Snapshot.nominal(f, load=1.0, pv=0.5), executor=SerialExecutor(), max_iter=3)
    assert res.status == ADMMStatus.MAX_ITER and res.iterations == 3 and np.isfinite(res.objective)
    with pytest.raises(sd.InputError) as e:
        ZonalADMM(f, rho=-1.0, executor=SerialExecutor())
    assert e.value.field == "rho"
    with pytest.raises(sd.InputError) as e:
        ZonalADMM(f, model="ac", executor=SerialExecutor())
    assert e.value.field == "model"
    with pytest.raises(sd.NetworkDataError):
        ZonalADMM(f, zones=[np.arange(10)], executor=SerialExecutor())
    with pytest.raises(sd.InputError):
        subtree_zones(f, 1)
