"""Snapshot MIP against brute-force enumeration of the capacitor steps."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

import safedispatch as sd
from safedispatch.baselines import MIPStatus, SnapshotMIP, solve_mip


@pytest.fixture(scope="module")
def paper_c():
    f = sd.load_case("ieee33-paperC")
    return f, SnapshotMIP(f)


@pytest.mark.parametrize(("load", "pv"), [(1.0, 0.0), (1.0, 0.5), (0.3, 1.0)])
def test_capacitor_decision_equals_brute_force(paper_c, load, pv):
    f, mip = paper_c
    snap = sd.Snapshot.nominal(f, load=load, pv=pv)
    res = mip.solve(snap)
    assert res.status == MIPStatus.OPTIMAL
    combos = list(itertools.product(*[range(int(n) + 1) for n in f.cap.n_steps]))
    costs = [mip.solve_fixed_caps(snap, np.array(c)).objective for c in combos]
    best = int(np.argmin(costs))
    assert res.objective == pytest.approx(costs[best], rel=1e-6, abs=1e-9)
    # the decision is the enumeration's, unless another combination ties to solver precision
    ties = [c for c, v in zip(combos, costs) if v <= costs[best] + 1e-7 * (1 + abs(costs[best]))]
    assert tuple(res.action.cap_step) in ties


def test_switching_cost_keeps_the_previous_steps(paper_c):
    f, _ = paper_c
    mip = SnapshotMIP(f, switch_weight=100.0)
    snap = sd.Snapshot.nominal(f, load=0.3, pv=1.0)  # light load: capacitors would be switched off
    prev = sd.Action(pv_p_mw=np.zeros(f.n_pv), pv_q_mvar=np.zeros(f.n_pv), cap_step=np.ones(f.n_cap, dtype=int))
    assert tuple(SnapshotMIP(f).solve(snap).action.cap_step) != (1, 1)
    assert tuple(mip.solve(snap.replace(prev=prev)).action.cap_step) == (1, 1)


def test_mode_binaries_disks_and_scr_respected():
    f = sd.load_case("ieee33-paperB-4")
    eps = 0.05
    mip = SnapshotMIP(f, min_grid_forming=2, eps_mw=eps, scr_min=2.8)
    res = mip.solve(sd.Snapshot.nominal(f, load=1.0, pv=1.0))
    assert res.status == MIPStatus.OPTIMAL and set(res.mode.tolist()) <= {0, 1}
    assert (res.mode == 0).sum() >= 2
    a = res.action
    assert np.all(a.pv_p_mw[res.mode == 0] <= eps + 1e-9)
    assert np.all(a.pv_p_mw**2 + a.pv_q_mvar**2 <= f.pv.s_mva**2 * (1 + 1e-9))  # inner polygons
    weak = np.isfinite(f.bus.s_sc_mva[f.pv.bus])
    assert a.pv_p_mw[weak].sum() <= f.bus.s_sc_mva[f.pv.bus[weak]][0] / 2.8 + 1e-9
    assert mip.build_time_s > 0 and res.solve_time_s > 0 and res.build_time_s > 0


def test_infeasible_snapshot_is_a_status():
    f = sd.load_case("ieee33-paperC")
    res = solve_mip(f, sd.Snapshot.nominal(f, load=3.0, pv=0.0))
    assert res.status == MIPStatus.INFEASIBLE and res.action is None and res.objective == float("inf")


def test_bad_options_raise_typed_errors():
    f = sd.load_case("ieee33-paperC")
    with pytest.raises(sd.InputError) as e:
        SnapshotMIP(f, min_grid_forming=5)
    assert e.value.field == "min_grid_forming"
    with pytest.raises(sd.InputError) as e:
        SnapshotMIP(f, curtailment=-1.0)
    assert e.value.field == "curtailment"


def test_persistent_solver_equals_a_fresh_solve_on_changing_snapshots():
    # later snapshots only push changed parameters to the persistent HiGHS model; a fresh
    # HiGHS built from the Pyomo model with the same parameters must give the same optimum
    from safedispatch.backends import pyomo_

    f = sd.load_case("ieee33-paperC")
    mip = SnapshotMIP(f)
    rng = np.random.default_rng(2)
    for _ in range(5):
        snap = sd.Snapshot.nominal(f, load=float(rng.uniform(0.3, 1.1)), pv=float(rng.uniform(0.0, 1.0)))
        res = mip.solve(snap)
        fresh = pyomo_.solve(mip.alg.model, time_limit_s=10.0)
        assert res.objective == pytest.approx(fresh.objective, rel=1e-9, abs=1e-12)
        assert tuple(res.action.cap_step) == tuple(np.round(fresh.x["cap"]).astype(int))


@pytest.mark.parametrize("case", ["ieee33-paperB-4", "ieee33-paperC"])
def test_direct_highs_path_equals_the_pyomo_path(case):
    """The direct path (snapshot numbers pushed straight into HiGHS through the measured affine
    map) gives the Pyomo path's answers: same statuses, objectives, set-points and steps, on
    feasible, infeasible and fixed-step snapshots."""
    f = sd.load_case(case)
    direct, pyomo = SnapshotMIP(f, direct=True), SnapshotMIP(f, direct=False)
    rng = np.random.default_rng(4)
    snaps = [sd.Snapshot.nominal(f, load=float(rng.uniform(0.2, 1.2)), pv=float(rng.uniform(0.0, 1.0)))
             for _ in range(8)]
    snaps.insert(4, sd.Snapshot.nominal(f, load=3.0, pv=0.0))  # infeasible
    if f.n_cap:
        snaps.append(snaps[1].replace(prev=sd.Action(pv_p_mw=np.zeros(f.n_pv), pv_q_mvar=np.zeros(f.n_pv),
                                                     cap_step=f.cap.n_steps.copy())))
    for snap in snaps:
        a, b = direct.solve(snap), pyomo.solve(snap)
        assert a.status == b.status
        if b.action is None:
            continue
        assert a.objective == pytest.approx(b.objective, rel=1e-9, abs=1e-12)
        np.testing.assert_allclose(a.action.to_vector(), b.action.to_vector(), atol=1e-7)
        np.testing.assert_array_equal(a.action.cap_step, b.action.cap_step)
        np.testing.assert_array_equal(a.mode, b.mode)
    assert direct._direct is not None and direct.direct  # the direct path did run
    if f.n_cap:
        a = direct.solve_fixed_caps(snaps[0], np.zeros(f.n_cap, dtype=int))
        b = pyomo.solve_fixed_caps(snaps[0], np.zeros(f.n_cap, dtype=int))
        assert a.objective == pytest.approx(b.objective, rel=1e-9, abs=1e-12)
